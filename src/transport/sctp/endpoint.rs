//! The endpoint: one UDP socket, one `sctp_proto::Endpoint`, and the table of every association
//! on it ([`State`], shared by the driver, the listener and the streams behind one mutex).
//! Routes received datagrams to their association, bounds half-open associations (INIT
//! floods), and runs each association's round under `catch_unwind`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::time::Instant;

use async_io::Async;
use bytes::Bytes;
use sctp_proto::{
    AssociationHandle, DatagramEvent, Endpoint, EndpointConfig, EndpointEvent, ServerConfig,
};

use super::association::{Assoc, Owner, Round};
use super::SctpConfig;

/// Everything the driver, the listener and the streams share.
pub(super) struct State {
    pub(super) endpoint: Endpoint,
    pub(super) assocs: HashMap<AssociationHandle, Assoc>,
    pub(super) accept_queue: VecDeque<AssociationHandle>,
    pub(super) accept_waker: Option<Waker>,
    /// A listener is accepting new associations.
    pub(super) listening: bool,
    pub(super) driver_waker: Option<Waker>,
    /// A stream changed something the driver must look at.
    pub(super) dirty: bool,
    /// Associations with news (a datagram, a stream operation) since the driver last ran:
    /// only these and those with a timer due are processed, so idle associations cost
    /// nothing per packet.
    pub(super) touched: HashSet<AssociationHandle>,
    /// Process every association on the next run.
    pub(super) touch_all: bool,
    /// Some association had more to send than fit in `outgoing`.
    pub(super) backlogged: bool,
    pub(super) outgoing: VecDeque<(SocketAddr, Bytes)>,
    pub(super) config: Arc<SctpConfig>,
    /// Set if the socket failed for good; every association then fails with it.
    pub(super) failed: Option<io::ErrorKind>,
    /// The socket is connected to its one peer (a client's): the kernel reports ICMP errors.
    pub(super) connected_socket: bool,
    /// A client's socket reported the peer's port unreachable.
    pub(super) refused: bool,
    /// Server-side associations still in their handshake, oldest first (entries whose
    /// association has since connected or gone are pruned when the list is next looked at).
    pub(super) half_open: VecDeque<AssociationHandle>,
    /// The driver task ended without finishing its work (it panicked, or its runtime dropped
    /// it): every operation fails instead of waiting for it.
    pub(super) driver_gone: bool,
    /// Test hook: panic in the driver, outside any association's processing.
    #[cfg(test)]
    pub(super) panic_driver: bool,
}

impl State {
    /// Asks the driver to run: after a write, a read that freed receive window, a close.
    ///
    /// Wakes it only once per driver run: `dirty` is cleared when the driver starts a round
    /// with the lock held, so while it is set a wake-up is already on its way. (Waking per
    /// write cost more than the SCTP processing itself.)
    pub(super) fn wake_driver(&mut self, handle: AssociationHandle) {
        self.touched.insert(handle);
        self.wake();
    }

    pub(super) fn wake(&mut self) {
        if self.dirty {
            return;
        }
        self.dirty = true;
        if let Some(w) = &self.driver_waker {
            w.wake_by_ref();
        }
    }

    /// Starts an outgoing association (client side).
    pub(super) fn connect(&mut self, remote: SocketAddr) -> io::Result<AssociationHandle> {
        let mut client = sctp_proto::ClientConfig::new();
        client.transport = self.config.transport_config();
        let (handle, inner) = self
            .endpoint
            .connect(client, remote)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let deadline = Instant::now().checked_add(self.config.handshake_timeout);
        self.assocs
            .insert(handle, Assoc::new(inner, Owner::Stream, deadline));
        self.wake_driver(handle);
        Ok(handle)
    }

    /// Stops accepting: new handshakes are refused, unaccepted associations are closed.
    pub(super) fn stop_listening(&mut self) {
        self.listening = false;
        self.endpoint.reject_new_associations();
        let linger = self.config.linger;
        for handle in self.accept_queue.drain(..) {
            if let Some(assoc) = self.assocs.get_mut(&handle) {
                assoc.drop_owner(linger);
            }
        }
        for assoc in self.assocs.values_mut() {
            if assoc.owner == Owner::Unaccepted {
                assoc.drop_owner(linger);
            }
        }
        self.touch_all = true;
        self.wake();
    }

    /// Server-side associations in their handshake, after pruning the list of those that have
    /// connected or gone since.
    pub(super) fn half_open(&mut self) -> usize {
        let assocs = &self.assocs;
        self.half_open.retain(|h| {
            assocs
                .get(h)
                .is_some_and(|a| a.half_open_from.is_some() && !a.connected && !a.finished)
        });
        self.half_open.len()
    }

    /// Before a new half-open association from `source`: if that source already has its
    /// share, its oldest half-open association is dropped without a word; if all sources
    /// together have the backlog, the oldest of the source holding the most is. A handshake
    /// takes one round trip, so a flood of INITs competes with itself first: a source with
    /// one handshake pending loses it only once every source has at most one.
    fn make_room_for_half_open(&mut self, source: IpAddr) {
        let total = self.half_open();
        let mut per_source: HashMap<IpAddr, (usize, AssociationHandle)> = HashMap::new();
        for handle in &self.half_open {
            if let Some(ip) = self.assocs.get(handle).and_then(|a| a.half_open_from) {
                // Oldest first, so the first handle seen per source is its oldest.
                per_source.entry(ip).or_insert((0, *handle)).0 += 1;
            }
        }
        let victim = match per_source.get(&source) {
            Some(&(count, oldest)) if count >= self.config.max_half_open_per_source => Some(oldest),
            _ if total >= self.config.backlog => per_source
                .values()
                .max_by_key(|(count, _)| *count)
                .map(|&(_, oldest)| oldest),
            _ => None,
        };
        if let Some(handle) = victim {
            log::debug!("SCTP: too many handshakes pending, dropping the oldest ({source})");
            self.half_open.retain(|h| *h != handle);
            self.assocs.remove(&handle);
            self.endpoint.handle_event(handle, EndpointEvent::drained());
        }
    }

    /// Feeds one received datagram to the endpoint and the association it belongs to.
    pub(super) fn handle_datagram(&mut self, now: Instant, remote: SocketAddr, data: Bytes) {
        let endpoint = &mut self.endpoint;
        let routed = catch_unwind(AssertUnwindSafe(|| {
            endpoint.handle(now, remote, None, None, data)
        }));
        match routed {
            Ok(None) => log::trace!("SCTP: ignored a datagram from {remote}"),
            Ok(Some((handle, DatagramEvent::AssociationEvent(event)))) => {
                self.touched.insert(handle);
                if let Some(assoc) = self.assocs.get_mut(&handle).filter(|a| !a.crashed) {
                    let inner = &mut assoc.inner;
                    if catch_unwind(AssertUnwindSafe(|| inner.handle_event(event))).is_err() {
                        log::error!("SCTP: a packet from {remote} crashed its association");
                        assoc.crash();
                    }
                }
            }
            Ok(Some((handle, DatagramEvent::NewAssociation(inner)))) => {
                if !self.listening {
                    log::debug!("SCTP: refusing an association from {remote}");
                    self.endpoint.handle_event(handle, EndpointEvent::drained());
                    return;
                }
                self.make_room_for_half_open(remote.ip());
                let deadline = now.checked_add(self.config.half_open_timeout());
                let mut assoc = Assoc::new(inner, Owner::Unaccepted, deadline);
                assoc.half_open_from = Some(remote.ip());
                self.assocs.insert(handle, assoc);
                self.half_open.push_back(handle);
                self.touched.insert(handle);
            }
            Err(_) => log::error!("SCTP: a datagram from {remote} crashed the endpoint's parser"),
        }
    }

    /// Lets every association react to time, events and its stream, and queues its packets.
    /// Returns the earliest time something has to happen next.
    ///
    /// Each association's work runs under `catch_unwind`: a panic (in `sctp-proto` or in our
    /// own code) fails that association only, and the driver goes on serving the others.
    pub(super) fn process(&mut self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut remove = Vec::new();
        let all = std::mem::take(&mut self.touch_all) || self.failed.is_some() || self.refused;
        let touched = std::mem::take(&mut self.touched);
        let mut round = Round {
            now,
            config: &self.config,
            listening: self.listening,
            failed: self.failed,
            refused: self.refused,
            accept_queue: &mut self.accept_queue,
            accept_waker: &mut self.accept_waker,
            outgoing: &mut self.outgoing,
            backlogged: &mut self.backlogged,
        };
        for (&handle, assoc) in self.assocs.iter_mut() {
            let due = assoc.next_wake.is_some_and(|t| t <= now);
            if !(all || due || assoc.more_to_send || touched.contains(&handle)) {
                if let Some(t) = assoc.next_wake {
                    next = Some(next.map_or(t, |n| n.min(t)));
                }
                continue;
            }
            if assoc.crashed {
                // Never call into a crashed association again: it goes once nobody holds it.
                if assoc.owner != Owner::Stream {
                    remove.push(handle);
                }
                continue;
            }
            let done = catch_unwind(AssertUnwindSafe(|| round.association(handle, assoc)));
            match done {
                Ok(true) => remove.push(handle),
                Ok(false) => {
                    if let Some(t) = assoc.next_wake {
                        next = Some(next.map_or(t, |n| n.min(t)));
                    }
                }
                Err(_) => {
                    log::error!("SCTP: association {handle:?} crashed; ending it");
                    assoc.crash();
                    if assoc.owner != Owner::Stream {
                        remove.push(handle);
                    }
                }
            }
        }
        for handle in remove {
            if let Some(assoc) = self.assocs.remove(&handle).filter(|a| !a.crashed) {
                log_stats(handle, &assoc);
            }
            self.endpoint.handle_event(handle, EndpointEvent::drained());
            log::trace!("SCTP: association {handle:?} removed");
        }
        next
    }

    /// Fails every association and the listener: the driver is gone, so nothing would ever
    /// make progress again. Every waiting stream and `accept` wakes up to an error.
    pub(super) fn fail_all(&mut self) {
        self.driver_gone = true;
        self.listening = false;
        for assoc in self.assocs.values_mut() {
            assoc.crash();
        }
        if let Some(w) = self.accept_waker.take() {
            w.wake();
        }
    }

    /// The driver's work is done: nobody listens and no association is left.
    pub(super) fn done(&self) -> bool {
        !self.listening && self.assocs.is_empty()
    }
}

/// Logs (at debug level) what an association's loss recovery did over its life: how many
/// DATA chunks and SACKs it received, and how often it fell back on a retransmission time-out
/// (the costly path), fast-retransmitted, or sent a SACK only when its delayed-ack timer fired.
fn log_stats(handle: AssociationHandle, assoc: &Assoc) {
    if !log::log_enabled!(log::Level::Debug) {
        return;
    }
    let mut stats = assoc.inner.stats();
    log::debug!(
        "SCTP: association {handle:?} ({:?}) done: {} DATA and {} SACK chunks received, \
         {} retransmission time-outs, {} fast retransmissions, {} delayed-ack time-outs",
        assoc.side,
        stats.get_num_datas(),
        stats.get_num_sacks(),
        stats.get_num_t3timeouts(),
        stats.get_num_fast_retrans(),
        stats.get_num_ack_timeouts(),
    );
}

/// What the listener and streams hold: the socket and the state.
pub(super) struct Shared {
    pub(super) socket: Async<UdpSocket>,
    pub(super) local_addr: SocketAddr,
    pub(super) state: Mutex<State>,
}

impl Shared {
    /// Binds a UDP socket with the configured buffer sizes and a fresh endpoint on it. A
    /// client endpoint is connected to its one peer, so the kernel drops datagrams from anyone
    /// else.
    pub(super) fn bind(
        local: SocketAddr,
        peer: Option<SocketAddr>,
        config: Arc<SctpConfig>,
    ) -> io::Result<Arc<Self>> {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = Socket::new(Domain::for_address(local), Type::DGRAM, Some(Protocol::UDP))?;
        // Loopback bursts overflow the default buffers (~200 KiB); the kernel caps these at
        // net.core.{r,w}mem_max, which is fine.
        if let Err(e) = socket.set_recv_buffer_size(config.udp_buffer) {
            log::debug!("cannot set SO_RCVBUF: {e}");
        }
        if let Err(e) = socket.set_send_buffer_size(config.udp_buffer) {
            log::debug!("cannot set SO_SNDBUF: {e}");
        }
        socket.bind(&local.into())?;
        if let Some(peer) = peer {
            socket.connect(&peer.into())?;
        }
        let socket = Async::new(UdpSocket::from(socket))?;
        let local_addr = socket.get_ref().local_addr()?;

        let mut endpoint_config = EndpointConfig::new();
        // sctp-proto's "payload size" is an SCTP packet less its common and DATA chunk headers;
        // its bundling check leaves out one chunk header and padding, so keep 20 bytes more
        // (packets over the limit would be refused by the kernel, and retransmitted forever).
        endpoint_config.max_payload_size(config.mtu.saturating_sub(12 + 16 + 20) as u32);
        // A server config is always set: `sctp-proto` needs one to even look at an INIT (it
        // would panic without), and a client endpoint refuses them right after.
        let mut server = ServerConfig::new();
        server.transport = config.transport_config();
        let mut endpoint = Endpoint::new(Arc::new(endpoint_config), Some(Arc::new(server)));
        let listening = peer.is_none();
        if !listening {
            endpoint.reject_new_associations();
        }
        Ok(Arc::new(Self {
            socket,
            local_addr,
            state: Mutex::new(State {
                endpoint,
                assocs: HashMap::new(),
                accept_queue: VecDeque::new(),
                accept_waker: None,
                listening,
                driver_waker: None,
                dirty: false,
                touched: HashSet::new(),
                touch_all: false,
                backlogged: false,
                outgoing: VecDeque::new(),
                config,
                failed: None,
                connected_socket: peer.is_some(),
                refused: false,
                half_open: VecDeque::new(),
                driver_gone: false,
                #[cfg(test)]
                panic_driver: false,
            }),
        }))
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // Calls into sctp-proto are unwind-protected, so a poisoned lock can only come from a
        // bug of ours; the state is still consistent enough to fail associations cleanly.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
