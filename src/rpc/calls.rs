//! The caller's side of request/reply, without I/O: the ids, the calls waiting for their
//! response, their deadlines, and the cancels owed to the peer. A [`Peer`](crate::peer::Peer)
//! keeps one table under a mutex: calls start and abandon entries; the driver completes them,
//! expires them ([`expire`](CallTable::expire) at the time it is given: one timer per link, not
//! one per call) and writes the cancels.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use futures_channel::oneshot;
use prost_types::Any;

use super::{Status, StatusCode};
use crate::proto::rpc::{response, Response};

/// What a call gets back: the reply body, or the peer's status.
pub(crate) type Outcome = Result<Any, Status>;

#[derive(Debug)]
struct Pending {
    outcome: oneshot::Sender<Outcome>,
    deadline: Option<Instant>,
}

#[derive(Debug)]
pub(crate) struct CallTable {
    /// The next id to try (ids are non-zero; one still in flight is skipped).
    next_id: u64,
    pending: HashMap<u64, Pending>,
    /// The deadlines of the pending calls that have one, earliest first.
    deadlines: BTreeSet<(Instant, u64)>,
    /// Ids of abandoned calls whose request was queued: the driver sends a `Cancel` for each.
    /// Only this side's own calls put entries here, each once.
    cancels: Vec<u64>,
    /// The link is over: no call may start, and none is pending.
    closed: bool,
}

impl Default for CallTable {
    fn default() -> Self {
        Self {
            next_id: 1,
            pending: HashMap::new(),
            deadlines: BTreeSet::new(),
            cancels: Vec::new(),
            closed: false,
        }
    }
}

impl CallTable {
    /// A new call with this deadline: its id and where its outcome will arrive. `None` once the
    /// link is over.
    pub(crate) fn start(
        &mut self,
        deadline: Option<Instant>,
    ) -> Option<(u64, oneshot::Receiver<Outcome>)> {
        if self.closed {
            return None;
        }
        let mut id = self.next_id;
        while id == 0 || self.pending.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        self.next_id = id.wrapping_add(1);
        let (outcome, rx) = oneshot::channel();
        self.pending.insert(id, Pending { outcome, deadline });
        if let Some(deadline) = deadline {
            self.deadlines.insert((deadline, id));
        }
        Some((id, rx))
    }

    /// The caller stopped waiting for call `id` (deadline passed, future dropped). If it was
    /// still pending and its request was `queued`, a `Cancel` is owed: returns `true`.
    pub(crate) fn abandon(&mut self, id: u64, queued: bool) -> bool {
        let owed = self.remove(id).is_some() && queued && !self.closed;
        if owed {
            self.cancels.push(id);
        }
        owed
    }

    /// A `Response` arrived: hands its outcome to the waiting call. `false` if no call with its
    /// id is pending (never made, already answered, or abandoned): the response is ignored.
    pub(crate) fn complete(&mut self, response: Response) -> bool {
        let Some(waiting) = self.remove(response.id) else {
            return false;
        };
        let outcome = match response.result {
            Some(response::Result::Body(body)) => Ok(body),
            Some(response::Result::Status(status)) => Err(Status::from(status)),
            None => Err(Status::new(
                StatusCode::Unknown,
                "response with neither body nor status",
            )),
        };
        // The caller may have gone in the meantime; then nobody wants the outcome.
        let _ = waiting.outcome.send(outcome);
        true
    }

    fn remove(&mut self, id: u64) -> Option<Pending> {
        let pending = self.pending.remove(&id)?;
        if let Some(deadline) = pending.deadline {
            self.deadlines.remove(&(deadline, id));
        }
        Some(pending)
    }

    /// The earliest deadline of a pending call.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(deadline, _)| deadline)
    }

    /// Fails every call whose deadline is `now` or earlier with `DEADLINE_EXCEEDED`, and owes
    /// the peer a `Cancel` for each (one for a request that was never queued is ignored by the
    /// peer). Returns how many expired.
    pub(crate) fn expire(&mut self, now: Instant) -> usize {
        let mut expired = 0;
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            if let Some(pending) = self.remove(id) {
                let late = Status::new(StatusCode::DeadlineExceeded, "deadline exceeded");
                let _ = pending.outcome.send(Err(late));
                self.cancels.push(id);
                expired += 1;
            }
        }
        expired
    }

    /// The next `Cancel` to send, if any.
    pub(crate) fn next_cancel(&mut self) -> Option<u64> {
        self.cancels.pop()
    }

    /// Calls waiting for a response.
    pub(crate) fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The link is over: every pending call fails (its sender is dropped), no call starts.
    pub(crate) fn close(&mut self) {
        self.closed = true;
        self.pending.clear();
        self.deadlines.clear();
        self.cancels.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(text: &str) -> Response {
        Response {
            id: 0,
            result: Some(response::Result::Body(Any {
                type_url: "x/a.B".into(),
                value: text.as_bytes().to_vec(),
            })),
        }
    }

    #[test]
    fn responses_reach_their_call_once_in_any_order() {
        let mut table = CallTable::default();
        let (a, mut rx_a) = table.start(None).unwrap();
        let (b, mut rx_b) = table.start(None).unwrap();
        assert_ne!(a, b);
        assert!(a != 0 && b != 0);
        assert!(table.complete(Response { id: b, ..body("b") }));
        assert!(
            !table.complete(Response {
                id: b,
                ..body("again")
            }),
            "a duplicate"
        );
        assert!(
            !table.complete(Response {
                id: 77,
                ..body("?")
            }),
            "an unknown id"
        );
        assert!(table.complete(Response { id: a, ..body("a") }));
        assert_eq!(rx_a.try_recv().unwrap().unwrap().unwrap().value, b"a");
        assert_eq!(rx_b.try_recv().unwrap().unwrap().unwrap().value, b"b");
        assert_eq!(table.pending(), 0);
    }

    #[test]
    fn an_abandoned_call_owes_a_cancel_only_if_its_request_went_out() {
        let mut table = CallTable::default();
        let (a, _) = table.start(None).unwrap();
        let (b, _) = table.start(None).unwrap();
        assert!(table.abandon(a, true));
        assert!(!table.abandon(b, false));
        assert!(!table.abandon(a, true), "only once");
        assert_eq!(table.next_cancel(), Some(a));
        assert_eq!(table.next_cancel(), None);
        assert!(
            !table.complete(Response {
                id: a,
                ..body("late")
            }),
            "ignored"
        );
    }

    #[test]
    fn ids_skip_zero_and_ids_in_flight() {
        let mut table = CallTable {
            next_id: u64::MAX,
            ..CallTable::default()
        };
        let (max, _) = table.start(None).unwrap();
        assert_eq!(max, u64::MAX);
        table.next_id = u64::MAX;
        let (wrapped, _) = table.start(None).unwrap();
        assert_eq!(wrapped, 1, "skips u64::MAX (in flight) and 0");
    }

    #[test]
    fn closing_fails_pending_calls_and_refuses_new_ones() {
        let mut table = CallTable::default();
        let (_, mut rx) = table.start(None).unwrap();
        table.close();
        assert!(rx.try_recv().is_err(), "sender dropped");
        assert!(table.start(None).is_none());
        let empty = Response {
            id: 1,
            result: None,
        };
        assert!(!table.complete(empty));
    }

    #[test]
    fn deadlines_expire_in_order_and_owe_a_cancel() {
        use std::time::Duration;
        let mut table = CallTable::default();
        let now = Instant::now();
        let (late, mut rx_late) = table.start(Some(now + Duration::from_secs(2))).unwrap();
        let (early, mut rx_early) = table.start(Some(now + Duration::from_secs(1))).unwrap();
        let (answered, _) = table.start(Some(now)).unwrap();
        let (_, _) = table.start(None).unwrap();
        assert!(table.complete(Response {
            id: answered,
            ..body("in time")
        }));
        assert_eq!(table.next_deadline(), Some(now + Duration::from_secs(1)));
        assert_eq!(table.expire(now + Duration::from_millis(1500)), 1);
        let status = rx_early.try_recv().unwrap().unwrap().unwrap_err();
        assert_eq!(status.code(), StatusCode::DeadlineExceeded);
        assert_eq!(table.next_cancel(), Some(early));
        assert!(rx_late.try_recv().unwrap().is_none(), "not yet");
        assert_eq!(table.expire(now + Duration::from_secs(2)), 1);
        assert_eq!(table.next_cancel(), Some(late));
        assert_eq!(table.next_deadline(), None);
        assert_eq!(table.pending(), 1);
    }

    #[test]
    fn a_response_with_no_result_is_status_unknown() {
        let mut table = CallTable::default();
        let (id, mut rx) = table.start(None).unwrap();
        assert!(table.complete(Response { id, result: None }));
        let status = rx.try_recv().unwrap().unwrap().unwrap_err();
        assert_eq!(status.code(), StatusCode::Unknown);
    }
}
