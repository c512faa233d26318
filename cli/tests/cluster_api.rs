//! Request-level tests of the cluster commands against a mocked API server, in the
//! style of operator/tests/reconcile.rs: a verifier task takes the command's requests
//! one at a time, in the order they must come, checks method, path, query (field
//! manager, selectors) and body, and answers as the API server would. Each test ends by
//! awaiting the verifier under a timeout; it fails on any request beyond the expected
//! ones, since it only returns once the command's client is dropped.

use std::collections::BTreeMap;
use std::time::Duration;

use http::header::{CONTENT_TYPE, HOST};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tower_test::mock::{Handle, SendResponse};
use zeroscale_cli::cluster::connect::Cluster;
use zeroscale_cli::cluster::{Error, Format, delete, deploy, describe, invoke, list, logs, usage};

const FUNCTIONS: &str = "/apis/zeroscale.dev/v1alpha1/namespaces/default/functions";
const HELLO: &str = "/apis/zeroscale.dev/v1alpha1/namespaces/default/functions/hello";

// ---------------------------------------------------------------------------------------
// Fixtures

/// Function `name` in `default` as the API server returns it, with the operator's
/// status for `ready` (`True`, `False` or `Unknown`) and `reason`.
fn function(name: &str, ready: &str, reason: &str, message: &str) -> Value {
    json!({
        "apiVersion": "zeroscale.dev/v1alpha1",
        "kind": "Function",
        "metadata": {
            "name": name,
            "namespace": "default",
            "generation": 1,
            "resourceVersion": "7",
            "creationTimestamp": "2026-12-07T10:00:00Z",
        },
        "spec": {"image": "ghcr.io/acme/hello:1"},
        "status": {
            "observedGeneration": 1,
            "readyReplicas": 1,
            "desiredReplicas": 1,
            "url": format!("http://{name}.default.svc.cluster.local"),
            "conditions": [{
                "type": "Ready",
                "status": ready,
                "reason": reason,
                "message": message,
                "lastTransitionTime": "2026-12-07T10:01:00Z",
            }],
        },
    })
}

fn serving(name: &str) -> Value {
    function(name, "True", "Serving", "1 of 1 pods ready")
}

/// `hello`, applied but not yet Ready.
fn deploying(message: &str) -> Value {
    function("hello", "Unknown", "Deploying", message)
}

fn list_of(kind: &str, items: Vec<Value>) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": kind,
        "metadata": {"resourceVersion": "10"},
        "items": items,
    })
}

fn pod(name: &str, namespace: &str, ports: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"containers": [{"name": "main", "image": "x", "ports": ports}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    })
}

// ---------------------------------------------------------------------------------------
// The mocked API server

type ApiServerHandle = Handle<Request<Body>, Response<Body>>;

/// A cluster whose client talks to the returned [`ApiServer`], namespace `default`.
fn cluster() -> (Cluster, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let cluster = Cluster {
        client: Client::new(service, "default"),
        namespace: "default".into(),
    };
    (cluster, ApiServer(handle))
}

/// Runs `command` against a cluster whose API server `script` plays, then awaits the
/// script to its end.
async fn exchange<S, T>(
    script: impl FnOnce(ApiServer) -> S,
    command: impl AsyncFnOnce(&Cluster) -> T,
) -> T
where
    S: Future<Output = ()> + Send + 'static,
{
    let (cluster, api) = cluster();
    let verifier = tokio::spawn(script(api));
    let outcome = command(&cluster).await;
    drop(cluster);
    verified(verifier).await;
    outcome
}

/// Awaits the verifier for at most 5 s, so that a missing request (or a client kept
/// alive) fails the test instead of hanging it.
async fn verified(verifier: JoinHandle<()>) {
    match tokio::time::timeout(Duration::from_secs(5), verifier).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Ok(Err(error)) => panic!("the verifier did not run to the end: {error}"),
        Err(_) => panic!("the verifier did not finish: an expected request never came"),
    }
}

struct ApiServer(ApiServerHandle);

/// One request of the command, decoded, with the means to answer it.
struct Call {
    query: BTreeMap<String, String>,
    content_type: Option<String>,
    body: Value,
    reply: SendResponse<Response<Body>>,
}

impl ApiServer {
    /// The next request, which must be `method path`.
    async fn next(&mut self, method: Method, path: &str) -> Call {
        let Some((request, reply)) = self.0.next_request().await else {
            panic!("expected {method} {path}, but the command sent no further request");
        };
        let (parts, body) = request.into_parts();
        let bytes = body.collect().await.expect("readable body").to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("request body is JSON")
        };
        assert_eq!(
            (&parts.method, parts.uri.path()),
            (&method, path),
            "expected {method} {path}, got {} {}",
            parts.method,
            parts.uri
        );
        Call {
            query: query_pairs(parts.uri.query().unwrap_or_default()),
            content_type: parts
                .headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body,
            reply,
        }
    }

    /// Fails on any further request; returns once the command's client is dropped.
    async fn done(mut self) {
        if let Some((request, _)) = self.0.next_request().await {
            panic!(
                "unexpected request {} {} after the expected ones",
                request.method(),
                request.uri()
            );
        }
    }
}

impl Call {
    /// The query parameter `key`, if the request has it.
    fn param(&self, key: &str) -> Option<&str> {
        self.query.get(key).map(String::as_str)
    }

    fn respond(self, status: StatusCode, body: &Value) {
        let body = serde_json::to_vec(body).expect("serializes");
        self.respond_text(status, body);
    }

    fn respond_text(self, status: StatusCode, body: impl Into<Vec<u8>>) {
        let response = Response::builder()
            .status(status)
            .header(CONTENT_TYPE, "application/json")
            .body(Body::from(body.into()))
            .expect("valid response");
        self.reply.send_response(response);
    }

    fn ok(self, body: &Value) {
        self.respond(StatusCode::OK, body);
    }

    /// Answers with a `Status` error; `name` fills `details.name` as for a missing
    /// object (an unknown resource has none).
    fn fail(self, code: u16, reason: &str, message: &str, name: Option<&str>) {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        });
        if let Some(name) = name {
            status["details"] =
                json!({"name": name, "group": "zeroscale.dev", "kind": "functions"});
        }
        self.respond(StatusCode::from_u16(code).expect("status code"), &status);
    }
}

fn query_pairs(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        match first {
            b'+' => bytes.push(b' '),
            b'%' if tail.len() >= 2 => {
                let hex = std::str::from_utf8(&tail[..2]).expect("ASCII escape");
                bytes.push(u8::from_str_radix(hex, 16).expect("hex escape"));
                rest = &tail[2..];
                continue;
            }
            other => bytes.push(other),
        }
        rest = tail;
    }
    String::from_utf8(bytes).expect("UTF-8 query")
}

fn text(out: Vec<u8>) -> String {
    String::from_utf8(out).expect("UTF-8 output")
}

/// Expects a list of `path` chosen by the query parameter `selector` (name, value), and
/// answers with a list of `kind` holding `items`.
async fn expect_list(
    api: &mut ApiServer,
    path: &str,
    (param, selector): (&str, &str),
    kind: &str,
    items: Vec<Value>,
) {
    let call = api.next(Method::GET, path).await;
    assert_eq!(call.param(param), Some(selector), "{param} of {path}");
    call.ok(&list_of(kind, items));
}

// ---------------------------------------------------------------------------------------
// list

#[tokio::test]
async fn list_reads_the_namespace_and_prints_a_row_per_function() {
    let mut out = Vec::new();
    exchange(
        |mut api| async move {
            api.next(Method::GET, FUNCTIONS).await.ok(&list_of(
                "FunctionList",
                vec![serving("hello"), serving("payments")],
            ));
            api.done().await;
        },
        async |cluster| list::run(cluster, false, Format::Human, &mut out).await,
    )
    .await
    .expect("lists");
    let out = text(out);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("NAME "), "{out}");
    assert!(
        lines[1].starts_with(
            "hello      http://hello.default.svc.cluster.local      True Serving   1/1"
        ),
        "{out}"
    );
    assert!(lines[2].starts_with("payments "), "{out}");
}

#[tokio::test]
async fn list_of_every_namespace_reads_the_cluster_wide_path_and_prints_json() {
    let mut out = Vec::new();
    exchange(
        |mut api| async move {
            api.next(Method::GET, "/apis/zeroscale.dev/v1alpha1/functions")
                .await
                .ok(&list_of("FunctionList", vec![serving("hello")]));
            api.done().await;
        },
        async |cluster| list::run(cluster, true, Format::Json, &mut out).await,
    )
    .await
    .expect("lists");
    let printed: Value = serde_json::from_slice(&out).expect("JSON output");
    assert_eq!(printed[0]["metadata"]["name"], "hello");
    assert_eq!(printed[0]["status"]["readyReplicas"], 1);
}

/// A writer that hands everything written to a channel, for output read while the
/// command still runs.
struct ChannelWriter(tokio::sync::mpsc::UnboundedSender<Vec<u8>>);

impl std::io::Write for ChannelWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.send(bytes.to_vec());
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs a command that does not end by itself (a watch, a follow) until what it has
/// printed is `enough`, and returns that.
async fn printed_until(
    command: impl AsyncFnOnce(&mut ChannelWriter) -> Result<(), Error>,
    enough: impl Fn(&str) -> bool,
) -> String {
    let (sender, mut written) = tokio::sync::mpsc::unbounded_channel();
    let mut out = ChannelWriter(sender);
    let mut printed = String::new();
    tokio::select! {
        result = command(&mut out) => panic!("the command ended: {result:?}"),
        () = async {
            while !enough(&printed) {
                let chunk = written.recv().await.expect("the command writes");
                printed.push_str(&String::from_utf8_lossy(&chunk));
            }
        } => {}
    }
    printed
}

#[tokio::test]
async fn list_watch_prints_the_table_again_on_every_change() {
    let printed = exchange(
        |mut api| async move {
            api.next(Method::GET, FUNCTIONS)
                .await
                .ok(&list_of("FunctionList", vec![serving("hello")]));
            let call = api.next(Method::GET, FUNCTIONS).await;
            assert_eq!(call.param("watch"), Some("true"));
            let event = json!({"type": "ADDED", "object": serving("payments")});
            call.respond_text(StatusCode::OK, format!("{event}\n"));
            // The watch reconnects after that stream ends; the test stops it before.
        },
        async |cluster| {
            printed_until(
                async |out| list::watch(cluster, false, Format::Human, out).await,
                |printed| printed.matches("NAME").count() >= 2 && printed.ends_with("\n\n"),
            )
            .await
        },
    )
    .await;
    let tables: Vec<&str> = printed.split("\n\n").collect();
    assert_eq!(tables.len(), 3, "{printed}");
    assert_eq!(
        tables[0].lines().count(),
        2,
        "first table: hello only\n{printed}"
    );
    assert_eq!(
        tables[1].lines().count(),
        3,
        "second table: hello and payments\n{printed}"
    );
    assert!(tables[1].contains("\npayments "), "{printed}");
}

/// What `list` returns when the API server answers it with a `Status` error.
async fn list_error(code: u16, reason: &'static str, message: &'static str) -> Error {
    exchange(
        |mut api| async move {
            api.next(Method::GET, FUNCTIONS)
                .await
                .fail(code, reason, message, None);
            api.done().await;
        },
        async |cluster| list::run(cluster, false, Format::Human, &mut Vec::new()).await,
    )
    .await
    .expect_err("the API server refused the list")
}

#[tokio::test]
async fn list_without_the_crd_says_how_to_install_it() {
    let error = list_error(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
    .await;
    assert!(matches!(error, Error::CrdMissing), "{error:?}");
    assert!(
        error.to_string().contains("helm install zeroscale"),
        "{error}"
    );
}

#[tokio::test]
async fn describe_without_the_crd_says_how_to_install_it_rather_than_not_found() {
    let error = exchange(
        |mut api| async move {
            let missing = "the server could not find the requested resource";
            api.next(Method::GET, HELLO)
                .await
                .fail(404, "NotFound", missing, None);
            api.next(Method::GET, FUNCTIONS)
                .await
                .fail(404, "NotFound", missing, None);
            api.done().await;
        },
        async |cluster| describe::run(cluster, "hello", Format::Human, &mut Vec::new()).await,
    )
    .await
    .expect_err("no CRD");
    assert!(matches!(error, Error::CrdMissing), "{error:?}");
}

#[tokio::test]
async fn forbidden_names_the_verb_the_resource_and_the_namespace() {
    let error = list_error(
        403,
        "Forbidden",
        "functions.zeroscale.dev is forbidden: User \"ada\" cannot list resource \"functions\"",
    )
    .await;
    assert!(
        error.to_string().starts_with(
            "forbidden: you may not list functions.zeroscale.dev in namespace default"
        ),
        "{error}"
    );
}

// ---------------------------------------------------------------------------------------
// delete

#[tokio::test]
async fn delete_deletes_the_function_in_the_background() {
    let mut out = Vec::new();
    exchange(
        |mut api| async move {
            let call = api.next(Method::DELETE, HELLO).await;
            assert_eq!(
                call.body["propagationPolicy"], "Background",
                "{}",
                call.body
            );
            call.ok(&serving("hello"));
            api.done().await;
        },
        async |cluster| delete::run(cluster, "hello", &mut out).await,
    )
    .await
    .expect("deletes");
    assert_eq!(text(out), "Function hello deleted from namespace default\n");
}

#[tokio::test]
async fn deleting_a_missing_function_lists_near_names() {
    let error = exchange(
        |mut api| async move {
            let path = "/apis/zeroscale.dev/v1alpha1/namespaces/default/functions/helo";
            let not_found = "functions.zeroscale.dev \"helo\" not found";
            api.next(Method::DELETE, path)
                .await
                .fail(404, "NotFound", not_found, Some("helo"));
            api.next(Method::GET, path)
                .await
                .fail(404, "NotFound", not_found, Some("helo"));
            api.next(Method::GET, FUNCTIONS).await.ok(&list_of(
                "FunctionList",
                vec![serving("hello"), serving("orders")],
            ));
            api.done().await;
        },
        async |cluster| delete::run(cluster, "helo", &mut Vec::new()).await,
    )
    .await
    .expect_err("not found");
    assert_eq!(
        error.to_string(),
        "Function helo not found in namespace default; did you mean hello?"
    );
}

// ---------------------------------------------------------------------------------------
// deploy

/// The flags of a subcommand, parsed from `args` as clap would from its command line.
fn parse<A: clap::Args>(args: &[&str]) -> A {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Cli<A: clap::Args> {
        #[command(flatten)]
        args: A,
    }
    Cli::parse_from(std::iter::once("zeroscale").chain(args.iter().copied())).args
}

#[tokio::test]
async fn deploy_applies_only_the_flags_given_under_the_cli_field_manager() {
    let args = parse::<deploy::Args>(&[
        "hello",
        "--image",
        "ghcr.io/acme/hello:1",
        "--env",
        "GREETING=hi",
        "--min",
        "0",
        "--max",
        "5",
    ]);
    let body = args.function("default").expect("valid flags");
    let (mut out, mut progress) = (Vec::new(), Vec::new());
    exchange(
        |mut api| async move {
            let call = api.next(Method::PATCH, HELLO).await;
            assert_eq!(call.param("fieldManager"), Some("zeroscale-cli"));
            assert_eq!(call.param("force"), Some("true"));
            assert_eq!(
                call.content_type.as_deref(),
                Some("application/apply-patch+yaml")
            );
            assert_eq!(
                call.body,
                json!({
                    "apiVersion": "zeroscale.dev/v1alpha1",
                    "kind": "Function",
                    "metadata": {"name": "hello", "namespace": "default"},
                    "spec": {
                        "image": "ghcr.io/acme/hello:1",
                        "env": [{"name": "GREETING", "value": "hi"}],
                        "scaling": {"minReplicas": 0, "maxReplicas": 5},
                    },
                })
            );
            call.ok(&deploying("starting"));
            api.done().await;
        },
        async |cluster| {
            deploy::run(cluster, body, None, Format::Human, &mut out, &mut progress).await
        },
    )
    .await
    .expect("applies");
    assert_eq!(
        text(out),
        "Function hello applied: http://hello.default.svc.cluster.local\n"
    );
}

/// Deploys `hello` from `--image image`, waiting up to a minute for Ready, against an
/// API server `script` plays after answering the apply with [`deploying`]`(applied)`.
/// Returns the outcome, the output and the progress.
async fn deploy_and_wait<S>(
    image: &str,
    applied: &'static str,
    script: impl FnOnce(ApiServer) -> S + Send + 'static,
) -> (Result<(), Error>, String, String)
where
    S: Future<Output = ()> + Send + 'static,
{
    let body = parse::<deploy::Args>(&["hello", "--image", image])
        .function("default")
        .expect("valid flags");
    let (mut out, mut progress) = (Vec::new(), Vec::new());
    let outcome = exchange(
        |mut api| async move {
            api.next(Method::PATCH, HELLO).await.ok(&deploying(applied));
            script(api).await;
        },
        async |cluster| {
            deploy::run(
                cluster,
                body,
                Some(Duration::from_secs(60)),
                Format::Human,
                &mut out,
                &mut progress,
            )
            .await
        },
    )
    .await;
    (outcome, text(out), text(progress))
}

#[tokio::test]
async fn deploy_waits_for_ready_showing_progress_then_prints_the_url() {
    let (outcome, out, progress) = deploy_and_wait(
        "ghcr.io/acme/hello:1",
        "0 of 1 pods ready",
        |mut api| async move {
            expect_list(
                &mut api,
                FUNCTIONS,
                ("fieldSelector", "metadata.name=hello"),
                "FunctionList",
                vec![deploying("0 of 1 pods ready")],
            )
            .await;
            let call = api.next(Method::GET, FUNCTIONS).await;
            assert_eq!(call.param("watch"), Some("true"));
            let event = json!({"type": "MODIFIED", "object": serving("hello")});
            call.respond_text(StatusCode::OK, format!("{event}\n"));
            api.done().await;
        },
    )
    .await;
    outcome.expect("becomes Ready");
    assert_eq!(
        progress,
        "Function hello applied in namespace default\n  Deploying: 0 of 1 pods ready (1/1 pods ready)\n"
    );
    assert_eq!(
        out,
        "Function hello is Ready: http://hello.default.svc.cluster.local\n"
    );
}

#[tokio::test]
async fn deploy_that_fails_reports_the_reason_and_the_pod_message() {
    let message = "pod hello-1: ImagePullBackOff: Back-off pulling image ghcr.io/acme/nope:1";
    let (outcome, _, _) = deploy_and_wait(
        "ghcr.io/acme/nope:1",
        "starting",
        move |mut api| async move {
            api.next(Method::GET, FUNCTIONS).await.ok(&list_of(
                "FunctionList",
                vec![function("hello", "False", "DeploymentFailed", message)],
            ));
            api.done().await;
        },
    )
    .await;
    let error = outcome.expect_err("fails");
    assert_eq!(
        error.to_string(),
        format!("Function hello failed: DeploymentFailed: {message}")
    );
}

#[test]
fn deploy_flags_are_checked_with_the_operators_rules() {
    let error = parse::<deploy::Args>(&["hello", "--image", "x", "--min", "3", "--max", "1"])
        .function("default")
        .expect_err("min above max");
    assert!(error.to_string().contains("minReplicas"), "{error}");
    let error = parse::<deploy::Args>(&["hello", "--image", "x", "--env", "NOVALUE"])
        .function("default")
        .expect_err("env without =");
    assert_eq!(error.to_string(), "--env NOVALUE: expected K=V");
}

// ---------------------------------------------------------------------------------------
// describe

const STATS: &str = r#"{"instance":"a","uptimeSeconds":10.0,"functions":[{"namespace":"default","name":"hello","requestsTotal":100,"concurrencySecondsTotal":5.0,"inFlight":1,"queued":0}]}"#;
const STATS_LATER: &str = r#"{"instance":"a","uptimeSeconds":11.0,"functions":[{"namespace":"default","name":"hello","requestsTotal":104,"concurrencySecondsTotal":7.0,"inFlight":2,"queued":1}]}"#;
const METRICS: &str = "zeroscale_activator_cold_start_seconds_bucket{function=\"hello\",namespace=\"default\",le=\"1\"} 1\nzeroscale_activator_cold_start_seconds_bucket{function=\"hello\",namespace=\"default\",le=\"+Inf\"} 1\n";

/// Expects the look-up of the activator behind `hello`: its Service alias, the
/// activator Service and its ready pods.
async fn expect_activator_pods(api: &mut ApiServer) {
    api.next(Method::GET, "/api/v1/namespaces/default/services/hello")
        .await
        .ok(&json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "hello", "namespace": "default"},
            "spec": {"type": "ExternalName", "externalName": "zeroscale-activator.zeroscale-system.svc.cluster.local"},
        }));
    api.next(
        Method::GET,
        "/api/v1/namespaces/zeroscale-system/services/zeroscale-activator",
    )
    .await
    .ok(&json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "zeroscale-activator", "namespace": "zeroscale-system"},
        "spec": {"selector": {"app.kubernetes.io/component": "activator"}},
    }));
    expect_list(
        api,
        "/api/v1/namespaces/zeroscale-system/pods",
        ("labelSelector", "app.kubernetes.io/component=activator"),
        "PodList",
        vec![pod(
            "activator-0",
            "zeroscale-system",
            json!([{"name": "http", "containerPort": 8080}, {"name": "admin", "containerPort": 9090}]),
        )],
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn describe_reads_events_and_the_activators_figures_through_the_pod_proxy() {
    let mut out = Vec::new();
    exchange(
        |mut api| async move {
            api.next(Method::GET, HELLO).await.ok(&serving("hello"));
            expect_list(
                &mut api,
                "/api/v1/namespaces/default/events",
                (
                    "fieldSelector",
                    "involvedObject.kind=Function,involvedObject.name=hello",
                ),
                "EventList",
                vec![json!({
                    "metadata": {"name": "hello.1", "namespace": "default"},
                    "involvedObject": {"kind": "Function", "name": "hello"},
                    "reason": "ScaledFromZero",
                    "message": "hello: 0 -> 1 (Wake)",
                    "type": "Normal",
                    "eventTime": "2026-12-07T10:02:00.000000Z",
                })],
            )
            .await;
            expect_activator_pods(&mut api).await;
            let proxy = "/api/v1/namespaces/zeroscale-system/pods/activator-0:9090/proxy";
            api.next(Method::GET, &format!("{proxy}/stats"))
                .await
                .respond_text(StatusCode::OK, STATS);
            api.next(Method::GET, &format!("{proxy}/metrics"))
                .await
                .respond_text(StatusCode::OK, METRICS);
            api.next(Method::GET, &format!("{proxy}/stats"))
                .await
                .respond_text(StatusCode::OK, STATS_LATER);
            api.done().await;
        },
        async |cluster| describe::run(cluster, "hello", Format::Human, &mut out).await,
    )
    .await
    .expect("describes");
    let out = text(out);
    assert!(
        out.contains("Scaling decisions:\n  AGE ")
            && out.contains("ScaledFromZero   hello: 0 -> 1 (Wake)\n"),
        "{out}"
    );
    assert!(
        out.ends_with(
            "Activators (live):\n  Requests/s:    4.0\n  Concurrency:   2.0 (in flight 2, queued 1)\n  Cold starts:   1 (p50 500ms, p95 950ms)\n  Activators:    1\n"
        ),
        "{out}"
    );
}

/// Expects the look-up of `hello`'s pods by its label, and answers with `pods`.
async fn expect_hello_pods(api: &mut ApiServer, pods: Vec<Value>) {
    expect_list(
        api,
        "/api/v1/namespaces/default/pods",
        ("labelSelector", "zeroscale.dev/function=hello"),
        "PodList",
        pods,
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// invoke

/// An activator stand-in on 127.0.0.1:0 that answers every request with `answer` and
/// hands each request it got (method, Host, path, body) to the returned receiver.
async fn activator(
    answer: &'static str,
) -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<(Method, String, String, Bytes)>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let (seen, requests) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await?.to_bytes();
                        let host = parts
                            .headers
                            .get(HOST)
                            .and_then(|h| h.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        let _ = seen.send((parts.method, host, parts.uri.to_string(), body));
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(answer))))
                    }
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    (url, requests)
}

#[tokio::test]
async fn invoke_sends_the_request_with_the_functions_host_and_prints_the_answer() {
    let (url, mut requests) = activator("hi ada\n").await;
    let args = parse::<invoke::Args>(&[
        "hello",
        "--url",
        &url,
        "-d",
        "ada",
        "-H",
        "X-Trace: 1",
        "--path",
        "/greet?x=1",
        "-v",
    ]);
    let (mut out, mut verbose) = (Vec::new(), Vec::new());
    exchange(
        |mut api| async move {
            let mut at_zero = serving("hello");
            at_zero["status"]["readyReplicas"] = json!(0);
            api.next(Method::GET, HELLO).await.ok(&at_zero);
            expect_hello_pods(&mut api, vec![pod("hello-7d9-abcde", "default", json!([]))]).await;
            api.done().await;
        },
        async |cluster| invoke::run(cluster, &args, &mut out, &mut verbose).await,
    )
    .await
    .expect("invokes");
    let (method, host, path, body) = requests.recv().await.expect("a request");
    assert_eq!(
        (method, host.as_str(), path.as_str(), &body[..]),
        (Method::POST, "hello.default", "/greet?x=1", &b"ada"[..])
    );
    assert_eq!(text(out), "hi ada\n");
    let verbose = text(verbose);
    assert!(
        verbose.contains("* cold start: the Function was at zero; answered after "),
        "{verbose}"
    );
    assert!(
        verbose.contains("* answered by pod hello-7d9-abcde\n"),
        "{verbose}"
    );
}

// ---------------------------------------------------------------------------------------
// logs

#[tokio::test]
async fn logs_prefix_every_line_with_its_pod() {
    let args = parse::<logs::Args>(&["hello", "--tail", "5", "--since", "10m"]);
    let mut out = Vec::new();
    exchange(
        |mut api| async move {
            api.next(Method::GET, HELLO).await.ok(&serving("hello"));
            expect_hello_pods(
                &mut api,
                vec![
                    pod("hello-a", "default", json!([])),
                    pod("hello-b", "default", json!([])),
                ],
            )
            .await;
            for (pod, text) in [("hello-a", "one\ntwo\n"), ("hello-b", "three\n")] {
                let call = api
                    .next(
                        Method::GET,
                        &format!("/api/v1/namespaces/default/pods/{pod}/log"),
                    )
                    .await;
                assert_eq!(call.param("tailLines"), Some("5"));
                assert_eq!(call.param("sinceSeconds"), Some("600"));
                call.respond_text(StatusCode::OK, text);
            }
            api.done().await;
        },
        async |cluster| logs::run(cluster, &args, &mut out).await,
    )
    .await
    .expect("reads logs");
    assert_eq!(text(out), "hello-a | one\nhello-a | two\nhello-b | three\n");
}

#[tokio::test]
async fn logs_follow_streams_each_running_pod_as_it_appears() {
    let args = parse::<logs::Args>(&["hello", "-f"]);
    let mut running = pod("hello-a", "default", json!([]));
    running["status"]["containerStatuses"] = json!([{
        "name": "main", "image": "x", "imageID": "", "ready": true, "restartCount": 0,
        "state": {"running": {}},
    }]);
    let printed = exchange(
        |mut api| async move {
            api.next(Method::GET, HELLO).await.ok(&serving("hello"));
            expect_hello_pods(&mut api, vec![running]).await;
            // The log stream of the running pod and the watch of new pods, in either order.
            for _ in 0..2 {
                let Some((request, reply)) = api.0.next_request().await else {
                    panic!("expected the log stream and the pod watch");
                };
                let call = Call {
                    query: query_pairs(request.uri().query().unwrap_or_default()),
                    content_type: None,
                    body: Value::Null,
                    reply,
                };
                match request.uri().path() {
                    "/api/v1/namespaces/default/pods/hello-a/log" => {
                        assert_eq!(call.param("follow"), Some("true"));
                        call.respond_text(StatusCode::OK, "one\ntwo\n");
                    }
                    "/api/v1/namespaces/default/pods" => {
                        assert_eq!(call.param("watch"), Some("true"));
                        // Held open: no new pods.
                        std::mem::forget(call);
                    }
                    other => panic!("unexpected request {other}"),
                }
            }
        },
        async |cluster| {
            printed_until(
                async |out| logs::run(cluster, &args, out).await,
                |printed| printed.matches('\n').count() >= 2,
            )
            .await
        },
    )
    .await;
    assert_eq!(printed, "hello-a | one\nhello-a | two\n");
}

#[tokio::test]
async fn deploy_from_a_manifest_applies_the_whole_function() {
    let manifest: zeroscale_api::Function =
        serde_json::from_value(function("hello", "True", "Serving", "")).expect("a Function");
    let body = deploy::manifest_body(manifest, "team").expect("encodes");
    assert_eq!(
        body["metadata"]["namespace"], "default",
        "the manifest's own namespace"
    );
    assert!(
        body.get("status").is_none(),
        "status is not applied: {body}"
    );
    let mut out = Vec::new();
    exchange(
        |mut api| async move {
            let call = api.next(Method::PATCH, HELLO).await;
            assert_eq!(call.param("fieldManager"), Some("zeroscale-cli"));
            assert_eq!(call.body["spec"]["image"], "ghcr.io/acme/hello:1");
            assert_eq!(call.body["spec"]["port"], 8080, "defaults are applied too");
            call.ok(&serving("hello"));
            api.done().await;
        },
        async |cluster| {
            deploy::run(cluster, body, None, Format::Json, &mut out, &mut Vec::new()).await
        },
    )
    .await
    .expect("applies");
    let printed: Value = serde_json::from_slice(&out).expect("JSON output");
    assert_eq!(printed["metadata"]["name"], "hello");
}

// ---------------------------------------------------------------------------------------
// usage

#[tokio::test]
async fn usage_asks_the_lease_holder_through_the_pod_proxy_and_prints_its_namespace() {
    let args = usage::Args {
        name: None,
        since: Some(Duration::from_secs(3600)),
        target: Default::default(),
        all_namespaces: false,
        output: Format::Human,
        operator_namespace: "zeroscale-system".into(),
        operator_lease: "zeroscale-operator".into(),
        operator_admin_port: 9090,
        dev: Default::default(),
    };
    let function = |namespace: &str| {
        let seconds = json!({"vcpuSeconds": 1.5, "gibSeconds": 0.5});
        json!({
            "namespace": namespace, "name": "hello",
            "invocations": {"success": 40, "functionError": 2, "refused": 1},
            "executionSeconds": 3.5, "coldStarts": 2, "coldStartSeconds": 1.25,
            "replicaSeconds": {"busy": 4.0, "idle": 56.0},
            "reserved": seconds, "alwaysOn": seconds, "saving": seconds, "cost": null,
        })
    };
    let report = exchange(
        |mut api| async move {
            api.next(
                Method::GET,
                "/apis/coordination.k8s.io/v1/namespaces/zeroscale-system/leases/zeroscale-operator",
            )
            .await
            .ok(&json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": "zeroscale-operator", "namespace": "zeroscale-system"},
                "spec": {"holderIdentity": "zeroscale-operator-7d9f-abcde"},
            }));
            let call = api
                .next(
                    Method::GET,
                    "/api/v1/namespaces/zeroscale-system/pods/zeroscale-operator-7d9f-abcde:9090/proxy/usage",
                )
                .await;
            assert_eq!(call.param("since"), Some("3600s"));
            call.ok(&json!({
                "from": "2026-12-07T10:00:00Z",
                "to": "2026-12-07T11:00:00Z",
                "prices": null,
                "functions": [function("default"), function("team")],
            }));
            api.done().await;
        },
        async |cluster| usage::from_cluster(cluster, &args).await,
    )
    .await
    .expect("reads the usage");
    let mut out = Vec::new();
    let report = usage::select(report, Some("default"), None);
    usage::print(&report, false, Format::Human, &mut out).expect("prints");
    let out = text(out);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(
        lines[2].split_whitespace().collect::<Vec<_>>(),
        [
            "hello", "40", "2", "1", "3.500", "2", "1.250", "4.0", "56.0", "1.5", "0.5", "1.5"
        ],
        "{out}"
    );
}
