//! [`SessionConfig`]: the settings of one side of a session, for both sides.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::auth::Authenticator;
use super::handshake::HANDSHAKE_MAX_FRAME_LEN;
use crate::codec::DEFAULT_MAX_FRAME_LEN;
use crate::proto::v1::Credentials;

/// Settings of one side of a session. The same type serves both sides: the connecting side
/// uses [`with_credentials`](Self::with_credentials), the accepting side
/// [`with_authenticator`](Self::with_authenticator).
///
/// ```
/// use connect::session::SessionConfig;
/// use std::time::Duration;
///
/// let config = SessionConfig::new()
///     .with_property("product", "my-app")
///     .with_heartbeat(Some(Duration::from_secs(5)))
///     .with_missed_heartbeats(2);
/// assert_eq!(config.heartbeat(), Some(Duration::from_secs(5)));
/// ```
#[derive(Clone)]
pub struct SessionConfig {
    pub(super) properties: HashMap<String, String>,
    pub(super) heartbeat: Option<Duration>,
    pub(super) missed_heartbeats: u32,
    pub(super) max_frame_len: usize,
    pub(super) handshake_timeout: Duration,
    pub(super) close_timeout: Duration,
    pub(super) queue_len: usize,
    pub(super) receive_buffer_len: usize,
    pub(super) credentials: Option<Credentials>,
    pub(super) capabilities: Vec<String>,
    pub(super) authenticator: Option<Arc<dyn Authenticator>>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        let properties = HashMap::from([
            ("product".to_owned(), env!("CARGO_PKG_NAME").to_owned()),
            ("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
            ("platform".to_owned(), "Rust".to_owned()),
        ]);
        Self {
            properties,
            heartbeat: Some(Duration::from_secs(10)),
            missed_heartbeats: 3,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(10),
            queue_len: 64,
            receive_buffer_len: 4 * 1024 * 1024,
            credentials: None,
            capabilities: Vec::new(),
            authenticator: None,
        }
    }
}

impl fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionConfig")
            .field("properties", &self.properties)
            .field("heartbeat", &self.heartbeat)
            .field("missed_heartbeats", &self.missed_heartbeats)
            .field("max_frame_len", &self.max_frame_len)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("close_timeout", &self.close_timeout)
            .field("queue_len", &self.queue_len)
            .field("receive_buffer_len", &self.receive_buffer_len)
            .field("capabilities", &self.capabilities)
            // Credentials' Debug redacts secrets.
            .field("credentials", &self.credentials)
            .field("authenticator", &self.authenticator.is_some())
            .finish()
    }
}

impl SessionConfig {
    /// Defaults: heartbeat 10 s, dead after 3 missed intervals, 16 MiB frames, handshake and
    /// close timeouts 10 s, queues of 64 messages each way and at most 4 MiB of received
    /// messages waiting, properties `product`, `version` and `platform`, no credentials, no
    /// authenticator (every `Hello` is accepted).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a property announced to the peer.
    pub fn with_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(key.into(), value.into());
        self
    }

    /// The heartbeat interval this side wants (`None`: no preference). The session uses the
    /// smaller of both sides' non-zero wishes; with no wish on either side, no heartbeats.
    pub fn with_heartbeat(mut self, interval: Option<Duration>) -> Self {
        self.heartbeat = interval;
        self
    }

    /// After how many heartbeat intervals of silence the peer counts as unresponsive
    /// (default 3, at least 1). Local to this side, not negotiated.
    pub fn with_missed_heartbeats(mut self, intervals: u32) -> Self {
        self.missed_heartbeats = intervals.max(1);
        self
    }

    /// The largest frame this side accepts; the session uses the smaller of both sides' values.
    /// From the handshake on, the negotiated value replaces the connection's
    /// [`ConnectionConfig::with_max_frame_len`](crate::ConnectionConfig::with_max_frame_len) in
    /// both directions: for a session this setting wins.
    /// 0 sends "no preference" (PROTOCOL.md, section 3): the other side's value is used, and
    /// 4096 if it has none either.
    pub fn with_max_frame_len(mut self, bytes: usize) -> Self {
        self.max_frame_len = bytes;
        self
    }

    /// How long the handshake may take (default 10 s): the accepting side refuses a peer that
    /// sends no `Hello` in time (and refuses with `INTERNAL_ERROR` if its authenticator takes
    /// longer than this); the connecting side gives up waiting for the answer.
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// How long a close may take before the session ends anyway (default 10 s).
    pub fn with_close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// How many received messages wait for the application (default 64; a reader that is
    /// polling takes what it reads at once, so this bounds what the driver reads meanwhile).
    /// Outgoing messages are bounded in bytes: beyond the first, at most 256 KiB of encoded
    /// messages wait to be handed to the connection.
    pub fn with_queue_len(mut self, messages: usize) -> Self {
        self.queue_len = messages.max(1);
        self
    }

    /// How many bytes of received messages may wait for the application (default 4 MiB; one
    /// message is always let through, so the bound is this plus one maximum frame). When full,
    /// the driver stops reading until the application takes messages.
    pub fn with_receive_buffer_len(mut self, bytes: usize) -> Self {
        self.receive_buffer_len = bytes;
        self
    }

    /// Credentials the connecting side sends in its `Hello`.
    pub fn with_credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// Offers (connecting side) or enables when offered (accepting side) a protocol extension,
    /// such as [`reliable::CAPABILITY`](crate::reliable::CAPABILITY). An extension is in use
    /// only if both sides have it; [`SessionInfo::capabilities`](super::SessionInfo::capabilities) lists those in use.
    pub fn with_capability(mut self, name: impl Into<String>) -> Self {
        let name = name.into();
        if !self.capabilities.contains(&name) {
            self.capabilities.push(name);
        }
        self
    }

    /// The authenticator the accepting side runs on every `Hello`.
    pub fn with_authenticator(mut self, authenticator: impl Authenticator + 'static) -> Self {
        self.authenticator = Some(Arc::new(authenticator));
        self
    }

    /// See [`with_heartbeat`](Self::with_heartbeat).
    pub fn heartbeat(&self) -> Option<Duration> {
        self.heartbeat
    }

    /// See [`with_max_frame_len`](Self::with_max_frame_len).
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// How long a handshake may take.
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    pub(crate) fn missed_heartbeats(&self) -> u32 {
        self.missed_heartbeats
    }

    pub(crate) fn close_timeout(&self) -> Duration {
        self.close_timeout
    }

    pub(crate) fn queue_len(&self) -> usize {
        self.queue_len
    }

    pub(crate) fn receive_buffer_len(&self) -> usize {
        self.receive_buffer_len
    }

    pub(super) fn heartbeat_ms(&self) -> u32 {
        self.heartbeat.map_or(0, |h| {
            u32::try_from(h.as_millis()).unwrap_or(u32::MAX).max(1)
        })
    }

    /// The frame limit until the handshake is over: 0 is "no preference", not "no frames".
    pub(super) fn handshake_frame_limit(&self) -> usize {
        match self.max_frame_len {
            0 => HANDSHAKE_MAX_FRAME_LEN,
            max => HANDSHAKE_MAX_FRAME_LEN.min(max),
        }
    }

    pub(super) fn max_frame_len_u32(&self) -> u32 {
        u32::try_from(self.max_frame_len).unwrap_or(u32::MAX)
    }
}
