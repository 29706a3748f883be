//! The per-port driver loop: the future that does an endpoint's I/O.
//!
//! `sctp-proto` is sans-IO: it turns datagrams and timer expiries into events and datagrams to
//! send. [`Driver`] is the future that does the I/O for it (receive, send, timers), one per
//! UDP port. [`SctpStream`](super::SctpStream)s and the listener share the endpoint's [`State`]
//! with it behind one mutex: a stream reads from and writes into its association directly, then
//! wakes the driver to put the resulting packets on the wire.
//!
//! Every call into `sctp-proto` with bytes from the network, and each association's share of
//! a round, runs under `catch_unwind`: a packet that trips a bug (in the protocol crate or
//! here) ends that association only, never the driver, which serves every other association
//! on the port. If the driver itself dies anyway, it fails every association on its way out.

use std::future::Future;
use std::io;
use std::net::UdpSocket;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use async_io::{Async, Timer};
use bytes::Bytes;

use super::endpoint::{Shared, State};
use crate::transport::Task;

/// Room for any UDP datagram.
const MAX_DATAGRAM: usize = 65_535;
/// Datagrams received per round before the associations get to run.
const RECV_BATCH: usize = 64;
/// Rounds of receive / process / send per wake-up before yielding to other tasks.
const ROUNDS: usize = 16;

/// The future that does the endpoint's I/O. Ends once nothing listens and every association is
/// gone.
pub(super) struct Driver {
    shared: Arc<Shared>,
    timer: Timer,
    recv_buf: Box<[u8]>,
    /// Finished (or failed everything): nothing is left to do, even on drop.
    done: bool,
}

impl Driver {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            timer: Timer::never(),
            recv_buf: vec![0; MAX_DATAGRAM].into_boxed_slice(),
            done: false,
        }
    }

    /// Sends queued datagrams until done or the socket would block (then registered for
    /// writability). A datagram the kernel refuses for another reason is dropped: SCTP
    /// retransmits, as for any loss.
    fn send(socket: &Async<UdpSocket>, state: &mut State, cx: &mut Context<'_>) {
        while let Some((to, packet)) = state.outgoing.front() {
            match socket.get_ref().send_to(packet, *to) {
                Ok(_) => {
                    state.outgoing.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match socket.poll_writable(cx) {
                        Poll::Ready(Ok(())) => continue,
                        Poll::Ready(Err(e)) => {
                            log::warn!("SCTP: UDP socket failed: {e}");
                            state.failed = Some(e.kind());
                            state.outgoing.clear();
                        }
                        Poll::Pending => {}
                    }
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("SCTP: sending to {to} failed: {e}");
                    state.outgoing.pop_front();
                }
            }
        }
    }

    /// One wake-up's work: receive, process, send, for up to [`ROUNDS`] rounds.
    fn run(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let shared = self.shared.clone();
        let mut state = shared.lock();
        #[cfg(test)]
        if std::mem::take(&mut state.panic_driver) {
            panic!("injected for a test");
        }
        if !state
            .driver_waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            state.driver_waker = Some(cx.waker().clone());
        }
        for _ in 0..ROUNDS {
            state.dirty = false;
            state.backlogged = false;
            let now = Instant::now();
            let received = self.receive(&mut state, cx, now);
            let next = state.process(now);
            Self::send(&shared.socket, &mut state, cx);
            if state.done() {
                log::trace!("SCTP: endpoint driver on {} done", shared.local_addr);
                return Poll::Ready(());
            }
            // Go round again if input is waiting, a stream asked for it, or an association
            // could not queue everything and the socket has taken the queue meanwhile.
            let busy = received == RECV_BATCH
                || state.dirty
                || (state.backlogged && state.outgoing.is_empty());
            match next {
                Some(t) if t <= Instant::now() => continue,
                _ if busy => continue,
                Some(t) => self.timer.set_at(t),
                None => self.timer = Timer::never(),
            }
            if Pin::new(&mut self.timer).poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        // Still busy after a full budget: let other tasks run, then go on.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Receives up to a batch of datagrams. Returns how many; when it returns fewer than a
    /// batch the socket is registered for readability.
    fn receive(&mut self, state: &mut State, cx: &mut Context<'_>, now: Instant) -> usize {
        let mut received = 0;
        let mut errors = 0;
        while received < RECV_BATCH {
            match self.shared.socket.get_ref().recv_from(&mut self.recv_buf) {
                Ok((n, from)) => {
                    received += 1;
                    let data = Bytes::copy_from_slice(&self.recv_buf[..n]);
                    state.handle_datagram(now, from, data);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match self.shared.socket.poll_readable(cx) {
                        Poll::Ready(Ok(())) => continue,
                        Poll::Ready(Err(e)) => {
                            log::warn!("SCTP: UDP socket failed: {e}");
                            state.failed = Some(e.kind());
                        }
                        Poll::Pending => {}
                    }
                    break;
                }
                // Only a connected (client) socket reports this: the peer's port is closed.
                Err(e)
                    if e.kind() == io::ErrorKind::ConnectionRefused && state.connected_socket =>
                {
                    log::debug!("SCTP: peer port unreachable");
                    state.refused = true;
                }
                // Other ICMP errors and the like: the association notices through its timers.
                Err(e) => {
                    log::trace!("SCTP: receive error: {e}");
                    errors += 1;
                    if errors > RECV_BATCH {
                        cx.waker().wake_by_ref();
                        break;
                    }
                }
            }
        }
        received
    }
}

impl Future for Driver {
    type Output = ();

    /// Runs [`Driver::run`] under `catch_unwind`: per-association work is contained there
    /// already, so a panic here is in the driver's own code, and the endpoint's state cannot be
    /// trusted any more. Every association and the listener then fail with an error.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(());
        }
        let polled = catch_unwind(AssertUnwindSafe(|| this.run(cx)));
        match polled {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(())) => {
                this.done = true;
                Poll::Ready(())
            }
            Err(_) => {
                log::error!(
                    "SCTP: the endpoint driver on {} crashed; failing its associations",
                    this.shared.local_addr
                );
                this.done = true;
                this.shared.lock().fail_all();
                Poll::Ready(())
            }
        }
    }
}

impl Drop for Driver {
    /// A driver dropped before its work was done (its runtime shut down, or its task was
    /// cancelled) fails everything that waits for it.
    fn drop(&mut self) {
        if !self.done {
            log::warn!(
                "SCTP: the endpoint driver on {} was dropped before its work was done \
                 (its executor stopped?); failing its associations",
                self.shared.local_addr
            );
            self.shared.lock().fail_all();
        }
    }
}

/// Runs a UDP port's driver on a thread of its own, on the `async-io` reactor, until the port
/// closes: the convenience `connect`/`bind` use (see the module docs for why it is the default).
/// It needs no executor, so SCTP works the same under any runtime (or none).
pub(super) fn run_on_own_thread(driver: Task) -> io::Result<()> {
    std::thread::Builder::new()
        .name("connect-sctp".into())
        .spawn(move || async_io::block_on(driver))
        .map(drop)
}
