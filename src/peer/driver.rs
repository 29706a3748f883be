//! The task that owns a [`Peer`](super::Peer)'s link: writes what the handles queue, reads what
//! the peer sends, runs a handler per message and writes its replies.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use futures_core::Stream;
use prost_types::Any;

use super::{PeerConfig, Shared};
use crate::connection::Frame;
use crate::dispatch::{Context, Dispatcher, Reply, ServeReader, ServeWriter};
use crate::error::{Error, Result};
use crate::proto::rpc;
use crate::rpc::responder::Responder;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// How the open phase of a link ended (without an error).
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// The peer's side ended gracefully and everything owed to it is written.
    ByPeer,
    /// [`Peer::close`](super::Peer::close) was called and everything queued before is written.
    Locally,
}

pub(super) struct Driver<R, W> {
    reader: R,
    writer: W,
    dispatcher: Arc<Dispatcher>,
    context: Context,
    /// What the handles queue (the receiving end of [`Shared::outgoing`]).
    outgoing: Pin<Box<async_channel::Receiver<Any>>>,
    /// The handles can queue no more (closed, and everything queued was taken).
    outgoing_done: bool,
    /// Replies of handlers, written before the handles' messages.
    replies: VecDeque<Any>,
    /// The message taken (from `replies` or the handles) and waiting for room in the writer.
    next_out: Option<Any>,
    max_pending_replies: usize,
    /// The handler of the message being handled; messages are handled one at a time, in order.
    handler: Option<BoxFuture<Result<Reply>>>,
    /// A one-way message read while `handler` runs (reading goes on up to it, so responses and
    /// requests behind a slow one-way handler still get through); reading then pauses.
    held: Option<Frame>,
    /// The peer's requests in flight (request/reply, [`crate::rpc`]).
    responder: Responder,
    /// The one timer for every deadline of the link (this side's calls, the peer's requests),
    /// and when it fires. Armed for the earliest deadline; left alone when that deadline goes
    /// (it then fires early, finds nothing due, and is armed again), so a steady stream of
    /// calls costs no timer operation per call.
    deadline_timer: Option<(Instant, futures_timer::Delay)>,
    reader_done: bool,
    /// Something was written since the last flush.
    unflushed: bool,
    /// Nothing can be written any more (the peer closed a session and reads no more, or this
    /// side closed): replies are dropped.
    write_closed: bool,
    shared: Arc<Shared>,
    /// Dropped when the link is over, which wakes [`Peer::closed`](super::Peer::closed).
    ended: async_channel::Sender<()>,
}

impl<R, W> Driver<R, W>
where
    R: ServeReader + Send + 'static,
    W: ServeWriter + Send + 'static,
{
    pub(super) fn new(
        reader: R,
        writer: W,
        dispatcher: Arc<Dispatcher>,
        outgoing: async_channel::Receiver<Any>,
        shared: Arc<Shared>,
        ended: async_channel::Sender<()>,
        config: &PeerConfig,
    ) -> Self {
        Self {
            context: shared.context.clone(),
            reader,
            writer,
            responder: Responder::new(
                dispatcher.clone(),
                shared.context.clone(),
                config.max_concurrent_requests,
            ),
            held: None,
            deadline_timer: None,
            dispatcher,
            outgoing: Box::pin(outgoing),
            outgoing_done: false,
            replies: VecDeque::new(),
            next_out: None,
            max_pending_replies: config.max_pending_replies,
            handler: None,
            reader_done: false,
            unflushed: false,
            write_closed: false,
            shared,
            ended,
        }
    }

    pub(super) async fn run(mut self) {
        let result = self.run_link().await;
        let connection = self.context.connection().clone();
        match &result {
            Ok(()) => log::debug!("{connection}: link closed"),
            Err(e) => log::debug!("{connection}: link ended: {e}"),
        }

        // Nothing can be queued any more; what was queued and not written is dropped with
        // the receiver, and `send` already reports `Closed` to new callers.
        self.outgoing.close();
        *self
            .shared
            .end
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(result.map_err(Arc::new));
        // Calls still waiting fail with the link's end; no call starts any more.
        self.shared.lock_calls().close();
        self.ended.close();
    }

    async fn run_link(&mut self) -> Result<()> {
        let ended = match poll_fn(|cx| self.poll_open(cx)).await {
            Ok(ended) => ended,
            Err(e) => {
                self.writer.after_error(&e).await;
                return Err(e);
            }
        };
        match ended {
            Ended::ByPeer => {
                if !self.write_closed {
                    self.writer.finish().await?;
                }
                Ok(())
            }
            Ended::Locally => {
                // Close the write direction (a session sends `Close`); what the peer still
                // sends until it sees that is handled, and the link is over when its side
                // ends.
                poll_fn(|cx| Pin::new(&mut self.writer).poll_close(cx)).await?;
                self.write_closed = true;
                self.replies.clear();
                poll_fn(|cx| self.poll_drain(cx)).await
            }
        }
    }

    /// The open link: reads, handles, writes, until one side ends it.
    fn poll_open(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<Ended>> {
        // Registered first, so a `close` after the check below still wakes this task.
        self.shared.driver_waker.register(cx.waker());
        loop {
            let mut progress = false;
            if !self.outgoing_done
                && (self.reader_done || self.shared.close_requested.load(Ordering::Acquire))
            {
                // The link is ending: no more messages from the handles, but what they
                // queued before still goes out.
                self.outgoing.close();
            }
            progress |= self.poll_deadlines(cx);
            progress |= self.poll_write(cx)?;
            progress |= self.poll_handler(cx)?;
            progress |= self.poll_requests(cx);
            progress |= self.poll_read(cx)?;

            let idle = self.handler.is_none()
                && self.held.is_none()
                && self.responder.is_idle()
                && self.replies.is_empty()
                && self.next_out.is_none()
                && self.outgoing_done;
            if idle && self.reader_done {
                return Poll::Ready(Ok(Ended::ByPeer));
            }
            if idle && self.shared.close_requested.load(Ordering::Acquire) {
                return Poll::Ready(Ok(Ended::Locally));
            }
            if progress {
                continue;
            }
            // Nothing more to do right now: push out what was written in this round.
            if self.unflushed && !self.write_closed {
                match Pin::new(&mut self.writer).poll_flush(cx) {
                    Poll::Ready(Ok(())) => {
                        self.unflushed = false;
                        // The flush made room (the peer read in the meantime): a message
                        // held for want of room goes now, not on a wake-up that may never
                        // come (the writer's readiness was already used up by the flush).
                        if self.next_out.is_some() || !self.replies.is_empty() {
                            continue;
                        }
                    }
                    Poll::Ready(Err(e)) => {
                        self.write_failed(e)?;
                        continue;
                    }
                    Poll::Pending => {}
                }
            }
            return Poll::Pending;
        }
    }

    /// After a local close: handle what the peer still sends until its side ends.
    fn poll_drain(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<()>> {
        loop {
            let mut progress = self.poll_deadlines(cx);
            progress |= self.poll_handler(cx)?;
            progress |= self.poll_requests(cx);
            progress |= self.poll_read(cx)?;
            self.replies.clear();
            if self.reader_done
                && self.handler.is_none()
                && self.held.is_none()
                && self.responder.is_idle()
            {
                return Poll::Ready(Ok(()));
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }

    /// Writes replies, then the handles' messages, while the writer takes them. The writer is
    /// asked for room only with a message in hand: a layer whose writer reports its end (a
    /// reliable stream the peer closed) is not made to fail while there is nothing to say.
    fn poll_write(&mut self, cx: &mut TaskContext<'_>) -> Result<bool> {
        let mut progress = false;
        loop {
            if self.write_closed {
                self.replies.clear();
                self.next_out = None;
                // Nothing can go out: take the queued messages off the channel so the
                // link can end (they are lost with it, as the module docs say).
                while !self.outgoing_done {
                    match self.outgoing.as_mut().poll_next(cx) {
                        Poll::Ready(Some(_)) => progress = true,
                        Poll::Ready(None) => self.outgoing_done = true,
                        Poll::Pending => break,
                    }
                }
                return Ok(progress);
            }
            if self.next_out.is_none() {
                self.next_out = self.shared.lock_calls().next_cancel().map(cancel_frame);
            }
            if self.next_out.is_none() {
                self.next_out = match self.replies.pop_front() {
                    Some(reply) => Some(reply),
                    None if self.outgoing_done => None,
                    None => match self.outgoing.as_mut().poll_next(cx) {
                        Poll::Ready(Some(any)) => Some(any),
                        Poll::Ready(None) => {
                            self.outgoing_done = true;
                            progress = true;
                            None
                        }
                        Poll::Pending => None,
                    },
                };
            }
            if self.next_out.is_none() {
                return Ok(progress);
            }
            match Pin::new(&mut self.writer).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => {
                    self.write_failed(e)?;
                    progress = true;
                    continue;
                }
                Poll::Pending => return Ok(progress),
            }
            if let Some(next) = self.next_out.take() {
                match Pin::new(&mut self.writer).start_send(next) {
                    Ok(()) => self.unflushed = true,
                    Err(e) => self.write_failed(e)?,
                }
                progress = true;
            }
        }
    }

    /// A write failed with `e`: the end of the link, unless the peer closed gracefully and
    /// only reads no more (then what it sent is still handled, and replies are dropped).
    fn write_failed(&mut self, e: Error) -> Result<()> {
        if self.writer.replies_unwanted(&e) {
            log::debug!("{}: {e}; dropping replies", self.context.connection());
            self.write_closed = true;
            self.unflushed = false;
            self.replies.clear();
            Ok(())
        } else {
            Err(e)
        }
    }

    fn poll_handler(&mut self, cx: &mut TaskContext<'_>) -> Result<bool> {
        let Some(handler) = self.handler.as_mut() else {
            return Ok(false);
        };
        let Poll::Ready(result) = handler.as_mut().poll(cx) else {
            return Ok(false);
        };
        self.handler = None;
        if !self.write_closed {
            self.replies.extend(result?);
        } else {
            result?;
        }
        if let Some(frame) = self.held.take() {
            self.handler = Some(self.dispatcher.start(frame, self.context.clone()));
        }
        Ok(true)
    }

    /// Expires this side's calls and the peer's requests whose deadline has come, and keeps the
    /// timer armed for the next deadline.
    fn poll_deadlines(&mut self, cx: &mut TaskContext<'_>) -> bool {
        let mut progress = false;
        loop {
            let next = {
                let calls = self.shared.lock_calls().next_deadline();
                match (calls, self.responder.next_deadline()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            };
            let Some(next) = next else {
                return progress;
            };
            let now = Instant::now();
            if next <= now {
                self.shared.lock_calls().expire(now);
                self.responder.expire(now);
                progress = true;
                continue;
            }
            if self
                .deadline_timer
                .as_ref()
                .is_none_or(|(at, _)| next < *at)
            {
                self.deadline_timer = Some((next, futures_timer::Delay::new(next - now)));
            }
            let fired = self
                .deadline_timer
                .as_mut()
                .is_some_and(|(_, timer)| Pin::new(timer).poll(cx).is_ready());
            if !fired {
                return progress;
            }
            self.deadline_timer = None;
        }
    }

    /// Takes the responses of finished requests (while fewer than the configured number of
    /// replies wait to be written: a peer that does not read its answers holds up its own
    /// requests, and then reading).
    fn poll_requests(&mut self, cx: &mut TaskContext<'_>) -> bool {
        let mut progress = false;
        while self.replies.len() < self.max_pending_replies {
            match self.responder.poll_response(cx) {
                Poll::Ready(response) => {
                    if !self.write_closed {
                        self.replies.push_back(response);
                    }
                    progress = true;
                }
                Poll::Pending => break,
            }
        }
        progress
    }

    /// Reads the next frame while there is room for what it may lead to (a one-way message
    /// waiting for the one being handled, a request waiting for a handler slot, replies
    /// waiting to be written, each bounded) and routes it: request/reply frames to the
    /// responder or the waiting call, other messages to their handler, one at a time.
    fn poll_read(&mut self, cx: &mut TaskContext<'_>) -> Result<bool> {
        if self.reader_done
            || self.held.is_some()
            || !self.responder.has_room()
            || self.replies.len() >= self.max_pending_replies
        {
            return Ok(false);
        }
        match self.reader.poll_next_frame(cx) {
            Poll::Ready(Some(frame)) => {
                let frame = frame?;
                match frame.type_name() {
                    REQUEST => self.accept_request(&frame)?,
                    RESPONSE => self.complete_call(&frame)?,
                    CANCEL => self.cancel_request(&frame)?,
                    _ if self.handler.is_some() => self.held = Some(frame),
                    _ => self.handler = Some(self.dispatcher.start(frame, self.context.clone())),
                }
                Ok(true)
            }
            Poll::Ready(None) => {
                self.reader_done = true;
                Ok(true)
            }
            Poll::Pending => Ok(false),
        }
    }

    /// A `Request`: to the responder; a response owed at once (no handler, no body) goes with
    /// the other replies.
    fn accept_request(&mut self, frame: &Frame) -> Result<()> {
        let request: rpc::Request = decode(frame)?;
        if let Some(response) = self.responder.accept(request, Instant::now())? {
            if !self.write_closed {
                self.replies.push_back(response);
            }
        }
        Ok(())
    }

    /// A `Response`: to the call waiting for it; one for no such call is ignored (the call was
    /// abandoned, or it is a duplicate).
    fn complete_call(&mut self, frame: &Frame) -> Result<()> {
        let response: rpc::Response = decode(frame)?;
        let id = response.id;
        if !self.shared.lock_calls().complete(response) {
            log::trace!(
                "{}: response for no call in flight (id {id}): ignored",
                self.context.connection()
            );
        }
        Ok(())
    }

    /// A `Cancel`: the request's handler is dropped; an unknown id is ignored.
    fn cancel_request(&mut self, frame: &Frame) -> Result<()> {
        let cancel: rpc::Cancel = decode(frame)?;
        self.responder.cancel(cancel.id);
        Ok(())
    }
}

const REQUEST: &str = "connect.rpc.v1.Request";
const RESPONSE: &str = "connect.rpc.v1.Response";
const CANCEL: &str = "connect.rpc.v1.Cancel";

fn decode<M: prost::Message + prost::Name + Default>(frame: &Frame) -> Result<M> {
    M::decode(frame.value_bytes()).map_err(|source| Error::Decode {
        type_name: M::full_name(),
        source,
    })
}

fn cancel_frame(id: u64) -> Any {
    crate::codec::pack(&rpc::Cancel { id })
}
