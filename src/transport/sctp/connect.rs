//! The connecting side: [`connect`] an association from a UDP socket of its own.

use std::future::poll_fn;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use super::driver::{run_on_own_thread, Driver};
use super::endpoint::Shared;
use super::{SctpConfig, SctpConnection, SctpStream};
use crate::error::Result;
use crate::transport::{Task, ToSocketAddrs};

/// Connects to `addr` with the default [`SctpConfig`].
///
/// # Errors
/// [`Error::Io`](crate::Error::Io): `ConnectionRefused` if nothing listens at the UDP port,
/// `TimedOut` if nobody answers the handshake in time (see
/// [`SctpConfig::with_handshake_timeout`]), or the local UDP socket could not be made.
pub async fn connect(addr: impl ToSocketAddrs) -> Result<SctpConnection> {
    connect_with(addr, &SctpConfig::default()).await
}

/// Connects to `addr` with the given settings, from a UDP socket of its own on an ephemeral
/// port. That port's driver runs on a thread of its own (see
/// [the module docs](super#where-the-driver-runs)); [`connect_with_spawner`] runs it on your
/// executor instead.
///
/// # Errors
/// See [`connect`].
pub async fn connect_with(addr: impl ToSocketAddrs, config: &SctpConfig) -> Result<SctpConnection> {
    connect_each(addr, config, run_on_own_thread).await
}

/// Connects to `addr` with the given settings, like [`connect_with`], and hands the UDP port's
/// driver to `spawn`, which runs it on your executor (see [`Task`]:
/// `|task| smol::spawn(task).detach()`, `|task| { tokio::spawn(task); }`, ...). The driver
/// has to run for the handshake to complete, so hand it to an executor that is running; it ends
/// by itself once the association is gone. `spawn` is called once per address tried (each
/// attempt has a UDP socket, and a driver, of its own).
///
/// Should the executor drop the driver before its work is done (a runtime shut down), the
/// connection fails with an error instead of waiting.
///
/// # Errors
/// See [`connect`].
pub async fn connect_with_spawner(
    addr: impl ToSocketAddrs,
    config: &SctpConfig,
    mut spawn: impl FnMut(Task),
) -> Result<SctpConnection> {
    connect_each(addr, config, |task| {
        spawn(task);
        Ok(())
    })
    .await
}

/// Tries each address `addr` resolves to in turn, with a UDP socket and a driver of its own.
async fn connect_each(
    addr: impl ToSocketAddrs,
    config: &SctpConfig,
    mut spawn: impl FnMut(Task) -> io::Result<()>,
) -> Result<SctpConnection> {
    let mut last_error = None;
    for peer in async_net::resolve(addr).await? {
        match connect_addr(peer, config, &mut spawn).await {
            Ok(conn) => return Ok(conn),
            Err(e) => {
                log::debug!("SCTP: connecting to {peer} failed: {e}");
                last_error = Some(e);
            }
        }
    }
    Err(last_error.unwrap_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "no address to connect to").into()
    }))
}

async fn connect_addr(
    peer: SocketAddr,
    config: &SctpConfig,
    spawn: &mut impl FnMut(Task) -> io::Result<()>,
) -> Result<SctpConnection> {
    let local = match peer {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    let config = Arc::new(config.clone());
    let shared = Shared::bind(local, Some(peer), config.clone())?;
    let handle = shared.lock().connect(peer)?;
    spawn(Box::pin(Driver::new(shared.clone())))?;
    // From here on, dropping `stream` (a cancelled connect) lets the driver clean up.
    let stream = SctpStream { shared, handle };
    poll_fn(|cx| stream.poll_connected(cx)).await?;
    Ok(stream.into_connection(&config.connection))
}
