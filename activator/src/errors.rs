//! The one place where an activator failure becomes an HTTP answer.
//!
//! Every step of the pipeline fails with a small leaf error ([`RouteError`],
//! [`CapacityError`], the forwarding failures below); [`ActivatorError`] gathers them and
//! [`ActivatorError::into_response`] turns one into a plain-text answer: a sentence for
//! the human reading it, the status a client or load balancer acts on, `Retry-After`
//! when trying again soon can succeed, and an `x-zeroscale-error` header naming the
//! cause with the same fixed label the metrics use.
//!
//! The answer's body is a [`ResponseBody`], the type forwarded responses have too, so a
//! handler returns one type whether the pod answered or the activator did.

use std::error::Error as StdError;
use std::time::Duration;

use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};

use crate::auth::AuthError;
use crate::body::ResponseBody;
use crate::capacity::CapacityError;
use zeroscale_api::routing::RouteError;

/// Any error, boxed: the cause of a failure talking to a pod, kept for logs.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// The header that names the cause of an answer the activator made itself.
pub const ERROR_HEADER: HeaderName = HeaderName::from_static("x-zeroscale-error");

/// Seconds a client should wait before retrying when the queue is full or the activator
/// drains: capacity frees up, or another activator replica takes over, within moments.
const RETRY_SOON: HeaderValue = HeaderValue::from_static("1");

/// Seconds a client should wait before retrying a Function that cannot start: that
/// takes a fix or a restart, not a moment.
const RETRY_LATER: HeaderValue = HeaderValue::from_static("5");

/// Why the activator answered a request itself instead of passing on a pod's answer.
/// Each Display is a plain sentence fit for the body of the answer; sources are kept for
/// logs and never shown to the client.
#[derive(Debug, thiserror::Error)]
pub enum ActivatorError {
    /// No Function answers on the Host and path (404).
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The Function had no pod for the request: queue full (503), waited too long (504)
    /// or cannot start (503).
    #[error(transparent)]
    Capacity(#[from] CapacityError),
    /// The Function's `spec.auth` refused the request (401 or 403, with a
    /// `WWW-Authenticate` challenge).
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The request has more than one Host header (400): which one names the Function is
    /// ambiguous, and proxies before the activator may have read the other.
    #[error("the request has more than one Host header")]
    DuplicateHost,
    /// The request body is larger than the Function accepts (413).
    #[error("the request body is larger than the {limit} bytes this Function accepts")]
    BodyTooLarge { limit: u64 },
    /// A request the activator does not forward, such as CONNECT (501).
    #[error("the activator does not forward {0}")]
    Unsupported(&'static str),
    /// Reading the request body from the client failed, usually because the client went
    /// away (400).
    #[error("the request body could not be read")]
    RequestBody(#[source] BoxError),
    /// The pod could not be reached, or it closed the connection before the request was
    /// written: no byte of the request reached it, so another pod may take it (502).
    #[error("the Function's pod could not be reached")]
    UpstreamConnect(#[source] BoxError),
    /// The pod took longer than this to start its response (504).
    #[error("the Function's pod did not start its response within {0:?}")]
    UpstreamTimeout(Duration),
    /// The exchange with the pod failed after the request was sent (502).
    #[error("the Function's pod failed while answering")]
    Upstream(#[source] BoxError),
}

impl ActivatorError {
    /// The status of the answer.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Route(_) => StatusCode::NOT_FOUND,
            Self::Capacity(
                CapacityError::QueueFull
                | CapacityError::NotHeldWhileStarting
                | CapacityError::CannotStart(_),
            ) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Capacity(CapacityError::ActivationTimeout(_)) => StatusCode::GATEWAY_TIMEOUT,
            Self::Auth(auth) => auth.status(),
            Self::DuplicateHost => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
            Self::RequestBody(_) => StatusCode::BAD_REQUEST,
            Self::UpstreamConnect(_) | Self::Upstream(_) => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// A fixed label for metrics and the `x-zeroscale-error` header.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Route(route) => route.metric_label(),
            Self::Capacity(CapacityError::QueueFull) => "queue_full",
            Self::Capacity(CapacityError::NotHeldWhileStarting) => "not_held_while_starting",
            Self::Capacity(CapacityError::ActivationTimeout(_)) => "activation_timeout",
            Self::Capacity(CapacityError::CannotStart(_)) => "cannot_start",
            Self::Auth(auth) => auth.metric_label(),
            Self::DuplicateHost => "duplicate_host",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::Unsupported(_) => "unsupported_request",
            Self::RequestBody(_) => "request_body",
            Self::UpstreamConnect(_) => "upstream_connect",
            Self::UpstreamTimeout(_) => "upstream_timeout",
            Self::Upstream(_) => "upstream",
        }
    }

    /// The `Retry-After` of the answer, in seconds, when the client should try again.
    pub fn retry_after(&self) -> Option<HeaderValue> {
        match self {
            Self::Capacity(CapacityError::QueueFull | CapacityError::NotHeldWhileStarting) => {
                Some(RETRY_SOON)
            }
            Self::Capacity(CapacityError::CannotStart(_)) => Some(RETRY_LATER),
            _ => None,
        }
    }

    /// True when no byte of the request reached the pod, so the caller may send it to
    /// another pod ([`crate::forward::Forwarder::send`] hands the request back then).
    pub fn is_connect_failure(&self) -> bool {
        matches!(self, Self::UpstreamConnect(_))
    }

    /// The answer: the Display sentence as `text/plain`, the status, `Retry-After` when
    /// it applies, and `x-zeroscale-error: <metric_label>`. `Cache-Control: no-store`
    /// keeps a cache in front from serving, say, a 404 for a Function created a moment
    /// later.
    pub fn into_response<G>(self) -> Response<ResponseBody<G>> {
        let mut text = self.to_string();
        text.push('\n');
        let mut response = Response::new(ResponseBody::full(text));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(ERROR_HEADER, HeaderValue::from_static(self.metric_label()));
        if let Some(seconds) = self.retry_after() {
            headers.insert(header::RETRY_AFTER, seconds);
        }
        if let Self::Auth(auth) = &self {
            headers.insert(header::WWW_AUTHENTICATE, auth.challenge());
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;

    use http_body_util::BodyExt;

    use super::*;

    fn every_error() -> Vec<ActivatorError> {
        vec![
            RouteError::UnknownHost.into(),
            RouteError::AmbiguousShortName {
                name: Arc::from("echo"),
            }
            .into(),
            RouteError::NoRouteForPath {
                host: Arc::from("echo.default"),
            }
            .into(),
            CapacityError::QueueFull.into(),
            CapacityError::NotHeldWhileStarting.into(),
            CapacityError::ActivationTimeout(Duration::from_secs(30)).into(),
            CapacityError::CannotStart("ImagePullBackOff".into()).into(),
            AuthError::Missing.into(),
            AuthError::InvalidKey.into(),
            AuthError::InvalidToken(crate::auth::TokenError::Expired).into(),
            AuthError::Forbidden.into(),
            ActivatorError::DuplicateHost,
            ActivatorError::BodyTooLarge { limit: 1024 },
            ActivatorError::Unsupported("CONNECT requests"),
            ActivatorError::RequestBody("client went away".into()),
            ActivatorError::UpstreamConnect("connection refused".into()),
            ActivatorError::UpstreamTimeout(Duration::from_millis(200)),
            ActivatorError::Upstream("connection reset".into()),
        ]
    }

    #[test]
    fn each_error_answers_with_its_status_label_and_retry_after() {
        let expected = [
            (404, "unknown_host", None),
            (404, "ambiguous_short_name", None),
            (404, "no_route_for_path", None),
            (503, "queue_full", Some("1")),
            (503, "not_held_while_starting", Some("1")),
            (504, "activation_timeout", None),
            (503, "cannot_start", Some("5")),
            (401, "unauthenticated", None),
            (401, "invalid_api_key", None),
            (401, "invalid_token", None),
            (403, "forbidden", None),
            (400, "duplicate_host", None),
            (413, "body_too_large", None),
            (501, "unsupported_request", None),
            (400, "request_body", None),
            (502, "upstream_connect", None),
            (504, "upstream_timeout", None),
            (502, "upstream", None),
        ];
        let errors = every_error();
        assert_eq!(errors.len(), expected.len());
        for (error, (status, label, retry_after)) in errors.into_iter().zip(expected) {
            assert_eq!(error.status().as_u16(), status, "{error:?}");
            assert_eq!(error.metric_label(), label, "{error:?}");
            let response = error.into_response::<()>();
            assert_eq!(response.status().as_u16(), status, "{label}");
            assert_eq!(response.headers()[&ERROR_HEADER], label);
            assert_eq!(
                response
                    .headers()
                    .get(header::RETRY_AFTER)
                    .map(|value| value.to_str().expect("ascii")),
                retry_after,
                "{label}"
            );
        }
    }

    #[test]
    fn metric_labels_are_distinct() {
        let labels: HashSet<_> = every_error().iter().map(|e| e.metric_label()).collect();
        assert_eq!(labels.len(), every_error().len());
    }

    #[test]
    fn only_connect_failures_may_go_to_another_pod() {
        let retryable: Vec<_> = every_error()
            .iter()
            .filter(|e| e.is_connect_failure())
            .map(|e| e.metric_label())
            .collect();
        assert_eq!(retryable, ["upstream_connect"]);
    }

    #[tokio::test]
    async fn error_answer_is_a_plain_sentence_that_hides_the_source() {
        let error = ActivatorError::UpstreamConnect("connect to 10.0.0.7:8080 refused".into());
        let response = error.into_response::<()>();
        let headers = response.headers();
        assert_eq!(headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        let body = response
            .into_body()
            .collect()
            .await
            .expect("a local body cannot fail")
            .to_bytes();
        assert_eq!(&body[..], b"the Function's pod could not be reached\n");
    }

    #[tokio::test]
    async fn route_errors_keep_their_own_sentence() {
        let error: ActivatorError = RouteError::AmbiguousShortName {
            name: Arc::from("echo"),
        }
        .into();
        let body = error
            .into_response::<()>()
            .into_body()
            .collect()
            .await
            .expect("a local body cannot fail")
            .to_bytes();
        assert_eq!(
            std::str::from_utf8(&body).expect("utf-8"),
            "several Functions are named echo; call echo.<namespace> to say which one you mean\n"
        );
    }
}
