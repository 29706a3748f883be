//! The handshake: `Hello`, then `Welcome` or `Refuse`; negotiation rules; session settings.

use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use crate::connection::{ReadHalf, WriteHalf};
use futures_io::{AsyncRead, AsyncWrite};
use futures_util::future::{select, Either};
use prost::{Message, Name};
use prost_types::Any;

use super::driver::SessionDriver;
use super::{Session, SessionConfig, SessionEnd, SessionInfo};
use crate::codec::type_name;
use crate::connection::{Connection, ConnectionReader, ConnectionWriter};
use crate::error::{quoted, quoted_list, Error, Result};
use crate::proto::v1::{Hello, ReasonCode, Refuse, Welcome};

/// The protocol version this crate prefers: the highest in [`SUPPORTED_VERSIONS`].
pub const PROTOCOL_VERSION: u32 = 1;

/// Every protocol version this crate speaks.
pub const SUPPORTED_VERSIONS: &[u32] = &[1];

/// Largest `Hello`, `Welcome` or `Refuse` frame accepted before the maximum frame length is
/// negotiated: 64 KiB. A peer cannot make the other side buffer more before the handshake.
pub const HANDSHAKE_MAX_FRAME_LEN: usize = 64 * 1024;

/// Negotiated maximum frame lengths are never below this (4 KiB), so control messages fit.
pub const MIN_MAX_FRAME_LEN: usize = 4 * 1024;

/// Negotiated heartbeat intervals are never below this (10 ms).
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(10);

type HalfReader<T> = ConnectionReader<ReadHalf<T>>;
type HalfWriter<T> = ConnectionWriter<WriteHalf<T>>;

/// What the two sides agreed on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Negotiated {
    pub(crate) version: u32,
    pub(crate) heartbeat_ms: u32,
    pub(crate) max_frame_len: u32,
}

/// The smaller of two values where 0 means "no preference".
fn min_nonzero(a: u32, b: u32) -> u32 {
    match (a, b) {
        (0, x) | (x, 0) => x,
        (a, b) => a.min(b),
    }
}

/// The accepting side's negotiation (PROTOCOL.md, section 3): highest common version, smaller
/// non-zero heartbeat and maximum frame length, raised to the floors.
pub(crate) fn negotiate(
    hello: &Hello,
    config: &SessionConfig,
) -> std::result::Result<Negotiated, (ReasonCode, String)> {
    let version = hello
        .versions
        .iter()
        .copied()
        .filter(|v| SUPPORTED_VERSIONS.contains(v))
        .max()
        .ok_or_else(|| {
            (
                ReasonCode::UnsupportedVersion,
                format!(
                    "no common protocol version: you speak {}, we speak {SUPPORTED_VERSIONS:?}",
                    quoted_list(&hello.versions)
                ),
            )
        })?;
    let heartbeat_ms = match min_nonzero(hello.heartbeat_ms, config.heartbeat_ms()) {
        0 => 0,
        ms => ms.max(MIN_HEARTBEAT.as_millis() as u32),
    };
    let max_frame_len =
        min_nonzero(hello.max_frame_len, config.max_frame_len_u32()).max(MIN_MAX_FRAME_LEN as u32);
    Ok(Negotiated {
        version,
        heartbeat_ms,
        max_frame_len,
    })
}

/// Runs `future` for at most `limit`.
pub(crate) async fn timeout<F: Future>(limit: Duration, future: F) -> Option<F::Output> {
    let delay = futures_timer::Delay::new(limit);
    match select(pin!(future), delay).await {
        Either::Left((output, _)) => Some(output),
        Either::Right(((), _)) => None,
    }
}

fn decode<M: Message + Name + Default>(any: &Any) -> std::result::Result<M, String> {
    M::decode(any.value.as_slice()).map_err(|e| format!("bad {}: {e}", M::full_name()))
}

/// Opens a session as the connecting side: sends `Hello`, waits for `Welcome`.
///
/// Returns the session and its driver, **which must be spawned** (or otherwise polled) for the
/// session to make progress.
///
/// # Errors
/// `Error::Session` with [`SessionEnd::Refused`] (the accepting side's code and reason),
/// [`SessionEnd::HandshakeTimeout`], [`SessionEnd::ProtocolViolation`] (an answer that is not a
/// `Welcome` or `Refuse`, or a `Welcome` with a version we did not offer) or
/// [`SessionEnd::Disconnected`]; or the transport's error.
pub async fn connect<T>(
    conn: Connection<T>,
    config: &SessionConfig,
) -> Result<(Session, SessionDriver<T>)>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The handshake's state (a few KiB) lives in a box freed when it is over: a task that
    // opens a session and then holds it for hours does not carry that room all along.
    Box::pin(connect_handshake(conn, config)).await
}

async fn connect_handshake<T>(
    conn: Connection<T>,
    config: &SessionConfig,
) -> Result<(Session, SessionDriver<T>)>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut reader, mut writer) = conn.split();
    let info = reader.info.clone();
    reader.set_max_frame_len(config.handshake_frame_limit());
    let hello = Hello {
        versions: SUPPORTED_VERSIONS.to_vec(),
        properties: config.properties.clone(),
        heartbeat_ms: config.heartbeat_ms(),
        max_frame_len: config.max_frame_len_u32(),
        credentials: config.credentials.clone(),
        capabilities: config.capabilities.clone(),
    };
    writer.send_message(&hello).await?;
    let answer = match timeout(config.handshake_timeout, reader.recv()).await {
        None => return Err(Error::Session(SessionEnd::HandshakeTimeout)),
        Some(answer) => answer?,
    };
    let Some(answer) = answer else {
        return Err(Error::Session(SessionEnd::Disconnected));
    };
    let name = type_name(&answer.type_url);
    let violation = |reason: String| Error::Session(SessionEnd::ProtocolViolation { reason });
    if name == Refuse::full_name() {
        let refuse: Refuse = decode(&answer).map_err(violation)?;
        let code = ReasonCode::try_from(refuse.code).unwrap_or(ReasonCode::Unspecified);
        log::debug!(
            "{info}: session refused: {code:?} {}",
            quoted(&refuse.reason)
        );
        return Err(Error::Session(SessionEnd::Refused {
            code,
            reason: refuse.reason,
        }));
    }
    if name != Welcome::full_name() {
        return Err(violation(format!(
            "expected connect.v1.Welcome or connect.v1.Refuse, got {}",
            quoted(name)
        )));
    }
    let welcome: Welcome = decode(&answer).map_err(violation)?;
    if !SUPPORTED_VERSIONS.contains(&welcome.version) {
        return Err(violation(format!(
            "Welcome chose version {}, which we did not offer",
            welcome.version
        )));
    }
    // The server picks the smaller value; more than we asked for would let it make us buffer
    // frames larger than we agreed to.
    // A client that sent 1-4095 gets the floor; one that sent 0 (no preference) takes any
    // value from the floor up.
    let max_frame_len = welcome.max_frame_len as usize;
    let asked = match config.max_frame_len_u32() {
        0 => usize::MAX,
        sent => (sent as usize).max(MIN_MAX_FRAME_LEN),
    };
    if !(MIN_MAX_FRAME_LEN..=asked).contains(&max_frame_len) {
        return Err(violation(format!(
            "Welcome set max_frame_len {max_frame_len}, outside {MIN_MAX_FRAME_LEN}..={asked}"
        )));
    }
    let session_info = SessionInfo {
        session_id: welcome.session_id,
        version: welcome.version,
        heartbeat: heartbeat(welcome.heartbeat_ms),
        max_frame_len,
        peer_properties: welcome.properties,
        identity: Some(welcome.identity).filter(|id| !id.is_empty()),
        capabilities: welcome.capabilities,
        connection: info,
    };
    log::debug!("{session_info}: open (client)");
    Ok(start(reader, writer, session_info, config))
}

fn heartbeat(ms: u32) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(u64::from(ms)).max(MIN_HEARTBEAT))
}

/// Accepts a session as the accepting side: waits for `Hello`, negotiates, runs the
/// authenticator, answers `Welcome` — or `Refuse`, then closes the connection.
///
/// Returns the session and its driver, **which must be spawned** (or otherwise polled) for the
/// session to make progress.
///
/// # Errors
/// `Error::Session(SessionEnd::Refused { code, .. })` when this side refused: `code` is
/// `HANDSHAKE_TIMEOUT` (no `Hello` in time), `PROTOCOL_VIOLATION` (the first frame was no
/// `Hello`), `UNSUPPORTED_VERSION` or `AUTHENTICATION_FAILED`. `Error::Session` with
/// [`SessionEnd::Disconnected`] if the peer left first; the transport's error if it failed.
pub async fn accept<T>(
    conn: Connection<T>,
    config: &SessionConfig,
) -> Result<(Session, SessionDriver<T>)>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // As in `connect`: the handshake's state is boxed, and gone once it is over.
    Box::pin(accept_handshake(conn, config)).await
}

async fn accept_handshake<T>(
    conn: Connection<T>,
    config: &SessionConfig,
) -> Result<(Session, SessionDriver<T>)>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut reader, mut writer) = conn.split();
    let info = reader.info.clone();
    reader.set_max_frame_len(config.handshake_frame_limit());
    let first = match timeout(config.handshake_timeout, reader.recv()).await {
        None => {
            let reason = format!("no Hello within {:?}", config.handshake_timeout);
            return Err(refuse(reader, writer, config, ReasonCode::HandshakeTimeout, reason).await);
        }
        Some(Ok(Some(first))) => first,
        Some(Ok(None)) => return Err(Error::Session(SessionEnd::Disconnected)),
        Some(Err(e)) if e.is_protocol_violation() => {
            // PROTOCOL.md, section 3: an over-long frame has its own code.
            let code = match e {
                Error::FrameTooLarge { .. } => ReasonCode::FrameTooLarge,
                _ => ReasonCode::ProtocolViolation,
            };
            let reason = format!("bad first frame: {e}");
            return Err(refuse(reader, writer, config, code, reason).await);
        }
        Some(Err(e)) => return Err(e),
    };
    let name = type_name(&first.type_url);
    let hello = if name == Hello::full_name() {
        decode::<Hello>(&first)
    } else {
        Err(format!(
            "the first frame must be a connect.v1.Hello, not {}",
            quoted(name)
        ))
    };
    let hello = match hello {
        Ok(hello) => hello,
        Err(reason) => {
            return Err(refuse(
                reader,
                writer,
                config,
                ReasonCode::ProtocolViolation,
                reason,
            )
            .await)
        }
    };
    let negotiated = match negotiate(&hello, config) {
        Ok(negotiated) => negotiated,
        Err((code, reason)) => return Err(refuse(reader, writer, config, code, reason).await),
    };
    let credentials = hello.credentials.unwrap_or_default();
    let identity = match &config.authenticator {
        None => None,
        Some(authenticator) => match timeout(
            config.handshake_timeout,
            authenticator.authenticate(&credentials, &info),
        )
        .await
        {
            Some(Ok(identity)) => Some(identity),
            None => {
                log::warn!(
                    "{info}: the authenticator gave no answer within {:?}",
                    config.handshake_timeout
                );
                let code = ReasonCode::InternalError;
                let reason = "authentication unavailable".to_owned();
                return Err(refuse(reader, writer, config, code, reason).await);
            }
            Some(Err(why)) => {
                // The mechanism and the authenticator's reason only: never the credentials.
                log::warn!(
                    "{info}: authentication failed ({}): {why}",
                    credentials.mechanism_name()
                );
                let code = ReasonCode::AuthenticationFailed;
                let reason = "authentication failed".to_owned();
                return Err(refuse(reader, writer, config, code, reason).await);
            }
        },
    };
    let welcome = Welcome {
        version: negotiated.version,
        session_id: new_session_id(info.id()),
        properties: config.properties.clone(),
        heartbeat_ms: negotiated.heartbeat_ms,
        max_frame_len: negotiated.max_frame_len,
        // Those the client offered that this side enables, in the client's order.
        capabilities: hello
            .capabilities
            .iter()
            .filter(|c| config.capabilities.contains(c))
            .cloned()
            .collect(),
        identity: identity.clone().unwrap_or_default(),
    };
    writer.send_message(&welcome).await?;
    let session_info = SessionInfo {
        session_id: welcome.session_id,
        version: welcome.version,
        heartbeat: heartbeat(welcome.heartbeat_ms),
        max_frame_len: welcome.max_frame_len as usize,
        peer_properties: hello.properties,
        identity,
        capabilities: welcome.capabilities,
        connection: info,
    };
    log::debug!("{session_info}: open (server)");
    Ok(start(reader, writer, session_info, config))
}

/// Sends `Refuse`, closes the write side, waits (bounded) for the peer to close too, and
/// returns the error `accept` reports.
async fn refuse<T>(
    mut reader: HalfReader<T>,
    mut writer: HalfWriter<T>,
    config: &SessionConfig,
    code: ReasonCode,
    reason: String,
) -> Error
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    log::info!("{}: session refused: {code:?}: {reason}", reader.info());
    let refusal = Refuse {
        code: code as i32,
        reason: reason.clone(),
        versions: if code == ReasonCode::UnsupportedVersion {
            SUPPORTED_VERSIONS.to_vec()
        } else {
            Vec::new()
        },
    };
    let goodbye = async {
        writer.send_message(&refusal).await?;
        writer.close().await?;
        // Read to the peer's end of stream, so closing does not reset the connection (which
        // could destroy the Refuse before the peer reads it).
        while reader.recv().await?.is_some() {}
        Ok::<(), Error>(())
    };
    match timeout(config.close_timeout, goodbye).await {
        Some(Ok(())) => {}
        Some(Err(e)) => log::debug!("{}: after refusing: {e}", reader.info()),
        None => log::debug!("{}: peer did not close after the refusal", reader.info()),
    }
    Error::Session(SessionEnd::Refused { code, reason })
}

/// 128 random bits in hex; the connection id and the time if the system has no randomness.
fn new_session_id(connection_id: u64) -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = (nanos ^ u128::from(connection_id)).to_be_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Applies the negotiated frame length and hands the connection to a new driver.
fn start<T>(
    mut reader: HalfReader<T>,
    mut writer: HalfWriter<T>,
    info: SessionInfo,
    config: &SessionConfig,
) -> (Session, SessionDriver<T>)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    reader.set_max_frame_len(info.max_frame_len);
    writer.set_max_frame_len(info.max_frame_len);
    SessionDriver::start(reader, writer, info, config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(versions: &[u32], heartbeat_ms: u32, max_frame_len: u32) -> Hello {
        Hello {
            versions: versions.to_vec(),
            heartbeat_ms,
            max_frame_len,
            ..Default::default()
        }
    }

    #[test]
    fn negotiation_takes_the_smaller_nonzero_values() {
        let server = SessionConfig::new()
            .with_heartbeat(Some(Duration::from_secs(10)))
            .with_max_frame_len(1 << 20);
        let n = negotiate(&hello(&[1], 2000, 1 << 24), &server).unwrap();
        assert_eq!(
            (n.version, n.heartbeat_ms, n.max_frame_len),
            (1, 2000, 1 << 20)
        );
        let n = negotiate(&hello(&[1], 60_000, 8192), &server).unwrap();
        assert_eq!((n.heartbeat_ms, n.max_frame_len), (10_000, 8192));
        // 0 means no preference: the other side's value wins.
        let n = negotiate(&hello(&[1], 0, 0), &server).unwrap();
        assert_eq!((n.heartbeat_ms, n.max_frame_len), (10_000, 1 << 20));
        let quiet = SessionConfig::new().with_heartbeat(None);
        assert_eq!(
            negotiate(&hello(&[1], 0, 0), &quiet).unwrap().heartbeat_ms,
            0
        );
        assert_eq!(
            negotiate(&hello(&[1], 500, 0), &quiet)
                .unwrap()
                .heartbeat_ms,
            500
        );
        // Floors.
        let n = negotiate(&hello(&[1], 1, 10), &server).unwrap();
        assert_eq!((n.heartbeat_ms, n.max_frame_len), (10, 4096));
    }

    #[test]
    fn negotiation_picks_the_highest_common_version() {
        let config = SessionConfig::new();
        assert_eq!(
            negotiate(&hello(&[7, 1, 3], 0, 0), &config)
                .unwrap()
                .version,
            1
        );
        for versions in [&[][..], &[0], &[2, 3]] {
            let (code, reason) = negotiate(&hello(versions, 0, 0), &config).unwrap_err();
            assert_eq!(code, ReasonCode::UnsupportedVersion);
            assert!(reason.contains("[1]"), "{reason}");
        }
    }

    #[test]
    fn session_ids_are_distinct_hex() {
        let a = new_session_id(1);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, new_session_id(1));
    }
}
