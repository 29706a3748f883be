//! The responder's side of request/reply: the requests of one link in flight (running, or
//! waiting for a free slot), their deadlines and cancels, and how a handler's outcome becomes a
//! `Response`. The peer's driver feeds it the `Request`s and `Cancel`s it reads and writes the
//! responses it yields; nothing here does I/O.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use futures_core::Stream;
use futures_util::future::{AbortHandle, Abortable};
use futures_util::stream::FuturesUnordered;
use prost_types::Any;

use super::{CallInfo, Status, StatusCode, Violation};
use crate::codec::{pack, type_name};
use crate::connection::Frame;
use crate::dispatch::{Context, Dispatcher, Reply};
use crate::error::{Error, Result};
use crate::proto::rpc::{response, Request, Response};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// How many bytes of a status message made from an error this side sends (the rest is cut).
const MAX_STATUS_MESSAGE: usize = 1024;

/// A request accepted and not yet answered.
#[derive(Debug)]
struct InFlight {
    /// Tells this request from an earlier one that had the same id (cancelled while waiting).
    serial: u64,
    /// Set once its handler runs.
    abort: Option<AbortHandle>,
    deadline: Option<Instant>,
}

/// A request waiting for a free handler slot.
struct Waiting {
    id: u64,
    serial: u64,
    body: Any,
    info: CallInfo,
}

/// A running handler; yields `(id, response)`.
struct Running {
    id: u64,
    handler: BoxFuture<Result<Reply>>,
}

impl Future for Running {
    type Output = (u64, Any);

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let id = self.id;
        self.handler
            .as_mut()
            .poll(cx)
            .map(|result| (id, response(id, outcome(result))))
    }
}

/// The requests of one link in flight.
pub(crate) struct Responder {
    dispatcher: Arc<Dispatcher>,
    context: Context,
    in_flight: HashMap<u64, InFlight>,
    running: FuturesUnordered<Abortable<Running>>,
    waiting: VecDeque<Waiting>,
    /// Deadlines of the running handlers, earliest first (the driver's one timer watches the
    /// earliest: no timer per request).
    deadlines: BTreeSet<(Instant, u64)>,
    /// `DEADLINE_EXCEEDED` responses of handlers stopped by [`expire`](Self::expire).
    expired: VecDeque<Any>,
    max_running: usize,
    next_serial: u64,
}

impl Responder {
    /// At most `max_running` handlers run at once, and as many requests more wait for a slot.
    pub(crate) fn new(dispatcher: Arc<Dispatcher>, context: Context, max_running: usize) -> Self {
        Self {
            dispatcher,
            context,
            in_flight: HashMap::new(),
            running: FuturesUnordered::new(),
            waiting: VecDeque::new(),
            deadlines: BTreeSet::new(),
            expired: VecDeque::new(),
            max_running: max_running.max(1),
            next_serial: 0,
        }
    }

    /// Whether another request may be read: fewer than the bound are waiting for a slot.
    pub(crate) fn has_room(&self) -> bool {
        self.waiting.len() < self.max_running
    }

    /// No request is in flight.
    pub(crate) fn is_idle(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// A `Request` read at `now`. Starts its handler, or queues it for a slot, or answers it at
    /// once (the returned response: no body, no handler for its type).
    ///
    /// # Errors
    /// A [`Violation`] (id 0, or the id of a request in flight): the link ends.
    pub(crate) fn accept(
        &mut self,
        request: Request,
        now: Instant,
    ) -> Result<Option<Any>, Violation> {
        let id = request.id;
        if id == 0 {
            return Err(Violation::ZeroRequestId);
        }
        if self.in_flight.contains_key(&id) {
            return Err(Violation::RequestIdInFlight(id));
        }
        let Some(body) = request.body else {
            let status = Status::invalid_argument("request without body");
            return Ok(Some(response(id, Err(status))));
        };
        if !self.dispatcher.handles(&body.type_url) {
            let status = Status::not_found(format!(
                "no handler for {}",
                cut(type_name(&body.type_url), MAX_STATUS_MESSAGE)
            ));
            return Ok(Some(response(id, Err(status))));
        }
        let info = CallInfo::new(
            id,
            super::deadline(now, request.timeout_ms),
            request.metadata,
        );
        let serial = self.next_serial;
        self.next_serial += 1;
        self.in_flight.insert(
            id,
            InFlight {
                serial,
                abort: None,
                deadline: None,
            },
        );
        self.waiting.push_back(Waiting {
            id,
            serial,
            body,
            info,
        });
        Ok(None)
    }

    /// A `Cancel`: the request's handler is dropped (or it never starts); it gets no response.
    /// An id not in flight is ignored.
    pub(crate) fn cancel(&mut self, id: u64) {
        if let Some(in_flight) = self.remove(id) {
            if let Some(abort) = in_flight.abort {
                abort.abort();
            }
        }
    }

    fn remove(&mut self, id: u64) -> Option<InFlight> {
        let in_flight = self.in_flight.remove(&id)?;
        if let Some(deadline) = in_flight.deadline {
            self.deadlines.remove(&(deadline, id));
        }
        Some(in_flight)
    }

    /// The earliest deadline of a running handler.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(deadline, _)| deadline)
    }

    /// Stops every running handler whose deadline is `now` or earlier; each is answered
    /// `DEADLINE_EXCEEDED` (by [`poll_response`](Self::poll_response)).
    pub(crate) fn expire(&mut self, now: Instant) {
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            if let Some(abort) = self.remove(id).and_then(|in_flight| in_flight.abort) {
                abort.abort();
            }
            let late = Status::new(StatusCode::DeadlineExceeded, "deadline exceeded");
            self.expired.push_back(response(id, Err(late)));
        }
    }

    /// The next response: of a handler that finished (or ran out of time), or of a waiting
    /// request whose deadline passed before a slot was free.
    pub(crate) fn poll_response(&mut self, cx: &mut TaskContext<'_>) -> Poll<Any> {
        if let Some(late) = self.expired.pop_front() {
            return Poll::Ready(late);
        }
        loop {
            while self.running.len() < self.max_running {
                let Some(next) = self.waiting.pop_front() else {
                    break;
                };
                if self.in_flight.get(&next.id).map(|f| f.serial) != Some(next.serial) {
                    continue; // cancelled while waiting
                }
                if let Some(late) = self.start(next, Instant::now()) {
                    return Poll::Ready(late);
                }
            }
            match Pin::new(&mut self.running).poll_next(cx) {
                Poll::Ready(Some(Ok((id, response)))) => {
                    self.remove(id);
                    return Poll::Ready(response);
                }
                // Cancelled: already out of `in_flight`, nothing to say; its slot is free.
                Poll::Ready(Some(Err(_aborted))) => continue,
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Starts a waiting request's handler, or answers it `DEADLINE_EXCEEDED` if its deadline
    /// has passed.
    fn start(&mut self, waiting: Waiting, now: Instant) -> Option<Any> {
        let id = waiting.id;
        let deadline = waiting.info.deadline();
        if deadline.is_some_and(|deadline| deadline <= now) {
            self.remove(id);
            let late = Status::new(StatusCode::DeadlineExceeded, "deadline passed before start");
            return Some(response(id, Err(late)));
        }
        let context = self.context.with_call(waiting.info);
        let handler = self.dispatcher.start(Frame::from(waiting.body), context);
        let (abort, registration) = AbortHandle::new_pair();
        if let Some(in_flight) = self.in_flight.get_mut(&id) {
            in_flight.abort = Some(abort);
            in_flight.deadline = deadline;
            if let Some(deadline) = deadline {
                self.deadlines.insert((deadline, id));
            }
        }
        self.running
            .push(Abortable::new(Running { id, handler }, registration));
        None
    }
}

/// What a handler's outcome says to the caller.
fn outcome(result: Result<Reply>) -> Result<Any, Status> {
    match result {
        Ok(reply) => {
            let mut messages = reply.into_iter();
            match (messages.next(), messages.next()) {
                (Some(body), None) => Ok(body),
                (None, _) => Err(Status::internal("the handler replied nothing")),
                (Some(_), Some(_)) => Err(Status::internal(
                    "the handler replied more than one message",
                )),
            }
        }
        Err(Error::Handler { type_name, source }) => match source.downcast_ref::<Status>() {
            Some(status) => Err(status.clone()),
            None => Err(Status::internal(cut(
                &format!("handler for {type_name} failed: {source}"),
                MAX_STATUS_MESSAGE,
            ))),
        },
        Err(e @ Error::Decode { .. }) => Err(Status::invalid_argument(cut(
            &e.to_string(),
            MAX_STATUS_MESSAGE,
        ))),
        Err(e @ Error::UnknownType(_)) => {
            Err(Status::not_found(cut(&e.to_string(), MAX_STATUS_MESSAGE)))
        }
        Err(e) => Err(Status::internal(cut(&e.to_string(), MAX_STATUS_MESSAGE))),
    }
}

/// The `Response` frame for request `id`.
pub(crate) fn response(id: u64, outcome: Result<Any, Status>) -> Any {
    let result = match outcome {
        Ok(body) => response::Result::Body(body),
        Err(status) => response::Result::Status(status.into()),
    };
    pack(&Response {
        id,
        result: Some(result),
    })
}

/// `text`, cut to at most `max` bytes at a character boundary.
fn cut(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::proto::example::HelloWorld;
    use futures::task::noop_waker_ref;

    fn request(id: u64, text: &str, timeout_ms: u64) -> Request {
        Request {
            id,
            body: Some(pack(&HelloWorld {
                text: text.into(),
                sequence: 0,
            })),
            timeout_ms,
            metadata: Default::default(),
        }
    }

    fn decode(any: Any) -> Response {
        assert_eq!(type_name(&any.type_url), "connect.rpc.v1.Response");
        prost::Message::decode(&any.value[..]).unwrap()
    }

    fn status_of(response: &Response) -> StatusCode {
        match &response.result {
            Some(response::Result::Status(status)) => StatusCode::try_from(status.code).unwrap(),
            other => panic!("not a status: {other:?}"),
        }
    }

    /// A responder whose handler never finishes for text "hang" and echoes otherwise.
    fn responder(max_running: usize) -> Responder {
        let dispatcher = Dispatcher::new().on(|hello: HelloWorld, _: Context| async move {
            if hello.text == "hang" {
                std::future::pending::<()>().await;
            }
            Ok::<_, Error>(Reply::message(&hello))
        });
        Responder::new(Arc::new(dispatcher), Context::detached(), max_running)
    }

    fn poll(responder: &mut Responder) -> Option<Response> {
        let mut cx = TaskContext::from_waker(noop_waker_ref());
        match responder.poll_response(&mut cx) {
            Poll::Ready(any) => Some(decode(any)),
            Poll::Pending => None,
        }
    }

    #[test]
    fn bad_ids_are_violations_and_unknown_types_not_found() {
        let mut responder = responder(2);
        let now = Instant::now();
        assert_eq!(
            responder.accept(request(0, "a", 0), now),
            Err(Violation::ZeroRequestId)
        );
        assert_eq!(responder.accept(request(1, "hang", 0), now), Ok(None));
        assert_eq!(
            responder.accept(request(1, "again", 0), now),
            Err(Violation::RequestIdInFlight(1))
        );
        let stranger = Request {
            id: 2,
            body: Some(Any {
                type_url: "x/no.Such".into(),
                value: vec![],
            }),
            ..request(2, "", 0)
        };
        let answer = decode(responder.accept(stranger, now).unwrap().unwrap());
        assert_eq!((answer.id, status_of(&answer)), (2, StatusCode::NotFound));
        let empty = Request {
            body: None,
            ..request(3, "", 0)
        };
        let answer = decode(responder.accept(empty, now).unwrap().unwrap());
        assert_eq!(status_of(&answer), StatusCode::InvalidArgument);
    }

    #[test]
    fn a_request_waiting_past_its_deadline_is_answered_without_running() {
        let mut responder = responder(1);
        let now = Instant::now();
        responder.accept(request(1, "hang", 0), now).unwrap();
        assert!(poll(&mut responder).is_none(), "1 runs and hangs");
        responder.accept(request(2, "b", 1), now).unwrap();
        responder.accept(request(3, "c", 0), now).unwrap();
        assert!(!responder.has_room(), "one waiting per slot");
        std::thread::sleep(Duration::from_millis(5));
        responder.cancel(1);
        let late = poll(&mut responder).unwrap();
        assert_eq!(
            (late.id, status_of(&late)),
            (2, StatusCode::DeadlineExceeded)
        );
        let done = poll(&mut responder).unwrap();
        assert_eq!(done.id, 3);
        assert!(matches!(done.result, Some(response::Result::Body(_))));
        assert!(responder.is_idle());
        responder.cancel(99); // not in flight: ignored
        assert!(poll(&mut responder).is_none());
    }

    #[test]
    fn a_running_handler_past_its_deadline_is_stopped_and_answered() {
        let mut responder = responder(2);
        let now = Instant::now();
        responder.accept(request(1, "hang", 1000), now).unwrap();
        responder.accept(request(2, "hang", 0), now).unwrap();
        assert!(poll(&mut responder).is_none());
        assert_eq!(
            responder.next_deadline(),
            Some(now + Duration::from_secs(1))
        );
        responder.expire(now + Duration::from_millis(999));
        assert!(poll(&mut responder).is_none(), "not yet");
        responder.expire(now + Duration::from_secs(1));
        let late = poll(&mut responder).unwrap();
        assert_eq!(
            (late.id, status_of(&late)),
            (1, StatusCode::DeadlineExceeded)
        );
        assert!(poll(&mut responder).is_none());
        assert_eq!(responder.next_deadline(), None);
        responder.cancel(2);
        assert!(poll(&mut responder).is_none());
        assert!(responder.is_idle());
    }

    #[test]
    fn a_cancelled_request_gets_no_response_and_its_id_is_free_again() {
        let mut responder = responder(1);
        let now = Instant::now();
        responder.accept(request(1, "hang", 0), now).unwrap();
        responder.accept(request(2, "b", 0), now).unwrap();
        assert!(poll(&mut responder).is_none());
        responder.cancel(2); // waiting
        responder.accept(request(2, "b again", 0), now).unwrap();
        responder.cancel(1); // running
        let answer = poll(&mut responder).unwrap();
        assert_eq!(answer.id, 2);
        let Some(response::Result::Body(body)) = answer.result else {
            panic!("{answer:?}")
        };
        assert_eq!(body.to_msg::<HelloWorld>().unwrap().text, "b again");
        assert!(poll(&mut responder).is_none());
        assert!(responder.is_idle());
    }

    #[test]
    fn handler_outcomes_become_statuses() {
        let failing = |e: Error| outcome(Err(e)).unwrap_err().code();
        let handler_error = |source: Box<dyn std::error::Error + Send + Sync>| Error::Handler {
            type_name: "a.B".into(),
            source,
        };
        assert_eq!(
            failing(handler_error(Box::new(Status::not_found("nobody")))),
            StatusCode::NotFound
        );
        assert_eq!(failing(handler_error("plain".into())), StatusCode::Internal);
        assert_eq!(
            outcome(Ok(Reply::none())).unwrap_err().code(),
            StatusCode::Internal
        );
        let two = Reply::any(Any::default()).and_any(Any::default());
        assert_eq!(outcome(Ok(two)).unwrap_err().code(), StatusCode::Internal);
        assert_eq!(cut("héllo", 2), "h");
    }
}
