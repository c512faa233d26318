//! Request-level tests of the reconciler against a mocked API server, in the style of
//! kube-rs/controller-rs: a verifier task takes the reconciler's requests one at a time,
//! in the order they must come, checks method, path, field manager and body, and answers
//! as the API server would. Each test ends by awaiting the verifier under a 1 s timeout,
//! and the verifier fails on any request beyond the expected ones: it only returns once
//! the reconciler's client is dropped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::header::CONTENT_TYPE;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::api::ObjectMeta;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tower_test::mock::{Handle, SendResponse};
use zeroscale_api::calls::QueueTrigger;
use zeroscale_api::conditions::Reason;
use zeroscale_api::{Function, FunctionSpec, FunctionStatus, Metric};
use zeroscale_operator::Error;
use zeroscale_operator::controller::{
    Context, FIELD_MANAGER, NATS_NOT_CONFIGURED, error_policy, reconcile,
};
use zeroscale_operator::gateway::GatewayConfig;
use zeroscale_operator::metrics::Metrics;
use zeroscale_operator::replicas::AUTOSCALER_FIELD_MANAGER;
use zeroscale_operator::resources::{self, Config};

const IMAGE: &str = "example.com/hello:1";
const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/default/deployments/hello";
const SERVICE: &str = "/api/v1/namespaces/default/services/hello";
const PODS_SERVICE: &str = "/api/v1/namespaces/default/services/hello-pods";
const HPA: &str = "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers/hello";
const PODS: &str = "/api/v1/namespaces/default/pods";
const STATUS: &str = "/apis/zeroscale.dev/v1alpha1/namespaces/default/functions/hello/status";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";
const ROUTE: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/default/httproutes/hello";

/// How often a healthy Function is reconciled again (the controller's resync).
const RESYNC: Duration = Duration::from_secs(300);
/// The longest retry delay, used at once for permanent errors.
const LONGEST_RETRY: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------------------------------
// Fixtures

/// Builders on [`Function`] for these tests (the library's fixtures are private to its
/// unit tests).
trait FunctionExt: Sized {
    /// A Function as the API server returns it: namespace `default`, a uid, generation 1,
    /// every spec default and image [`IMAGE`], no status yet.
    fn test(name: &str) -> Self;
    /// With the status the operator writes for one ready pod (`Ready=True, Serving`).
    fn serving(self) -> Self;
    /// With `scaling.minReplicas` and `scaling.maxReplicas`.
    fn replicas(self, min: i32, max: i32) -> Self;
    /// Scaled on CPU through an HPA, with the CPU request utilisation is measured against.
    fn cpu(self, request: &str) -> Self;
    /// With one pod volume, as free-form JSON.
    fn volume(self, volume: Value) -> Self;
}

impl FunctionExt for Function {
    fn test(name: &str) -> Self {
        let mut function = Function::new(name, FunctionSpec::with_image(IMAGE));
        function.metadata = ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            uid: Some(format!("uid-{name}")),
            generation: Some(1),
            resource_version: Some("1".into()),
            ..Default::default()
        };
        function
    }

    fn serving(mut self) -> Self {
        let name = self.metadata.name.clone().unwrap_or_default();
        let mut status = FunctionStatus {
            observed_generation: Some(1),
            replicas: Some(1),
            ready_replicas: Some(1),
            desired_replicas: Some(1),
            url: Some(format!("http://{name}.default.svc.cluster.local")),
            address: Some(format!("{name}.default.svc.cluster.local")),
            ..Default::default()
        };
        status.set_ready(
            Reason::Serving,
            "1 of 1 pods ready".into(),
            Some(1),
            earlier(),
        );
        self.status = Some(status);
        self
    }

    fn replicas(mut self, min: i32, max: i32) -> Self {
        self.spec.scaling.min_replicas = min;
        self.spec.scaling.max_replicas = max;
        self
    }

    fn cpu(mut self, request: &str) -> Self {
        self.spec.scaling.metric = Metric::Cpu;
        self.spec.resources = Some(ResourceRequirements {
            requests: Some(BTreeMap::from([("cpu".into(), Quantity(request.into()))])),
            ..Default::default()
        });
        self
    }

    fn volume(mut self, volume: Value) -> Self {
        self.spec.volumes.push(volume);
        self
    }
}

/// When the fixtures' Ready condition last changed: well before any test runs.
fn earlier() -> Time {
    Time(jiff::Timestamp::from_second(1_700_000_000).expect("valid timestamp"))
}

/// The Function's Deployment as the API server stores it once the operator applied it
/// and handed `spec.replicas` to the autoscaler: at `replicas` pods, `ready` of them
/// ready, with each field manager's fields recorded.
fn deployment_in_cluster(function: &Function, replicas: i32, ready: i32) -> Value {
    let mut stored = deployment_before_handover(function, replicas, ready);
    stored["metadata"]["managedFields"]
        .as_array_mut()
        .expect("managedFields is a list")
        .push(json!({
            "manager": AUTOSCALER_FIELD_MANAGER,
            "operation": "Apply",
            "apiVersion": "apps/v1",
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:spec": {"f:replicas": {}}},
        }));
    stored
}

/// The Function's Deployment as stored when the operator created it but the hand-over
/// of `spec.replicas` to the autoscaler never happened (the operator stopped in between).
fn deployment_before_handover(function: &Function, replicas: i32, ready: i32) -> Value {
    let desired = resources::deployment(function).expect("the fixture's spec is valid");
    let applied = serde_json::to_value(desired).expect("Deployment serializes");
    let mut stored = stored_deployment(&applied, replicas, ready);
    stored["metadata"]["managedFields"] = json!([{
        "manager": FIELD_MANAGER,
        "operation": "Apply",
        "apiVersion": "apps/v1",
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {}, "f:selector": {}}},
    }]);
    stored
}

/// An applied Deployment as the API server answers it: with a uid, the replicas the
/// autoscaler owns and a status.
fn stored_deployment(applied: &Value, replicas: i32, ready: i32) -> Value {
    let mut stored = applied.clone();
    stored["metadata"]["uid"] = json!("uid-deployment-hello");
    stored["metadata"]["resourceVersion"] = json!("7");
    stored["metadata"]["generation"] = json!(1);
    stored["spec"]["replicas"] = json!(replicas);
    stored["status"] = json!({
        "observedGeneration": 1,
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": ready,
        "availableReplicas": ready,
    });
    stored
}

/// A pod of `hello` whose container waits for `reason`.
fn waiting_pod(reason: &str, message: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "hello-5d8f7c9b4-x2x4z",
            "namespace": "default",
            "labels": {"zeroscale.dev/function": "hello"},
        },
        "spec": {"containers": [{"name": "function", "image": IMAGE}]},
        "status": {
            "phase": "Pending",
            "containerStatuses": [{
                "name": "function",
                "image": IMAGE,
                "imageID": "",
                "ready": false,
                "restartCount": 0,
                "state": {"waiting": {"reason": reason, "message": message}},
            }],
        },
    })
}

// ---------------------------------------------------------------------------------------
// The mocked API server

type ApiServerHandle = Handle<Request<Body>, Response<Body>>;

/// A reconcile context whose client talks to the returned [`ApiServer`], and the metrics
/// it records into.
fn context() -> (Arc<Context>, Metrics, ApiServer) {
    context_with(Config::test())
}

/// [`context`] with the operator's `config`.
fn context_with(config: Config) -> (Arc<Context>, Metrics, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let metrics = Metrics::register(&prometheus::Registry::new()).expect("metrics register");
    let reporter = Reporter {
        controller: "zeroscale-operator".into(),
        instance: Some("zeroscale-operator-0".into()),
    };
    let ctx = Context::new(client, config, metrics.clone(), reporter);
    (Arc::new(ctx), metrics, ApiServer(handle))
}

/// Awaits the verifier for at most 1 s, so that a missing request (or a context kept
/// alive, which keeps the verifier waiting for more) fails the test instead of hanging
/// it; a failed assertion in the verifier fails the test with its own message.
async fn verified(verifier: JoinHandle<()>) {
    match tokio::time::timeout(Duration::from_secs(1), verifier).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Ok(Err(error)) => panic!("the verifier did not run to the end: {error}"),
        Err(_) => panic!(
            "the verifier did not finish within 1s: an expected request never came, \
             or the reconcile context was not dropped"
        ),
    }
}

/// The mocked API server: hands out the reconciler's requests one at a time, in order.
struct ApiServer(ApiServerHandle);

/// One request of the reconciler, decoded, with the means to answer it.
struct Call {
    uri: String,
    query: BTreeMap<String, String>,
    content_type: Option<String>,
    body: Value,
    reply: SendResponse<Response<Body>>,
}

impl ApiServer {
    /// The next request, which must be `method path` (the query is checked by callers).
    async fn next(&mut self, method: Method, path: &str) -> Call {
        let Some((request, reply)) = self.0.next_request().await else {
            panic!("expected {method} {path}, but the reconciler sent no further request");
        };
        let (parts, body) = request.into_parts();
        let bytes = body
            .collect()
            .await
            .expect("request body is readable")
            .to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("request body is JSON")
        };
        assert_eq!(
            (&parts.method, parts.uri.path()),
            (&method, path),
            "expected {method} {path}, got {} {} with body {body}",
            parts.method,
            parts.uri
        );
        Call {
            uri: parts.uri.to_string(),
            query: query_pairs(parts.uri.query().unwrap_or_default()),
            content_type: parts
                .headers
                .get(CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned),
            body,
            reply,
        }
    }

    /// Fails on any further request; returns once the reconciler's client is dropped.
    async fn done(mut self) {
        if let Some((request, _)) = self.0.next_request().await {
            panic!(
                "unexpected request {} {} after the expected ones",
                request.method(),
                request.uri()
            );
        }
    }

    /// Expects the read of the Function's Deployment; answers with `stored`, or 404.
    async fn get_deployment(&mut self, stored: Option<Value>) {
        let call = self.next(Method::GET, DEPLOYMENT).await;
        match stored {
            Some(deployment) => call.respond(StatusCode::OK, &deployment),
            None => call.fail(404, "NotFound", r#"deployments.apps "hello" not found"#),
        }
    }

    /// Expects a server-side apply of the Deployment by `manager` and answers with the
    /// stored object at `replicas` pods, `ready` of them ready. Returns the applied body.
    async fn apply_deployment(&mut self, manager: &str, replicas: i32, ready: i32) -> Value {
        let call = self.next(Method::PATCH, DEPLOYMENT).await;
        call.assert_applied_by(manager);
        let applied = call.body.clone();
        call.respond(
            StatusCode::OK,
            &stored_deployment(&applied, replicas, ready),
        );
        applied
    }

    /// Expects the autoscaler's field manager to take `spec.replicas` at `replicas`, with
    /// an apply of that field alone, and answers with `stored` at that scale.
    async fn hand_over_replicas(&mut self, replicas: i32, stored: &Value) {
        let call = self.next(Method::PATCH, DEPLOYMENT).await;
        call.assert_applied_by(AUTOSCALER_FIELD_MANAGER);
        assert_eq!(
            call.body,
            json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "hello"},
                "spec": {"replicas": replicas},
            }),
            "the autoscaler's manager must own spec.replicas and nothing else"
        );
        let mut stored = stored.clone();
        stored["spec"]["replicas"] = json!(replicas);
        call.respond(StatusCode::OK, &stored);
    }

    /// Expects the applies of Services `hello` and `hello-pods`, in that order. Returns
    /// the applied bodies.
    async fn apply_services(&mut self) -> (Value, Value) {
        let mut applied = Vec::new();
        for path in [SERVICE, PODS_SERVICE] {
            let call = self.next(Method::PATCH, path).await;
            call.assert_applied_by(FIELD_MANAGER);
            assert_eq!(call.body["kind"], "Service");
            applied.push(call.body.clone());
            let stored = call.body.clone();
            call.respond(StatusCode::OK, &stored);
        }
        let pods_service = applied.pop().unwrap_or_default();
        let service = applied.pop().unwrap_or_default();
        (service, pods_service)
    }

    /// Expects the reads of the names the Function's Services and HPA take (made on its
    /// first reconcile in a process), and answers that none exists.
    async fn names_free(&mut self) {
        self.read_names(None).await;
    }

    /// [`ApiServer::names_free`], but the HPA read finds `hpa` when given.
    async fn read_names(&mut self, hpa: Option<&Value>) {
        for path in [SERVICE, PODS_SERVICE, HPA] {
            let call = self.next(Method::GET, path).await;
            match hpa {
                Some(hpa) if path == HPA => call.respond(StatusCode::OK, hpa),
                _ => call.fail(404, "NotFound", "not found"),
            }
        }
    }

    /// Expects the list of the Function's pods by label, and answers with `pods`.
    async fn list_pods(&mut self, pods: Vec<Value>) {
        let call = self.next(Method::GET, PODS).await;
        assert_eq!(
            call.query.get("labelSelector").map(String::as_str),
            Some("zeroscale.dev/function=hello"),
            "pods listed with {}",
            call.uri
        );
        call.respond(
            StatusCode::OK,
            &json!({
                "apiVersion": "v1",
                "kind": "PodList",
                "metadata": {"resourceVersion": "12"},
                "items": pods,
            }),
        );
    }

    /// Expects the status apply of `function` and answers with the Function carrying
    /// it. Returns the applied status.
    async fn apply_status(&mut self, function: &Function) -> Value {
        let call = self.next(Method::PATCH, STATUS).await;
        call.assert_applied_by(FIELD_MANAGER);
        assert_eq!(call.body["apiVersion"], "zeroscale.dev/v1alpha1");
        assert_eq!(call.body["kind"], "Function");
        let status = call.body["status"].clone();
        let mut stored = serde_json::to_value(function).expect("Function serializes");
        stored["status"] = status.clone();
        call.respond(StatusCode::OK, &stored);
        status
    }

    /// Expects the reconcile of a Function with one ready pod whose Deployment is `stored`
    /// up to its status: the names free, the children re-applied. Returns the status.
    async fn reapply_serving(&mut self, stored: Value, function: &Function) -> Value {
        self.get_deployment(Some(stored)).await;
        self.names_free().await;
        self.apply_deployment(FIELD_MANAGER, 1, 1).await;
        self.apply_services().await;
        self.apply_status(function).await
    }

    /// Expects an Event about the Function and answers that it was created. Returns it.
    async fn event(&mut self) -> Value {
        let call = self.next(Method::POST, EVENTS).await;
        let event = call.body.clone();
        assert_eq!(event["regarding"]["apiVersion"], "zeroscale.dev/v1alpha1");
        assert_eq!(event["regarding"]["kind"], "Function");
        assert_eq!(event["regarding"]["name"], "hello");
        assert_eq!(event["regarding"]["namespace"], "default");
        assert_eq!(event["regarding"]["uid"], "uid-hello");
        assert_eq!(event["action"], "Reconcile");
        assert_eq!(event["reportingController"], "zeroscale-operator");
        assert_eq!(event["reportingInstance"], "zeroscale-operator-0");
        call.respond(StatusCode::CREATED, &event);
        event
    }

    /// Expects the status of a Function refused with `reason` (`Ready=False`) and the
    /// Warning that announces it. Returns the status and the Event.
    async fn refusal(&mut self, function: &Function, reason: &str) -> (Value, Value) {
        let status = self.apply_status(function).await;
        let condition = ready(&status);
        assert_eq!(condition["status"], "False");
        assert_eq!(condition["reason"], reason);
        let event = self.event().await;
        assert_eq!(event["type"], "Warning");
        assert_eq!(event["reason"], reason);
        (status, event)
    }
}

impl Call {
    /// Asserts that this is a server-side apply by `manager` that takes conflicting fields.
    fn assert_applied_by(&self, manager: &str) {
        assert_eq!(
            self.content_type.as_deref(),
            Some("application/apply-patch+yaml"),
            "{} is not a server-side apply",
            self.uri
        );
        assert_eq!(
            self.query.get("fieldManager").map(String::as_str),
            Some(manager),
            "field manager of {}",
            self.uri
        );
        assert_eq!(
            self.query.get("force").map(String::as_str),
            Some("true"),
            "{} does not force conflicts",
            self.uri
        );
    }

    fn respond(self, status: StatusCode, body: &Value) {
        let body = serde_json::to_vec(body).expect("response serializes");
        let response = Response::builder()
            .status(status)
            .header(CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .expect("valid response");
        self.reply.send_response(response);
    }

    /// Answers with a `Status` error, as the API server does.
    fn fail(self, code: u16, reason: &str, message: &str) {
        let status = StatusCode::from_u16(code).expect("valid status code");
        self.respond(
            status,
            &json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": message,
                "reason": reason,
                "code": code,
            }),
        );
    }
}

/// The decoded pairs of a URL query.
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

/// The `Ready` condition of a status, which must be its only condition.
fn ready(status: &Value) -> &Value {
    let conditions = status["conditions"]
        .as_array()
        .expect("status has conditions");
    assert_eq!(conditions.len(), 1, "conditions: {conditions:?}");
    assert_eq!(conditions[0]["type"], "Ready");
    &conditions[0]
}

fn reconciles(metrics: &Metrics, result: &str) -> u64 {
    metrics.reconciles.with_label_values(&[result]).get()
}

// ---------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn new_function_is_created_at_its_initial_scale_and_its_replicas_handed_to_the_autoscaler() {
    let (ctx, metrics, mut server) = context();
    let function = Function::test("hello");
    let expected = function.clone();
    let mut built = serde_json::to_value(resources::deployment(&function).expect("valid spec"))
        .expect("Deployment serializes");
    built["spec"]["replicas"] = json!(1);
    let verifier = tokio::spawn(async move {
        server.get_deployment(None).await;
        server.names_free().await;

        // Created by the operator, at its initial scale...
        let created = server.apply_deployment(FIELD_MANAGER, 1, 0).await;
        assert_eq!(
            created, built,
            "the operator applies what the builder built"
        );
        assert_eq!(
            created["spec"]["template"]["spec"]["containers"][0]["image"],
            IMAGE
        );
        assert_eq!(
            created["metadata"]["ownerReferences"],
            json!([{
                "apiVersion": "zeroscale.dev/v1alpha1",
                "kind": "Function",
                "name": "hello",
                "uid": "uid-hello",
                "controller": true,
            }])
        );

        // ...then the autoscaler's field manager takes replicas, and only replicas.
        server
            .hand_over_replicas(1, &stored_deployment(&created, 1, 0))
            .await;

        let (service, pods_service) = server.apply_services().await;
        assert_eq!(service["spec"]["type"], "ExternalName");
        assert_eq!(
            service["spec"]["externalName"],
            "zeroscale-activator.zeroscale-system.svc.cluster.local"
        );
        assert_eq!(pods_service["spec"]["clusterIP"], "None");
        assert_eq!(
            pods_service["spec"]["selector"],
            json!({"zeroscale.dev/function": "hello"})
        );

        server.list_pods(Vec::new()).await;

        let status = server.apply_status(&expected).await;
        let condition = ready(&status);
        assert_eq!(condition["status"], "Unknown");
        assert_eq!(condition["reason"], "Deploying");
        assert_eq!(condition["message"], "0 of 1 pods ready");
        assert_eq!(condition["observedGeneration"], 1);
        assert_eq!(status["observedGeneration"], 1);
        assert_eq!(status["url"], "http://hello.default.svc.cluster.local");
        assert_eq!(status["address"], "hello.default.svc.cluster.local");
        assert_eq!(status["replicas"], 1);
        assert_eq!(status["readyReplicas"], 0);
        assert_eq!(status["desiredReplicas"], 1);

        let event = server.event().await;
        assert_eq!(event["type"], "Normal");
        assert_eq!(event["reason"], "Deploying");
        assert_eq!(event["note"], "0 of 1 pods ready");

        server.done().await;
    });

    let result = reconcile(Arc::new(function), ctx).await;
    verified(verifier).await;
    assert_eq!(result.expect("reconcile succeeds"), Action::requeue(RESYNC));
    assert_eq!(reconciles(&metrics, "ok"), 1);
}

#[tokio::test]
async fn ready_function_is_reapplied_without_scaling_listing_pods_or_publishing_events() {
    let (ctx, _metrics, mut server) = context();
    let function = Function::test("hello").serving();
    let stored = deployment_in_cluster(&function, 1, 1);
    let expected = function.clone();
    let verifier = tokio::spawn(async move {
        server.get_deployment(Some(stored)).await;
        server.names_free().await;
        // The autoscaler already owns replicas: the operator leaves them out, and
        // nothing is handed over.
        let applied = server.apply_deployment(FIELD_MANAGER, 1, 1).await;
        assert!(
            applied["spec"].get("replicas").is_none(),
            "the operator must not apply replicas: {}",
            applied["spec"]
        );
        server.apply_services().await;
        // All pods are ready: no pod list.
        let status = server.apply_status(&expected).await;
        let condition = ready(&status);
        assert_eq!(condition["status"], "True");
        assert_eq!(condition["reason"], "Serving");
        assert_eq!(condition["message"], "1 of 1 pods ready");
        assert_eq!(
            condition["lastTransitionTime"],
            serde_json::to_value(earlier()).expect("Time serializes"),
            "the transition time moves only when the status changes"
        );
        // Same reason as before: no Event.
        server.done().await;
    });

    let result = reconcile(Arc::new(function), ctx).await;
    verified(verifier).await;
    assert_eq!(result.expect("reconcile succeeds"), Action::requeue(RESYNC));
}

#[tokio::test]
async fn hpa_is_deleted_only_when_the_function_had_one_and_names_are_read_once() {
    let (ctx, _metrics, mut server) = context();
    let plain = Function::test("hello").serving();
    let cpu = Function::test("hello").cpu("250m").serving();
    let (plain_stored, cpu_stored) = (
        deployment_in_cluster(&plain, 1, 1),
        deployment_in_cluster(&cpu, 1, 1),
    );
    let (plain_expected, cpu_expected) = (plain.clone(), cpu.clone());
    let left_over_hpa = json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "hello", "namespace": "default", "ownerReferences": [{
            "apiVersion": "zeroscale.dev/v1alpha1", "kind": "Function", "name": "hello",
            "uid": "uid-hello", "controller": true,
        }]},
        "spec": {"maxReplicas": 5, "scaleTargetRef": {"kind": "Deployment", "name": "hello"}},
    });
    let verifier = tokio::spawn(async move {
        // First reconcile in this process: the names are read, and an HPA of the
        // Function's left from when it scaled on CPU is deleted.
        server.get_deployment(Some(plain_stored.clone())).await;
        server.read_names(Some(&left_over_hpa)).await;
        server.apply_deployment(FIELD_MANAGER, 1, 1).await;
        server.apply_services().await;
        let call = server.next(Method::DELETE, HPA).await;
        assert_eq!(call.body["propagationPolicy"], "Background");
        call.respond(
            StatusCode::OK,
            &json!({"kind": "Status", "status": "Success"}),
        );
        server.apply_status(&plain_expected).await;
        // Known since: no reads of the names, no DELETE.
        server.get_deployment(Some(plain_stored.clone())).await;
        server.apply_deployment(FIELD_MANAGER, 1, 1).await;
        server.apply_services().await;
        server.apply_status(&plain_expected).await;
        // Switched to CPU: the HPA is applied...
        server.get_deployment(Some(cpu_stored)).await;
        server.apply_deployment(FIELD_MANAGER, 1, 1).await;
        server.apply_services().await;
        let call = server.next(Method::PATCH, HPA).await;
        let hpa = call.body.clone();
        call.respond(StatusCode::OK, &hpa);
        server.apply_status(&cpu_expected).await;
        // ...and switched back: it is deleted again.
        server.get_deployment(Some(plain_stored)).await;
        server.apply_deployment(FIELD_MANAGER, 1, 1).await;
        server.apply_services().await;
        let call = server.next(Method::DELETE, HPA).await;
        call.respond(
            StatusCode::OK,
            &json!({"kind": "Status", "status": "Success"}),
        );
        server.apply_status(&plain_expected).await;
        server.done().await;
    });

    let plain = Arc::new(plain);
    for function in [plain.clone(), plain.clone(), Arc::new(cpu), plain] {
        let result = reconcile(function, ctx.clone()).await;
        assert_eq!(result.expect("reconcile succeeds"), Action::requeue(RESYNC));
    }
    drop(ctx);
    verified(verifier).await;
}

#[tokio::test]
async fn api_keys_are_copied_as_digests_to_the_activator_namespace_and_removed_with_them() {
    const KEYS: &str = "/api/v1/namespaces/default/secrets/hello-keys";
    const DIGESTS: &str = "/api/v1/namespaces/zeroscale-system/secrets/apikeys.default.hello";
    let (ctx, _metrics, mut server) = context();
    let plain = Function::test("hello").serving();
    let mut keyed = plain.clone();
    keyed.spec.auth = Some(zeroscale_api::auth::AuthSpec {
        api_keys: Some(zeroscale_api::auth::ApiKeysAuth {
            secret_ref: zeroscale_api::auth::SecretRef {
                name: "hello-keys".into(),
            },
            header: None,
        }),
        jwt: None,
    });
    let stored = deployment_in_cluster(&plain, 1, 1);
    let (plain_expected, keyed_expected) = (plain.clone(), keyed.clone());
    let verifier = tokio::spawn(async move {
        server.get_deployment(Some(stored.clone())).await;
        server.names_free().await;
        server.apply_deployment(FIELD_MANAGER, 1, 1).await;
        server.apply_services().await;
        // The one Secret the Function names, read by name.
        let call = server.next(Method::GET, KEYS).await;
        call.respond(
            StatusCode::OK,
            &json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "hello-keys", "namespace": "default"},
                // "s3cret"
                "data": {"alice": "czNjcmV0"},
            }),
        );
        let call = server.next(Method::PATCH, DIGESTS).await;
        call.assert_applied_by(FIELD_MANAGER);
        let digests = call.body["data"]["sha256"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert_eq!(
            call.body["metadata"]["labels"]["zeroscale.dev/function-namespace"],
            "default"
        );
        let stored_digests = call.body.clone();
        call.respond(StatusCode::OK, &stored_digests);
        // base64 of the hex digest of "s3cret" (echo -n s3cret | sha256sum); never the key.
        assert_eq!(
            digests,
            "MWVjMWMyNmI1MGQ1ZDNjNThkOTU4MzE4MWFmODA3NjY1NWZlMDA3NTZiZjcyODU5NDBiYTM2NzBmOTlmY2JhMA=="
        );
        server.apply_status(&keyed_expected).await;
        // API keys dropped: the digests go.
        server.get_deployment(Some(stored)).await;
        server.apply_deployment(FIELD_MANAGER, 1, 1).await;
        server.apply_services().await;
        let call = server.next(Method::DELETE, DIGESTS).await;
        call.respond(
            StatusCode::OK,
            &json!({"kind": "Status", "status": "Success"}),
        );
        server.apply_status(&plain_expected).await;
        server.done().await;
    });

    for function in [keyed, plain] {
        let result = reconcile(Arc::new(function), ctx.clone()).await;
        assert_eq!(result.expect("reconcile succeeds"), Action::requeue(RESYNC));
    }
    drop(ctx);
    verified(verifier).await;
}

#[tokio::test]
async fn interrupted_handover_is_completed_at_the_current_scale_not_the_initial_one() {
    let (ctx, _metrics, mut server) = context();
    let function = Function::test("hello").serving();
    let stored = deployment_before_handover(&function, 3, 3);
    let expected = function.clone();
    let verifier = tokio::spawn(async move {
        server.get_deployment(Some(stored.clone())).await;
        server.names_free().await;
        let applied = server.apply_deployment(FIELD_MANAGER, 3, 3).await;
        assert_eq!(
            applied["spec"]["replicas"], 3,
            "the running pods are kept, not reset to the initial scale"
        );
        server.hand_over_replicas(3, &stored).await;
        server.apply_services().await;
        let status = server.apply_status(&expected).await;
        assert_eq!(ready(&status)["message"], "3 of 3 pods ready");
        assert_eq!(status["desiredReplicas"], 3);
        // Still Serving: no Event.
        server.done().await;
    });

    let result = reconcile(Arc::new(function), ctx).await;
    verified(verifier).await;
    assert_eq!(result.expect("reconcile succeeds"), Action::requeue(RESYNC));
}

#[tokio::test]
async fn hand_edited_deployment_image_is_forced_back_to_the_function_image() {
    let (ctx, _metrics, mut server) = context();
    let function = Function::test("hello").serving();
    let mut drifted = deployment_in_cluster(&function, 1, 1);
    drifted["spec"]["template"]["spec"]["containers"][0]["image"] =
        json!("example.com/hello:hand-edited");
    let expected = function.clone();
    let verifier = tokio::spawn(async move {
        server.get_deployment(Some(drifted)).await;
        server.names_free().await;
        let applied = server.apply_deployment(FIELD_MANAGER, 1, 1).await;
        assert_eq!(
            applied["spec"]["template"]["spec"]["containers"][0]["image"],
            IMAGE
        );
        server.apply_services().await;
        server.apply_status(&expected).await;
        server.done().await;
    });

    let result = reconcile(Arc::new(function), ctx).await;
    verified(verifier).await;
    assert_eq!(result.expect("reconcile succeeds"), Action::requeue(RESYNC));
}

#[tokio::test]
async fn image_pull_failure_of_a_new_function_is_reported_with_a_warning() {
    let (ctx, _metrics, mut server) = context();
    let function = Function::test("hello");
    let expected = function.clone();
    let verifier = tokio::spawn(async move {
        server.get_deployment(None).await;
        server.names_free().await;
        let created = server.apply_deployment(FIELD_MANAGER, 1, 0).await;
        server
            .hand_over_replicas(1, &stored_deployment(&created, 1, 0))
            .await;
        server.apply_services().await;
        let pull_error = format!("Back-off pulling image \"{IMAGE}\"");
        server
            .list_pods(vec![waiting_pod("ImagePullBackOff", &pull_error)])
            .await;

        let (status, event) = server.refusal(&expected, "DeploymentFailed").await;
        let message = format!(
            "pod hello-5d8f7c9b4-x2x4z: container function: ImagePullBackOff: {pull_error}"
        );
        assert_eq!(ready(&status)["message"], message.as_str());
        assert_eq!(event["note"], message.as_str());
        server.done().await;
    });

    let result = reconcile(Arc::new(function), ctx).await;
    verified(verifier).await;
    assert_eq!(result.expect("reconcile succeeds"), Action::requeue(RESYNC));
}

/// How soon a Function whose names are taken is reconciled again.
const NOT_OWNED_RETRY: Duration = Duration::from_secs(30);

/// An object named `hello` of `kind` that zeroscale did not make.
fn someone_elses(api_version: &str, kind: &str) -> Value {
    json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": "hello", "namespace": "default", "uid": "theirs",
                     "labels": {"app": "their-app"}},
    })
}

/// Reconciles `function` (new) whose read of `taken` (the Deployment, a Service or the
/// HPA) finds `found`, made by someone else, and checks that nothing is applied or
/// deleted and that only the status and a Warning name `object`.
async fn assert_not_owned(function: Function, taken: &str, found: Value, object: &'static str) {
    let (ctx, _metrics, mut server) = context();
    let expected = function.clone();
    let taken = taken.to_owned();
    let verifier = tokio::spawn(async move {
        for path in [DEPLOYMENT, SERVICE, PODS_SERVICE, HPA] {
            let call = server.next(Method::GET, path).await;
            if path == taken {
                call.respond(StatusCode::OK, &found);
                break;
            }
            call.fail(404, "NotFound", "not found");
        }
        let (status, _) = server.refusal(&expected, "NotOwned").await;
        assert_eq!(
            ready(&status)["message"],
            format!(
                "{object} already exists and is not managed by this Function: \
                 delete or rename it, or rename the Function"
            )
        );
        server.done().await;
    });

    let result = reconcile(Arc::new(function), ctx).await;
    verified(verifier).await;
    assert_eq!(
        result.expect("a taken name is reported, not an error"),
        Action::requeue(NOT_OWNED_RETRY)
    );
}

#[tokio::test]
async fn deployment_of_the_same_name_made_by_someone_else_is_left_alone() {
    let found = someone_elses("apps/v1", "Deployment");
    assert_not_owned(
        Function::test("hello"),
        DEPLOYMENT,
        found,
        "Deployment hello",
    )
    .await;
}

#[tokio::test]
async fn service_of_the_same_name_made_by_someone_else_is_left_alone() {
    let found = someone_elses("v1", "Service");
    assert_not_owned(Function::test("hello"), SERVICE, found, "Service hello").await;
}

#[tokio::test]
async fn someone_elses_hpa_is_in_the_way_only_of_a_function_that_needs_one() {
    let foreign_hpa = someone_elses("autoscaling/v2", "HorizontalPodAutoscaler");

    // Not scaled on CPU: the HPA is none of its business, neither deleted nor reported.
    let (ctx, _metrics, mut server) = context();
    let function = Function::test("hello").serving();
    let (stored, expected) = (deployment_in_cluster(&function, 1, 1), function.clone());
    let hpa = foreign_hpa.clone();
    let verifier = tokio::spawn(async move {
        server.get_deployment(Some(stored)).await;
        server.read_names(Some(&hpa)).await;
        server.apply_deployment(FIELD_MANAGER, 1, 1).await;
        server.apply_services().await;
        server.apply_status(&expected).await;
        server.done().await;
    });
    let result = reconcile(Arc::new(function), ctx).await;
    verified(verifier).await;
    assert_eq!(result.expect("reconcile succeeds"), Action::requeue(RESYNC));

    // Scaled on CPU: it would be taken over, so the Function is refused.
    let function = Function::test("hello").cpu("250m");
    assert_not_owned(function, HPA, foreign_hpa, "HorizontalPodAutoscaler hello").await;
}

/// Reconciles `function`, whose spec is invalid at `field`, and checks that only its
/// status and a Warning say so.
async fn assert_reported_invalid_without_children(function: Function, field: &'static str) {
    let (ctx, metrics, mut server) = context();
    let expected = function.clone();
    let verifier = tokio::spawn(async move {
        // The status comes first: no Deployment, Service or HPA request at all.
        let (status, event) = server.refusal(&expected, "InvalidSpec").await;
        let message = ready(&status)["message"]
            .as_str()
            .expect("message is a string");
        assert!(
            message.starts_with(&format!("{field}: ")),
            "message names {field}: {message}"
        );
        assert_eq!(status["observedGeneration"], 1);
        assert_eq!(event["note"], message);
        server.done().await;
    });

    let result = reconcile(Arc::new(function), ctx).await;
    verified(verifier).await;
    assert_eq!(
        result.expect("an invalid spec is reported, not an error"),
        Action::await_change()
    );
    assert_eq!(reconciles(&metrics, "invalid_spec"), 1);
}

#[tokio::test]
async fn min_replicas_above_max_is_reported_as_invalid_without_building_anything() {
    let function = Function::test("hello").replicas(5, 2);
    assert_reported_invalid_without_children(function, "spec.scaling.minReplicas").await;
}

#[tokio::test]
async fn stable_window_out_of_range_is_reported_as_invalid_without_building_anything() {
    let mut function = Function::test("hello");
    function.spec.scaling.stable_window = Some("1s".into());
    assert_reported_invalid_without_children(function, "spec.scaling.stableWindow").await;
}

#[tokio::test]
async fn deployment_refused_on_create_makes_the_function_invalid_and_builds_nothing_else() {
    let (ctx, _metrics, mut server) = context();
    let function =
        Function::test("hello").volume(json!({"name": "data", "hostPath": {"path": "data"}}));
    let expected = function.clone();
    let refusal = r#"Deployment.apps "hello" is invalid: spec.template.spec.volumes[0].hostPath.path: Invalid value: "data": must be an absolute path"#;
    let verifier = tokio::spawn(async move {
        server.get_deployment(None).await;
        server.names_free().await;
        let call = server.next(Method::PATCH, DEPLOYMENT).await;
        call.assert_applied_by(FIELD_MANAGER);
        assert_eq!(call.body["spec"]["replicas"], 1);
        assert_eq!(
            call.body["spec"]["template"]["spec"]["volumes"],
            json!([{"name": "data", "hostPath": {"path": "data"}}])
        );
        call.fail(422, "Invalid", refusal);

        // No Service: the status says what the API server refused.
        let (status, _) = server.refusal(&expected, "InvalidSpec").await;
        assert_eq!(ready(&status)["message"], refusal);
        server.done().await;
    });

    let result = reconcile(Arc::new(function), ctx).await;
    verified(verifier).await;
    assert_eq!(
        result.expect("a refused spec is reported, not an error"),
        Action::await_change()
    );
}

#[tokio::test]
async fn deployment_refused_on_update_makes_the_function_invalid_and_applies_no_service() {
    let (ctx, _metrics, mut server) = context();
    let function = Function::test("hello")
        .serving()
        .volume(json!({"name": "data", "hostPath": {"path": "data"}}));
    let stored = deployment_in_cluster(&Function::test("hello"), 1, 1);
    let expected = function.clone();
    let refusal = r#"Deployment.apps "hello" is invalid: spec.template.spec.volumes[0].hostPath.path: Invalid value: "data": must be an absolute path"#;
    let verifier = tokio::spawn(async move {
        server.get_deployment(Some(stored)).await;
        server.names_free().await;
        let call = server.next(Method::PATCH, DEPLOYMENT).await;
        call.assert_applied_by(FIELD_MANAGER);
        call.fail(422, "Invalid", refusal);

        let status = server.apply_status(&expected).await;
        let condition = ready(&status);
        assert_eq!(condition["reason"], "InvalidSpec");
        assert_eq!(condition["message"], refusal);
        // Serving -> InvalidSpec is a transition worth a Warning.
        let event = server.event().await;
        assert_eq!(event["type"], "Warning");
        server.done().await;
    });

    let result = reconcile(Arc::new(function), ctx).await;
    verified(verifier).await;
    assert_eq!(
        result.expect("a refused spec is reported, not an error"),
        Action::await_change()
    );
}

#[tokio::test]
async fn server_error_on_the_deployment_apply_fails_the_reconcile_and_retries_with_backoff() {
    let (ctx, metrics, mut server) = context();
    let function = Arc::new(Function::test("hello").serving());
    let stored = deployment_in_cluster(&function, 1, 1);
    let verifier = tokio::spawn(async move {
        server.get_deployment(Some(stored)).await;
        server.names_free().await;
        let call = server.next(Method::PATCH, DEPLOYMENT).await;
        call.assert_applied_by(FIELD_MANAGER);
        call.fail(500, "InternalError", "etcdserver: request timed out");
        // Nothing after a failed Deployment apply: no Service, no status.
        server.done().await;
    });

    let result = reconcile(function.clone(), ctx.clone()).await;
    let retries = result.as_ref().err().map(|error| {
        [
            error_policy(function.clone(), error, ctx.clone()),
            error_policy(function.clone(), error, ctx.clone()),
        ]
    });
    drop(ctx);
    verified(verifier).await;

    let error = result.expect_err("a 500 fails the reconcile");
    assert!(
        matches!(&error, Error::Apply { kind, name, source: kube::Error::Api(status) }
            if kind == "Deployment" && name == "hello" && status.code == 500),
        "{error:?}"
    );
    assert!(error.is_transient());
    assert_eq!(
        retries,
        Some([
            Action::requeue(Duration::from_secs(1)),
            Action::requeue(Duration::from_secs(2)),
        ]),
        "transient failures retry soon, then back off"
    );
    assert_eq!(reconciles(&metrics, "error"), 1);
    assert_eq!(
        metrics.reconcile_errors.with_label_values(&["apply"]).get(),
        1
    );
}

#[tokio::test]
async fn forbidden_is_permanent_and_retried_only_after_the_longest_delay() {
    let (ctx, _metrics, mut server) = context();
    let function = Arc::new(Function::test("hello"));
    let verifier = tokio::spawn(async move {
        let call = server.next(Method::GET, DEPLOYMENT).await;
        call.fail(
            403,
            "Forbidden",
            r#"deployments.apps "hello" is forbidden: User "system:serviceaccount:zeroscale-system:zeroscale-operator" cannot get resource "deployments" in API group "apps" in the namespace "default""#,
        );
        server.done().await;
    });

    let result = reconcile(function.clone(), ctx.clone()).await;
    let retries = result.as_ref().err().map(|error| {
        [
            error_policy(function.clone(), error, ctx.clone()),
            error_policy(function.clone(), error, ctx.clone()),
        ]
    });
    drop(ctx);
    verified(verifier).await;

    let error = result.expect_err("a 403 fails the reconcile");
    assert!(
        matches!(&error, Error::Get { kind, name, source: kube::Error::Api(status) }
            if name == "hello" && status.code == 403),
        "{error:?}"
    );
    assert!(!error.is_transient());
    assert_eq!(
        retries,
        Some([
            Action::requeue(LONGEST_RETRY),
            Action::requeue(LONGEST_RETRY)
        ]),
        "a permanent error waits the longest delay from the first failure on"
    );
}

#[tokio::test]
async fn successful_reconcile_resets_the_backoff() {
    let (ctx, _metrics, mut server) = context();
    let function = Arc::new(Function::test("hello").serving());
    let stored = deployment_in_cluster(&function, 1, 1);
    let expected = (*function).clone();
    let verifier = tokio::spawn(async move {
        // Until a reconcile succeeds, each one reads the names again.
        let fail = async |server: &mut ApiServer, names_known: bool| {
            server.get_deployment(Some(stored.clone())).await;
            if !names_known {
                server.names_free().await;
            }
            let call = server.next(Method::PATCH, DEPLOYMENT).await;
            call.fail(503, "ServiceUnavailable", "the server is shutting down");
        };
        fail(&mut server, false).await;
        fail(&mut server, false).await;

        server.get_deployment(Some(stored.clone())).await;
        server.names_free().await;
        server.apply_deployment(FIELD_MANAGER, 1, 1).await;
        server.apply_services().await;
        server.apply_status(&expected).await;

        fail(&mut server, true).await;
        server.done().await;
    });

    let mut retries = Vec::new();
    for _ in 0..2 {
        let error = reconcile(function.clone(), ctx.clone())
            .await
            .expect_err("a 503 fails the reconcile");
        retries.push(error_policy(function.clone(), &error, ctx.clone()));
    }
    let success = reconcile(function.clone(), ctx.clone()).await;
    let error = reconcile(function.clone(), ctx.clone())
        .await
        .expect_err("a 503 fails the reconcile");
    retries.push(error_policy(function.clone(), &error, ctx.clone()));
    drop(ctx);
    verified(verifier).await;

    assert_eq!(
        success.expect("reconcile succeeds"),
        Action::requeue(RESYNC)
    );
    assert_eq!(
        retries,
        [1, 2, 1].map(|seconds| Action::requeue(Duration::from_secs(seconds))),
        "the first failure after a success retries after the first delay again"
    );
}

#[tokio::test]
async fn function_without_namespace_fails_permanently_without_any_request() {
    let (ctx, _metrics, server) = context();
    let mut function = Function::test("hello");
    function.metadata.namespace = None;
    let function = Arc::new(function);
    let verifier = tokio::spawn(server.done());

    let result = reconcile(function.clone(), ctx.clone()).await;
    let retry = result
        .as_ref()
        .err()
        .map(|error| error_policy(function.clone(), error, ctx.clone()));
    drop(ctx);
    verified(verifier).await;

    assert!(matches!(result, Err(Error::MissingNamespace)), "{result:?}");
    assert_eq!(retry, Some(Action::requeue(LONGEST_RETRY)));
}

#[tokio::test]
async fn cpu_function_gets_an_hpa_that_never_scales_below_one_pod() {
    let (ctx, _metrics, mut server) = context();
    let function = Function::test("hello").cpu("250m").replicas(0, 5);
    let expected = function.clone();
    let verifier = tokio::spawn(async move {
        server.get_deployment(None).await;
        server.names_free().await;
        let created = server.apply_deployment(FIELD_MANAGER, 1, 0).await;
        assert_eq!(
            created["spec"]["template"]["spec"]["containers"][0]["resources"],
            json!({"requests": {"cpu": "250m"}})
        );
        server
            .hand_over_replicas(1, &stored_deployment(&created, 1, 0))
            .await;
        server.apply_services().await;

        let call = server.next(Method::PATCH, HPA).await;
        call.assert_applied_by(FIELD_MANAGER);
        let hpa = call.body.clone();
        assert_eq!(hpa["apiVersion"], "autoscaling/v2");
        assert_eq!(hpa["kind"], "HorizontalPodAutoscaler");
        assert_eq!(hpa["metadata"]["ownerReferences"][0]["uid"], "uid-hello");
        let spec = &hpa["spec"];
        let min = spec["minReplicas"].as_i64().expect("minReplicas is set");
        assert!(min >= 1, "an HPA cannot scale to zero: minReplicas {min}");
        assert_eq!(spec["maxReplicas"], 5);
        assert_eq!(
            spec["scaleTargetRef"],
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "hello"})
        );
        assert_eq!(
            spec["metrics"],
            json!([{
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": 80},
                },
            }])
        );
        call.respond(StatusCode::OK, &hpa);

        server.list_pods(Vec::new()).await;
        server.apply_status(&expected).await;
        server.event().await;
        server.done().await;
    });

    let result = reconcile(Arc::new(function), ctx).await;
    verified(verifier).await;
    assert_eq!(result.expect("reconcile succeeds"), Action::requeue(RESYNC));
}

#[tokio::test]
async fn wake_request_on_a_function_at_zero_scales_it_up_in_the_same_reconcile() {
    let (ctx, _metrics, mut server) = context();
    let mut function = Function::test("hello").serving();
    function.metadata.annotations = Some(BTreeMap::from([(
        zeroscale_api::keys::WAKE_REQUESTED_AT.to_owned(),
        "2026-11-24T09:00:00Z".to_owned(),
    )]));
    let stored = deployment_in_cluster(&function, 0, 0);
    let expected = function.clone();
    let verifier = tokio::spawn(async move {
        server.get_deployment(Some(stored.clone())).await;
        server.names_free().await;
        server.apply_deployment(FIELD_MANAGER, 0, 0).await;
        // No tick needed: the same reconcile hands the wake scale to the autoscaler.
        server.hand_over_replicas(1, &stored).await;
        let call = server.next(Method::PATCH, STATUS).await;
        call.assert_applied_by(AUTOSCALER_FIELD_MANAGER);
        assert!(
            call.body["status"]["lastScaleTime"].is_string(),
            "the wake is recorded as a scale: {}",
            call.body
        );
        assert_eq!(call.body["status"]["lastScaleReason"], "Wake: 0 -> 1");
        let mut stored_function = serde_json::to_value(&expected).expect("serializes");
        stored_function["status"]["lastScaleTime"] = call.body["status"]["lastScaleTime"].clone();
        call.respond(StatusCode::OK, &stored_function);
        let call = server.next(Method::POST, EVENTS).await;
        assert_eq!(call.body["reason"], "ScaledFromZero");
        assert_eq!(call.body["note"], "hello: 0 -> 1 (Wake)");
        let event = call.body.clone();
        call.respond(StatusCode::CREATED, &event);
        server.apply_services().await;
        server.list_pods(Vec::new()).await;
        let status = server.apply_status(&expected).await;
        assert_eq!(ready(&status)["reason"], "Deploying");
        assert!(
            status.get("lastScaleTime").is_none(),
            "the operator's own status apply leaves lastScaleTime to the autoscaler"
        );
        server.event().await;
        server.done().await;
    });

    let result = reconcile(Arc::new(function), ctx).await;
    verified(verifier).await;
    assert_eq!(result.expect("reconcile succeeds"), Action::requeue(RESYNC));
}

// ---------------------------------------------------------------------------------------
// Host claims

/// The condition of `type_` in an applied status.
fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .expect("status has conditions")
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

/// `ctx` watching one more Function, as if its controller had listed it.
fn also_watched(ctx: &Context, function: Function) {
    let (store, mut writer) = kube::runtime::reflector::store();
    writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(function));
    ctx.watched().add(store);
}

#[tokio::test]
async fn a_host_another_function_keeps_is_reported_with_a_warning_and_ready_left_alone() {
    let (ctx, _metrics, mut server) = context();
    let mut keeper = Function::test("api");
    keeper.metadata.namespace = Some("billing".into());
    keeper.spec.routing.hosts = vec!["api.example.com".into()];
    also_watched(&ctx, keeper);
    let mut function = Function::test("hello").serving();
    function.spec.routing.hosts = vec!["API.example.com.".into(), "hello.example.com".into()];
    let stored = deployment_in_cluster(&function, 1, 1);
    let expected = function.clone();
    let verifier = tokio::spawn(async move {
        let status = server.reapply_serving(stored, &expected).await;
        let ready = condition(&status, "Ready");
        assert_eq!(
            (&ready["status"], &ready["reason"]),
            (&json!("True"), &json!("Serving"))
        );
        let claims = condition(&status, "HostsClaimed");
        assert_eq!(claims["status"], "False");
        assert_eq!(claims["reason"], "HostConflict");
        let message = claims["message"].as_str().expect("message");
        assert!(
            message.contains("billing/api keeps it") && !message.contains("hello.example.com"),
            "{message}"
        );
        let event = server.event().await;
        assert_eq!(event["type"], "Warning");
        assert_eq!(event["reason"], "HostConflict");
        server.done().await;
    });

    let result = reconcile(Arc::new(function), ctx).await;
    verified(verifier).await;
    assert_eq!(
        result.expect("reconcile succeeds"),
        Action::requeue(Duration::from_secs(30)),
        "looks again soon: the keeper may give the host up without an event naming this one"
    );
}

#[tokio::test]
async fn the_end_of_a_host_conflict_is_announced_and_the_resync_returns_to_normal() {
    let (ctx, _metrics, mut server) = context();
    let mut function = Function::test("hello").serving();
    function.spec.routing.hosts = vec!["api.example.com".into()];
    if let Some(status) = function.status.as_mut() {
        status.set_condition(
            "HostsClaimed",
            "False",
            "HostConflict",
            "billing/api keeps it".into(),
            Some(1),
            earlier(),
        );
    }
    let stored = deployment_in_cluster(&function, 1, 1);
    let expected = function.clone();
    let verifier = tokio::spawn(async move {
        let status = server.reapply_serving(stored, &expected).await;
        let claims = condition(&status, "HostsClaimed");
        assert_eq!(
            (&claims["status"], &claims["reason"]),
            (&json!("True"), &json!("AllHostsClaimed"))
        );
        let event = server.event().await;
        assert_eq!(event["type"], "Normal");
        assert_eq!(event["reason"], "AllHostsClaimed");
        server.done().await;
    });

    let result = reconcile(Arc::new(function), ctx).await;
    verified(verifier).await;
    assert_eq!(result.expect("reconcile succeeds"), Action::requeue(RESYNC));
}

#[tokio::test]
async fn hosts_claimed_from_the_start_are_recorded_without_an_event() {
    let (ctx, _metrics, mut server) = context();
    let mut function = Function::test("hello").serving();
    function.spec.routing.hosts = vec!["api.example.com".into()];
    let stored = deployment_in_cluster(&function, 1, 1);
    let expected = function.clone();
    let verifier = tokio::spawn(async move {
        let status = server.reapply_serving(stored, &expected).await;
        assert_eq!(
            condition(&status, "HostsClaimed")["reason"],
            "AllHostsClaimed"
        );
        server.done().await;
    });

    let result = reconcile(Arc::new(function), ctx).await;
    verified(verifier).await;
    assert_eq!(result.expect("reconcile succeeds"), Action::requeue(RESYNC));
}

// ---------------------------------------------------------------------------------------
// Gateway API

/// The operator's configuration with `--public-domain fn.example.com` and
/// `--gateway-parent edge/public`.
fn gateway_config() -> Config {
    Config {
        public_domain: Some("fn.example.com".into()),
        gateway: Some(
            GatewayConfig::parse(
                "edge/public",
                "zeroscale-activator-public.zeroscale-system:80",
            )
            .expect("valid"),
        ),
        ..Config::test()
    }
}

#[tokio::test]
async fn a_public_function_gets_an_httproute_and_the_gateways_verdict_as_routed() {
    let (ctx, _metrics, mut server) = context_with(gateway_config());
    let mut function = Function::test("hello").serving();
    function.spec.routing.path_prefix = Some("/api".into());
    let stored = deployment_in_cluster(&function, 1, 1);
    let expected = function.clone();
    let verifier = tokio::spawn(async move {
        server.get_deployment(Some(stored)).await;
        server.names_free().await;
        server.apply_deployment(FIELD_MANAGER, 1, 1).await;
        server.apply_services().await;
        server
            .next(Method::GET, ROUTE)
            .await
            .fail(404, "NotFound", "not found");
        let call = server.next(Method::PATCH, ROUTE).await;
        call.assert_applied_by(FIELD_MANAGER);
        let applied = call.body.clone();
        assert_eq!(applied["apiVersion"], "gateway.networking.k8s.io/v1");
        assert_eq!(applied["kind"], "HTTPRoute");
        assert_eq!(
            applied["metadata"]["ownerReferences"][0]["uid"],
            "uid-hello"
        );
        assert_eq!(
            applied["spec"],
            json!({
                "parentRefs": [{"namespace": "edge", "name": "public"}],
                "hostnames": ["hello.default.fn.example.com"],
                "rules": [{
                    "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
                    "backendRefs": [{
                        "name": "zeroscale-activator-public",
                        "namespace": "zeroscale-system",
                        "port": 80
                    }]
                }]
            })
        );
        // The Gateway's controller refused the cross-namespace backend.
        let mut stored = applied;
        stored["status"] = json!({"parents": [{
            "parentRef": {"namespace": "edge", "name": "public"},
            "controllerName": "example.com/gateway",
            "conditions": [
                {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                 "lastTransitionTime": "2026-01-01T00:00:00Z"},
                {"type": "ResolvedRefs", "status": "False", "reason": "RefNotPermitted",
                 "message": "no ReferenceGrant", "lastTransitionTime": "2026-01-01T00:00:00Z"}
            ]
        }]});
        call.respond(StatusCode::OK, &stored);
        let status = server.apply_status(&expected).await;
        let routed = condition(&status, "Routed");
        assert_eq!(routed["status"], "False");
        assert_eq!(routed["reason"], "RefNotPermitted");
        assert!(
            routed["message"]
                .as_str()
                .is_some_and(|m| m.contains("no ReferenceGrant")),
            "{routed}"
        );
        server.done().await;
    });

    let result = reconcile(Arc::new(function), ctx).await;
    verified(verifier).await;
    result.expect("reconcile succeeds");
}

#[tokio::test]
async fn a_function_turned_cluster_local_loses_its_route_but_someone_elses_is_left_alone() {
    for (managed, deleted) in [(true, true), (false, false)] {
        let (ctx, _metrics, mut server) = context_with(gateway_config());
        let mut function = Function::test("hello").serving();
        function.spec.routing.visibility = zeroscale_api::Visibility::ClusterLocal;
        let stored = deployment_in_cluster(&function, 1, 1);
        let expected = function.clone();
        let verifier = tokio::spawn(async move {
            server.get_deployment(Some(stored)).await;
            server.names_free().await;
            server.apply_deployment(FIELD_MANAGER, 1, 1).await;
            server.apply_services().await;
            let mut route = json!({
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "HTTPRoute",
                "metadata": {"name": "hello", "namespace": "default"},
                "spec": {"parentRefs": [], "hostnames": [], "rules": []},
            });
            if managed {
                route["metadata"]["ownerReferences"] = json!([{
                    "apiVersion": "zeroscale.dev/v1alpha1",
                    "kind": "Function",
                    "name": "hello",
                    "uid": "uid-hello",
                    "controller": true,
                }]);
            }
            server
                .next(Method::GET, ROUTE)
                .await
                .respond(StatusCode::OK, &route);
            if deleted {
                server
                    .next(Method::DELETE, ROUTE)
                    .await
                    .respond(StatusCode::OK, &route);
            }
            let status = server.apply_status(&expected).await;
            let conditions = status["conditions"].as_array().expect("conditions");
            let routed = conditions.iter().find(|c| c["type"] == "Routed");
            if managed {
                assert!(routed.is_none(), "{status}");
            } else {
                assert_eq!(routed.expect("Routed")["reason"], "NotOwned");
            }
            server.done().await;
        });

        let result = reconcile(Arc::new(function), ctx).await;
        verified(verifier).await;
        result.expect("reconcile succeeds");
    }
}

#[tokio::test]
async fn queue_triggers_without_nats_make_the_function_not_ready_saying_how_to_enable_nats() {
    let (ctx, metrics, mut server) = context();
    let mut function = Function::test("hello");
    function
        .spec
        .triggers
        .queues
        .push(QueueTrigger::new("orders", "ORDERS"));
    let expected = function.clone();
    let verifier = tokio::spawn(async move {
        // Nothing is built: the status and its Warning are the only requests.
        let (status, event) = server.refusal(&expected, "NatsNotConfigured").await;
        let message = ready(&status)["message"].as_str().expect("a message");
        assert_eq!(message, NATS_NOT_CONFIGURED);
        assert!(message.contains("nats.enabled=true") && message.contains("--nats-url"));
        assert_eq!(event["note"], message);
        server.done().await;
    });

    let result = reconcile(Arc::new(function), ctx).await;
    verified(verifier).await;
    assert_eq!(
        result.expect("a missing NATS is reported, not an error"),
        Action::await_change()
    );
    assert_eq!(reconciles(&metrics, "nats_not_configured"), 1);
}
