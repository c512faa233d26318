//! The dispatcher of this activator replica: keeps a [`Dispatcher`] consuming for
//! every Function the replica knows, and delivers through the replica's own listener on
//! loopback ([`Loopback`]), so a delivery is an ordinary request. Callbacks go out from
//! here too, to addresses the [`AddressPolicy`] allows only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use zeroscale_admin::process;
use zeroscale_queue::dispatch::{CallbackError, Deliver, Delivery, Dispatcher, Response, Target};

use super::DELIVERY_SLACK;
use super::address::AddressPolicy;
use crate::errors::ERROR_HEADER;
use crate::functions::{Functions, Listener};

/// Largest response body kept for a callback.
const MAX_RESPONSE_BODY: usize = 1024 * 1024;

/// Longest one callback request may take.
const CALLBACK_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the set of Functions to consume for is brought up to date.
const SYNC_PERIOD: Duration = Duration::from_secs(1);

/// Delivers to the activator's own listener and sends callbacks.
#[derive(Debug)]
pub struct Loopback {
    client: Client<HttpConnector, Full<Bytes>>,
    listener: SocketAddr,
    functions: Arc<Functions>,
    callbacks: AddressPolicy,
}

impl Loopback {
    /// Delivers to `listener` (the in-cluster listener; an unspecified address means
    /// loopback), reading request timeouts from `functions`.
    pub fn new(listener: SocketAddr, functions: Arc<Functions>, callbacks: AddressPolicy) -> Self {
        let mut listener = listener;
        if listener.ip().is_unspecified() {
            listener.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
            listener,
            functions,
            callbacks,
        }
    }
}

fn header_pair(name: &str, value: &str) -> Option<(HeaderName, HeaderValue)> {
    Some((
        HeaderName::from_bytes(name.as_bytes()).ok()?,
        HeaderValue::from_str(value).ok()?,
    ))
}

impl Deliver for Loopback {
    async fn deliver(&self, delivery: Delivery) -> Response {
        let host = format!("{}.{}", delivery.function.name, delivery.function.namespace);
        let timeout = self
            .functions
            .route(Listener::Cluster, &host, &delivery.path)
            .map_or(Duration::from_secs(300), |function| {
                function.settings().request_timeout
            })
            + DELIVERY_SLACK;
        let uri = format!("http://{}{}", self.listener, delivery.path);
        let mut request = Request::new(Full::new(delivery.body));
        *request.method_mut() =
            Method::from_bytes(delivery.method.as_bytes()).unwrap_or(Method::POST);
        match uri.parse::<Uri>() {
            Ok(uri) => *request.uri_mut() = uri,
            Err(error) => {
                return Response::NoResponse(format!("the stored path is not valid: {error}"));
            }
        }
        let headers = request.headers_mut();
        for (name, value) in &delivery.headers {
            if let Some((name, value)) = header_pair(name, value) {
                headers.append(name, value);
            }
        }
        if let Ok(host) = HeaderValue::from_str(&host) {
            headers.insert(header::HOST, host);
        }
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|error| format!("the activator could not be reached: {error}"))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_RESPONSE_BODY)
                .collect()
                .await
                .map(|collected| collected.to_bytes())
                .unwrap_or_default();
            if let Some(cause) = parts.headers.get(ERROR_HEADER) {
                return Err(format!(
                    "no response from the Function: {} ({})",
                    parts.status,
                    String::from_utf8_lossy(cause.as_bytes())
                ));
            }
            let headers = parts
                .headers
                .iter()
                .filter_map(|(name, value)| {
                    Some((name.to_string(), value.to_str().ok()?.to_owned()))
                })
                .collect();
            Ok(Response::Answered {
                status: parts.status.as_u16(),
                headers,
                body,
            })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(response)) => response,
            Ok(Err(reason)) => Response::NoResponse(reason),
            Err(_) => Response::NoResponse(format!("no response within {timeout:?}")),
        }
    }

    async fn callback(&self, url: String, outcome: Bytes) -> Result<(), CallbackError> {
        let uri: Uri = url
            .parse()
            .map_err(|_| CallbackError::Refused(format!("{url:?} is not a URL")))?;
        if uri.scheme_str() != Some("http") {
            return Err(CallbackError::Refused(
                "only http:// callback URLs are supported".into(),
            ));
        }
        let host = uri
            .host()
            .ok_or_else(|| CallbackError::Refused(format!("{url:?} has no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(80);
        let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|error| CallbackError::Failed(format!("{host} does not resolve: {error}")))?
            .collect();
        // Every address is checked, and the request goes to a checked one, so a name
        // that resolves differently the next time cannot lead elsewhere.
        for address in &addresses {
            if let Some(why) = self.callbacks.refusal(address.ip()) {
                return Err(CallbackError::Refused(format!(
                    "{host} resolves to {}, {why}",
                    address.ip()
                )));
            }
        }
        let address = addresses
            .first()
            .ok_or_else(|| CallbackError::Failed(format!("{host} has no address")))?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let mut request = Request::new(Full::new(outcome));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = format!("http://{address}{path}")
            .parse()
            .map_err(|_| CallbackError::Refused(format!("{url:?} has an invalid path")))?;
        let authority = uri.authority().map_or(host.clone(), |a| a.to_string());
        let headers = request.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&authority) {
            headers.insert(header::HOST, value);
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let response = tokio::time::timeout(CALLBACK_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| CallbackError::Failed(format!("no answer within {CALLBACK_TIMEOUT:?}")))?
            .map_err(|error| CallbackError::Failed(error.to_string()))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(CallbackError::Failed(format!(
                "answered {}",
                response.status()
            )))
        }
    }
}

/// Keeps `dispatcher` consuming for every Function in `functions` whose `spec.async` is
/// valid, until `shutdown`.
pub async fn run(
    functions: Arc<Functions>,
    dispatcher: Dispatcher<Loopback>,
    shutdown: impl Future<Output = ()>,
) {
    process::every(SYNC_PERIOD, shutdown, async move || {
        let targets = functions
            .all()
            .iter()
            .filter_map(|function| {
                let settings = function.settings();
                Some(Target {
                    function: function.key.clone(),
                    policy: settings.calls.policy.clone().ok()?,
                    queues: settings.calls.queues.clone(),
                })
            })
            .collect();
        dispatcher.sync(targets);
    })
    .await;
}
