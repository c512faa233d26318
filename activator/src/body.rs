//! The two bodies on the activator's path: [`ResponseBody`], what every answer to a
//! client carries (a pod's streamed response, or one the activator made), and
//! `RequestBody`, the client's request body on its way to a pod, counted against the
//! Function's limit.
//!
//! A module of its own so that both the forwarder and the error answers
//! (`crate::errors`) use [`ResponseBody`] without importing each other.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};

/// The body of every response the activator sends: the pod's, streamed, or one the
/// activator made (an error). One concrete type, so a handler needs no boxing; it holds
/// the exchange's guard (see `Forwarder::send`) and drops it at the end of the body.
pub struct ResponseBody<G = ()> {
    kind: Kind,
    guard: Option<G>,
}

enum Kind {
    Upstream(Incoming),
    Full(Option<Bytes>),
}

// The guard is never pinned: it is only held and dropped.
impl<G> Unpin for ResponseBody<G> {}

impl<G> ResponseBody<G> {
    /// A pod's response body, streamed, holding `guard` until its end (or none, for a
    /// tunnel, which holds the guard itself).
    pub(crate) fn upstream(body: Incoming, guard: Option<G>) -> Self {
        Self {
            kind: Kind::Upstream(body),
            guard,
        }
    }

    /// A body the activator made, sent whole.
    pub(crate) fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Self {
            kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
            guard: None,
        }
    }
}

impl<G> fmt::Debug for ResponseBody<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Upstream(_) => "upstream",
            Kind::Full(_) => "full",
        };
        f.debug_struct("ResponseBody")
            .field("kind", &kind)
            .field("holds_guard", &self.guard.is_some())
            .finish()
    }
}

impl<G> Body for ResponseBody<G> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = match &mut this.kind {
            Kind::Upstream(body) => ready!(Pin::new(body).poll_frame(cx)),
            Kind::Full(bytes) => bytes.take().map(|bytes| Ok(Frame::data(bytes))),
        };
        if frame.is_none() || this.is_end_stream() {
            // Release the pod's slot as soon as the last byte is handed over, not when
            // the server gets round to dropping the body.
            this.guard = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream(body) => body.is_end_stream(),
            Kind::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream(body) => body.size_hint(),
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

/// The client's request body on its way to the pod, counted against the Function's
/// limit. A retryable send parks the body in a shared slot until the client first reads
/// it, so a request never started can be taken back.
pub(crate) struct RequestBody {
    live: Option<Incoming>,
    parked: Option<ParkedBody>,
    /// What the parked body said of itself before it was parked.
    parked_hint: SizeHint,
    parked_end: bool,
    limit: u64,
    read: u64,
}

impl RequestBody {
    pub(crate) fn live(body: Incoming, limit: u64) -> Self {
        Self {
            live: Some(body),
            parked: None,
            parked_hint: SizeHint::default(),
            parked_end: false,
            limit,
            read: 0,
        }
    }

    /// The client's body as it is now, unless it is parked or was cut off at the limit.
    pub(crate) fn into_live(self) -> Option<Incoming> {
        self.live
    }

    pub(crate) fn parked(slot: ParkedBody, limit: u64) -> Self {
        let (parked_hint, parked_end) = match &*slot.lock().unwrap_or_else(PoisonError::into_inner)
        {
            Some(body) => (body.size_hint(), body.is_end_stream()),
            None => (SizeHint::with_exact(0), true),
        };
        Self {
            live: None,
            parked: Some(slot),
            parked_hint,
            parked_end,
            limit,
            read: 0,
        }
    }
}

/// Why the request body could not go on, found again in the client's error chain.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestBodyError {
    #[error("the request body is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("reading the request body from the client failed")]
    Client(#[source] hyper::Error),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let this = self.get_mut();
        if let Some(parked) = this.parked.take() {
            this.live = unpark(&parked);
        }
        let Some(body) = this.live.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = match ready!(Pin::new(body).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(error)) => return Poll::Ready(Some(Err(RequestBodyError::Client(error)))),
            None => return Poll::Ready(None),
        };
        if let Some(data) = frame.data_ref() {
            this.read = this.read.saturating_add(data.len() as u64);
            if this.read > this.limit {
                this.live = None;
                let limit = this.limit;
                return Poll::Ready(Some(Err(RequestBodyError::TooLarge { limit })));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        match (&self.live, &self.parked) {
            (Some(body), _) => body.is_end_stream(),
            (None, Some(_)) => self.parked_end,
            (None, None) => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.live, &self.parked) {
            (Some(body), _) => body.size_hint(),
            (None, Some(_)) => self.parked_hint,
            (None, None) => SizeHint::with_exact(0),
        }
    }
}

/// The slot a retryable send parks the request body in until the pod's client first
/// reads it.
pub(crate) type ParkedBody = Arc<Mutex<Option<Incoming>>>;

/// Takes the body out of its slot, unless the pod's client already has.
pub(crate) fn unpark(slot: &Mutex<Option<Incoming>>) -> Option<Incoming> {
    slot.lock().unwrap_or_else(PoisonError::into_inner).take()
}

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot;

    use http_body_util::BodyExt;

    use super::*;

    /// Signals when dropped: stands in for a pod's concurrency permit.
    struct Guard(Option<oneshot::Sender<()>>);

    impl Drop for Guard {
        fn drop(&mut self) {
            if let Some(released) = self.0.take() {
                let _ = released.send(());
            }
        }
    }

    #[tokio::test]
    async fn response_body_releases_the_guard_at_its_end() {
        let (released, mut on_release) = oneshot::channel();
        let mut body = ResponseBody {
            kind: Kind::Full(Some(Bytes::from_static(b"last"))),
            guard: Some(Guard(Some(released))),
        };
        assert_eq!(
            on_release.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        );
        let frame = body.frame().await.expect("a frame").expect("no error");
        assert_eq!(frame.into_data().expect("data"), "last");
        // Released with the last frame, while the body itself is still alive.
        assert_eq!(on_release.try_recv(), Ok(()));
        assert!(body.frame().await.is_none());
    }
}
