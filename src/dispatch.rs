//! Typed dispatch: route each incoming `Any` to the handler registered for its message type.
//!
//! Handlers are async closures taking the unpacked message and a [`Context`], returning a
//! [`Reply`]: nothing, one message or several, written back on the same connection in order.
//! Routing is by full protobuf name (the part of the type URL after the last `/`), so peers may
//! use any type-URL prefix. A message whose type has no handler goes to the fallback handler if
//! one is set, and otherwise comes back as [`Error::UnknownType`] carrying the message: nothing
//! is dropped silently.
//!
//! ```
//! # futures::executor::block_on(async {
//! use connect::dispatch::{Context, Dispatcher, Reply};
//! use connect::proto::example::HelloWorld;
//! use prost_types::Any;
//!
//! let dispatcher = Dispatcher::new()
//!     .on(|hello: HelloWorld, _cx: Context| async move {
//!         Ok::<_, connect::Error>(Reply::message(&HelloWorld { text: hello.text.to_uppercase(), ..hello }))
//!     });
//!
//! let request = Any::from_msg(&HelloWorld { text: "hi".into(), sequence: 1 }).unwrap();
//! let reply = dispatcher.dispatch(request, Context::detached()).await?;
//! let answer: HelloWorld = reply.into_iter().next().unwrap().to_msg().unwrap();
//! assert_eq!(answer.text, "HI");
//!
//! // No handler and no fallback: the message comes back in the error.
//! let unknown = Any { type_url: "type.googleapis.com/x.Unknown".into(), value: vec![] };
//! assert!(matches!(
//!     dispatcher.dispatch(unknown, Context::detached()).await,
//!     Err(connect::Error::UnknownType(any)) if any.type_url.ends_with("x.Unknown")
//! ));
//! # Ok::<(), connect::Error>(()) }).unwrap();
//! ```

use std::any::Any as StdAny;
use std::collections::HashMap;
use std::fmt;
use std::future::{poll_fn, Future};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{self, ready, Poll};

use futures_io::{AsyncRead, AsyncWrite};
use futures_sink::Sink;
use futures_util::FutureExt;
use prost::{Message, Name};
use prost_types::Any;
use rustc_hash::FxBuildHasher;

use crate::codec::type_name;
use crate::connection::{Connection, ConnectionInfo, ConnectionReader, ConnectionWriter, Frame};
use crate::error::{Error, Result};

/// The error type handlers may return: anything that converts into a boxed error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What a handler sees besides the message: which connection (and session, if any) it came
/// from, which link of an [`Endpoint`](crate::endpoint::Endpoint), and on which topic it was
/// published (for messages delivered by [`pubsub`](crate::pubsub)).
#[derive(Clone, Debug)]
pub struct Context {
    // Held by value, not shared: a context is cloned for every message a serve loop hands to
    // a handler, and copying these few bytes costs less than a shared count's atomic
    // increment and decrement.
    info: ConnectionInfo,
    session: Option<Arc<crate::session::SessionInfo>>,
    call: Option<Arc<crate::rpc::CallInfo>>,
    link: Option<crate::endpoint::LinkId>,
    topic: Option<Arc<str>>,
}

impl Context {
    /// Context of a message received on the connection described by `info`.
    pub fn new(info: Arc<ConnectionInfo>) -> Self {
        Self::of_connection(Arc::unwrap_or_clone(info))
    }

    fn of_connection(info: ConnectionInfo) -> Self {
        Self {
            info,
            session: None,
            call: None,
            link: None,
            topic: None,
        }
    }

    /// Context of a message received in a session.
    pub fn for_session(session: Arc<crate::session::SessionInfo>) -> Self {
        Self {
            info: session.connection().clone(),
            session: Some(session),
            call: None,
            link: None,
            topic: None,
        }
    }

    /// The same context, on the endpoint link `link`.
    pub fn with_link(mut self, link: crate::endpoint::LinkId) -> Self {
        self.link = Some(link);
        self
    }

    /// The same context, for a message published on `topic`.
    pub fn with_topic(mut self, topic: impl Into<Arc<str>>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// The [`Endpoint`](crate::endpoint::Endpoint) link the message arrived on, if it came
    /// through one.
    pub fn link(&self) -> Option<crate::endpoint::LinkId> {
        self.link
    }

    /// The topic the message was published on, for a message delivered by a
    /// [`pubsub::Subscriber`](crate::pubsub::Subscriber).
    pub fn topic(&self) -> Option<&str> {
        self.topic.as_deref()
    }

    /// The session the message arrived in (with the peer's authenticated identity), if any.
    pub fn session(&self) -> Option<&crate::session::SessionInfo> {
        self.session.as_deref()
    }

    /// Context for dispatching a message that did not come from a connection (tests, replays).
    pub fn detached() -> Self {
        Self::of_connection(ConnectionInfo::new())
    }

    /// The connection the message arrived on.
    pub fn connection(&self) -> &ConnectionInfo {
        &self.info
    }

    /// The request this message is the body of (its id, deadline and metadata), when the
    /// handler answers a call ([`crate::rpc`]); `None` for a one-way message.
    pub fn call(&self) -> Option<&crate::rpc::CallInfo> {
        self.call.as_deref()
    }

    /// This context for the body of a request.
    pub(crate) fn with_call(&self, call: crate::rpc::CallInfo) -> Self {
        Self {
            call: Some(Arc::new(call)),
            ..self.clone()
        }
    }
}

/// Messages a handler sends back on the connection its message came from, in order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reply(ReplyMessages);

#[derive(Clone, Debug, Default, PartialEq)]
enum ReplyMessages {
    #[default]
    None,
    One(Any),
    Many(Vec<Any>),
}

impl Reply {
    /// No reply.
    pub fn none() -> Self {
        Self::default()
    }

    /// Reply with `msg`, packed in an `Any` with type URL [`Name::type_url`].
    pub fn message<M: Message + Name>(msg: &M) -> Self {
        Self::any(pack(msg))
    }

    /// Reply with `any` as is.
    pub fn any(any: Any) -> Self {
        Self(ReplyMessages::One(any))
    }

    /// Adds `msg` after the messages already in this reply.
    pub fn and_message<M: Message + Name>(self, msg: &M) -> Self {
        self.and_any(pack(msg))
    }

    /// Adds `any` after the messages already in this reply.
    pub fn and_any(self, any: Any) -> Self {
        Self(match self.0 {
            ReplyMessages::None => ReplyMessages::One(any),
            ReplyMessages::One(first) => ReplyMessages::Many(vec![first, any]),
            ReplyMessages::Many(mut all) => {
                all.push(any);
                ReplyMessages::Many(all)
            }
        })
    }

    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        match &self.0 {
            ReplyMessages::None => true,
            ReplyMessages::One(_) => false,
            ReplyMessages::Many(all) => all.is_empty(),
        }
    }
}

impl IntoIterator for Reply {
    type Item = Any;
    type IntoIter = std::vec::IntoIter<Any>;

    fn into_iter(self) -> Self::IntoIter {
        match self.0 {
            ReplyMessages::None => Vec::new(),
            ReplyMessages::One(any) => vec![any],
            ReplyMessages::Many(all) => all,
        }
        .into_iter()
    }
}

impl From<()> for Reply {
    fn from(_: ()) -> Self {
        Self::none()
    }
}

impl From<Any> for Reply {
    fn from(any: Any) -> Self {
        Self::any(any)
    }
}

impl From<Option<Any>> for Reply {
    fn from(any: Option<Any>) -> Self {
        any.map(Self::any).unwrap_or_default()
    }
}

impl From<Vec<Any>> for Reply {
    fn from(all: Vec<Any>) -> Self {
        Self(ReplyMessages::Many(all))
    }
}

use crate::codec::pack;

/// A type-erased handler: decodes the frame as its message type and runs.
trait ErasedHandler: Send + Sync {
    /// Called only with frames routed to this handler: for a typed handler, frames whose type
    /// name is its message's full name.
    fn call(&self, frame: Frame, cx: Context) -> BoxFuture<Result<Reply>>;

    /// [`call`](Self::call), started in `slot` and polled once with `task`: a typed handler
    /// reuses the box its previous call ran in, so a serve loop allocates nothing per message,
    /// and one that completes at once is done in this one call. While the call is `Pending`,
    /// `slot` holds it. A frame that does not decode is the (ready) error, and `slot` is left
    /// as it was.
    fn start_in(
        &self,
        frame: Frame,
        cx: &Context,
        slot: &mut RunningSlot,
        task: &mut task::Context<'_>,
    ) -> Poll<Result<Reply>> {
        let mut call = Box::pin(Boxed(self.call(frame, cx.clone())));
        let poll = call.as_mut().poll_reply(task);
        if poll.is_pending() {
            *slot = Some(call);
        }
        poll
    }
}

/// A handler's call in progress, in a box that the serve loop keeps from one message to the
/// next.
trait Running: Send {
    /// Polls the call; its future is dropped as soon as it completes.
    fn poll_reply(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<Result<Reply>>;

    /// Starts the next call in this box and polls it once, taking its future out of `future`
    /// (a [`NextCall`]) if the box was made for the same handler type; otherwise leaves
    /// `future` alone and returns `None`.
    fn restart(
        self: Pin<&mut Self>,
        future: &mut dyn StdAny,
        cx: &mut task::Context<'_>,
    ) -> Option<Poll<Result<Reply>>>;
}

/// A typed handler's next future, for [`Running::restart`]: typed by the message and handler
/// too, since handlers of different messages may return the same future type.
type NextCall<M, F, Fut> = (Option<Fut>, PhantomData<fn() -> (M, F)>);

/// Where a serve loop keeps its handler call (see [`ErasedHandler::start_in`]).
type RunningSlot = Option<Pin<Box<dyn Running>>>;

/// Any handler's boxed future as a [`Running`] call (the fallback's, which is not on the hot
/// path); never restarted.
struct Boxed(BoxFuture<Result<Reply>>);

impl Running for Boxed {
    fn poll_reply(mut self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<Result<Reply>> {
        self.0.as_mut().poll(cx)
    }

    fn restart(
        self: Pin<&mut Self>,
        _future: &mut dyn StdAny,
        _cx: &mut task::Context<'_>,
    ) -> Option<Poll<Result<Reply>>> {
        None
    }
}

pin_project_lite::pin_project! {
    /// A typed handler's call: its future, in place.
    struct Call<M, F, Fut> {
        #[pin]
        future: Option<Fut>,
        handler: PhantomData<fn() -> (M, F)>,
    }
}

impl<M, F, Fut, R, E> Running for Call<M, F, Fut>
where
    M: Message + Name + Default + 'static,
    F: Fn(M, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, E>> + Send + 'static,
    R: Into<Reply>,
    E: Into<BoxError>,
{
    fn poll_reply(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<Result<Reply>> {
        let mut future = self.project().future;
        let Some(running) = future.as_mut().as_pin_mut() else {
            // Never polled empty: a serve loop polls a call only after starting one.
            return Poll::Ready(Ok(Reply::none()));
        };
        let result = ready!(running.poll(cx));
        // Dropped now rather than at the next restart: it may hold the message, whose `Bytes`
        // keep the read buffer from being reused.
        future.set(None);
        Poll::Ready(handler_reply::<M, R, E>(result))
    }

    fn restart(
        mut self: Pin<&mut Self>,
        future: &mut dyn StdAny,
        cx: &mut task::Context<'_>,
    ) -> Option<Poll<Result<Reply>>> {
        let future = future.downcast_mut::<NextCall<M, F, Fut>>()?.0.take()?;
        self.as_mut().project().future.set(Some(future));
        Some(self.poll_reply(cx))
    }
}

/// A typed handler's result as the dispatcher reports it.
fn handler_reply<M: Name, R: Into<Reply>, E: Into<BoxError>>(
    result: std::result::Result<R, E>,
) -> Result<Reply> {
    result.map(Into::into).map_err(|e| Error::Handler {
        type_name: M::full_name(),
        source: e.into(),
    })
}

struct TypedHandler<M, F> {
    handler: F,
    _message: PhantomData<fn(M)>,
}

impl<M: Message + Name + Default, F> TypedHandler<M, F> {
    /// Straight from the frame's bytes: `Bytes` fields of `M` share the read buffer.
    fn decode(frame: Frame) -> Result<M> {
        M::decode(frame.into_value()).map_err(|source| Error::Decode {
            type_name: M::full_name(),
            source,
        })
    }
}

impl<M, F, Fut, R, E> ErasedHandler for TypedHandler<M, F>
where
    M: Message + Name + Default + 'static,
    F: Fn(M, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, E>> + Send + 'static,
    R: Into<Reply> + 'static,
    E: Into<BoxError> + 'static,
{
    fn call(&self, frame: Frame, cx: Context) -> BoxFuture<Result<Reply>> {
        match Self::decode(frame) {
            Ok(msg) => Box::pin((self.handler)(msg, cx).map(handler_reply::<M, R, E>)),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }

    fn start_in(
        &self,
        frame: Frame,
        cx: &Context,
        slot: &mut RunningSlot,
        task: &mut task::Context<'_>,
    ) -> Poll<Result<Reply>> {
        let msg = match Self::decode(frame) {
            Ok(msg) => msg,
            Err(e) => return Poll::Ready(Err(e)),
        };
        // Not polled before it is in its box: moving it there is fine.
        let next_future = (self.handler)(msg, cx.clone());
        let mut next: NextCall<M, F, Fut> = (Some(next_future), PhantomData);
        if let Some(running) = slot {
            if let Some(poll) = running.as_mut().restart(&mut next, task) {
                return poll;
            }
        }
        // Still here: the slot was empty or held another handler's call.
        let mut call = Box::pin(Call::<M, F, Fut> {
            future: next.0,
            handler: PhantomData,
        });
        let poll = call.as_mut().poll_reply(task);
        *slot = Some(call);
        poll
    }
}

/// A handler that answers without awaiting anything: no future, no box, no `Context` clone.
struct SyncHandler<M, F> {
    handler: F,
    _message: PhantomData<fn(M)>,
}

impl<M, F, R, E> SyncHandler<M, F>
where
    M: Message + Name + Default,
    F: Fn(M, &Context) -> Result<R, E>,
    R: Into<Reply>,
    E: Into<BoxError>,
{
    fn run(&self, frame: Frame, cx: &Context) -> Result<Reply> {
        let msg = TypedHandler::<M, F>::decode(frame)?;
        handler_reply::<M, R, E>((self.handler)(msg, cx))
    }
}

impl<M, F, R, E> ErasedHandler for SyncHandler<M, F>
where
    M: Message + Name + Default + 'static,
    F: Fn(M, &Context) -> Result<R, E> + Send + Sync + 'static,
    R: Into<Reply> + 'static,
    E: Into<BoxError> + 'static,
{
    fn call(&self, frame: Frame, cx: Context) -> BoxFuture<Result<Reply>> {
        Box::pin(std::future::ready(self.run(frame, &cx)))
    }

    fn start_in(
        &self,
        frame: Frame,
        cx: &Context,
        _slot: &mut RunningSlot,
        _task: &mut task::Context<'_>,
    ) -> Poll<Result<Reply>> {
        Poll::Ready(self.run(frame, cx))
    }
}

struct FallbackHandler<F>(F);

impl<F, Fut, R, E> ErasedHandler for FallbackHandler<F>
where
    F: Fn(Any, Context) -> Fut + Send + Sync,
    Fut: Future<Output = Result<R, E>> + Send + 'static,
    R: Into<Reply>,
    E: Into<BoxError>,
{
    fn call(&self, frame: Frame, cx: Context) -> BoxFuture<Result<Reply>> {
        let type_name = frame.type_name().to_owned();
        Box::pin((self.0)(frame.into_any(), cx).map(move |result| {
            result.map(Into::into).map_err(|e| Error::Handler {
                type_name,
                source: e.into(),
            })
        }))
    }
}

/// The type URL a serve loop routed last and where it went: a connection usually carries one
/// or a few types, each always with the same URL, so most frames are routed by comparing their
/// URL's bytes with this one, without looking for the name in it or hashing it.
struct LastRoute<'a> {
    url: Vec<u8>,
    handler: Option<&'a dyn ErasedHandler>,
}

/// Routes incoming messages to typed handlers by their protobuf full name.
///
/// Build it once with [`on`](Self::on) and [`fallback`](Self::fallback), share it (it is
/// `Send + Sync`; wrap it in an `Arc`), and [`serve`](Self::serve) each connection with it.
#[derive(Default)]
pub struct Dispatcher {
    handlers: HashMap<String, Box<dyn ErasedHandler>, FxBuildHasher>,
    fallback: Option<Box<dyn ErasedHandler>>,
}

impl fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut types: Vec<_> = self.handlers.keys().collect();
        types.sort();
        f.debug_struct("Dispatcher")
            .field("types", &types)
            .field("fallback", &self.fallback.is_some())
            .finish()
    }
}

impl Dispatcher {
    /// A dispatcher with no handlers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Handles messages of type `M` with `handler`, replacing any earlier handler for `M`.
    ///
    /// The handler gets the decoded message and a [`Context`], and returns a future resolving to
    /// something that converts into a [`Reply`] (`()`, an `Any`, a [`Reply`]…) or an error. An
    /// error ends [`serve`](Self::serve) with [`Error::Handler`]. A message of type `M` whose
    /// bytes do not decode as `M` is an [`Error::Decode`].
    ///
    /// Under [`serve`](Self::serve) the message is decoded straight from the received frame, as
    /// by [`ConnectionReader::recv_message`]: fields of type [`bytes::Bytes`] are slices of the
    /// receive buffer, which is reused once the message is dropped (a message kept longer makes
    /// the connection read on into a new buffer).
    pub fn on<M, F, Fut, R, E>(mut self, handler: F) -> Self
    where
        M: Message + Name + Default + 'static,
        F: Fn(M, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
        R: Into<Reply> + 'static,
        E: Into<BoxError> + 'static,
    {
        let handler = TypedHandler {
            handler,
            _message: PhantomData,
        };
        self.handlers.insert(M::full_name(), Box::new(handler));
        self
    }

    /// Handles messages of type `M` with `handler`, which answers at once: what
    /// [`on`](Self::on) does for a handler whose future would be ready when first polled, without
    /// the future, and with the [`Context`] lent rather than cloned. Under
    /// [`serve`](Self::serve) a message then costs little more than receiving it with
    /// [`recv_message`](ConnectionReader::recv_message). Replaces any earlier handler for `M`.
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// use connect::dispatch::{Context, Dispatcher, Reply};
    /// use connect::proto::example::HelloWorld;
    /// use prost_types::Any;
    ///
    /// let dispatcher = Dispatcher::new().on_sync(|hello: HelloWorld, _cx: &Context| {
    ///     Ok::<_, connect::Error>(Reply::message(&HelloWorld { sequence: hello.sequence + 1, ..hello }))
    /// });
    /// let request = Any::from_msg(&HelloWorld { text: "hi".into(), sequence: 1 }).unwrap();
    /// let reply = dispatcher.dispatch(request, Context::detached()).await?;
    /// let answer: HelloWorld = reply.into_iter().next().unwrap().to_msg().unwrap();
    /// assert_eq!(answer.sequence, 2);
    /// # Ok::<(), connect::Error>(()) }).unwrap();
    /// ```
    pub fn on_sync<M, F, R, E>(mut self, handler: F) -> Self
    where
        M: Message + Name + Default + 'static,
        F: Fn(M, &Context) -> Result<R, E> + Send + Sync + 'static,
        R: Into<Reply> + 'static,
        E: Into<BoxError> + 'static,
    {
        let handler = SyncHandler {
            handler,
            _message: PhantomData,
        };
        self.handlers.insert(M::full_name(), Box::new(handler));
        self
    }

    /// Handles every message whose type has no handler of its own.
    pub fn fallback<F, Fut, R, E>(mut self, handler: F) -> Self
    where
        F: Fn(Any, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
        R: Into<Reply> + 'static,
        E: Into<BoxError> + 'static,
    {
        self.fallback = Some(Box::new(FallbackHandler(handler)));
        self
    }

    /// Whether a message with this type URL would reach a handler (its own or the fallback).
    pub fn handles(&self, type_url: &str) -> bool {
        self.fallback.is_some() || self.handlers.contains_key(type_name(type_url))
    }

    /// Runs the handler for one message and returns its reply.
    ///
    /// # Errors
    /// [`Error::UnknownType`] carrying the message if no handler (and no fallback) takes its
    /// type; [`Error::Decode`] if it does not decode as the handler's type; [`Error::Handler`] if
    /// the handler fails.
    pub async fn dispatch(&self, any: Any, cx: Context) -> Result<Reply> {
        match self.handler(type_name(&any.type_url)) {
            Some(handler) => handler.call(Frame::from(any), cx).await,
            None => Err(Error::UnknownType(Box::new(any))),
        }
    }

    /// [`dispatch`](Self::dispatch) for a frame seen in place (an `Any` is built only for the
    /// fallback handler or the [`Error::UnknownType`]), as a future that does not borrow the
    /// dispatcher: what a driver keeps running while it goes on reading and writing.
    pub(crate) fn start(&self, frame: Frame, cx: Context) -> BoxFuture<Result<Reply>> {
        match self.handler(frame.type_name()) {
            Some(handler) => handler.call(frame, cx),
            None => Box::pin(std::future::ready(Err(Error::UnknownType(Box::new(
                frame.into_any(),
            ))))),
        }
    }

    /// The handler for messages of type `type_name`: its own, or else the fallback.
    fn handler(&self, type_name: &str) -> Option<&dyn ErasedHandler> {
        self.handlers
            .get(type_name)
            .or(self.fallback.as_ref())
            .map(|handler| &**handler)
    }

    /// The handler for `frame`, through the serve loop's `last` route.
    fn route<'a>(
        &'a self,
        frame: &Frame,
        last: &mut LastRoute<'a>,
    ) -> Option<&'a dyn ErasedHandler> {
        if let Some(handler) = last.handler {
            if last.url == frame.type_url_bytes() {
                return Some(handler);
            }
        }
        let handler = self.handler(frame.type_name())?;
        let url = frame.type_url_bytes();
        if url.len() <= Frame::REMEMBERED_URL_LEN {
            last.url.clear();
            last.url.extend_from_slice(url);
            last.handler = Some(handler);
        }
        Some(handler)
    }

    /// Serves one handle (a [`Connection`], a
    /// [`Session`](crate::session::Session) or a
    /// [`ReliableStream`](crate::reliable::ReliableStream)) until the peer closes it: each
    /// message goes to its handler, in order, and the replies are written back in order.
    ///
    /// Replies are buffered while more input is already waiting and flushed as soon as there
    /// is none, so a burst of requests is answered with few system calls. When the peer
    /// closes gracefully, `Ok(())` is returned after the replies are out: a connection is then
    /// flushed and its write side closed; a session's `CloseOk` follows the replies to every
    /// message the peer sent before its `Close` (PROTOCOL.md, section 6), and the handler's
    /// [`Context::session`] tells the authenticated identity.
    ///
    /// # Errors
    /// The first error ends serving: a bad frame or a non-graceful end from the peer, an I/O
    /// error, or any error of [`dispatch`](Self::dispatch). Only this handle is affected. The
    /// replies to earlier messages are flushed first; a session is then closed with
    /// `REASON_CODE_INTERNAL_ERROR` (unless it had already ended).
    pub async fn serve<H: Serve>(&self, handle: H) -> Result<()> {
        let (mut reader, mut writer) = handle.into_halves();
        self.serve_split(&mut reader, &mut writer).await
    }

    /// [`serve`](Self::serve) for a handle already split into halves.
    pub async fn serve_split<R: ServeReader, W: ServeWriter>(
        &self,
        reader: &mut R,
        writer: &mut W,
    ) -> Result<()> {
        let result = self.serve_messages(reader, writer).await;
        if let Err(e) = &result {
            writer.after_error(e).await;
        }
        result
    }

    async fn serve_messages<R: ServeReader, W: ServeWriter>(
        &self,
        reader: &mut R,
        writer: &mut W,
    ) -> Result<()> {
        // Set once the peer has closed gracefully while requests were still queued: they are
        // still handled (handlers may have effects), but nobody reads replies any more.
        let mut replies_dropped = false;
        let mut last_route = LastRoute {
            url: Vec::new(),
            handler: None,
        };
        let mut running: RunningSlot = None;
        // Where the messages come from does not change while serving: made once, cloned for
        // each message.
        let context = reader.context();
        // The replies so far are flushed, and no frame came since.
        let mut flushed = true;
        loop {
            // Every frame that is ready is handled in this one poll, as long as its handler
            // answers at once with nothing to send: a burst of one-way messages then costs no
            // trip through the future's state machine per message.
            let step = poll_fn(|cx| loop {
                let frame = match reader.poll_next_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => frame,
                    Poll::Ready(end) => return Poll::Ready(Step::End(end.map(|e| e.map(drop)))),
                    // Replies are flushed only when no further input is ready: that batches
                    // the answers to a burst of requests into one write. Once they are, this
                    // waits for the reader (its waker is registered).
                    Poll::Pending if flushed => return Poll::Pending,
                    Poll::Pending => return Poll::Ready(Step::Idle),
                };
                flushed = false;
                let Some(handler) = self.route(&frame, &mut last_route) else {
                    return Poll::Ready(Step::Unknown(frame));
                };
                match handler.start_in(frame, &context, &mut running, cx) {
                    Poll::Ready(Ok(reply)) if replies_dropped || reply.is_empty() => {}
                    Poll::Ready(reply) => return Poll::Ready(Step::Reply(reply)),
                    Poll::Pending => return Poll::Ready(Step::Running),
                }
            })
            .await;
            let reply = match step {
                Step::Idle => {
                    match writer.flush_replies().await {
                        Err(e) if writer.replies_unwanted(&e) => replies_dropped = true,
                        other => other?,
                    }
                    flushed = true;
                    continue;
                }
                Step::End(Some(Err(e))) => return Err(e),
                Step::End(_) => {
                    log::debug!("{}: peer closed", context.connection());
                    return writer.finish().await;
                }
                Step::Unknown(frame) => return Err(Error::UnknownType(Box::new(frame.into_any()))),
                Step::Reply(reply) => reply?,
                Step::Running => {
                    poll_fn(|cx| match running.as_mut() {
                        Some(call) => call.as_mut().poll_reply(cx),
                        None => Poll::Ready(Ok(Reply::none())),
                    })
                    .await?
                }
            };
            if replies_dropped || reply.is_empty() {
                continue;
            }
            for any in reply {
                let fed = match poll_fn(|cx| Pin::new(&mut *writer).poll_ready(cx)).await {
                    Ok(()) => Pin::new(&mut *writer).start_send(any),
                    Err(e) => Err(e),
                };
                match fed {
                    Ok(()) => {}
                    Err(e) if writer.replies_unwanted(&e) => {
                        log::debug!("{}: {e}; dropping replies", context.connection());
                        replies_dropped = true;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

/// Where a serve loop's poll of the reader and the handlers stopped.
enum Step {
    /// No frame is ready and replies may wait unflushed.
    Idle,
    /// The reader ended: `None` when the peer closed gracefully.
    End(Option<Result<()>>),
    /// A frame no handler takes.
    Unknown(Frame),
    /// A handler answered at once with this.
    Reply(Result<Reply>),
    /// A handler is still running (in the loop's slot).
    Running,
}

/// A whole handle [`Dispatcher::serve`] can serve: [`Connection<T>`](crate::Connection),
/// [`Session`](crate::session::Session), [`ReliableStream`](crate::reliable::ReliableStream).
/// Sealed: the dispatcher relies on how each layer ends.
pub trait Serve: sealed::Handle {}

/// A reader half [`Dispatcher::serve_split`] can read from: [`ConnectionReader<R>`],
/// [`SessionReader`](crate::session::SessionReader),
/// [`ReliableReader`](crate::reliable::ReliableReader). Sealed.
pub trait ServeReader: futures_core::Stream<Item = Result<Any>> + Unpin + sealed::Reader {}

/// A writer half [`Dispatcher::serve_split`] can answer on: [`ConnectionWriter<W>`],
/// [`SessionWriter`](crate::session::SessionWriter),
/// [`ReliableWriter`](crate::reliable::ReliableWriter). Sealed.
pub trait ServeWriter: Sink<Any, Error = Error> + Unpin + sealed::Writer {}

impl<H: sealed::Handle> Serve for H {}
impl<R: futures_core::Stream<Item = Result<Any>> + Unpin + sealed::Reader> ServeReader for R {}
impl<W: Sink<Any, Error = Error> + Unpin + sealed::Writer> ServeWriter for W {}

/// What the serve loop needs to know of each layer, beyond `Stream` and `Sink`.
pub(crate) mod sealed {
    use std::future::Future;
    use std::task::Poll;

    use super::{Context, Error, Frame, Result, ServeReader, ServeWriter};

    pub trait Handle {
        type Reader: ServeReader;
        type Writer: ServeWriter;

        fn into_halves(self) -> (Self::Reader, Self::Writer);
    }

    pub trait Reader {
        /// The next message as a [`Frame`] (seen in place where the layer can).
        fn poll_next_frame(
            &mut self,
            cx: &mut std::task::Context<'_>,
        ) -> Poll<Option<Result<Frame>>>;

        /// What the handlers are told about where a message came from (asked once per serve
        /// loop, and cloned for each message).
        fn context(&self) -> Context;
    }

    pub trait Writer {
        /// `e` (from this writer) says the peer has closed gracefully and reads no replies any
        /// more; requests already received are still handled.
        fn replies_unwanted(&self, _e: &Error) -> bool {
            false
        }

        /// Delivers the replies queued so far (the loop calls it when no request is waiting).
        fn flush_replies(&mut self) -> impl Future<Output = Result<()>> + Send;

        /// The peer closed gracefully and every reply is queued: end this side.
        fn finish(&mut self) -> impl Future<Output = Result<()>> + Send;

        /// Serving failed with `e`: deliver what is queued and end this side as the layer does.
        fn after_error(&mut self, e: &Error) -> impl Future<Output = ()> + Send;
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> sealed::Handle for Connection<T> {
    type Reader = ConnectionReader<crate::ReadHalf<T>>;
    type Writer = ConnectionWriter<crate::WriteHalf<T>>;

    fn into_halves(self) -> (Self::Reader, Self::Writer) {
        self.split()
    }
}

impl<R: AsyncRead + Unpin> sealed::Reader for ConnectionReader<R> {
    fn poll_next_frame(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Option<Result<Frame>>> {
        ConnectionReader::poll_next_frame(self, cx)
    }

    fn context(&self) -> Context {
        Context::new(self.info.clone())
    }
}

impl<W: AsyncWrite + Unpin + Send> sealed::Writer for ConnectionWriter<W> {
    async fn flush_replies(&mut self) -> Result<()> {
        self.flush().await
    }

    async fn finish(&mut self) -> Result<()> {
        self.close().await
    }

    async fn after_error(&mut self, e: &Error) {
        // Replies to the messages before the failure are already accepted: deliver them.
        if let Err(flush_error) = self.flush().await {
            log::debug!("{}: flushing after {e} failed: {flush_error}", self.info());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Codec;
    use crate::proto::example::HelloWorld;
    use crate::ConnectionConfig;
    use bytes::BytesMut;
    use futures::executor::block_on;
    use futures::io::Cursor;

    fn hello(text: &str) -> HelloWorld {
        HelloWorld {
            text: text.into(),
            sequence: 7,
        }
    }

    fn any(type_url: &str, value: &[u8]) -> Any {
        Any {
            type_url: type_url.into(),
            value: value.to_vec(),
        }
    }

    /// Serves `wire` (frames as sent), returning the result and the `Any`s written back.
    fn serve(dispatcher: &Dispatcher, wire: Vec<u8>) -> (Result<()>, Vec<Any>) {
        let info = ConnectionInfo::new();
        let mut reader = ConnectionReader::new(
            Cursor::new(wire),
            &ConnectionConfig::default(),
            info.clone(),
        );
        let mut out = Vec::new();
        let mut writer =
            ConnectionWriter::new(Cursor::new(&mut out), &ConnectionConfig::default(), info);
        let result = block_on(dispatcher.serve_split(&mut reader, &mut writer));
        drop(writer);
        let mut written = BytesMut::from(&out[..]);
        let mut replies = Vec::new();
        while let Some(reply) = Codec::new().decode(&mut written).unwrap() {
            replies.push(reply);
        }
        (result, replies)
    }

    fn wire(frames: &[Any]) -> Vec<u8> {
        let mut wire = BytesMut::new();
        for frame in frames {
            Codec::new().encode(frame, &mut wire).unwrap();
        }
        wire.to_vec()
    }

    fn echo() -> Dispatcher {
        Dispatcher::new()
            .on(|msg: HelloWorld, _: Context| async move { Ok::<_, Error>(Reply::message(&msg)) })
    }

    #[test]
    fn frames_are_routed_by_full_name_whatever_their_layout() {
        let value = hello("hi").encode_to_vec();
        // value before type_url, and an unknown field: not the layout encoders write.
        let mut reordered = vec![0x12, value.len() as u8];
        reordered.extend_from_slice(&value);
        reordered.extend_from_slice(&[0x18, 1, 0x0a, 32]);
        reordered.extend_from_slice(b"example/connect.example.v1.Hello");
        let mut odd = BytesMut::new();
        prost::encoding::encode_varint(reordered.len() as u64, &mut odd);
        odd.extend_from_slice(&reordered);

        let mut bytes = wire(&[any("x/connect.example.v1.HelloWorld", &value)]);
        bytes.extend_from_slice(&odd);
        let other = any("other/a.B", b"\x01\x02");
        bytes.extend_from_slice(&wire(std::slice::from_ref(&other)));

        let dispatcher =
            echo().fallback(|any: Any, _: Context| async move { Ok::<_, Error>(Reply::any(any)) });
        let (result, replies) = serve(&dispatcher, bytes);
        result.unwrap();
        assert_eq!(replies.len(), 3);
        assert_eq!(replies[0].to_msg::<HelloWorld>().unwrap(), hello("hi"));
        // Type name `connect.example.v1.Hello` is not HelloWorld: the fallback echoes it.
        assert_eq!(
            replies[1].type_url,
            "example/connect.example.v1.Hello".to_string()
        );
        assert_eq!(replies[1].value, value);
        assert_eq!(replies[2], other);
    }

    #[test]
    fn interleaved_types_and_urls_each_reach_their_own_handler() {
        // Two typed handlers whose futures wait once before answering (so a call is polled
        // again from its slot), the fallback, and URLs changing from frame to frame: the route
        // remembered and the box reused must never answer a frame with another one's handler.
        let dispatcher = Dispatcher::new()
            .on(|msg: HelloWorld, _: Context| async move {
                YieldOnce(false).await;
                Ok::<_, Error>(Reply::message(&msg))
            })
            .on(|d: prost_types::Duration, _: Context| async move {
                YieldOnce(false).await;
                Ok::<_, Error>(Reply::message(&HelloWorld {
                    text: format!("{}s", d.seconds),
                    sequence: 0,
                }))
            })
            .fallback(|any: Any, _: Context| async move { Ok::<_, Error>(Reply::any(any)) });
        let hello_value = hello("h").encode_to_vec();
        let duration = |seconds| prost_types::Duration { seconds, nanos: 0 };
        let long_prefix = format!("{}/connect.example.v1.HelloWorld", "x".repeat(300));
        let frames = vec![
            any(
                "type.googleapis.com/connect.example.v1.HelloWorld",
                &hello_value,
            ),
            any("a/connect.example.v1.HelloWorld", &hello_value),
            Any::from_msg(&duration(1)).unwrap(),
            any(
                "type.googleapis.com/connect.example.v1.HelloWorldX",
                b"\x01",
            ),
            Any::from_msg(&duration(2)).unwrap(),
            any(&long_prefix, &hello_value),
            any(&long_prefix, &hello_value),
            any(
                "type.googleapis.com/connect.example.v1.HelloWorld",
                &hello_value,
            ),
        ];
        let (result, replies) = serve(&dispatcher, wire(&frames));
        result.unwrap();
        let texts: Vec<String> = replies
            .iter()
            .map(|reply| match reply.to_msg::<HelloWorld>() {
                Ok(hello) => hello.text,
                Err(_) => reply.type_url.clone(),
            })
            .collect();
        assert_eq!(
            texts,
            [
                "h",
                "h",
                "1s",
                "type.googleapis.com/connect.example.v1.HelloWorldX",
                "2s",
                "h",
                "h",
                "h"
            ]
        );
    }

    #[test]
    fn handlers_with_the_same_future_type_keep_their_own_message_type() {
        // Both futures are `Ready<Result<Reply, Error>>`: the box the first call leaves behind
        // must not run the second one as a `HelloWorld` handler's call.
        let dispatcher = Dispatcher::new()
            .on(|_: HelloWorld, _: Context| std::future::ready(Ok::<_, Error>(Reply::none())))
            .on(|_: prost_types::Duration, _: Context| {
                std::future::ready(Err::<Reply, _>(Error::Closed))
            });
        let frames = [
            Any::from_msg(&hello("a")).unwrap(),
            Any::from_msg(&prost_types::Duration::default()).unwrap(),
        ];
        let (result, _) = serve(&dispatcher, wire(&frames));
        assert!(
            matches!(&result, Err(Error::Handler { type_name, .. }) if type_name == "google.protobuf.Duration"),
            "{result:?}"
        );
    }

    #[test]
    fn synchronous_handlers_answer_in_order_among_async_ones() {
        let dispatcher = Dispatcher::new()
            .on_sync(|msg: HelloWorld, cx: &Context| {
                assert!(cx.session().is_none());
                Ok::<_, Error>(Reply::message(&msg))
            })
            .on(|d: prost_types::Duration, _: Context| async move {
                YieldOnce(false).await;
                Ok::<_, Error>(Reply::message(&hello(&format!("{}s", d.seconds))))
            })
            .on_sync(|_: prost_types::Timestamp, _: &Context| Err::<(), _>(Error::Closed));
        let duration = prost_types::Duration {
            seconds: 3,
            nanos: 0,
        };
        let frames = [
            Any::from_msg(&hello("a")).unwrap(),
            Any::from_msg(&duration).unwrap(),
            Any::from_msg(&hello("b")).unwrap(),
            Any::from_msg(&prost_types::Timestamp::default()).unwrap(),
        ];
        let (result, replies) = serve(&dispatcher, wire(&frames));
        assert!(
            matches!(&result, Err(Error::Handler { type_name, .. }) if type_name == "google.protobuf.Timestamp"),
            "{result:?}"
        );
        let texts: Vec<String> = replies
            .iter()
            .map(|reply| reply.to_msg::<HelloWorld>().unwrap().text)
            .collect();
        assert_eq!(texts, ["a", "3s", "b"]);
    }

    /// Pending once (waking itself), then ready.
    struct YieldOnce(bool);

    impl Future for YieldOnce {
        type Output = ();

        fn poll(mut self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<()> {
            if self.0 {
                return Poll::Ready(());
            }
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    #[test]
    fn an_unknown_type_comes_back_whole_after_the_earlier_replies() {
        let stranger = any("type.googleapis.com/x.Unknown", b"\x08\x01");
        let first = Any::from_msg(&hello("a")).unwrap();
        let (result, replies) = serve(&echo(), wire(&[first.clone(), stranger.clone()]));
        assert!(
            matches!(&result, Err(Error::UnknownType(any)) if **any == stranger),
            "{result:?}"
        );
        assert_eq!(replies, vec![first]);
    }

    #[test]
    fn undecodable_frames_are_typed_errors() {
        let garbage = any("x/connect.example.v1.HelloWorld", b"\x0a\x05ab");
        let (result, _) = serve(&echo(), wire(&[garbage]));
        assert!(
            matches!(&result, Err(Error::Decode { type_name, .. }) if type_name == "connect.example.v1.HelloWorld"),
            "{result:?}"
        );

        // A type URL that is not UTF-8 is not an `Any`.
        let bytes = vec![6, 0x0a, 4, b'x', b'/', 0xff, b'a'];
        let (result, _) = serve(&echo(), bytes);
        assert!(
            matches!(&result, Err(Error::Decode { type_name, .. }) if type_name == "google.protobuf.Any"),
            "{result:?}"
        );
    }
}
