//! Asynchronous calls in the request path: a request with `Prefer: respond-async` is
//! stored in JetStream and answered `202 Accepted` with `X-Call-Id` and `Location` once
//! the broker acknowledged it; `GET` / `DELETE /.zeroscale/calls/<id>` on the Function's
//! own host read and cancel a call. [`is_async`] is the only cost for other requests.
//!
//! Delivery runs in [`dispatch`]: each activator replica pulls from the Functions'
//! shared consumers and sends each call to its own listener on loopback, so it takes the
//! normal path (wakes at zero, containerConcurrency, counted for the autoscaler).

pub mod address;
pub mod args;
pub mod dispatch;

use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Incoming};
use zeroscale_admin::process::ErrorChain;
use zeroscale_api::calls::AsyncPolicy;
use zeroscale_api::{Function, FunctionSpec};
use zeroscale_queue::calls::{CallStore, Cancelled, NewCall};
use zeroscale_queue::dispatch::QueueTarget;

use crate::body::ResponseBody;
use crate::errors::ERROR_HEADER;
use crate::functions::FunctionState;

/// Path segment under which calls are read and cancelled.
pub const CALLS_PATH: &str = "/.zeroscale/calls/";

/// A Function's settings for asynchronous calls and queue triggers.
#[derive(Debug, Clone)]
pub(crate) struct CallSettings {
    /// `spec.async`, or why it is invalid.
    pub policy: Result<AsyncPolicy, String>,
    pub path_prefix: Option<String>,
    /// Queue triggers whose settings are valid.
    pub queues: Vec<QueueTarget>,
}

impl CallSettings {
    pub(crate) fn from_function(function: &Function) -> Self {
        let spec: &FunctionSpec = &function.spec;
        Self {
            policy: spec.async_calls.policy().map_err(|e| e.to_string()),
            path_prefix: spec.routing.path_prefix.clone(),
            queues: spec
                .triggers
                .queues
                .iter()
                .filter_map(|queue| {
                    Some(QueueTarget {
                        name: queue.name.clone(),
                        stream: queue.stream.clone(),
                        subject: queue.subject.clone(),
                        path: queue.path.clone(),
                        retry: spec.queue_retry(queue)?,
                    })
                })
                .collect(),
        }
    }

    /// Where a call's state is read: under the Function's path prefix, so that the
    /// request routes back to the same Function.
    fn location(&self, id: &str) -> String {
        let prefix = self
            .path_prefix
            .as_deref()
            .unwrap_or("")
            .trim_end_matches('/');
        format!("{prefix}{CALLS_PATH}{id}")
    }
}

/// The broker connection of the request path; disabled without `--nats-url`.
#[derive(Debug, Clone, Default)]
pub struct AsyncCalls {
    store: Option<CallStore>,
}

/// Whether the request is for this module: `Prefer: respond-async`, or a call's URL.
pub(crate) fn is_async(request: &Request<Incoming>) -> bool {
    request.uri().path().contains(CALLS_PATH)
        || request
            .headers()
            .get_all("prefer")
            .iter()
            .any(|value| prefers_async(value.as_bytes()))
}

/// Whether a `Prefer` value holds the `respond-async` preference (RFC 7240).
fn prefers_async(value: &[u8]) -> bool {
    String::from_utf8_lossy(value).split(',').any(|preference| {
        preference
            .split(';')
            .next()
            .is_some_and(|token| token.trim().eq_ignore_ascii_case("respond-async"))
    })
}

/// Request headers not stored with a call: about the connection or the async handling.
const NOT_STORED: [&str; 10] = [
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "prefer",
    "x-callback-url",
    "content-length",
];

impl AsyncCalls {
    /// Calls stored through `store`.
    pub fn new(store: CallStore) -> Self {
        Self { store: Some(store) }
    }

    /// Answers an async request or a call URL for `function`.
    pub(crate) async fn handle<G>(
        &self,
        function: &FunctionState,
        request: Request<Incoming>,
    ) -> Response<ResponseBody<G>> {
        let Some(store) = &self.store else {
            return answer(
                StatusCode::NOT_IMPLEMENTED,
                "async_disabled",
                "asynchronous calls are not enabled: start the activator with --nats-url (ZEROSCALE_NATS_URL) pointing at a NATS server with JetStream, e.g. with the chart's nats.enabled=true",
            );
        };
        // A copy, not the settings guard: that one must not be held across awaits.
        let settings = function.settings().calls.clone();
        let policy = match &settings.policy {
            Ok(policy) => policy,
            Err(reason) => {
                return answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "async_invalid",
                    &format!("this Function's spec.async is invalid: {reason}"),
                );
            }
        };
        let path = request.uri().path().to_owned();
        if let Some((_, id)) = path.rsplit_once(CALLS_PATH) {
            return self
                .call(store, function, policy, request.method(), id)
                .await;
        }
        let (parts, body) = request.into_parts();
        let limit = policy.max_body_bytes;
        if body.size_hint().lower() > limit as u64 {
            return too_large(limit);
        }
        let body = match Limited::new(body, limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) if error.is::<http_body_util::LengthLimitError>() => {
                return too_large(limit);
            }
            Err(error) => {
                tracing::debug!(function = %function.key, error = %ErrorChain(&*error), "async request body not read");
                return answer(
                    StatusCode::BAD_REQUEST,
                    "request_body",
                    "the request body could not be read",
                );
            }
        };
        let call = NewCall {
            method: parts.method.to_string(),
            path: parts
                .uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), ToString::to_string),
            headers: stored_headers(&parts.headers),
            body,
            idempotency_key: text(&parts.headers, "idempotency-key"),
            callback_url: text(&parts.headers, "x-callback-url"),
        };
        match store
            .accept(&function.key, policy.result_retention, call)
            .await
        {
            Ok(id) => {
                let mut response =
                    answer(StatusCode::ACCEPTED, "", &format!("call {id} accepted\n"));
                let headers = response.headers_mut();
                if let Ok(value) = HeaderValue::from_str(&id) {
                    headers.insert("x-call-id", value);
                }
                if let Ok(value) = HeaderValue::from_str(&settings.location(&id)) {
                    headers.insert(header::LOCATION, value);
                }
                headers.insert(
                    "preference-applied",
                    HeaderValue::from_static("respond-async"),
                );
                response
            }
            Err(error) => {
                tracing::warn!(function = %function.key, error = %ErrorChain(&error), "async call not stored");
                let mut response = answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "broker_unavailable",
                    &format!("the call was not stored: {}", ErrorChain(&error)),
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                response
            }
        }
    }

    /// `GET` or `DELETE` of one call.
    async fn call<G>(
        &self,
        store: &CallStore,
        function: &FunctionState,
        policy: &AsyncPolicy,
        method: &Method,
        id: &str,
    ) -> Response<ResponseBody<G>> {
        let retention = policy.result_retention;
        let unknown = || {
            answer(
                StatusCode::NOT_FOUND,
                "unknown_call",
                "no such call for this Function (or its state has expired)",
            )
        };
        let unavailable = |error: zeroscale_queue::Error| {
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "broker_unavailable",
                &format!("the call's state could not be read: {}", ErrorChain(&error)),
            )
        };
        if method == Method::GET {
            match store.state(&function.key, retention, id).await {
                Ok(Some(state)) => {
                    let body = serde_json::to_vec(&state).unwrap_or_default();
                    let mut response = Response::new(ResponseBody::full(body));
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    response
                        .headers_mut()
                        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    response
                }
                Ok(None) => unknown(),
                Err(error) => unavailable(error),
            }
        } else if method == Method::DELETE {
            match store.cancel(&function.key, retention, id).await {
                Ok(Cancelled::Done) => {
                    let mut response = Response::new(ResponseBody::full(""));
                    *response.status_mut() = StatusCode::NO_CONTENT;
                    response
                }
                Ok(Cancelled::Unknown) => unknown(),
                Ok(Cancelled::TooLate(phase)) => answer(
                    StatusCode::CONFLICT,
                    "call_not_cancellable",
                    &format!("the call is {phase:?} and can no longer be cancelled").to_lowercase(),
                ),
                Err(error) => unavailable(error),
            }
        } else {
            let mut response = answer(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "a call can be read (GET) or cancelled (DELETE)",
            );
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, DELETE"));
            response
        }
    }
}

fn too_large<G>(limit: usize) -> Response<ResponseBody<G>> {
    answer(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        &format!(
            "the request body is larger than the {limit} bytes this Function accepts for asynchronous calls (spec.async.maxBodyBytes)"
        ),
    )
}

fn text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .filter(|value| !value.is_empty())
        .map(str::to_owned)
}

fn stored_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| !NOT_STORED.contains(&name.as_str()))
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_owned())))
        .collect()
}

/// An answer the activator makes itself, as plain text, with `x-zeroscale-error: label`.
fn answer<G>(status: StatusCode, label: &'static str, text: &str) -> Response<ResponseBody<G>> {
    let mut response = Response::new(ResponseBody::full(format!("{}\n", text.trim_end())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if !label.is_empty() {
        headers.insert(ERROR_HEADER, HeaderValue::from_static(label));
    }
    response
}

/// Longest a delivery waits for the Function's response headers, beyond the Function's
/// own request timeout (which the activator enforces with a 504).
pub(crate) const DELIVERY_SLACK: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn respond_async_is_found_among_other_preferences() {
        assert!(prefers_async(b"respond-async"));
        assert!(prefers_async(b"return=minimal, respond-async; wait=10"));
        assert!(prefers_async(b"Respond-Async"));
        assert!(!prefers_async(b"return=representation"));
        assert!(!prefers_async(b"respond-asynchronously"));
    }

    #[test]
    fn hop_by_hop_and_async_headers_are_not_stored() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("hello.team"));
        headers.insert("prefer", HeaderValue::from_static("respond-async"));
        headers.insert("x-callback-url", HeaderValue::from_static("http://x/"));
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        assert_eq!(
            stored_headers(&headers),
            vec![("content-type".to_owned(), "text/plain".to_owned())]
        );
    }
}
