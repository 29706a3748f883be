//! Two [`StreamState`]s wired to each other in memory and stepped by hand: no runtime, no
//! threads, no clock but made-up instants. Each test spells out what crosses the wire at each
//! step: sending within the peer's window and acknowledging, a cut and resume with
//! retransmission, a refusal with `Nack`, and a new stream after the server lost its state.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::*;

/// The state with `Any`s for messages both ways.
type StreamState = super::StreamState<Any, Any>;

/// A frame on the in-memory wire.
#[derive(Debug, PartialEq)]
enum Frame {
    Message(u8),
    Ack(u64),
    Nack(u64),
}

/// A client (side 0) and a server (side 1); `wires[i]` carries frames towards side `i`.
struct Pair {
    sides: [StreamState; 2],
    wires: [VecDeque<Frame>; 2],
}

const CLIENT: usize = 0;
const SERVER: usize = 1;

fn config() -> ReliableConfig {
    let accepts: super::super::Accepts = std::sync::Arc::new(|url: &str| url.ends_with(".M"));
    ReliableConfig::new()
        .with_ack_every(2)
        .with_ack_delay(Duration::from_millis(10))
        .with_receive_buffer(3, 1 << 20)
        .with_accepts(accepts)
}

fn msg(i: u8) -> Any {
    Any {
        type_url: "t/x.M".into(),
        value: vec![i],
    }
}

fn refused(i: u8) -> Any {
    Any {
        type_url: "t/x.Unknown".into(),
        value: vec![i],
    }
}

impl Pair {
    /// Both sides created and the `Resume` windows exchanged, as a new stream starts.
    fn new() -> Self {
        let mut pair = Pair {
            sides: [StreamState::new(config()), StreamState::new(config())],
            wires: [VecDeque::new(), VecDeque::new()],
        };
        pair.exchange_windows();
        pair
    }

    fn exchange_windows(&mut self) {
        for i in 0..2 {
            let (m, b) = self.sides[1 - i].window();
            self.sides[i].set_peer_window(m, b);
        }
    }

    /// Side `side` writes everything `poll_transmit` gives now.
    fn write(&mut self, side: usize) {
        while let Some(t) = self.sides[side].poll_transmit() {
            let frame = match t {
                Transmit::Message(any) => Frame::Message(any.value[0]),
                Transmit::Ack(n) => Frame::Ack(n),
                Transmit::Nack(n) => Frame::Nack(n.sequence),
            };
            self.wires[1 - side].push_back(frame);
        }
    }

    /// What is on the wire towards `side`.
    fn on_wire(&self, side: usize) -> Vec<&Frame> {
        self.wires[side].iter().collect()
    }

    /// Side `side` reads up to `n` frames.
    fn read(&mut self, side: usize, n: usize) {
        for _ in 0..n {
            let Some(frame) = self.wires[side].pop_front() else {
                return;
            };
            let state = &mut self.sides[side];
            match frame {
                Frame::Message(i) if i >= 100 => state.handle_message(refused(i)),
                Frame::Message(i) => state.handle_message(msg(i)),
                Frame::Ack(n) => state.handle_ack(n).unwrap(),
                Frame::Nack(seq) => state
                    .handle_nack(Nack {
                        sequence: seq,
                        reason: NackReason::UnknownType as i32,
                        text: "no handler".into(),
                    })
                    .unwrap(),
            }
        }
    }

    /// The application of `side` takes everything received.
    fn take_all(&mut self, side: usize) -> Vec<u8> {
        std::iter::from_fn(|| self.sides[side].take())
            .map(|any| any.value[0])
            .collect()
    }

    fn events(&mut self, side: usize) -> Vec<StreamEvent> {
        std::iter::from_fn(|| self.sides[side].poll_event()).collect()
    }

    /// The connection drops (what is on the wire is lost) and a new one resumes: each side
    /// resumes with the counts the other sends in its `Resume`. Returns what each side
    /// retransmits.
    fn cut_and_resume(&mut self) -> [u64; 2] {
        self.wires = [VecDeque::new(), VecDeque::new()];
        let counts = [0, 1].map(|i| (self.sides[i].received(), self.sides[i].acknowledged()));
        let mut retransmitted = [0; 2];
        for (i, n) in retransmitted.iter_mut().enumerate() {
            let (received, acknowledged) = counts[1 - i];
            *n = self.sides[i].resume(received, acknowledged).unwrap();
        }
        self.exchange_windows();
        retransmitted
    }
}

#[test]
fn messages_flow_within_the_window_and_acks_open_it() {
    let mut p = Pair::new();
    for i in 0..5 {
        assert_eq!(p.sides[CLIENT].push(msg(i)), Ok(u64::from(i)));
    }
    // The server's window is 3 messages: three go, two wait.
    p.write(CLIENT);
    assert_eq!(
        p.on_wire(SERVER),
        [&Frame::Message(0), &Frame::Message(1), &Frame::Message(2)]
    );
    p.read(SERVER, 3);
    p.write(SERVER);
    assert!(
        p.on_wire(CLIENT).is_empty(),
        "nothing taken, nothing acknowledged"
    );
    assert_eq!(p.take_all(SERVER), [0, 1, 2]);
    // Taken: acknowledged at once (`ack_every` 2 reached), cumulatively.
    p.write(SERVER);
    assert_eq!(p.on_wire(CLIENT), [&Frame::Ack(3)]);
    p.read(CLIENT, 1);
    assert_eq!(p.events(CLIENT), [StreamEvent::Confirmed { below: 3 }]);
    assert_eq!(
        p.sides[CLIENT].outgoing().0,
        2,
        "the three confirmed are released"
    );
    p.write(CLIENT);
    assert_eq!(p.on_wire(SERVER), [&Frame::Message(3), &Frame::Message(4)]);
    p.read(SERVER, 2);
    assert_eq!(p.take_all(SERVER), [3, 4]);
    p.write(SERVER);
    p.read(CLIENT, 1);
    assert_eq!(p.events(CLIENT), [StreamEvent::Confirmed { below: 5 }]);
    assert!(p.sides[CLIENT].drained());
}

#[test]
fn a_cut_is_resumed_with_retransmission_and_no_duplicate() {
    let mut p = Pair::new();
    for i in 0..2 {
        p.sides[CLIENT].push(msg(i)).unwrap();
    }
    p.sides[SERVER].push(msg(50)).unwrap();
    p.write(CLIENT);
    p.write(SERVER);
    // Only the first client message arrives; the server's reply is lost.
    p.read(SERVER, 1);
    assert_eq!(p.take_all(SERVER), [0]);
    assert_eq!(
        p.cut_and_resume(),
        [1, 1],
        "each side sends again what was lost"
    );
    // The server owes an Ack again (it may have been lost too): it goes first.
    p.write(SERVER);
    assert_eq!(p.on_wire(CLIENT), [&Frame::Ack(1), &Frame::Message(50)]);
    p.write(CLIENT);
    assert_eq!(p.on_wire(SERVER), [&Frame::Message(1)]);
    p.read(SERVER, 1);
    p.read(CLIENT, 2);
    assert_eq!(p.take_all(SERVER), [1], "message 0 is not delivered twice");
    assert_eq!(p.take_all(CLIENT), [50]);
    assert_eq!(p.events(CLIENT), [StreamEvent::Confirmed { below: 1 }]);
    // A second cut before either side acknowledged what it took last (below `ack_every`):
    // nothing is missing, so nothing is sent again, and the Acks go at once on the new link.
    p.write(SERVER);
    p.write(CLIENT);
    assert!(p.on_wire(CLIENT).is_empty() && p.on_wire(SERVER).is_empty());
    assert_eq!(p.cut_and_resume(), [0, 0]);
    p.write(SERVER);
    p.write(CLIENT);
    assert_eq!(p.on_wire(CLIENT), [&Frame::Ack(2)]);
    assert_eq!(p.on_wire(SERVER), [&Frame::Ack(1)]);
    p.read(SERVER, 1);
    p.read(CLIENT, 1);
    assert_eq!(p.events(CLIENT), [StreamEvent::Confirmed { below: 2 }]);
    assert_eq!(p.events(SERVER), [StreamEvent::Confirmed { below: 1 }]);
    assert!(p.sides[CLIENT].drained() && p.sides[SERVER].drained());
}

#[test]
fn a_refusal_is_nacked_and_the_ack_waits_for_the_delay() {
    let mut p = Pair::new();
    let t0 = Instant::now();
    p.sides[CLIENT].push(refused(100)).unwrap();
    p.write(CLIENT);
    p.read(SERVER, 1);
    assert!(
        p.take_all(SERVER).is_empty(),
        "a refused message is not delivered"
    );
    // The Nack goes at once; the Ack (1 of `ack_every` 2) waits for the delay.
    p.sides[SERVER].handle_timeout(t0);
    assert_eq!(
        p.sides[SERVER].poll_timeout(),
        Some(t0 + Duration::from_millis(10))
    );
    p.write(SERVER);
    assert_eq!(p.on_wire(CLIENT), [&Frame::Nack(0)]);
    p.sides[SERVER].handle_timeout(t0 + Duration::from_millis(9));
    p.write(SERVER);
    assert_eq!(p.on_wire(CLIENT).len(), 1, "not yet");
    p.sides[SERVER].handle_timeout(t0 + Duration::from_millis(10));
    p.write(SERVER);
    assert_eq!(p.on_wire(CLIENT), [&Frame::Nack(0), &Frame::Ack(1)]);
    assert_eq!(p.sides[SERVER].poll_timeout(), None);
    p.read(CLIENT, 2);
    assert_eq!(
        p.events(CLIENT),
        [
            StreamEvent::Refused {
                seq: 0,
                reason: NackReason::UnknownType,
                text: "no handler".into()
            },
            StreamEvent::Confirmed { below: 1 }
        ]
    );
    // The server keeps the refusal until the client is known to have seen it: after a cut
    // the client's `Resume` says it has the Ack, so the Nack is not sent again.
    assert_eq!(p.sides[SERVER].retained_nacks().0, 1);
    p.cut_and_resume();
    assert_eq!(p.sides[SERVER].retained_nacks(), (0, 0));
    p.write(SERVER);
    assert_eq!(p.on_wire(CLIENT), [&Frame::Ack(1)], "only the Ack again");
}

#[test]
fn a_new_stream_after_a_restart_renumbers_what_is_unconfirmed() {
    let mut p = Pair::new();
    for i in 0..3 {
        p.sides[CLIENT].push(msg(i)).unwrap();
    }
    p.write(CLIENT);
    p.read(SERVER, 2);
    assert_eq!(p.take_all(SERVER), [0, 1]);
    p.write(SERVER);
    p.read(CLIENT, 1);
    assert_eq!(p.events(CLIENT), [StreamEvent::Confirmed { below: 2 }]);
    // The server process dies (message 2 was written, never confirmed); the new one does not
    // know the stream, so the client starts a new one.
    p.wires = [VecDeque::new(), VecDeque::new()];
    p.sides[SERVER] = StreamState::new(config());
    assert_eq!(p.sides[CLIENT].restart_stream(), 1);
    p.exchange_windows();
    assert_eq!(
        (p.sides[CLIENT].received(), p.sides[CLIENT].acknowledged()),
        (0, 0)
    );
    p.write(CLIENT);
    assert_eq!(p.on_wire(SERVER), [&Frame::Message(2)]);
    p.read(SERVER, 1);
    assert_eq!(p.sides[SERVER].received(), 1, "message 0 of the new stream");
    assert_eq!(p.take_all(SERVER), [2]);
    let t0 = Instant::now();
    p.sides[SERVER].handle_timeout(t0);
    p.sides[SERVER].handle_timeout(t0 + Duration::from_millis(10));
    p.write(SERVER);
    assert_eq!(
        p.on_wire(CLIENT),
        [&Frame::Ack(1)],
        "a count on the new stream"
    );
    p.read(CLIENT, 1);
    assert_eq!(p.events(CLIENT), [StreamEvent::Confirmed { below: 3 }]);
    assert!(p.sides[CLIENT].drained());
    assert_eq!(p.sides[CLIENT].progress(), (3, 3));
}

/// Two sides with the default configuration stream `count` messages of `size` bytes, stepped
/// by hand with no clock at all (the acknowledgement delay can never pass): the receiver reads
/// what is on the wire and takes it. Returns the number of `Ack`s the receiver sent.
fn stream_without_a_clock(size: usize, count: u64) -> u64 {
    let mut sides = [
        StreamState::new(ReliableConfig::new()),
        StreamState::new(ReliableConfig::new()),
    ];
    for i in 0..2 {
        let (m, b) = sides[1 - i].window();
        sides[i].set_peer_window(m, b);
    }
    let message = Any {
        type_url: "t/x.M".into(),
        value: vec![7; size],
    };
    let (mut pushed, mut taken, mut acks) = (0, 0, 0);
    // Bounded: every step moves messages or the sender has pushed them all.
    for _ in 0..10 * count + 10 {
        while pushed < count && sides[CLIENT].push(message.clone()).is_ok() {
            pushed += 1;
        }
        let mut wrote = false;
        while let Some(t) = sides[CLIENT].poll_transmit() {
            let Transmit::Message(any) = t else {
                panic!("{t:?}")
            };
            let any = any.clone();
            sides[SERVER].handle_message(any);
            wrote = true;
        }
        if !wrote {
            // Never while the sender still has messages: that would be a sender waiting for
            // an Ack only the timer sends.
            assert_eq!(pushed, count, "stalled at {taken} of {count} ({size} B)");
            // The tail of the stream: the link has read everything and nothing more comes.
            sides[SERVER].handle_read_idle();
        }
        while sides[SERVER].take().is_some() {
            taken += 1;
        }
        while let Some(t) = sides[SERVER].poll_transmit() {
            let Transmit::Ack(n) = t else { panic!("{t:?}") };
            sides[CLIENT].handle_ack(n).unwrap();
            acks += 1;
        }
        if taken == count && sides[CLIENT].drained() {
            return acks;
        }
    }
    panic!("not done after the step bound");
}

#[test]
fn large_messages_are_acknowledged_by_bytes_never_by_the_timer() {
    // Half the 4 MiB receive window in bytes is taken: an Ack, whatever `ack_every` (64) says.
    // Small messages are acknowledged by count (`ack_every` 64), the others by bytes; either
    // way a batch per Ack, and the sender never waits for the timer (see the helper).
    for (size, count) in [
        (64, 6400),
        (64 * 1024, 1000),
        (1024 * 1024, 40),
        (4 * 1024 * 1024, 5),
    ] {
        let acks = stream_without_a_clock(size, count);
        let per_ack = ((2 << 20) / size as u64).clamp(1, 64);
        assert!(
            acks <= count / per_ack + 2,
            "{size} B: {acks} Acks for {count} messages"
        );
    }
}

#[test]
fn the_byte_threshold_sends_the_ack_at_once() {
    let mut c = StreamState::new(ReliableConfig::new().with_receive_buffer(1024, 1 << 20));
    let half = Any {
        type_url: "t/x.M".into(),
        value: vec![0; (1 << 19) - 10],
    };
    c.handle_message(half.clone());
    c.handle_message(half);
    c.take().unwrap();
    assert!(c.poll_transmit().is_none(), "under half the window");
    c.take().unwrap();
    assert!(matches!(c.poll_transmit(), Some(Transmit::Ack(2))));
}

#[test]
fn a_receiver_that_has_caught_up_acknowledges_without_the_delay() {
    // Ping-pong: the peer's `send` waits for this confirmation, and nothing more comes that
    // would reach `ack_every` (2 here); no clock is used, so only the catch-up can send it.
    let mut p = Pair::new();
    p.sides[CLIENT].push(msg(0)).unwrap();
    p.write(CLIENT);
    p.read(SERVER, 1);
    p.sides[SERVER].handle_read_idle();
    p.write(SERVER);
    assert!(p.on_wire(CLIENT).is_empty(), "read but not taken yet");
    assert_eq!(p.take_all(SERVER), [0]);
    p.write(SERVER);
    assert_eq!(p.on_wire(CLIENT), [&Frame::Ack(1)]);
    p.read(CLIENT, 1);
    assert!(p.sides[CLIENT].drained());
    // While more arrives, reading again clears the idle mark: the Ack waits for the batch.
    p.sides[CLIENT].push(msg(1)).unwrap();
    p.sides[CLIENT].push(msg(2)).unwrap();
    p.write(CLIENT);
    p.read(SERVER, 1);
    assert_eq!(p.take_all(SERVER), [1]);
    p.write(SERVER);
    assert!(p.on_wire(CLIENT).is_empty(), "the link has more to read");
    p.read(SERVER, 1);
    p.sides[SERVER].handle_read_idle();
    assert_eq!(p.take_all(SERVER), [2]);
    p.write(SERVER);
    assert_eq!(p.on_wire(CLIENT), [&Frame::Ack(3)]);
}

#[test]
fn closing_acknowledges_what_was_taken_first() {
    // The peer's last `send` waits for its confirmation; the close must not overtake it.
    let mut p = Pair::new();
    p.sides[CLIENT].push(msg(0)).unwrap();
    p.write(CLIENT);
    p.read(SERVER, 1);
    assert_eq!(p.take_all(SERVER), [0]);
    p.write(SERVER);
    assert!(
        p.on_wire(CLIENT).is_empty(),
        "1 of ack_every 2, no delay passed"
    );
    p.sides[SERVER].close();
    p.write(SERVER);
    assert_eq!(p.on_wire(CLIENT), [&Frame::Ack(1)]);
}
