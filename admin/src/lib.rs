//! The admin HTTP server every zeroscale binary runs: Prometheus metrics, liveness,
//! readiness, and JSON status routes a binary adds (the activator's `/stats`).
//!
//! | Route          | Answer                                                        |
//! |----------------|---------------------------------------------------------------|
//! | `GET /metrics` | the registry's metrics in the Prometheus text format          |
//! | `GET /healthz` | 200 `ok` until [`Liveness`] fails, then 503 and why           |
//! | `GET /readyz`  | 200 `ok` when [`Readiness`] says ready, else 503 and why not  |
//! | `GET <path>`   | JSON from a route added with [`AdminState::with_json_route`]  |
//! | `GET <path>?q` | JSON for the query, [`AdminState::with_query_json_route`]     |
//! | `GET <path>`   | a page added with [`AdminState::with_page`]; `/` redirects to the first |
//! | `POST <path>`  | the answer of a route added with [`AdminState::with_post_route`] |
//!
//! Any other path is 404 and any other method on these paths 405. HTTP/1.1 only.
//!
//! [`process`] holds the rest of what both binaries share: logging and the shutdown
//! signal; [`console`] the live console page and its state.

pub mod console;
pub mod process;

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Why the admin server could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("starting the admin server: reading its listening address")]
    ServeAdmin { source: std::io::Error },
}

/// Results of the admin server.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Produces the JSON body of a status route, fresh for each request.
pub type JsonProducer = Arc<dyn Fn() -> String + Send + Sync>;

/// Produces the JSON body of a route that reads the query string (None when the URI
/// has none), or why the query is wrong (a 400).
pub type QueryJsonProducer = Arc<dyn Fn(Option<&str>) -> Result<String, String> + Send + Sync>;
/// Answers a POST route from its request body: a status and a JSON body.
pub type PostHandler = Arc<
    dyn Fn(Bytes) -> std::pin::Pin<Box<dyn Future<Output = (StatusCode, String)> + Send>>
        + Send
        + Sync,
>;

/// Largest request body a POST route reads.
const MAX_POST_BYTES: usize = 64 * 1024;

/// How long shutdown waits for requests in flight before dropping their connections.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long to pause accepting after an error that is not about one connection
/// (such as running out of file descriptors), so as not to spin.
const ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

const PLAIN_TEXT: &str = "text/plain; charset=utf-8";

/// Whether the operator is ready, and if not, why; shared between the parts that
/// decide it and the `/readyz` route. Clones share one state.
#[derive(Clone, Debug)]
pub struct Readiness {
    // `None` when ready, else the reason it is not.
    state: Arc<watch::Sender<Option<Cow<'static, str>>>>,
}

impl Readiness {
    /// A readiness that starts out not ready, for `reason`.
    pub fn not_ready(reason: impl Into<Cow<'static, str>>) -> Self {
        let (state, _) = watch::channel(Some(reason.into()));
        Self {
            state: Arc::new(state),
        }
    }

    /// Marks the operator ready.
    pub fn set_ready(&self) {
        self.state.send_replace(None);
    }

    /// Marks the operator not ready, for `reason` (shown by `/readyz`).
    pub fn set_not_ready(&self, reason: impl Into<Cow<'static, str>>) {
        self.state.send_replace(Some(reason.into()));
    }

    /// Whether the operator is ready.
    pub fn is_ready(&self) -> bool {
        self.state.borrow().is_none()
    }

    /// Why the operator is not ready, or `None` when it is.
    pub fn reason(&self) -> Option<String> {
        self.state.borrow().as_deref().map(str::to_owned)
    }
}

/// Whether the process can still do its job by itself; shared between the part that
/// finds it cannot and the `/healthz` route. Once failed it stays failed, so that the
/// kubelet restarts the process. Clones share one state.
#[derive(Clone, Debug, Default)]
pub struct Liveness {
    failure: Arc<std::sync::OnceLock<String>>,
}

impl Liveness {
    /// A liveness that has not failed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks the process unable to recover by itself, for `reason` (shown by
    /// `/healthz`); the first reason given stays.
    pub fn fail(&self, reason: impl Into<String>) {
        let _ = self.failure.set(reason.into());
    }

    /// Why the process failed, or `None` while it has not.
    pub fn failure(&self) -> Option<&str> {
        self.failure.get().map(String::as_str)
    }
}

/// What the admin routes read.
#[derive(Clone)]
pub struct AdminState {
    registry: prometheus::Registry,
    readiness: Readiness,
    liveness: Liveness,
    json_routes: Vec<(&'static str, JsonProducer)>,
    query_routes: Vec<(&'static str, QueryJsonProducer)>,
    pages: Vec<(&'static str, &'static str)>,
    post_routes: Vec<(&'static str, PostHandler)>,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let routes: Vec<&str> = self.json_routes.iter().map(|(path, _)| *path).collect();
        f.debug_struct("AdminState")
            .field("readiness", &self.readiness)
            .field("liveness", &self.liveness)
            .field("json_routes", &routes)
            .finish_non_exhaustive()
    }
}

impl AdminState {
    /// State serving `registry` on `/metrics` and `readiness` on `/readyz`; `/healthz`
    /// answers ok until a liveness added with [`AdminState::with_liveness`] fails.
    pub fn new(registry: prometheus::Registry, readiness: Readiness) -> Self {
        Self {
            registry,
            readiness,
            liveness: Liveness::new(),
            json_routes: Vec::new(),
            query_routes: Vec::new(),
            pages: Vec::new(),
            post_routes: Vec::new(),
        }
    }

    /// Answers `/healthz` from `liveness`.
    pub fn with_liveness(mut self, liveness: Liveness) -> Self {
        self.liveness = liveness;
        self
    }

    /// Adds `GET path`, answered with the JSON `producer` returns.
    pub fn with_json_route(mut self, path: &'static str, producer: JsonProducer) -> Self {
        self.json_routes.push((path, producer));
        self
    }

    /// Adds `GET path?query`, answered with the JSON `producer` returns for the query.
    pub fn with_query_json_route(
        mut self,
        path: &'static str,
        producer: QueryJsonProducer,
    ) -> Self {
        self.query_routes.push((path, producer));
        self
    }

    /// Adds `GET path`, answered with the HTML `page`; `/` redirects to the first page.
    pub fn with_page(mut self, path: &'static str, page: &'static str) -> Self {
        self.pages.push((path, page));
        self
    }

    /// Adds `POST path`, answered by `handler` from the request body (at most 64 KiB).
    pub fn with_post_route(mut self, path: &'static str, handler: PostHandler) -> Self {
        self.post_routes.push((path, handler));
        self
    }
}

/// Serves the admin routes on `listener` until `shutdown` resolves, then stops
/// accepting, lets requests in flight finish (for up to five seconds) and returns.
///
/// Errors accepting one connection are logged and the server carries on.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let address = listener
        .local_addr()
        .map_err(|source| Error::ServeAdmin { source })?;
    tracing::info!(%address, "admin server listening");

    let mut http = hyper::server::conn::http1::Builder::new();
    // The timer lets hyper drop connections that never finish sending headers.
    http.timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) if is_connection_error(&error) => continue,
                Err(error) => {
                    tracing::warn!(error = %process::ErrorChain(&error), "admin server failed to accept a connection");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    }
                }
            },
        };
        let state = state.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(answer(&state, request).await) }
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %process::ErrorChain(&error), "admin connection failed");
            }
        });
    }

    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("admin server stopped before all requests finished");
    }
    tracing::info!(%address, "admin server stopped");
    Ok(())
}

/// Whether `error` concerns only the connection being accepted, so the listener is
/// fine and accepting can go straight on.
fn is_connection_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    )
}

/// The answer of a route added with [`AdminState::with_query_json_route`], or None
/// when `path` is not one.
fn respond_query(
    state: &AdminState,
    method: &Method,
    path: &str,
    query: Option<&str>,
) -> Option<Response<Full<Bytes>>> {
    let (_, producer) = state
        .query_routes
        .iter()
        .find(|(route, _)| *route == path)?;
    if method != Method::GET {
        let mut response = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed; use GET\n".into(),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
        return Some(response);
    }
    Some(match producer(query) {
        Ok(json) => with_content_type(StatusCode::OK, "application/json", json),
        Err(message) => plain(StatusCode::BAD_REQUEST, format!("{message}\n")),
    })
}

/// The answer to `request`: a query route's, a POST route's, or [`respond`]'s.
async fn answer(state: &AdminState, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let uri = request.uri();
    if let Some(response) = respond_query(state, request.method(), uri.path(), uri.query()) {
        return response;
    }
    let path = request.uri().path();
    let handler = state
        .post_routes
        .iter()
        .find(|(route, _)| *route == path)
        .map(|(_, handler)| Arc::clone(handler));
    let (Some(handler), &Method::POST) = (handler, request.method()) else {
        return respond(state, request.method(), path);
    };
    let body = http_body_util::Limited::new(request.into_body(), MAX_POST_BYTES);
    match http_body_util::BodyExt::collect(body).await {
        Ok(body) => {
            let (status, json) = handler(body.to_bytes()).await;
            with_content_type(status, "application/json", json)
        }
        Err(error) => plain(
            StatusCode::BAD_REQUEST,
            format!("reading the request body failed (at most 64 KiB): {error}\n"),
        ),
    }
}

/// The answer to `method path`.
fn respond(state: &AdminState, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let json = state
        .json_routes
        .iter()
        .find(|(route, _)| *route == path)
        .map(|(_, producer)| producer);
    let page = state.pages.iter().find(|(route, _)| *route == path);
    if let (Some((first, _)), "/", &Method::GET) = (state.pages.first(), path, method) {
        let mut response = plain(StatusCode::SEE_OTHER, format!("see {first}\n"));
        response
            .headers_mut()
            .insert(header::LOCATION, header::HeaderValue::from_static(first));
        return response;
    }
    if state.post_routes.iter().any(|(route, _)| *route == path) {
        let mut response = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed; use POST\n".into(),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
        return response;
    }
    if json.is_none() && page.is_none() && !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return plain(StatusCode::NOT_FOUND, "not found\n".into());
    }
    if method != Method::GET {
        let mut response = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed; use GET\n".into(),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
        return response;
    }
    if let Some(producer) = json {
        return with_content_type(StatusCode::OK, "application/json", producer());
    }
    if let Some((_, page)) = page {
        return with_content_type(StatusCode::OK, "text/html; charset=utf-8", (*page).into());
    }
    match path {
        "/metrics" => metrics(&state.registry),
        "/readyz" => match state.readiness.reason() {
            None => plain(StatusCode::OK, "ok\n".into()),
            Some(reason) => plain(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {reason}\n"),
            ),
        },
        _ => match state.liveness.failure() {
            None => plain(StatusCode::OK, "ok\n".into()),
            Some(failure) => plain(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("unhealthy: {failure}\n"),
            ),
        },
    }
}

/// The metrics in `registry` in the Prometheus text format.
fn metrics(registry: &prometheus::Registry) -> Response<Full<Bytes>> {
    let encoder = prometheus::TextEncoder::new();
    match encoder.encode_to_string(&registry.gather()) {
        Ok(text) => with_content_type(StatusCode::OK, prometheus::TEXT_FORMAT, text),
        Err(error) => {
            tracing::warn!(error = %process::ErrorChain(&error), "encoding metrics failed");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("encoding metrics failed: {error}\n"),
            )
        }
    }
}

fn plain(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    with_content_type(status, PLAIN_TEXT, body)
}

fn with_content_type(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::SocketAddr;

    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    fn state() -> (AdminState, prometheus::IntCounter, Readiness) {
        let registry = prometheus::Registry::new();
        let counter = prometheus::IntCounter::new(
            "zeroscale_operator_test_events_total",
            "Events counted by the admin tests.",
        )
        .expect("a valid counter");
        registry
            .register(Box::new(counter.clone()))
            .expect("the counter registers");
        let readiness = Readiness::not_ready("waiting for leadership");
        (
            AdminState::new(registry, readiness.clone()),
            counter,
            readiness,
        )
    }

    /// The status and body of `method path` answered without a socket.
    async fn answer(state: &AdminState, method: Method, path: &str) -> (StatusCode, String) {
        let response = respond(state, &method, path);
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("a full body")
            .to_bytes();
        (status, String::from_utf8(body.to_vec()).expect("UTF-8"))
    }

    #[tokio::test]
    async fn unknown_paths_are_not_found() {
        let (state, _, _) = state();
        assert_eq!(
            answer(&state, Method::GET, "/").await,
            (StatusCode::NOT_FOUND, "not found\n".to_owned())
        );
        assert_eq!(
            answer(&state, Method::POST, "/metrics/extra").await.0,
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn query_routes_get_the_query_and_answer_its_errors_with_400() {
        let (state, _, _) = state();
        let state = state.with_query_json_route(
            "/usage",
            Arc::new(|query: Option<&str>| match query {
                Some("since=bad") => Err("since: not a duration".to_owned()),
                query => Ok(format!("{{\"query\":{:?}}}", query.unwrap_or(""))),
            }),
        );
        let ok = respond_query(&state, &Method::GET, "/usage", Some("since=1h")).expect("a route");
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(ok.headers()[header::CONTENT_TYPE], "application/json");
        let bad =
            respond_query(&state, &Method::GET, "/usage", Some("since=bad")).expect("a route");
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
        let post = respond_query(&state, &Method::POST, "/usage", None).expect("a route");
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(respond_query(&state, &Method::GET, "/stats", None).is_none());
    }

    #[tokio::test]
    async fn methods_other_than_get_are_not_allowed() {
        let (state, _, _) = state();
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::HEAD] {
            for path in ["/metrics", "/healthz", "/readyz"] {
                let response = respond(&state, &method, path);
                assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
                assert_eq!(response.headers()[header::ALLOW], "GET");
            }
        }
    }

    #[tokio::test]
    async fn json_routes_answer_with_fresh_json_and_other_paths_stay_unknown() {
        let (state, counter, _) = state();
        let counted = counter.clone();
        let state = state.with_json_route(
            "/stats",
            Arc::new(move || format!("{{\"events\":{}}}", counted.get())),
        );
        counter.inc_by(2);
        let response = respond(&state, &Method::GET, "/stats");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(
            answer(&state, Method::GET, "/stats").await,
            (StatusCode::OK, "{\"events\":2}".to_owned())
        );
        assert_eq!(
            answer(&state, Method::POST, "/stats").await.0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            answer(&state, Method::GET, "/statz").await.0,
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn readyz_explains_why_the_operator_is_not_ready() {
        let (state, _, readiness) = state();
        readiness.set_not_ready(format!("cache {} not synced", "Functions"));
        assert_eq!(
            answer(&state, Method::GET, "/readyz").await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: cache Functions not synced\n".to_owned()
            )
        );
    }

    /// An admin server on 127.0.0.1:0, stopped by sending on the returned channel.
    struct Server {
        address: SocketAddr,
        stop: oneshot::Sender<()>,
        task: JoinHandle<Result<()>>,
        client: Client<HttpConnector, Empty<Bytes>>,
    }

    impl Server {
        async fn start(state: AdminState) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
            let address = listener.local_addr().expect("an address");
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(serve(listener, state, async move {
                let _ = stopped.await;
            }));
            let client = Client::builder(TokioExecutor::new()).build_http();
            Self {
                address,
                stop,
                task,
                client,
            }
        }

        async fn send(&self, method: Method, path: &str) -> (StatusCode, String, String) {
            let request = Request::builder()
                .method(method)
                .uri(format!("http://{}{path}", self.address))
                .body(Empty::new())
                .expect("a valid request");
            let response = self.client.request(request).await.expect("a response");
            let status = response.status();
            let content_type = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let body = response
                .into_body()
                .collect()
                .await
                .expect("a full body")
                .to_bytes();
            let body = String::from_utf8(body.to_vec()).expect("UTF-8");
            (status, content_type, body)
        }

        async fn get(&self, path: &str) -> (StatusCode, String) {
            let (status, _, body) = self.send(Method::GET, path).await;
            (status, body)
        }

        /// Signals shutdown and waits for `serve` to return.
        async fn stop(self) -> Result<()> {
            let _ = self.stop.send(());
            self.task.await.expect("serve ran")
        }
    }

    /// Runs `test` within a second, so a missing answer fails instead of hanging.
    async fn within_a_second<T>(test: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(1), test)
            .await
            .expect("the test finished within a second")
    }

    #[tokio::test]
    async fn metrics_serves_registered_counters_in_the_text_format() {
        within_a_second(async {
            let (state, counter, _) = state();
            counter.inc_by(3);
            let server = Server::start(state).await;
            let (status, content_type, body) = server.send(Method::GET, "/metrics").await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(content_type, prometheus::TEXT_FORMAT);
            assert!(
                body.contains("# TYPE zeroscale_operator_test_events_total counter"),
                "{body}"
            );
            assert!(
                body.contains("\nzeroscale_operator_test_events_total 3\n"),
                "{body}"
            );
            server.stop().await.expect("a clean stop");
        })
        .await;
    }

    #[tokio::test]
    async fn healthz_is_ok_while_the_server_runs() {
        within_a_second(async {
            let (state, _, _) = state();
            let server = Server::start(state).await;
            assert_eq!(
                server.get("/healthz").await,
                (StatusCode::OK, "ok\n".to_owned())
            );
            server.stop().await.expect("a clean stop");
        })
        .await;
    }

    #[tokio::test]
    async fn healthz_fails_for_good_once_liveness_fails() {
        within_a_second(async {
            let (state, _, _) = state();
            let liveness = Liveness::new();
            let server = Server::start(state.with_liveness(liveness.clone())).await;
            assert_eq!(
                server.get("/healthz").await,
                (StatusCode::OK, "ok\n".to_owned())
            );
            liveness.fail("the leader election stopped");
            liveness.fail("a later reason");
            assert_eq!(
                server.get("/healthz").await,
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unhealthy: the leader election stopped\n".to_owned()
                )
            );
            server.stop().await.expect("a clean stop");
        })
        .await;
    }

    #[tokio::test]
    async fn readyz_turns_from_unavailable_to_ok_when_marked_ready() {
        within_a_second(async {
            let (state, _, readiness) = state();
            let server = Server::start(state).await;
            assert_eq!(
                server.get("/readyz").await,
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: waiting for leadership\n".to_owned()
                )
            );
            readiness.set_ready();
            assert_eq!(
                server.get("/readyz").await,
                (StatusCode::OK, "ok\n".to_owned())
            );
            server.stop().await.expect("a clean stop");
        })
        .await;
    }

    #[tokio::test]
    async fn other_paths_and_methods_are_refused_over_http() {
        within_a_second(async {
            let (state, _, _) = state();
            let server = Server::start(state).await;
            assert_eq!(
                server.get("/nope").await,
                (StatusCode::NOT_FOUND, "not found\n".to_owned())
            );
            let (status, _, body) = server.send(Method::POST, "/healthz").await;
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
            assert_eq!(body, "method not allowed; use GET\n");
            server.stop().await.expect("a clean stop");
        })
        .await;
    }

    #[tokio::test]
    async fn pages_are_html_and_the_root_redirects_to_the_first() {
        let (state, _, _) = state();
        let state = state.with_page("/console", "<p>hi</p>");
        let response = respond(&state, &Method::GET, "/console");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert_eq!(
            answer(&state, Method::GET, "/console").await,
            (StatusCode::OK, "<p>hi</p>".to_owned())
        );
        let response = respond(&state, &Method::GET, "/");
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        assert_eq!(response.headers()[header::LOCATION], "/console");
    }

    #[tokio::test]
    async fn post_routes_answer_from_the_request_body_and_refuse_other_methods() {
        within_a_second(async {
            let (state, _, _) = state();
            let state = state.with_post_route(
                "/echo",
                Arc::new(|body: Bytes| {
                    Box::pin(async move {
                        let text = String::from_utf8_lossy(&body).into_owned();
                        (StatusCode::CREATED, format!("{{\"got\":\"{text}\"}}"))
                    })
                }),
            );
            let server = Server::start(state).await;
            let request = Request::builder()
                .method(Method::POST)
                .uri(format!("http://{}/echo", server.address))
                .body(http_body_util::Full::new(Bytes::from_static(b"hi")))
                .expect("a valid request");
            let client = Client::builder(TokioExecutor::new()).build_http();
            let response = client.request(request).await.expect("a response");
            assert_eq!(response.status(), StatusCode::CREATED);
            let body = response.into_body().collect().await.expect("a body");
            assert_eq!(body.to_bytes(), Bytes::from_static(b"{\"got\":\"hi\"}"));
            let (status, _, _) = server.send(Method::GET, "/echo").await;
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
            server.stop().await.expect("a clean stop");
        })
        .await;
    }

    #[tokio::test]
    async fn shutdown_stops_the_server_despite_idle_keep_alive_connections() {
        within_a_second(async {
            let (state, _, _) = state();
            let server = Server::start(state).await;
            // The client keeps this connection open in its pool after the response.
            assert_eq!(server.get("/healthz").await.0, StatusCode::OK);
            // A clone shares the pool, so the connection stays open through the stop.
            let client = server.client.clone();
            server.stop().await.expect("a clean stop");
            drop(client);
        })
        .await;
    }
}
