//! The outbound request: an inbound request made ready for a pod once, however many pods
//! it is offered to, and the one way it is taken apart for an attempt
//! ([`Outbound::into_attempt`]) and put back together when it comes back unsent
//! ([`Attempt::returned`], [`Attempt::unpark`]).

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::{self, Authority, PathAndQuery, Scheme};
use http::{Method, Request, Uri, Version};
use hyper::body::{Body, Incoming};
use hyper::upgrade::OnUpgrade;

use super::headers::{Message, add_forwarded, is_upgrade_request, join_cookies, strip_hop_by_hop};
use crate::body::{ParkedBody, RequestBody, unpark};
use crate::errors::ActivatorError;

/// A request made ready for a pod: hop-by-hop headers gone, `X-Forwarded-*` set, its URI
/// the origin form (path and query), the pod's address still to come. Built once per
/// request however many pods it is sent to.
#[derive(Debug)]
pub(crate) struct Outbound {
    parts: Parts,
    body: Incoming,
    upgrade: Option<OnUpgrade>,
    /// Most request body bytes the pod is sent (`u64::MAX`: no limit).
    body_limit: u64,
    retry_unsent: bool,
}

impl Outbound {
    /// Prepares `req`, from `client_addr`, which reached the activator over `scheme`.
    ///
    /// - The Host header is kept (taken from the URI's authority for an HTTP/2 client,
    ///   which sends no Host); the URI becomes the pod's when sent.
    /// - Hop-by-hop headers go: `Connection` and every header it lists, `Keep-Alive`,
    ///   `Proxy-Connection`, `Proxy-Authenticate`, `Proxy-Authorization`, `Trailer`,
    ///   `Transfer-Encoding`, `TE` except `TE: trailers`, and `Upgrade` unless this is
    ///   an upgrade (HTTP/1.1, `Connection: upgrade` and an `Upgrade` other than h2c).
    /// - Split `Cookie` lines (HTTP/2 clients) are joined into one.
    /// - `X-Forwarded-For` gets the client's IP appended (or set). `X-Forwarded-Proto`
    ///   and `X-Forwarded-Host` are set, to `scheme` and the Host, only when absent: a
    ///   proxy in front of the activator, such as an ingress ending TLS, knows the
    ///   client's scheme and host better. The caller removes them first when the
    ///   connection is not from a trusted proxy (`server`, [`super::strip_forwarded`]),
    ///   so only a trusted proxy's values reach the pod.
    ///
    /// Fails for CONNECT (the activator is no tunnel to arbitrary places) and for a
    /// target that is not a path (`OPTIONS *`).
    pub(crate) fn new(
        req: Request<Incoming>,
        client_addr: SocketAddr,
        scheme: &str,
    ) -> Result<Self, ActivatorError> {
        if req.method() == Method::CONNECT {
            return Err(ActivatorError::Unsupported("CONNECT requests"));
        }
        let (mut parts, body) = req.into_parts();
        let path_and_query = match parts.uri.path_and_query() {
            Some(target) if target.as_str().starts_with('/') => target.clone(),
            Some(_) => {
                return Err(ActivatorError::Unsupported(
                    "requests whose target is not a path",
                ));
            }
            None => PathAndQuery::from_static("/"),
        };

        let headers = &mut parts.headers;
        if !headers.contains_key(header::HOST)
            && let Some(authority) = parts.uri.authority()
            && let Ok(host) = HeaderValue::from_str(authority.as_str())
        {
            headers.insert(header::HOST, host);
        }
        let upgrade = if is_upgrade_request(parts.version, headers) {
            parts.extensions.remove::<OnUpgrade>()
        } else {
            None
        };
        // Nothing hyper's server put there means anything to its client.
        parts.extensions.clear();
        strip_hop_by_hop(headers, Message::Request, upgrade.is_some());
        join_cookies(headers);
        add_forwarded(headers, client_addr.ip(), scheme);
        // What an HTTP/1.1 connection of the client's own sends as is; the shared pool
        // puts the pod's address in front.
        parts.uri = Uri::from(path_and_query);

        Ok(Self {
            parts,
            body,
            upgrade,
            body_limit: u64::MAX,
            retry_unsent: false,
        })
    }

    /// Refuses bodies longer than `limit` bytes: at once when the declared length is
    /// larger, else the send fails with [`ActivatorError::BodyTooLarge`] when the
    /// streamed body passes the limit.
    pub(crate) fn with_body_limit(mut self, limit: u64) -> Result<Self, ActivatorError> {
        if self.body.size_hint().lower() > limit {
            return Err(ActivatorError::BodyTooLarge { limit });
        }
        self.body_limit = limit;
        Ok(self)
    }

    /// Asks [`super::Forwarder::send`] to hand the request back when no byte of it
    /// reached the pod, at the cost of a copy of the request head. Set it when another
    /// pod could take the request.
    pub(crate) fn retry_unsent(mut self) -> Self {
        self.retry_unsent = true;
        self
    }

    /// Whether a send that failed before any byte reached the pod hands it back.
    pub(super) fn is_retryable(&self) -> bool {
        self.retry_unsent
    }

    /// Whether the request asks to switch protocols (a WebSocket).
    pub(super) fn is_upgrade(&self) -> bool {
        self.upgrade.is_some()
    }

    /// Whether the client spoke HTTP/1.x, so that its request can go over an HTTP/1.1
    /// connection as it is.
    pub(super) fn is_http1(&self) -> bool {
        self.parts.version <= Version::HTTP_11
    }

    /// `http://<pod>/<path?query>`, the URI the shared pool sends the request to.
    pub(super) fn pod_uri(&self, pod: SocketAddr) -> Result<Uri, ActivatorError> {
        // Always there: `new` made the URI a path and query.
        let path_and_query = self.parts.uri.path_and_query().cloned();
        pod_uri(
            pod,
            path_and_query.unwrap_or_else(|| PathAndQuery::from_static("/")),
        )
    }

    /// Takes the request apart for one attempt: the request the pod's client is given,
    /// as `version`, and what stays behind ([`Attempt`]).
    ///
    /// A connection that `hands_back_unsent` (an HTTP/1.1 connection of the client's
    /// own, whose `try_send_request` returns a request it could not write) needs nothing
    /// kept. Otherwise a retryable request keeps a copy of its head and parks its body,
    /// so that it can be taken back if the pod's client never started on it.
    pub(super) fn into_attempt(
        self,
        version: Version,
        hands_back_unsent: bool,
    ) -> (Request<RequestBody>, Attempt) {
        let Self {
            parts,
            body,
            upgrade,
            body_limit,
            retry_unsent,
        } = self;
        let (mut head, body, parked) = if retry_unsent && !hands_back_unsent {
            let parked: ParkedBody = Arc::new(Mutex::new(Some(body)));
            let body = RequestBody::parked(Arc::clone(&parked), body_limit);
            (parts.clone(), body, Some((parts, parked)))
        } else {
            (parts, RequestBody::live(body, body_limit), None)
        };
        head.version = version;
        let attempt = Attempt {
            upgrade,
            body_limit,
            retry_unsent,
            parked,
        };
        (Request::from_parts(head, body), attempt)
    }
}

/// What stays behind while a request is out with a pod: the client's side of an upgrade,
/// and what puts the request back together if it comes back unsent.
pub(super) struct Attempt {
    pub(super) upgrade: Option<OnUpgrade>,
    body_limit: u64,
    retry_unsent: bool,
    /// A retryable request's head, as it was, and its parked body.
    parked: Option<(Parts, ParkedBody)>,
}

impl Attempt {
    /// The request again, from what a connection handed back unwritten; none when its
    /// body is gone.
    pub(super) fn returned(self, request: Request<RequestBody>) -> Option<Outbound> {
        let (parts, body) = request.into_parts();
        let body = body.into_live()?;
        Some(self.rebuild(parts, body))
    }

    /// The request again, from its kept head and parked body, when it was retryable and
    /// the pod's client never started on the body.
    pub(super) fn unpark(mut self) -> Option<Outbound> {
        let (parts, parked) = self.parked.take()?;
        let body = unpark(&parked)?;
        Some(self.rebuild(parts, body))
    }

    fn rebuild(self, parts: Parts, body: Incoming) -> Outbound {
        Outbound {
            parts,
            body,
            upgrade: self.upgrade,
            body_limit: self.body_limit,
            retry_unsent: self.retry_unsent,
        }
    }
}

/// `http://<pod>/<path?query>`.
pub(super) fn pod_uri(
    pod: SocketAddr,
    path_and_query: PathAndQuery,
) -> Result<Uri, ActivatorError> {
    // "[v6]:port" without scope id fits in 47 bytes; the copy into the authority is the
    // one allocation.
    let mut buffer = [0u8; 64];
    let capacity = buffer.len();
    let mut cursor = &mut buffer[..];
    let written = match pod {
        SocketAddr::V4(pod) => write!(cursor, "{pod}"),
        SocketAddr::V6(pod) => write!(cursor, "[{}]:{}", pod.ip(), pod.port()),
    };
    let len = capacity - cursor.len();
    let invalid = |_| ActivatorError::Upstream(format!("invalid pod address {pod}").into());
    written.map_err(|_| ActivatorError::Upstream("pod address too long".into()))?;
    let authority = Authority::try_from(&buffer[..len]).map_err(invalid)?;
    let mut parts = uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority);
    parts.path_and_query = Some(path_and_query);
    Uri::from_parts(parts)
        .map_err(|_| ActivatorError::Upstream(format!("invalid pod URI for {pod}").into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_uri_brackets_ipv6() {
        let path = PathAndQuery::from_static("/a?b=c");
        let v4 = pod_uri("10.1.2.3:8080".parse().expect("address"), path.clone());
        assert_eq!(v4.expect("uri"), "http://10.1.2.3:8080/a?b=c");
        let v6 = pod_uri("[fd00::1]:8080".parse().expect("address"), path);
        assert_eq!(v6.expect("uri"), "http://[fd00::1]:8080/a?b=c");
    }
}
