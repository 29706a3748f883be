//! The caller's side of request/reply on a [`Peer`]: [`Peer::call`] and its forms. The wire
//! and the responder are in [`crate::rpc`].

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::Poll;
use std::time::{Duration, Instant};

use prost::{Message, Name};
use prost_types::Any;

use super::{Peer, Shared};
use crate::codec::{pack, type_name};
use crate::proto::rpc::Request;
use crate::rpc::{timeout_ms, CallError, CallOptions};

impl Peer {
    /// Calls the peer: sends `request` and waits for its handler's reply, of type `Resp`, for at
    /// most the link's default timeout ([`PeerConfig::with_call_timeout`](super::PeerConfig::with_call_timeout)).
    /// Any number of calls may be in flight at once; see [`crate::rpc`].
    ///
    /// Dropping the returned future abandons the call: a `Cancel` goes to the peer, which
    /// drops the handler.
    ///
    /// # Errors
    /// [`CallError`]: deadline exceeded, cancelled by the peer, a status from the peer (no
    /// handler, the handler failed, ...), the link closed, or a reply of another type.
    pub async fn call<Req, Resp>(&self, request: &Req) -> Result<Resp, CallError>
    where
        Req: Message + Name,
        Resp: Message + Name + Default,
    {
        self.call_with(request, CallOptions::new()).await
    }

    /// [`call`](Self::call) with a deadline or metadata of its own.
    ///
    /// # Errors
    /// As [`call`](Self::call).
    pub async fn call_with<Req, Resp>(
        &self,
        request: &Req,
        options: CallOptions,
    ) -> Result<Resp, CallError>
    where
        Req: Message + Name,
        Resp: Message + Name + Default,
    {
        let reply = self.call_any(pack(request), options).await?;
        unpack(reply)
    }

    /// The untyped call: `body` goes as is, and the reply comes back as an `Any`.
    ///
    /// # Errors
    /// As [`call`](Self::call), but never a reply of the wrong type.
    pub async fn call_any(&self, body: Any, mut options: CallOptions) -> Result<Any, CallError> {
        let timeout = options.timeout().unwrap_or(self.shared.call_timeout);
        if timeout == Some(Duration::ZERO) {
            return Err(CallError::DeadlineExceeded);
        }
        // The driver expires the call at its deadline (one timer for the whole link).
        let deadline = timeout.and_then(|timeout| Instant::now().checked_add(timeout));
        let Some((id, mut outcome)) = self.shared.lock_calls().start(deadline) else {
            return Err(CallError::Closed(self.end()));
        };
        // From here on, leaving early (an error, the future dropped) abandons the call.
        let mut pending = PendingCall {
            shared: &self.shared,
            id,
            queued: false,
        };
        let request = Request {
            id,
            body: Some(body),
            timeout_ms: timeout_ms(timeout),
            metadata: options.take_metadata(),
        };
        // Queueing may wait for room; the deadline (an outcome) ends that wait too.
        let mut send = pin!(self.shared.outgoing.send(pack(&request)));
        let queued = poll_fn(|cx| {
            if let Poll::Ready(sent) = send.as_mut().poll(cx) {
                return Poll::Ready(Ok(sent));
            }
            Pin::new(&mut outcome).poll(cx).map(Err)
        })
        .await;
        let outcome = match queued {
            Ok(Err(_closed)) => return Err(CallError::Closed(self.end())),
            Ok(Ok(())) => {
                pending.queued = true;
                outcome.await
            }
            Err(early) => early,
        };
        match outcome {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(status)) => Err(status.into()),
            // The driver dropped the call: the link is over.
            Err(_canceled) => Err(CallError::Closed(self.end())),
        }
    }

    /// This side's calls waiting for a response.
    pub fn calls_in_flight(&self) -> usize {
        self.shared.lock_calls().pending()
    }
}

/// A call not yet answered: dropping it abandons the call (and owes the peer a `Cancel` if the
/// request was queued).
struct PendingCall<'a> {
    shared: &'a Shared,
    id: u64,
    queued: bool,
}

impl Drop for PendingCall<'_> {
    fn drop(&mut self) {
        // Answered calls are already out of the table: nothing happens for them.
        if self.shared.lock_calls().abandon(self.id, self.queued) {
            self.shared.driver_waker.wake();
        }
    }
}

fn unpack<M: Message + Name + Default>(reply: Any) -> Result<M, CallError> {
    let expected = M::full_name();
    if type_name(&reply.type_url) != expected {
        return Err(CallError::WrongType {
            expected,
            any: Box::new(reply),
        });
    }
    M::decode(&reply.value[..]).map_err(|source| CallError::Decode {
        type_name: expected,
        source,
    })
}
