//! The console's invoke form: one request to a Function the console lists, sent through
//! the activator (never to any other address), answered for the page as JSON with the
//! response, how long it took and whether it was a cold start.

use std::time::{Duration, Instant};

use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

use super::Console;

/// Bytes of a response body the page is shown; the rest is cut.
const SHOWN_BODY_BYTES: usize = 4096;

/// Bytes of a response body read at most.
const READ_BODY_BYTES: usize = 1 << 20;

/// Longest an invocation may take, cold start included.
const TIMEOUT: Duration = Duration::from_secs(60);

/// What the form posts.
#[derive(Deserialize, Debug)]
struct Invocation {
    /// `namespace/name` of a Function the console lists.
    function: String,
    #[serde(default = "get")]
    method: String,
    #[serde(default = "root")]
    path: String,
    #[serde(default)]
    body: String,
}

fn get() -> String {
    "GET".into()
}

fn root() -> String {
    "/".into()
}

/// What the page is shown.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    /// Whether the body was cut at [`SHOWN_BODY_BYTES`].
    truncated: bool,
    duration_ms: f64,
    /// Whether the Function had no ready replica when the request was sent, so the
    /// activator held it while a replica started.
    cold_start: bool,
}

/// Sends the invocation in `request` (the form's JSON) to the activator at `activator`
/// (`host:port`) and answers the status and JSON body for the page.
pub(super) async fn invoke(
    console: &Console,
    activator: &str,
    request: &[u8],
) -> (StatusCode, String) {
    if !console.invoke_enabled() {
        return failure(
            StatusCode::FORBIDDEN,
            "invoke is disabled here (the operator enables it with --console-invoke)",
        );
    }
    let invocation: Invocation = match serde_json::from_slice(request) {
        Ok(invocation) => invocation,
        Err(error) => return failure(StatusCode::BAD_REQUEST, &format!("bad invocation: {error}")),
    };
    let Some((namespace, name)) = invocation.function.split_once('/') else {
        return failure(StatusCode::BAD_REQUEST, "function must be namespace/name");
    };
    let Some(function) = console.observation(namespace, name) else {
        return failure(
            StatusCode::NOT_FOUND,
            &format!("the console lists no Function {}", invocation.function),
        );
    };
    let Ok(method) = Method::from_bytes(invocation.method.to_ascii_uppercase().as_bytes()) else {
        return failure(StatusCode::BAD_REQUEST, "unknown method");
    };
    if !invocation.path.starts_with('/') {
        return failure(StatusCode::BAD_REQUEST, "path must start with /");
    }
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{activator}{}", invocation.path))
        .header(header::HOST, &function.host)
        .body(Full::new(Bytes::from(invocation.body)));
    let request = match request {
        Ok(request) => request,
        Err(error) => return failure(StatusCode::BAD_REQUEST, &format!("bad request: {error}")),
    };
    let cold_start = function.replicas == 0;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let started = Instant::now();
    let exchange = async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, READ_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((parts, body))
    };
    let (parts, body) = match tokio::time::timeout(TIMEOUT, exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(error)) => {
            return failure(
                StatusCode::BAD_GATEWAY,
                &format!("sending to the activator at {activator} failed: {error}"),
            );
        }
        Err(_) => return failure(StatusCode::GATEWAY_TIMEOUT, "no answer within 60 s"),
    };
    let duration = started.elapsed();
    let shown = &body[..body.len().min(SHOWN_BODY_BYTES)];
    let answer = Answer {
        status: parts.status.as_u16(),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_owned(), value)
            })
            .collect(),
        body: String::from_utf8_lossy(shown).into_owned(),
        truncated: shown.len() < body.len(),
        duration_ms: duration.as_secs_f64() * 1000.0,
        cold_start,
    };
    match serde_json::to_string(&answer) {
        Ok(json) => (StatusCode::OK, json),
        Err(error) => failure(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
    }
}

fn failure(status: StatusCode, reason: &str) -> (StatusCode, String) {
    (status, serde_json::json!({ "error": reason }).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::convert::Infallible;

    use std::net::SocketAddr;

    use hyper::body::Incoming;
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;

    use crate::console::Observation;

    /// A stand-in activator on 127.0.0.1:0 that answers with the Host and path it got.
    async fn activator() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let address: SocketAddr = listener.local_addr().expect("an address");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
                    let host = request.headers()[header::HOST]
                        .to_str()
                        .unwrap_or("")
                        .to_owned();
                    let path = request.uri().path().to_owned();
                    let body = request
                        .into_body()
                        .collect()
                        .await
                        .expect("a body")
                        .to_bytes();
                    let text = format!("{host} {path} {}", String::from_utf8_lossy(&body));
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(text))))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        address.to_string()
    }

    fn console(invoke: bool, replicas: i32) -> Console {
        let console = Console::new("test", invoke);
        console.record(
            1.0,
            vec![Observation {
                namespace: "default".into(),
                name: "hello".into(),
                host: "hello.default.localhost".into(),
                replicas,
                ..Observation::default()
            }],
        );
        console
    }

    fn json(text: &str) -> serde_json::Value {
        serde_json::from_str(text).expect("JSON")
    }

    #[tokio::test]
    async fn an_invocation_goes_through_the_activator_with_the_functions_host() {
        let activator = activator().await;
        let (status, text) = invoke(
            &console(true, 0),
            &activator,
            br#"{"function":"default/hello","method":"post","path":"/greet","body":"hi"}"#,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let answer = json(&text);
        assert_eq!(answer["status"], 200);
        assert_eq!(answer["body"], "hello.default.localhost /greet hi");
        assert_eq!(answer["coldStart"], true);
        assert_eq!(answer["truncated"], false);
    }

    #[tokio::test]
    async fn a_function_with_a_ready_replica_is_not_a_cold_start() {
        let activator = activator().await;
        let (_, text) = invoke(
            &console(true, 1),
            &activator,
            br#"{"function":"default/hello"}"#,
        )
        .await;
        assert_eq!(json(&text)["coldStart"], false, "{text}");
    }

    #[tokio::test]
    async fn only_listed_functions_are_invoked_and_only_when_enabled() {
        let activator = activator().await;
        let body = br#"{"function":"default/other"}"#;
        assert_eq!(
            invoke(&console(true, 1), &activator, body).await.0,
            StatusCode::NOT_FOUND
        );
        let (status, text) = invoke(
            &console(false, 1),
            &activator,
            br#"{"function":"default/hello"}"#,
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(text.contains("--console-invoke"), "{text}");
        let body = br#"{"function":"default/hello","path":"@evil.example/"}"#;
        assert_eq!(
            invoke(&console(true, 1), &activator, body).await.0,
            StatusCode::BAD_REQUEST
        );
    }
}
