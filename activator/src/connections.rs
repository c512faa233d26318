//! Limits on client connections: how many may be open at once, and how long one may sit
//! idle.
//!
//! hyper's header timeout starts only once the first bytes arrived (the listeners detect
//! HTTP/1.1 or h2c from them, with no timeout of their own), and HTTP/2 has no idle limit
//! at all, so a client could hold connections that never send a byte until the activator
//! runs out of file descriptors. [`Idle`] wraps each accepted stream and fails its read
//! once the connection has been idle for too long: no byte read or written and no request
//! in flight for [`ConnectionLimits::first_byte_timeout`] before the first byte, or
//! [`ConnectionLimits::keep_alive_timeout`] after it. hyper then closes it. A request in
//! flight (held at zero, or streaming a slow response) and an upgraded connection
//! (WebSocket) are never idle.
//!
//! [`Connections`] counts open connections across every listener and thread;
//! [`Connections::admit`] refuses one beyond [`ConnectionLimits::max_connections`] with
//! a short `503` and `Connection: close`, written without waiting.
//!
//! The cost on the request path: an atomic increment and decrement per request
//! ([`InFlight`]) and a clock read per read or write on the connection.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::metrics::Metrics;

/// The answer to a connection over [`ConnectionLimits::max_connections`].
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
connection: close\r\n\
content-type: text/plain; charset=utf-8\r\n\
cache-control: no-store\r\n\
retry-after: 1\r\n\
x-zeroscale-error: too_many_connections\r\n\
content-length: 63\r\n\
\r\n\
the activator has too many open connections; retry in a moment\n";

/// The limits each listener applies to its client connections.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Longest a new connection may stay silent before its first byte.
    pub first_byte_timeout: Duration,
    /// Longest a connection may stay idle between requests (no request in flight and no
    /// byte either way).
    pub keep_alive_timeout: Duration,
    /// Most connections open at once over every listener; 0 for no limit.
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            first_byte_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(10),
            max_connections: 10_000,
        }
    }
}

/// Why an idle connection was closed (the metric's `reason` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IdleReason {
    FirstByte,
    KeepAlive,
}

/// Open connections over every listener, and their metrics.
#[derive(Debug)]
pub(crate) struct Connections {
    open: AtomicUsize,
    metrics: ConnectionMetrics,
}

impl Connections {
    /// Counts connections into the activator's `metrics`.
    pub(crate) fn new(metrics: &Metrics) -> Self {
        Self {
            open: AtomicUsize::new(0),
            metrics: metrics.connections.clone(),
        }
    }

    /// Takes a place for `stream` under `limits`, or refuses it: writes a `503` if the
    /// socket takes it at once, and drops the stream (closing it).
    pub(crate) fn admit(
        self: &Arc<Self>,
        stream: TcpStream,
        limits: &ConnectionLimits,
    ) -> Option<(Idle<TcpStream>, Arc<ConnectionState>)> {
        let open = self.open.fetch_add(1, Ordering::AcqRel);
        if limits.max_connections != 0 && open >= limits.max_connections {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.metrics.refused.inc();
            refuse(&stream);
            return None;
        }
        self.metrics.open.inc();
        let state = Arc::new(ConnectionState::default());
        let idle = Idle {
            io: stream,
            state: Arc::clone(&state),
            _place: Place(Arc::clone(self)),
            limits: *limits,
            last_active: Instant::now(),
            seen_first_byte: false,
            timer: Box::pin(tokio::time::sleep(limits.first_byte_timeout)),
        };
        Some((idle, state))
    }
}

/// Writes the refusal without waiting and reads what the client already sent, so that
/// closing does not reset the connection before the client reads the answer.
fn refuse(stream: &TcpStream) {
    let _ = stream.try_write(REFUSAL);
    let mut sink = [0u8; 1024];
    let _ = stream.try_read(&mut sink);
}

/// A connection's place in [`Connections`], given back when the connection closes.
#[derive(Debug)]
struct Place(Arc<Connections>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.open.dec();
    }
}

/// What the request path tells a connection's idle timer.
#[derive(Debug, Default)]
pub(crate) struct ConnectionState {
    in_flight: AtomicUsize,
    upgraded: AtomicBool,
}

impl ConnectionState {
    /// Marks a request in flight until the returned guard drops (with its response's
    /// body, see [`Counted`]).
    pub(crate) fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    /// The connection switched protocols: it is never idle any more.
    pub(crate) fn mark_upgraded(&self) {
        self.upgraded.store(true, Ordering::Relaxed);
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) > 0 || self.upgraded.load(Ordering::Relaxed)
    }
}

/// A request in flight on a connection; ends when dropped.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<ConnectionState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request in flight until it ends or is dropped.
#[derive(Debug)]
pub(crate) struct Counted<B> {
    body: B,
    _in_flight: InFlight,
}

impl<B> Counted<B> {
    pub(crate) fn new(body: B, in_flight: InFlight) -> Self {
        Self {
            body,
            _in_flight: in_flight,
        }
    }
}

impl<B: Body + Unpin> Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A client stream whose reads fail once the connection has been idle too long.
#[derive(Debug)]
pub(crate) struct Idle<T> {
    io: T,
    state: Arc<ConnectionState>,
    _place: Place,
    limits: ConnectionLimits,
    last_active: Instant,
    seen_first_byte: bool,
    timer: Pin<Box<Sleep>>,
}

impl<T> Idle<T> {
    /// Whether the connection has been idle past its limit; arms the timer to wake the
    /// reader when it might be.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<IdleReason> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return None;
            }
            let now = Instant::now();
            let (limit, reason) = if self.seen_first_byte {
                (self.limits.keep_alive_timeout, IdleReason::KeepAlive)
            } else {
                (self.limits.first_byte_timeout, IdleReason::FirstByte)
            };
            if self.state.busy() {
                // Counted from the end of the request, not from before it.
                self.last_active = now;
            }
            let deadline = self.last_active + limit;
            if now >= deadline {
                return Some(reason);
            }
            self.timer.as_mut().reset(deadline);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Idle<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.seen_first_byte = true;
                    self.last_active = Instant::now();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => match self.expired(cx) {
                None => Poll::Pending,
                Some(reason) => {
                    self._place.0.metrics.closed_idle(reason).inc();
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        match reason {
                            IdleReason::FirstByte => {
                                "no request began within the first-byte timeout"
                            }
                            IdleReason::KeepAlive => "connection idle past the keep-alive timeout",
                        },
                    )))
                }
            },
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Idle<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.last_active = Instant::now();
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.last_active = Instant::now();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The connection metrics, part of [`crate::metrics::Metrics`].
#[derive(Clone, Debug)]
pub(crate) struct ConnectionMetrics {
    open: IntGauge,
    refused: IntCounter,
    closed_idle: IntCounterVec,
}

impl ConnectionMetrics {
    pub(crate) fn new() -> prometheus::Result<Self> {
        Ok(Self {
            open: IntGauge::new(
                "zeroscale_activator_connections",
                "Client connections open, over every listener",
            )?,
            refused: IntCounter::new(
                "zeroscale_activator_connections_refused_total",
                "Client connections refused because --max-connections were open",
            )?,
            closed_idle: IntCounterVec::new(
                Opts::new(
                    "zeroscale_activator_connections_closed_idle_total",
                    "Client connections closed for idling, by reason (first_byte, keep_alive)",
                ),
                &["reason"],
            )?,
        })
    }

    pub(crate) fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.open.clone()))?;
        registry.register(Box::new(self.refused.clone()))?;
        registry.register(Box::new(self.closed_idle.clone()))?;
        Ok(())
    }

    fn closed_idle(&self, reason: IdleReason) -> IntCounter {
        self.closed_idle.with_label_values(&[match reason {
            IdleReason::FirstByte => "first_byte",
            IdleReason::KeepAlive => "keep_alive",
        }])
    }
}
