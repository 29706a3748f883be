//! Fuzzes the session state machine as the driver runs it: arbitrary frames (control messages
//! with arbitrary bodies, application messages), timer events, sends, closes and the end of
//! stream, in any order.
//!
//! Checks: no panic; no control message ever reaches the application; what the session queues
//! on the peer's behalf stays under its bound; a deadline asked for is never in the past.
//!
//! ```text
//! cargo fuzz run session_state --sanitizer none
//! ```
#![no_main]

use std::time::{Duration, Instant};

use connect::__fuzz::SessionState;
use connect::prost::Message;
use connect::prost_types::Any;
use connect::proto::v1::{Close, Ping, Pong};
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 9] = [
    "Hello", "Welcome", "Refuse", "Ping", "Pong", "Close", "CloseOk", "Unknown", "",
];

fuzz_target!(|input: &[u8]| {
    let t0 = Instant::now();
    let mut now = t0;
    let heartbeat = input
        .first()
        .map(|&b| Duration::from_millis(u64::from(b) * 10));
    let heartbeat = heartbeat.filter(|h| !h.is_zero());
    let mut s = SessionState::new(heartbeat, 3, Duration::from_secs(1), t0);
    let mut bytes = input.iter().copied().skip(1);
    while let Some(op) = bytes.next() {
        let arg = bytes.next().unwrap_or(0);
        match op % 8 {
            0..=2 => {
                // A frame: a control message or an application one.
                let any = match usize::from(arg) % (NAMES.len() + 1) {
                    i if i == NAMES.len() => Any {
                        type_url: "type.googleapis.com/x.App".into(),
                        value: vec![arg],
                    },
                    i => {
                        let value = match NAMES[i] {
                            "Ping" => Ping { id: u64::from(arg) }.encode_to_vec(),
                            "Pong" => Pong { id: u64::from(arg) }.encode_to_vec(),
                            "Close" => Close {
                                code: i32::from(arg),
                                reason: "r".into(),
                            }
                            .encode_to_vec(),
                            _ => bytes.by_ref().take(usize::from(arg % 8)).collect(),
                        };
                        Any {
                            type_url: format!("type.googleapis.com/connect.v1.{}", NAMES[i]),
                            value,
                        }
                    }
                };
                if let Some(app) = s.handle_frame(any, now) {
                    assert!(!app.type_url.contains("connect.v1."));
                }
            }
            3 => {
                now += Duration::from_millis(u64::from(arg) * 7);
                s.handle_timeout(now);
            }
            4 => {
                // The driver sends up to `arg` control frames (the peer reads some).
                for _ in 0..arg % 4 {
                    s.poll_transmit();
                }
            }
            5 => match arg % 4 {
                0 => s.close(now),
                1 => s.ack_close(now),
                2 => s.on_sent(now),
                _ => s.on_receive_blocked(now),
            },
            6 => {
                if let Some(at) = s.poll_timeout() {
                    now = now.max(at);
                    s.handle_timeout(now);
                    if let Some(next) = s.poll_timeout() {
                        assert!(next > now || s.ended(), "a deadline in the past");
                    }
                }
            }
            _ => {
                if arg == 0 {
                    s.handle_eof();
                }
            }
        }
        let (frames, _) = s.queued_control();
        assert!(
            frames <= SessionState::MAX_QUEUED_CONTROL_FRAMES,
            "{frames} queued"
        );
        if s.ended() {
            return;
        }
    }
});
