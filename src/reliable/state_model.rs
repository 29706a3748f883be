//! A model-based property test of the reliable protocol state: two [`StreamState`]s wired to
//! each other in memory (no I/O, a made-up clock), driven by random operations: sends (some
//! refused by the receiver), link steps, frame deliveries, the applications taking messages,
//! cuts followed by honest resumes, dishonest resumes, and server restarts. After every step
//! each piece of state is within its bound and the events are consistent (confirmations only
//! grow, only refused messages are reported refused, and a message is confirmed only once the
//! peer's application has taken or refused it); at the end, after the links drain,
//! everything sent was delivered once and in order (at least once across a restart), every
//! message confirmed, every refusal reported, and everything retained is freed.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

/// The state with `Any`s for messages both ways.
type StreamState = super::StreamState<Any, Any>;

/// A frame on the in-memory wire.
#[derive(Clone, Debug)]
enum Frame {
    Message(Any),
    Ack(u64),
    Nack(Nack),
}

#[derive(Clone, Copy, Debug)]
enum Op {
    /// Side 0 (client) or 1 (server) application sends; `refused`: a type the peer refuses.
    Send { side: usize, refused: bool },
    /// One link step of a side: write what it may (`force`: the clock first moves past the
    /// ack delay).
    Write { side: usize, force: bool },
    /// Up to `n` frames towards `side` are read, as far as the receiver has room.
    Read { side: usize, n: usize },
    /// The application of `side` takes up to `n` messages.
    Take { side: usize, n: usize },
    /// The connection drops mid-way; a new one resumes with honest counts.
    Cut,
    /// A resume with counts no honest peer sends: refused, nothing changes.
    Lie { side: usize, kind: u8, by: u64 },
    /// The server loses everything; the client starts a new stream.
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let side = 0usize..2;
    prop_oneof![
        4 => (side.clone(), prop::bool::weighted(0.2))
            .prop_map(|(side, refused)| Op::Send { side, refused }),
        4 => (side.clone(), any::<bool>()).prop_map(|(side, force)| Op::Write { side, force }),
        4 => (side.clone(), 1usize..8).prop_map(|(side, n)| Op::Read { side, n }),
        3 => (side.clone(), 1usize..8).prop_map(|(side, n)| Op::Take { side, n }),
        1 => Just(Op::Cut),
        1 => (side, 0u8..3, 0u64..3).prop_map(|(side, kind, by)| Op::Lie { side, kind, by }),
        1 => Just(Op::Restart),
    ]
}

fn config() -> ReliableConfig {
    let accepts: super::super::Accepts = std::sync::Arc::new(|url: &str| !url.ends_with(".X"));
    ReliableConfig::new()
        .with_max_messages(8)
        .with_max_bytes(200)
        .with_receive_buffer(4, 120)
        .with_ack_every(3)
        .with_accepts(accepts)
}

struct Side {
    core: StreamState,
    /// Application messages sent, by number (their value), and whether the peer refuses them.
    sent: Vec<bool>,
    /// Numbers the application took, per stream (a restart starts a new list).
    got: Vec<Vec<u64>>,
    /// From the state's events: everything below is confirmed.
    confirmed_below: u64,
    /// From the state's events: numbers of messages reported refused.
    refused: BTreeSet<u64>,
    /// Index in `sent` of the current state's message 0 (a restarted server starts over).
    first: usize,
}

struct World {
    sides: [Side; 2],
    /// `wires[i]`: frames towards side `i`.
    wires: [VecDeque<Frame>; 2],
    /// Server restarts so far.
    restarts: usize,
    /// Index in the server's `sent` of its current stream's first message (numbers go on
    /// across restarts, so that each is unique).
    server_stream_start: usize,
    /// The made-up clock.
    now: Instant,
}

fn message(n: u64, refused: bool) -> Any {
    Any {
        type_url: if refused { "t/x.X" } else { "t/x.M" }.into(),
        value: n.to_le_bytes().to_vec(),
    }
}

fn number(any: &Any) -> u64 {
    u64::from_le_bytes(any.value.as_slice().try_into().unwrap())
}

impl World {
    fn new() -> Self {
        let mut world = World {
            sides: [0, 1].map(|_| Side {
                core: StreamState::new(config()),
                sent: Vec::new(),
                got: vec![Vec::new()],
                confirmed_below: 0,
                refused: BTreeSet::new(),
                first: 0,
            }),
            wires: [VecDeque::new(), VecDeque::new()],
            restarts: 0,
            server_stream_start: 0,
            now: Instant::now(),
        };
        world.exchange_windows();
        world
    }

    fn exchange_windows(&mut self) {
        for i in 0..2 {
            let (m, b) = self.sides[1 - i].core.window();
            self.sides[i].core.set_peer_window(m, b);
        }
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Send { side, refused } => {
                let s = &mut self.sides[side];
                let n = s.sent.len() as u64;
                if s.core.push(message(n, refused)).is_ok() {
                    s.sent.push(refused);
                }
            }
            Op::Write { side, force } => {
                let core = &mut self.sides[side].core;
                let wire = &mut self.wires[1 - side];
                core.handle_timeout(self.now);
                if force {
                    self.now += core.config.ack_delay + Duration::from_millis(1);
                    core.handle_timeout(self.now);
                }
                for _ in 0..16 {
                    let frame = match core.poll_transmit() {
                        Some(Transmit::Ack(n)) => Frame::Ack(n),
                        Some(Transmit::Nack(n)) => Frame::Nack(n),
                        Some(Transmit::Message(any)) => Frame::Message(any.clone()),
                        None => break,
                    };
                    wire.push_back(frame);
                }
            }
            Op::Read { side, n } => {
                for _ in 0..n {
                    let core = &mut self.sides[side].core;
                    if core.reading_paused() {
                        break;
                    }
                    let Some(frame) = self.wires[side].front() else {
                        break;
                    };
                    match frame {
                        Frame::Message(any) if !core.has_room(queued_len(any)) => break,
                        _ => {}
                    }
                    match self.wires[side].pop_front().unwrap() {
                        Frame::Message(any) => core.handle_message(any),
                        Frame::Ack(n) => core.handle_ack(n).unwrap(),
                        Frame::Nack(n) => core.handle_nack(n).unwrap(),
                    }
                }
            }
            Op::Take { side, n } => {
                for _ in 0..n {
                    let s = &mut self.sides[side];
                    // Messages of streams that ended with a restart come first: a message is
                    // stale if no more entries were popped than were stale.
                    let (stale, len) = (s.core.inbound_stale, s.core.inbound.len());
                    match s.core.take() {
                        Some(any) => {
                            assert!(!any.type_url.ends_with(".X"), "a refused message delivered");
                            let popped = len - s.core.inbound.len();
                            let stream = s.got.len() - 1 - usize::from(popped <= stale);
                            s.got[stream].push(number(&any));
                        }
                        None => break,
                    }
                }
            }
            Op::Cut => self.cut(),
            Op::Lie { side, kind, by } => {
                let peer = &self.sides[1 - side].core;
                let (received, acknowledged) = (peer.received(), peer.acknowledged());
                let core = &mut self.sides[side].core;
                let lie = match kind {
                    // More than we ever wrote on this stream.
                    0 => (core.stream_written - core.epoch + 1 + by, acknowledged),
                    // Below what the peer confirmed (if anything was confirmed).
                    1 if core.base > core.epoch => (
                        (core.base - core.epoch - 1).saturating_sub(by),
                        acknowledged,
                    ),
                    1 => return,
                    // More acknowledged than we ever took.
                    _ => (received, core.delivered + 1 + by),
                };
                let before = (core.progress(), core.next_write, core.retained_nacks());
                assert!(core.resume(lie.0, lie.1).is_err(), "{lie:?} accepted");
                let after = (core.progress(), core.next_write, core.retained_nacks());
                assert_eq!(before, after, "a refused resume changed the state");
            }
            Op::Restart => {
                self.wires = [VecDeque::new(), VecDeque::new()];
                self.sides[1].core = StreamState::new(config());
                self.sides[1].got.push(Vec::new());
                self.sides[1].confirmed_below = 0;
                self.sides[1].first = self.sides[1].sent.len();
                self.server_stream_start = self.sides[1].sent.len();
                self.sides[0].core.restart_stream();
                self.sides[0].got.push(Vec::new());
                self.restarts += 1;
                self.exchange_windows();
            }
        }
        self.check_events();
        self.check_bounds();
        self.check_confirmed_were_taken();
    }

    /// The connection drops: what is on the wire is lost; a new one resumes.
    fn cut(&mut self) {
        self.wires = [VecDeque::new(), VecDeque::new()];
        let counts = [0, 1].map(|i| {
            let c = &self.sides[i].core;
            (c.received(), c.acknowledged())
        });
        for i in 0..2 {
            let (received, acknowledged) = counts[1 - i];
            self.sides[i]
                .core
                .resume(received, acknowledged)
                .unwrap_or_else(|e| panic!("honest resume refused: {e}"));
        }
        self.exchange_windows();
    }

    /// Drains the states' events: confirmations only grow and never pass what was sent; only
    /// messages of a refused type are reported refused.
    fn check_events(&mut self) {
        for s in &mut self.sides {
            while let Some(event) = s.core.poll_event() {
                match event {
                    StreamEvent::Confirmed { below } => {
                        assert!(
                            below > s.confirmed_below,
                            "{below} after {}",
                            s.confirmed_below
                        );
                        assert!(s.first as u64 + below <= s.sent.len() as u64);
                        s.confirmed_below = below;
                    }
                    StreamEvent::Refused { seq, reason, .. } => {
                        let n = s.first as u64 + seq;
                        assert!(s.sent[n as usize], "message {n} was of an accepted type");
                        assert!(seq >= s.confirmed_below, "refused after it was confirmed");
                        assert_eq!(reason, NackReason::UnknownType);
                        s.refused.insert(n);
                    }
                }
            }
        }
    }

    fn check_bounds(&self) {
        for s in &self.sides {
            let c = &s.core;
            assert!(c.out.len() <= c.config.max_messages);
            assert!(c.out.len() <= 1 || c.out_bytes <= c.config.max_bytes);
            assert!(c.inbound.len() <= c.config.receive_messages);
            assert!(c.inbound.len() <= 1 || c.inbound_bytes <= c.config.receive_bytes);
            assert!(c.nacks.len() <= MAX_RETAINED_NACKS + MAX_UNSENT_NACKS);
            assert!(c.nack_bytes <= MAX_RETAINED_NACK_BYTES + MAX_UNSENT_NACKS * 200);
            assert!(c.events.is_empty(), "drained after every step");
        }
        // Each application takes, per stream, increasing numbers without repeats.
        for s in &self.sides {
            for got in &s.got {
                assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
            }
        }
    }

    /// A confirmation means the peer's application took the message (or refused it), which
    /// is what `send_confirmed` promises; not that the peer's link or queue holds it. Checked
    /// while no restart renumbered the streams.
    fn check_confirmed_were_taken(&self) {
        if self.restarts > 0 {
            return;
        }
        for side in 0..2 {
            let (sender, receiver) = (&self.sides[side], &self.sides[1 - side]);
            for n in 0..sender.confirmed_below {
                assert!(
                    sender.sent[n as usize] || receiver.got[0].contains(&n),
                    "message {n} confirmed before the application took it"
                );
            }
        }
    }

    /// Runs the links until nothing moves (bounded).
    fn drain(&mut self) {
        for _ in 0..10_000 {
            let before = self.fingerprint();
            for side in 0..2 {
                self.step(Op::Write { side, force: true });
                self.step(Op::Read { side, n: 64 });
                self.step(Op::Take { side, n: 64 });
            }
            if self.fingerprint() == before {
                return;
            }
        }
        panic!("the links do not settle");
    }

    fn fingerprint(&self) -> Vec<usize> {
        let mut f = vec![self.wires[0].len(), self.wires[1].len()];
        for s in &self.sides {
            f.push(s.core.out.len());
            f.push(s.core.inbound.len());
            f.push(s.got.iter().map(Vec::len).sum());
            f.push(s.core.nacks_sent);
            f.push(s.core.delivered as usize);
            f.push(s.core.acked_sent as usize);
        }
        f
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn exactly_once_in_order_with_bounded_state(ops in prop::collection::vec(op(), 1..300)) {
        let mut world = World::new();
        for op in ops {
            world.step(op);
        }
        world.drain();
        // A last cut and resume: the peer then knows every Ack got through, and refusals
        // retained for it are freed.
        world.cut();
        world.drain();
        for side in 0..2 {
            let s = &world.sides[side];
            prop_assert!(s.core.out.is_empty(), "side {side}: all confirmed");
            prop_assert_eq!(s.first as u64 + s.confirmed_below, s.sent.len() as u64);
            prop_assert!(s.core.inbound.is_empty());
            prop_assert_eq!(s.core.retained_nacks(), (0, 0));
        }
        // Every refused message was reported refused (a client's message to a server that
        // died may have been refused by the dead one only).
        for side in 0..2 {
            let s = &world.sides[side];
            if side == 1 || world.restarts == 0 {
                let expected: BTreeSet<u64> = (s.first as u64..s.sent.len() as u64)
                    .filter(|&n| s.sent[n as usize])
                    .collect();
                prop_assert_eq!(&s.refused.range(s.first as u64..).copied().collect::<BTreeSet<_>>(), &expected);
            }
        }
        // Server to client: each stream of the server delivered once, in order, all of it
        // (a server restart loses what the dead server had queued; the new one starts over).
        let client_got = world.sides[0].got.last().unwrap();
        let server_sent = &world.sides[1].sent;
        let expected: Vec<u64> = (world.server_stream_start as u64..server_sent.len() as u64)
            .filter(|&n| !server_sent[n as usize])
            .collect();
        prop_assert_eq!(client_got, &expected);
        // Client to server: everything delivered, in order, exactly once without restarts;
        // with restarts, at least once (the dead server may have taken some) and the last
        // server took a contiguous tail.
        let client_sent = &world.sides[0].sent;
        let expected: Vec<u64> = (0..client_sent.len() as u64)
            .filter(|&n| !client_sent[n as usize])
            .collect();
        let server_got = &world.sides[1].got;
        if world.restarts == 0 {
            prop_assert_eq!(&server_got[0], &expected);
        } else {
            let last = server_got.last().unwrap();
            let tail = &expected[expected.len() - last.len()..];
            prop_assert_eq!(last.as_slice(), tail);
            let mut all: Vec<u64> = server_got.concat();
            all.sort_unstable();
            all.dedup();
            prop_assert_eq!(all, expected);
        }
    }
}
