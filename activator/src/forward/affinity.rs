//! The per-connection path: a keep-alive HTTP/1.1 client connection's own connection to
//! the pod its requests go to ([`Affinity`]), opened from its second request on, so its
//! requests pass between two connections with no pool lookups or copied heads.

use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::uri::PathAndQuery;
use http::{Response, Version};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::client::legacy::connect::HttpConnector;
use tracing::debug;
use zeroscale_admin::process::ErrorChain;

use super::classify::classify_chain;
use super::outbound::{Outbound, pod_uri};
use crate::body::RequestBody;
use crate::errors::ActivatorError;

/// One client connection's own connection to the pod its requests last went to.
///
/// A keep-alive client sends its requests one after another, and with one pod (or a
/// pod it keeps being given) each goes over the same pod connection: the exchange stays
/// between two connections, without the shared pool's lookups and locking. Dropped with
/// the client connection, closing the pod connection.
#[derive(Debug, Default)]
pub struct Affinity {
    state: Mutex<AffinityState>,
}

#[derive(Debug, Default)]
struct AffinityState {
    /// The client connection has sent a request before.
    seen_one: bool,
    connection: Option<(SocketAddr, http1::SendRequest<RequestBody>)>,
}

/// What became of a request offered to a client connection's own pod connection.
pub(super) enum Dedicated {
    /// The pod answered, or the exchange failed after the request went out.
    Answered(Result<Response<Incoming>, ActivatorError>),
    /// Connecting to the pod failed: no byte of the request reached it.
    ConnectFailed(ActivatorError, Outbound),
    /// The shared pool is to send it.
    Pooled(Outbound),
}

impl Affinity {
    /// The pod this connection's requests last went to over its own connection.
    pub(crate) fn pod(&self) -> Option<SocketAddr> {
        self.lock().connection.as_ref().map(|(pod, _)| *pod)
    }

    /// Sends `outbound` over this client connection's own connection to `pod`, opening
    /// it with `connector` if this is not the client connection's first request, and
    /// waits at most `timeout` for the response headers; hands the request back for the
    /// pool when the connection is to another pod or turned out closed before the
    /// request went out.
    pub(super) async fn send(
        &self,
        connector: &HttpConnector,
        outbound: Outbound,
        pod: SocketAddr,
        timeout: Duration,
    ) -> Dedicated {
        let (reusable, open_one) = self.take(pod);
        let mut sender = match reusable {
            Some(sender) => sender,
            None if open_one => match open(connector, pod).await {
                Ok(sender) => sender,
                Err(error) => return Dedicated::ConnectFailed(error, outbound),
            },
            None => return Dedicated::Pooled(outbound),
        };
        // The pod's connection may have been closed since its last answer; that shows
        // here, before the request is handed over.
        if sender.ready().await.is_err() {
            return Dedicated::Pooled(outbound);
        }
        // HTTP/1.1 to a pod on a connection of its own: origin-form target, as is.
        let (request, attempt) = outbound.into_attempt(Version::HTTP_11, true);
        let sent = tokio::time::timeout(timeout, sender.try_send_request(request)).await;
        match sent {
            Ok(Ok(response)) => {
                self.put(pod, sender);
                Dedicated::Answered(Ok(response))
            }
            Ok(Err(mut failed)) => match failed.take_message() {
                // Not written: the connection closed under it. The pool takes it.
                Some(request) => match attempt.returned(request) {
                    Some(outbound) => Dedicated::Pooled(outbound),
                    None => Dedicated::Answered(Err(ActivatorError::Upstream(
                        failed.into_error().into(),
                    ))),
                },
                None => Dedicated::Answered(Err(classify_chain(failed.into_error().into()))),
            },
            Err(_elapsed) => Dedicated::Answered(Err(ActivatorError::UpstreamTimeout(timeout))),
        }
    }

    /// Takes the connection to `pod` if there is one; otherwise says whether to open
    /// one: not for a client connection's first request, nor while a connection to
    /// another pod is still open (that request goes through the pool).
    fn take(&self, pod: SocketAddr) -> (Option<http1::SendRequest<RequestBody>>, bool) {
        let mut state = self.lock();
        let repeat = std::mem::replace(&mut state.seen_one, true);
        match state.connection.take() {
            Some((to, sender)) if to == pod && !sender.is_closed() => (Some(sender), false),
            Some((to, sender)) if !sender.is_closed() => {
                state.connection = Some((to, sender));
                (None, false)
            }
            _ => (None, repeat),
        }
    }

    fn put(&self, pod: SocketAddr, sender: http1::SendRequest<RequestBody>) {
        self.lock().connection = Some((pod, sender));
    }

    fn lock(&self) -> MutexGuard<'_, AffinityState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Opens an HTTP/1.1 connection to `pod` with the pools' connector (its timeout and
/// socket options), its driver running in a task of its own.
async fn open(
    connector: &HttpConnector,
    pod: SocketAddr,
) -> Result<http1::SendRequest<RequestBody>, ActivatorError> {
    let uri = pod_uri(pod, PathAndQuery::from_static("/"))?;
    let stream = tower_service::Service::call(&mut connector.clone(), uri)
        .await
        .map_err(|error| ActivatorError::UpstreamConnect(error.into()))?;
    let (sender, connection) = http1::handshake(stream)
        .await
        .map_err(|error| ActivatorError::UpstreamConnect(error.into()))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            debug!(error = %ErrorChain(&error), "connection to a pod ended with an error");
        }
    });
    Ok(sender)
}
