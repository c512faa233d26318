//! The call a tick makes: an HTTP request to the Function through the activator (so a
//! tick wakes a Function at zero like any request), with CloudEvents binary-mode
//! headers, and the [`Invoker`] that sends it.

use std::time::Duration;

use http::header::{HOST, HeaderName, HeaderValue};
use http::{Method, Request};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jiff::Timestamp;
use zeroscale_api::Schedule;

use crate::plan::{Attempt, event_id};

/// One tick's request, ready to send (again, on a retry).
#[derive(Debug, Clone)]
pub struct Call {
    pub method: Method,
    /// The Host the activator routes on: `<function>.<namespace>`.
    pub host: String,
    pub path: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    /// Longest one attempt may take until its response starts.
    pub timeout: Duration,
}

impl Call {
    /// The value of header `name` (such as `ce-id`), or "" when absent or not text.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .and_then(|(_, v)| v.to_str().ok())
            .unwrap_or_default()
    }
}

/// The Function a tick is for, as the call needs it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target<'a> {
    pub(crate) namespace: &'a str,
    pub(crate) name: &'a str,
    pub(crate) uid: &'a str,
}

impl Call {
    /// The request of `schedule`'s `tick` to `target`, with the CloudEvents headers:
    /// `ce-time` is the scheduled time, `ce-id` is [`event_id`].
    pub(crate) fn new(
        target: Target<'_>,
        schedule: &Schedule,
        tick: Timestamp,
        timeout: Duration,
    ) -> Result<Self, String> {
        let method = Method::from_bytes(schedule.method.as_bytes())
            .map_err(|e| format!("method {:?}: {e}", schedule.method))?;
        let mut headers = Vec::with_capacity(schedule.headers.len() + 6);
        for (name, value) in &schedule.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| format!("header name {name:?}: {e}"))?;
            let value =
                HeaderValue::from_str(value).map_err(|e| format!("value of header {name}: {e}"))?;
            headers.push((name, value));
        }
        let cloud_event = [
            ("ce-specversion", "1.0".to_owned()),
            ("ce-type", "dev.zeroscale.schedule".to_owned()),
            (
                "ce-source",
                format!(
                    "/namespaces/{}/functions/{}/schedules/{}",
                    target.namespace, target.name, schedule.name
                ),
            ),
            ("ce-id", event_id(target.uid, &schedule.name, tick)),
            ("ce-time", tick.to_string()),
        ];
        for (name, value) in cloud_event {
            let value = HeaderValue::from_str(&value).map_err(|e| format!("header {name}: {e}"))?;
            headers.push((HeaderName::from_static(name), value));
        }
        Ok(Self {
            method,
            host: format!("{}.{}", target.name, target.namespace),
            path: schedule.path.clone(),
            headers,
            body: Bytes::from(schedule.body.clone().unwrap_or_default()),
            timeout,
        })
    }
}

/// Sends one attempt of a call.
pub trait Invoker: Send + Sync + 'static {
    fn call(&self, call: &Call) -> impl Future<Output = Attempt> + Send;
}

/// Sends calls to an activator address over HTTP/1.1, with the Function's Host.
pub struct HttpInvoker {
    http: HttpClient<HttpConnector, Full<Bytes>>,
    /// `host:port` of the activator (its Service in a cluster, the local listener in
    /// `zeroscale dev`).
    address: String,
}

impl HttpInvoker {
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            http: HttpClient::builder(TokioExecutor::new()).build_http(),
            address: address.into(),
        }
    }
}

impl Invoker for HttpInvoker {
    async fn call(&self, call: &Call) -> Attempt {
        let uri = format!("http://{}{}", self.address, call.path);
        let mut request = match Request::builder()
            .method(call.method.clone())
            .uri(&uri)
            .body(Full::new(call.body.clone()))
        {
            Ok(request) => request,
            Err(e) => return Attempt::Failed(format!("{uri}: {e}")),
        };
        let headers = request.headers_mut();
        for (name, value) in &call.headers {
            headers.append(name.clone(), value.clone());
        }
        match HeaderValue::from_str(&call.host) {
            Ok(host) => headers.insert(HOST, host),
            Err(e) => return Attempt::Failed(format!("host {:?}: {e}", call.host)),
        };
        match tokio::time::timeout(call.timeout, self.http.request(request)).await {
            Ok(Ok(response)) => Attempt::Status(response.status().as_u16()),
            Ok(Err(e)) => Attempt::Failed(format!(
                "{uri}: {}",
                zeroscale_admin::process::ErrorChain(&e)
            )),
            Err(_) => Attempt::Failed(format!("{uri}: no answer within {:?}", call.timeout)),
        }
    }
}
