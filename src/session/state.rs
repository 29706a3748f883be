//! Sans-IO state of an open session: heartbeats, dead-peer detection and the close handshake.
//!
//! Quinn style: the driver pushes in what happened ([`SessionState::handle_frame`],
//! [`SessionState::handle_timeout`], [`SessionState::on_sent`], ...) with the current time and
//! pulls out what to do ([`SessionState::poll_transmit`] for control frames to send,
//! [`SessionState::poll_timeout`] for when to call back, [`SessionState::end`] once it is over).
//! Nothing here reads a clock or touches I/O, so tests step it with made-up instants.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use prost::{Message, Name};
use prost_types::Any;

use super::SessionEnd;
#[cfg(any(test, feature = "fuzzing"))]
use crate::codec::type_name;
use crate::connection::Frame;
use crate::error::quoted;
use crate::proto::v1::{Close, CloseOk, Ping, Pong, ReasonCode};

/// Prefix of the full names of the session layer's control messages.
pub(crate) const CONTROL_PACKAGE: &str = "connect.v1.";

/// Control frames a session queues on the peer's behalf at most: a Pong, a Ping, a Close and a
/// CloseOk.
pub(crate) const MAX_QUEUED_CONTROL_FRAMES: usize = 4;

/// Pings a peer may send while our Pong to it cannot be written before the driver stops reading
/// from it. A peer that pings on its heartbeat sends one per interval and is declared dead long
/// before it gets here; only a peer that pings without reading does.
pub(crate) const MAX_PINGS_WHILE_PONG_PENDING: u32 = 16;

/// Where the session is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Application messages flow both ways.
    Open,
    /// This side sent `Close` and waits for `CloseOk`; it still receives.
    Closing,
    /// The peer sent `Close`: the application reads what came before it, then the end; the
    /// driver sends what the application sends until then, then [`SessionState::ack_close`]
    /// sends `CloseOk`.
    PeerClosed,
    /// The close handshake is done: flush, shut the write side down, read to the end of stream.
    Finishing,
}

/// Heartbeat, liveness and close state of one open session.
#[derive(Debug)]
pub(crate) struct SessionState {
    heartbeat: Option<Duration>,
    /// Silence after which the peer counts as dead: `heartbeat * missed_heartbeats`.
    dead_after: Option<Duration>,
    close_timeout: Duration,
    last_sent: Instant,
    last_recv: Instant,
    next_ping_id: u64,
    ping_in_flight: Option<(u64, Instant)>,
    rtt: Option<Duration>,
    /// Control frames to send: at most one Ping, one Close and one CloseOk at a time (each
    /// guarded by the phase), so at most [`MAX_QUEUED_CONTROL_FRAMES`].
    transmit: VecDeque<Any>,
    /// The id of the latest Ping not answered yet. Pongs are coalesced: only the latest matters
    /// to the peer, so a Ping flood costs one pending Pong, not one per Ping.
    pong_due: Option<u64>,
    /// Pings received since our last Pong was handed to the driver.
    pings_while_pong_pending: u32,
    /// Pings answered by a later Pong instead of their own, over the session's life.
    pongs_coalesced: u64,
    /// The peer sent `Close`: a second one is a protocol violation, not another CloseOk.
    peer_sent_close: bool,
    phase: Phase,
    /// Deadline of the close handshake (`Closing`, `PeerClosed`) or of the final end of stream
    /// (`Finishing`).
    close_deadline: Option<Instant>,
    /// How the session ends once the close handshake has finished.
    outcome: Option<SessionEnd>,
    end: Option<SessionEnd>,
}

/// A timeout this long is "never" (a century): longer settings are lowered to it.
const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

impl SessionState {
    pub(crate) fn new(
        heartbeat: Option<Duration>,
        missed_heartbeats: u32,
        close_timeout: Duration,
        now: Instant,
    ) -> Self {
        Self {
            heartbeat,
            dead_after: heartbeat.map(|h| h * missed_heartbeats.max(1)),
            // `Duration::MAX` means "never": kept where `now + close_timeout` cannot overflow.
            close_timeout: close_timeout.min(NEVER),
            last_sent: now,
            last_recv: now,
            next_ping_id: 1,
            ping_in_flight: None,
            rtt: None,
            transmit: VecDeque::new(),
            pong_due: None,
            pings_while_pong_pending: 0,
            pongs_coalesced: 0,
            peer_sent_close: false,
            phase: Phase::Open,
            close_deadline: None,
            outcome: None,
            end: None,
        }
    }

    pub(crate) fn phase(&self) -> &Phase {
        &self.phase
    }

    /// Latest measured round-trip time (from a `Ping` to its `Pong`).
    pub(crate) fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// How the session will end once the close handshake (under way) completes.
    pub(crate) fn outcome(&self) -> Option<&SessionEnd> {
        self.outcome.as_ref()
    }

    /// Set once the session is over; the driver then stops.
    pub(crate) fn end(&self) -> Option<&SessionEnd> {
        self.end.as_ref()
    }

    /// Ends the session now (transport failure, ...), unless it has already ended.
    pub(crate) fn fail(&mut self, end: SessionEnd) {
        if self.end.is_none() {
            self.end = Some(end);
        }
    }

    /// A frame arrived. Returns it back if it is an application message for the application;
    /// control messages are consumed here.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn handle_frame(&mut self, any: Any, now: Instant) -> Option<Any> {
        self.handle_parts(type_name(&any.type_url).as_bytes(), &any.value, now)
            .then_some(any)
    }

    /// `handle_frame` for a frame seen in place (the driver's path: no
    /// `Any` is built for it).
    pub(crate) fn handle_view(&mut self, frame: Frame, now: Instant) -> Option<Frame> {
        self.handle_parts(frame.type_name_bytes(), frame.value(), now)
            .then_some(frame)
    }

    /// A frame of type `name` (UTF-8, checked when the frame was made) with the encoded message
    /// `value` arrived. Returns whether it is an application message for the application;
    /// control messages are consumed here. An application message is recognised on the name's
    /// bytes: turning them back into a `&str` costs a UTF-8 check per message, which only the
    /// rare control frames and violations pay.
    fn handle_parts(&mut self, name: &[u8], value: &[u8], now: Instant) -> bool {
        self.last_recv = now;
        let is_control = name.starts_with(CONTROL_PACKAGE.as_bytes());
        let name = || std::str::from_utf8(name).unwrap_or_default();
        if !is_control {
            return match self.phase {
                Phase::Open | Phase::Closing => true,
                // After its Close the peer may send nothing but Pong and CloseOk.
                Phase::PeerClosed | Phase::Finishing => {
                    self.violation(format!(
                        "application message {} after Close",
                        quoted(name())
                    ));
                    false
                }
            };
        }
        let name = name();
        if self.phase == Phase::Finishing {
            // Our CloseOk is out or theirs is in: nothing more matters.
            log::debug!("ignoring {} after the close handshake", quoted(name));
            return false;
        }
        if name == Ping::full_name() {
            match Ping::decode(value) {
                // Answer even while closing: the peer may be measuring liveness.
                Ok(ping) => {
                    if self.pong_due.replace(ping.id).is_some() {
                        self.pongs_coalesced += 1;
                    }
                    self.pings_while_pong_pending = self.pings_while_pong_pending.saturating_add(1);
                }
                Err(e) => self.violation(format!("bad Ping: {e}")),
            }
        } else if name == Pong::full_name() {
            match Pong::decode(value) {
                Ok(pong) => {
                    if let Some((id, sent)) = self.ping_in_flight {
                        if id == pong.id {
                            self.rtt = Some(now.saturating_duration_since(sent));
                            self.ping_in_flight = None;
                        }
                    }
                }
                Err(e) => self.violation(format!("bad Pong: {e}")),
            }
        } else if name == Close::full_name() {
            match Close::decode(value) {
                Ok(close) => self.peer_close(close, now),
                Err(e) => self.violation(format!("bad Close: {e}")),
            }
        } else if name == CloseOk::full_name() {
            if self.phase == Phase::Closing {
                self.phase = Phase::Finishing;
                self.close_deadline = Some(now + self.close_timeout);
            } else {
                self.violation("CloseOk without a Close".into());
            }
        } else {
            self.violation(format!("unexpected control message {}", quoted(name)));
        }
        false
    }

    fn peer_close(&mut self, close: Close, now: Instant) {
        if std::mem::replace(&mut self.peer_sent_close, true) {
            // Whatever our phase: one Close per session, so one CloseOk at most.
            self.violation("second Close".into());
            return;
        }
        let code = ReasonCode::try_from(close.code).unwrap_or(ReasonCode::Unspecified);
        match self.phase {
            Phase::Open => {
                log::debug!("peer closes: {code:?} {}", quoted(&close.reason));
                self.outcome = Some(SessionEnd::ClosedByPeer {
                    code,
                    reason: close.reason,
                });
                self.phase = Phase::PeerClosed;
                self.close_deadline = Some(now + self.close_timeout);
            }
            // Both sides closed at once: acknowledge theirs and keep waiting for our CloseOk.
            Phase::Closing => self.transmit.push_back(pack(&CloseOk {})),
            // A Close in these phases is a second one (caught above); `Finishing` after our
            // own Close ignores control frames before getting here.
            Phase::PeerClosed | Phase::Finishing => self.violation("second Close".into()),
        }
    }

    /// The application is done after the peer's `Close` (it has seen the end of its reader,
    /// dropped it, or closed) and the driver has sent what it queued: acknowledge.
    pub(crate) fn ack_close(&mut self, now: Instant) {
        if self.phase == Phase::PeerClosed {
            self.transmit.push_back(pack(&CloseOk {}));
            self.phase = Phase::Finishing;
            self.close_deadline = Some(now + self.close_timeout);
        }
    }

    /// The application closes the session. Everything it queued before is already handed to the
    /// connection writer, so the `Close` goes out after it.
    pub(crate) fn close(&mut self, code: ReasonCode, reason: String, now: Instant) {
        if self.phase != Phase::Open {
            return;
        }
        self.transmit.push_back(pack(&Close {
            code: code as i32,
            reason: reason.clone(),
        }));
        self.outcome = Some(SessionEnd::Closed { code, reason });
        self.phase = Phase::Closing;
        self.close_deadline = Some(now + self.close_timeout);
    }

    /// The transport's read side ended.
    pub(crate) fn handle_eof(&mut self) {
        if self.phase == Phase::Finishing {
            self.finish();
        } else {
            self.fail(SessionEnd::Disconnected);
        }
    }

    fn finish(&mut self) {
        let outcome = self.outcome.take().unwrap_or(SessionEnd::Disconnected);
        self.fail(outcome);
    }

    fn violation(&mut self, reason: String) {
        log::debug!("session protocol violation: {reason}");
        self.fail(SessionEnd::ProtocolViolation { reason });
    }

    /// An application message was handed to the connection writer.
    pub(crate) fn on_sent(&mut self, now: Instant) {
        self.last_sent = now;
    }

    /// The application is not taking received messages, so the driver is not reading: the
    /// peer's silence is not the peer's fault.
    pub(crate) fn on_receive_blocked(&mut self, now: Instant) {
        self.last_recv = now;
    }

    /// Next control frame to send, if any.
    pub(crate) fn poll_transmit(&mut self) -> Option<Any> {
        if let Some(id) = self.pong_due.take() {
            self.pings_while_pong_pending = 0;
            return Some(pack(&Pong { id }));
        }
        self.transmit.pop_front()
    }

    /// Whether a control frame waits to be sent.
    pub(crate) fn wants_transmit(&self) -> bool {
        self.pong_due.is_some() || !self.transmit.is_empty()
    }

    /// Whether the driver should stop reading from the peer until our replies to it are out:
    /// the peer keeps pinging but does not take our Pongs (backpressure, as TCP does it).
    pub(crate) fn replies_backed_up(&self) -> bool {
        self.pong_due.is_some() && self.pings_while_pong_pending >= MAX_PINGS_WHILE_PONG_PENDING
    }

    /// Control frames waiting to be sent, and their encoded bytes (type URL and value).
    pub(crate) fn queued_control(&self) -> (usize, usize) {
        let pong = self
            .pong_due
            .map_or(0, |id| Pong::type_url().len() + Pong { id }.encoded_len());
        let bytes = self
            .transmit
            .iter()
            .map(|any| any.type_url.len() + any.value.len())
            .sum::<usize>();
        (
            self.transmit.len() + usize::from(self.pong_due.is_some()),
            bytes + pong,
        )
    }

    /// Pings answered by a later Pong instead of their own, so far.
    pub(crate) fn pongs_coalesced(&self) -> u64 {
        self.pongs_coalesced
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        if self.end.is_some() {
            return None;
        }
        let mut next = self.close_deadline;
        if self.phase != Phase::Finishing {
            let mut earliest = |at: Option<Instant>| {
                next = match (next, at) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            };
            earliest(self.heartbeat.map(|h| self.last_sent + h));
            earliest(self.dead_after.map(|d| self.last_recv + d));
        }
        next
    }

    /// Time has passed: send a heartbeat, give up on a silent peer or on a close handshake.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.end.is_some() {
            return;
        }
        if let Some(deadline) = self.close_deadline {
            if now >= deadline {
                if self.phase == Phase::Finishing {
                    // The handshake is complete; only the peer's end of stream is missing.
                    log::debug!("no end of stream after the close handshake; finishing anyway");
                    self.finish();
                } else {
                    self.fail(SessionEnd::CloseTimeout);
                }
                return;
            }
        }
        if self.phase == Phase::Finishing {
            return;
        }
        if let Some(dead_after) = self.dead_after {
            let silent_for = now.saturating_duration_since(self.last_recv);
            if silent_for >= dead_after {
                self.fail(SessionEnd::PeerUnresponsive { silent_for });
                return;
            }
        }
        if let Some(heartbeat) = self.heartbeat {
            if now >= self.last_sent + heartbeat {
                // With a control frame still waiting (the transport is not taking frames), a
                // Ping would only queue up behind it.
                if !self.wants_transmit() {
                    let id = self.next_ping_id;
                    self.next_ping_id += 1;
                    self.ping_in_flight = Some((id, now));
                    self.transmit.push_back(pack(&Ping { id }));
                }
                // Counts as sent now either way, so the next deadline is one interval ahead:
                // the driver is never asked to handle a deadline that has already passed.
                self.last_sent = now;
            }
        }
    }
}

/// Packs a control message into an `Any` with its standard type URL.
pub(crate) use crate::codec::pack;

#[cfg(test)]
mod tests {
    use super::*;

    const HB: Duration = Duration::from_millis(100);

    fn state(now: Instant) -> SessionState {
        SessionState::new(Some(HB), 3, Duration::from_secs(1), now)
    }

    fn unpack<M: Message + Name + Default>(any: &Any) -> M {
        assert_eq!(type_name(&any.type_url), M::full_name());
        M::decode(any.value.as_slice()).unwrap()
    }

    #[test]
    fn pings_when_idle_and_measures_rtt() {
        let t0 = Instant::now();
        let mut s = state(t0);
        assert_eq!(s.poll_timeout(), Some(t0 + HB));
        s.handle_timeout(t0 + HB);
        let ping: Ping = unpack(&s.poll_transmit().unwrap());
        assert!(s.poll_transmit().is_none());
        // The peer answers 7 ms later.
        let pong = pack(&Pong { id: ping.id });
        assert!(s
            .handle_frame(pong, t0 + HB + Duration::from_millis(7))
            .is_none());
        assert_eq!(s.rtt(), Some(Duration::from_millis(7)));
        // Next heartbeat one interval after the ping.
        assert_eq!(s.poll_timeout(), Some(t0 + 2 * HB));
        assert!(s.end().is_none());
    }

    #[test]
    fn answering_pings_does_not_postpone_ours() {
        let t0 = Instant::now();
        let mut s = state(t0);
        s.handle_frame(pack(&Ping { id: 9 }), t0 + HB / 2);
        let _: Pong = unpack(&s.poll_transmit().unwrap());
        s.handle_timeout(t0 + HB);
        let _: Ping = unpack(&s.poll_transmit().unwrap());
    }

    #[test]
    fn deadlines_always_move_past_now() {
        // A driver that handles every deadline must never be handed one that has passed
        // already, or it would spin; in particular while the transport takes no frames.
        let t0 = Instant::now();
        let mut s = state(t0);
        let mut now = t0;
        for step in 0..50u32 {
            if step % 2 == 0 {
                // The peer keeps talking, but our Pings are never taken off the queue.
                s.handle_frame(pack(&Pong { id: 0 }), now);
            }
            let next = s.poll_timeout().unwrap();
            assert!(next > now, "step {step}");
            now = next;
            s.handle_timeout(now);
            if s.end().is_some() {
                break;
            }
            assert!(s.poll_timeout().unwrap() > now, "step {step}");
        }
        assert!(s.wants_transmit());
    }

    #[test]
    fn sending_postpones_heartbeats() {
        let t0 = Instant::now();
        let mut s = state(t0);
        s.on_sent(t0 + HB / 2);
        s.handle_timeout(t0 + HB);
        assert!(s.poll_transmit().is_none());
        assert_eq!(s.poll_timeout(), Some(t0 + HB + HB / 2));
    }

    #[test]
    fn answers_pings_and_passes_application_messages() {
        let t0 = Instant::now();
        let mut s = state(t0);
        assert!(s.handle_frame(pack(&Ping { id: 42 }), t0).is_none());
        let pong: Pong = unpack(&s.poll_transmit().unwrap());
        assert_eq!(pong.id, 42);
        let app = Any {
            type_url: "type.googleapis.com/x.App".into(),
            value: vec![1],
        };
        assert_eq!(s.handle_frame(app.clone(), t0), Some(app));
    }

    #[test]
    fn silent_peer_is_unresponsive_after_the_configured_intervals() {
        let t0 = Instant::now();
        let mut s = state(t0);
        let mut now = t0;
        // Keep stepping to each deadline; we send heartbeats, the peer never answers.
        while s.end().is_none() {
            now = s.poll_timeout().unwrap();
            s.handle_timeout(now);
            while s.poll_transmit().is_some() {}
        }
        assert_eq!(now, t0 + 3 * HB);
        assert!(matches!(
            s.end(),
            Some(SessionEnd::PeerUnresponsive { silent_for }) if *silent_for == 3 * HB
        ));
    }

    #[test]
    fn anything_received_keeps_the_peer_alive() {
        let t0 = Instant::now();
        let mut s = state(t0);
        for i in 1..=20 {
            let now = t0 + HB * i;
            s.handle_frame(pack(&Ping { id: u64::from(i) }), now);
            s.handle_timeout(now);
            while s.poll_transmit().is_some() {}
        }
        assert!(s.end().is_none());
    }

    #[test]
    fn local_close_waits_for_close_ok_then_ends_at_end_of_stream() {
        let t0 = Instant::now();
        let mut s = state(t0);
        s.close(ReasonCode::Normal, "bye".into(), t0);
        let close: Close = unpack(&s.poll_transmit().unwrap());
        assert_eq!((close.code, close.reason.as_str()), (1, "bye"));
        assert_eq!(s.phase(), &Phase::Closing);
        // Messages the peer sent before seeing our Close still reach the application.
        let app = Any {
            type_url: "type.googleapis.com/x.App".into(),
            value: vec![],
        };
        assert!(s.handle_frame(app, t0).is_some());
        s.handle_frame(pack(&CloseOk {}), t0);
        assert_eq!(s.phase(), &Phase::Finishing);
        assert!(s.end().is_none());
        s.handle_eof();
        assert!(matches!(
            s.end(),
            Some(SessionEnd::Closed { code: ReasonCode::Normal, reason }) if reason == "bye"
        ));
    }

    #[test]
    fn close_without_close_ok_times_out() {
        let t0 = Instant::now();
        let mut s = SessionState::new(None, 3, Duration::from_secs(1), t0);
        s.close(ReasonCode::GoingAway, String::new(), t0);
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(1)));
        s.handle_timeout(t0 + Duration::from_secs(1));
        assert!(matches!(s.end(), Some(SessionEnd::CloseTimeout)));
    }

    #[test]
    fn peer_close_is_acknowledged_after_the_queue_is_drained() {
        let t0 = Instant::now();
        let mut s = state(t0);
        let close = Close {
            code: ReasonCode::GoingAway as i32,
            reason: "restart".into(),
        };
        s.handle_frame(pack(&close), t0);
        assert_eq!(s.phase(), &Phase::PeerClosed);
        assert!(s.poll_transmit().is_none(), "no CloseOk before the drain");
        s.ack_close(t0);
        let _: CloseOk = unpack(&s.poll_transmit().unwrap());
        s.handle_eof();
        assert!(matches!(
            s.end(),
            Some(SessionEnd::ClosedByPeer { code: ReasonCode::GoingAway, reason }) if reason == "restart"
        ));
    }

    #[test]
    fn simultaneous_close() {
        let t0 = Instant::now();
        let mut s = state(t0);
        s.close(ReasonCode::Normal, String::new(), t0);
        s.poll_transmit().unwrap();
        s.handle_frame(pack(&Close::default()), t0);
        let _: CloseOk = unpack(&s.poll_transmit().unwrap());
        s.handle_frame(pack(&CloseOk {}), t0);
        s.handle_eof();
        assert!(matches!(s.end(), Some(SessionEnd::Closed { .. })));
    }

    #[test]
    fn protocol_violations_end_the_session() {
        let t0 = Instant::now();
        for frame in [
            pack(&crate::proto::v1::Hello::default()),
            pack(&CloseOk {}),
            Any {
                type_url: "type.googleapis.com/connect.v1.Ping".into(),
                value: vec![0xff],
            },
        ] {
            let mut s = state(t0);
            s.handle_frame(frame, t0);
            assert!(matches!(
                s.end(),
                Some(SessionEnd::ProtocolViolation { .. })
            ));
        }
    }

    proptest::proptest! {
        /// Whatever a peer sends, in whatever order, the state machine neither panics nor
        /// lets a control message through to the application.
        #[test]
        fn arbitrary_frames_never_panic(
            frames in proptest::collection::vec(
                (0usize..10, proptest::collection::vec(proptest::prelude::any::<u8>(), 0..12)),
                0..40,
            ),
            close_first in proptest::prelude::any::<bool>(),
        ) {
            const NAMES: [&str; 10] = [
                "Hello", "Welcome", "Refuse", "Ping", "Pong", "Close", "CloseOk", "Unknown",
                "", "x.App",
            ];
            let t0 = Instant::now();
            let mut s = state(t0);
            if close_first {
                s.close(ReasonCode::Normal, String::new(), t0);
            }
            for (i, (name, value)) in frames.into_iter().enumerate() {
                let now = t0 + Duration::from_millis(i as u64);
                let type_url = match NAMES[name] {
                    "x.App" => "type.googleapis.com/x.App".to_owned(),
                    n => format!("type.googleapis.com/connect.v1.{n}"),
                };
                if let Some(app) = s.handle_frame(Any { type_url, value }, now) {
                    proptest::prop_assert!(!app.type_url.contains("connect.v1."));
                }
                s.handle_timeout(now);
                s.ack_close(now);
                proptest::prop_assert!(s.queued_control().0 <= MAX_QUEUED_CONTROL_FRAMES);
                while s.poll_transmit().is_some() {}
                if s.end().is_some() {
                    break;
                }
            }
        }
    }

    #[test]
    fn a_ping_flood_owes_one_pong_with_the_latest_id() {
        let t0 = Instant::now();
        let mut s = state(t0);
        for id in 1..=10_000 {
            s.handle_frame(pack(&Ping { id }), t0);
            assert!(s.queued_control().0 <= MAX_QUEUED_CONTROL_FRAMES);
        }
        assert_eq!(s.queued_control().0, 1);
        assert_eq!(s.pongs_coalesced(), 9_999);
        assert!(s.replies_backed_up(), "the driver stops reading");
        let pong: Pong = unpack(&s.poll_transmit().unwrap());
        assert_eq!(pong.id, 10_000);
        assert!(s.poll_transmit().is_none());
        assert!(
            !s.replies_backed_up(),
            "reading resumes once the Pong is out"
        );
    }

    #[test]
    fn a_second_close_is_a_violation_in_every_phase() {
        let t0 = Instant::now();
        for we_closed_first in [false, true] {
            let mut s = state(t0);
            if we_closed_first {
                s.close(ReasonCode::Normal, String::new(), t0);
            }
            s.handle_frame(pack(&Close::default()), t0);
            assert!(s.end().is_none());
            s.handle_frame(pack(&Close::default()), t0);
            assert!(
                matches!(s.end(), Some(SessionEnd::ProtocolViolation { reason }) if reason == "second Close"),
                "{:?}",
                s.end()
            );
            let mut close_oks = 0;
            while let Some(any) = s.poll_transmit() {
                close_oks += usize::from(type_name(&any.type_url) == CloseOk::full_name());
            }
            assert!(close_oks <= 1);
        }
    }

    #[test]
    fn peer_supplied_names_in_violations_are_escaped_and_capped() {
        let t0 = Instant::now();
        let mut s = state(t0);
        let name = format!("connect.v1.{}", "x\n".repeat(10_000));
        s.handle_frame(
            Any {
                type_url: name,
                value: vec![],
            },
            t0,
        );
        let Some(SessionEnd::ProtocolViolation { reason }) = s.end() else {
            panic!("{:?}", s.end());
        };
        assert!(reason.len() < 300 && !reason.contains('\n'), "{reason}");
    }

    #[test]
    fn end_of_stream_without_close_is_a_disconnect() {
        let mut s = state(Instant::now());
        s.handle_eof();
        assert!(matches!(s.end(), Some(SessionEnd::Disconnected)));
    }
}
