//! The sans-IO session state, opened up for the fuzz target `fuzz/fuzz_targets/session_state.rs`
//! (feature `fuzzing`). Not a stable API.

use std::time::{Duration, Instant};

use prost_types::Any;

use super::state::{self, Phase};
use crate::proto::v1::ReasonCode;

/// The session's sans-IO state (`session::state::SessionState`) with the calls the driver makes.
#[derive(Debug)]
pub struct SessionState(state::SessionState);

impl SessionState {
    /// Most control frames a session ever queues on the peer's behalf.
    pub const MAX_QUEUED_CONTROL_FRAMES: usize = state::MAX_QUEUED_CONTROL_FRAMES;

    /// A session opened at `now`.
    pub fn new(
        heartbeat: Option<Duration>,
        missed: u32,
        close_timeout: Duration,
        now: Instant,
    ) -> Self {
        Self(state::SessionState::new(
            heartbeat,
            missed,
            close_timeout,
            now,
        ))
    }

    /// A frame arrived; returns it if it is for the application.
    pub fn handle_frame(&mut self, any: Any, now: Instant) -> Option<Any> {
        self.0.handle_frame(any, now)
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.0.handle_timeout(now)
    }

    /// When `handle_timeout` is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.0.poll_timeout()
    }

    /// The next control frame to send.
    pub fn poll_transmit(&mut self) -> Option<Any> {
        self.0.poll_transmit()
    }

    /// The application closes.
    pub fn close(&mut self, now: Instant) {
        self.0.close(ReasonCode::Normal, String::new(), now)
    }

    /// The application is done after the peer's Close.
    pub fn ack_close(&mut self, now: Instant) {
        if *self.0.phase() == Phase::PeerClosed {
            self.0.ack_close(now)
        }
    }

    /// An application message went out.
    pub fn on_sent(&mut self, now: Instant) {
        self.0.on_sent(now)
    }

    /// The application is not taking messages.
    pub fn on_receive_blocked(&mut self, now: Instant) {
        self.0.on_receive_blocked(now)
    }

    /// The transport's read side ended.
    pub fn handle_eof(&mut self) {
        self.0.handle_eof()
    }

    /// Control frames queued, and their bytes.
    pub fn queued_control(&self) -> (usize, usize) {
        self.0.queued_control()
    }

    /// Whether the driver would stop reading.
    pub fn replies_backed_up(&self) -> bool {
        self.0.replies_backed_up()
    }

    /// Whether the session is over.
    pub fn ended(&self) -> bool {
        self.0.end().is_some()
    }
}
