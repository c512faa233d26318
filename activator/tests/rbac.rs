//! The chart's RBAC for the activator, derived from the code: the activator's watches
//! and its wake request run against a recording fake API server on loopback, each
//! request becomes the permission the API server would check (verb, API group,
//! resource), and the test fails unless the chart's rules
//! (`charts/zeroscale/rbac/activator-clusterrole.yaml`, the file its templates include)
//! grant every one of them and every grant in them was used.
//!
//! The operator's rules are checked the same way by `operator/tests/rbac.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::header::CONTENT_TYPE;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use zeroscale_activator::cluster::{KubeWake, watch_endpoint_slices, watch_functions};
use zeroscale_activator::functions::{Functions, Listener};
use zeroscale_activator::metrics::Metrics;
use zeroscale_activator::routing::{Domains, FunctionKey};
use zeroscale_activator::wake::Wake;
use zeroscale_api::{Function, FunctionSpec, keys};

/// Longest any step may take before the test fails.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn chart_rbac_grants_exactly_the_api_calls_the_activator_makes() {
    let api = FakeApi::start().await;
    let mut hello = Function::new("hello", FunctionSpec::with_image("example.com/hello:1"));
    hello.metadata.namespace = Some("team".into());
    let mut stored = serde_json::to_value(&hello).expect("json");
    stored["apiVersion"] = json!("zeroscale.dev/v1alpha1");
    stored["kind"] = json!("Function");
    api.put(
        "/apis/zeroscale.dev/v1alpha1",
        "team",
        "functions",
        "hello",
        stored,
    );

    // The watches, across all namespaces (the default) and in one (--namespaces).
    let functions = Arc::new(Functions::new(
        Domains::default(),
        Metrics::new().expect("metrics"),
    ));
    let mut synced = Vec::new();
    let mut watches = Vec::new();
    for namespace in [None, Some("team")] {
        let (done, listed) = oneshot::channel();
        let (client, functions_a) = (api.client(), Arc::clone(&functions));
        watches.push(tokio::spawn(async move {
            watch_functions(client, namespace, functions_a, move || {
                let _ = done.send(());
            })
            .await;
        }));
        synced.push(listed);
        let (done, listed) = oneshot::channel();
        let (client, functions_b) = (api.client(), Arc::clone(&functions));
        watches.push(tokio::spawn(async move {
            watch_endpoint_slices(client, namespace, functions_b, move || {
                let _ = done.send(());
            })
            .await;
        }));
        synced.push(listed);
    }
    for listed in synced {
        within("the first lists", listed).await.expect("synced");
    }
    assert!(
        functions
            .route(Listener::Cluster, "hello.team", "/")
            .is_ok(),
        "the listed Function is routed"
    );

    // A request held at zero asks the operator to wake the Function.
    KubeWake::new(api.client()).wake(&FunctionKey::new("team", "hello"));

    api.wait_until("the watches and the wake request", |calls| {
        ["functions", "endpointslices"].iter().all(|resource| {
            [None, Some("team")].iter().all(|namespace| {
                calls
                    .iter()
                    .any(|call| call.watch && call.target.is(resource, *namespace))
            })
        }) && calls.iter().any(|call| call.method == Method::PATCH)
    })
    .await;
    for watch in watches {
        watch.abort();
    }
    let woken = api
        .get("/apis/zeroscale.dev/v1alpha1", "team", "functions", "hello")
        .expect("hello");
    assert!(
        woken["metadata"]["annotations"][keys::WAKE_REQUESTED_AT].is_string(),
        "the wake request is recorded on the Function"
    );

    let rules = read_rules(&chart_dir().join("rbac/activator-clusterrole.yaml"));
    assert_exactly(&rules, &api.accesses());
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP_TIMEOUT, future)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {STEP_TIMEOUT:?}"))
}

// ---------------------------------------------------------------------------------------
// The chart's rules, and the permission each request needs.

fn chart_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/zeroscale")
}

/// One RBAC policy rule.
#[derive(Debug, Default)]
struct Rule {
    api_groups: Vec<String>,
    resources: Vec<String>,
    verbs: Vec<String>,
    resource_names: Vec<String>,
}

impl Rule {
    fn grants(&self, access: &Access) -> bool {
        self.api_groups.contains(&access.group)
            && self.resources.contains(&access.resource)
            && self.verbs.iter().any(|verb| verb == access.verb)
            && (self.resource_names.is_empty()
                || access
                    .name
                    .as_ref()
                    .is_some_and(|name| self.resource_names.contains(name)))
    }
}

/// Reads a rules file of the chart: a block list of rules whose keys hold flow lists,
/// e.g. `- apiGroups: [""]` / `  verbs: [get, list]`. Anything else fails the test, so the
/// files stay in the one form both Helm and this reader understand.
fn read_rules(path: &Path) -> Vec<Rule> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut rules: Vec<Rule> = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let at = || format!("{}:{}", path.display(), number + 1);
        let trimmed = line.trim_end();
        if trimmed.trim_start().is_empty() || trimmed.trim_start().starts_with('#') {
            continue;
        }
        let entry = if let Some(rest) = trimmed.strip_prefix("- ") {
            rules.push(Rule::default());
            rest
        } else if let Some(rest) = trimmed.strip_prefix("  ") {
            rest
        } else {
            panic!(
                "{}: expected `- key: [..]` or `  key: [..]`, found {line:?}",
                at()
            );
        };
        let (key, list) = entry
            .split_once(": ")
            .unwrap_or_else(|| panic!("{}: no `key: [..]`", at()));
        let items: Vec<String> = list
            .strip_prefix('[')
            .and_then(|list| list.strip_suffix(']'))
            .unwrap_or_else(|| panic!("{}: {key} must be a flow list `[a, b]`", at()))
            .split(',')
            .map(|item| item.trim().trim_matches('"').to_owned())
            .collect();
        let rule = rules
            .last_mut()
            .unwrap_or_else(|| panic!("{}: a key before any rule", at()));
        match key {
            "apiGroups" => rule.api_groups = items,
            "resources" => rule.resources = items,
            "verbs" => rule.verbs = items,
            "resourceNames" => rule.resource_names = items,
            other => panic!("{}: unexpected key {other:?}", at()),
        }
    }
    assert!(!rules.is_empty(), "{}: no rules", path.display());
    rules
}

/// The permission the API server checks for one request.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Access {
    verb: &'static str,
    group: String,
    /// `resource` or `resource/subresource`.
    resource: String,
    /// None for a request across all namespaces.
    namespace: Option<String>,
    name: Option<String>,
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(f, "{} {group}/{}", self.verb, self.resource)?;
        match &self.namespace {
            Some(namespace) => write!(f, " in {namespace}"),
            None => write!(f, " in all namespaces"),
        }
    }
}

/// Fails unless `rules` grant every access and every grant was used by one.
fn assert_exactly(rules: &[Rule], accesses: &BTreeSet<Access>) {
    let denied: BTreeSet<String> = accesses
        .iter()
        .filter(|access| !rules.iter().any(|rule| rule.grants(access)))
        .map(Access::to_string)
        .collect();
    let mut unused = Vec::new();
    for rule in rules {
        for group in &rule.api_groups {
            for resource in &rule.resources {
                for verb in &rule.verbs {
                    let used = accesses.iter().any(|access| {
                        access.group == *group
                            && access.resource == *resource
                            && access.verb == verb
                    });
                    if !used {
                        unused.push(format!("{verb} {group}/{resource}"));
                    }
                }
            }
        }
    }
    assert!(
        denied.is_empty() && unused.is_empty(),
        "the chart's activator rules do not match the activator's API calls\n\
         calls the rules do not grant: {denied:#?}\n\
         grants no call used: {unused:#?}"
    );
}

// ---------------------------------------------------------------------------------------
// A fake API server on loopback: stores objects by path, answers lists, watches (open,
// silent) and merge patches, and records every request. Anything else is recorded and
// refused, so a new kind of call still shows up as a permission to check.

/// A request the fake answered.
#[derive(Clone, Debug)]
struct Call {
    method: Method,
    target: Target,
    watch: bool,
}

impl Call {
    fn accesses(&self) -> Vec<Access> {
        let target = &self.target;
        let access = |verb: &'static str| Access {
            verb,
            group: target.group.clone(),
            resource: match &target.subresource {
                Some(sub) => format!("{}/{sub}", target.resource),
                None => target.resource.clone(),
            },
            namespace: target.namespace.clone(),
            name: target.name.clone(),
        };
        let named = target.name.is_some();
        let verb = match (&self.method, named) {
            (&Method::GET, true) => "get",
            (&Method::GET, false) if self.watch => "watch",
            (&Method::GET, false) => "list",
            (&Method::POST, _) => "create",
            (&Method::PATCH, _) => "patch",
            (&Method::PUT, _) => "update",
            (&Method::DELETE, true) => "delete",
            (&Method::DELETE, false) => "deletecollection",
            (method, _) => panic!("unexpected method {method}"),
        };
        let mut access = access(verb);
        if verb == "create" {
            // A create is authorized before its object has a name.
            access.name = None;
        }
        vec![access]
    }
}

/// Where a request goes: `/api/v1/...` or `/apis/<group>/<version>/...`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Target {
    /// `/api/v1` or `/apis/<group>/<version>`.
    prefix: String,
    group: String,
    namespace: Option<String>,
    resource: String,
    name: Option<String>,
    subresource: Option<String>,
}

impl Target {
    fn parse(path: &str) -> Option<Target> {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let (group, split) = match segments.as_slice() {
            ["api", "v1", ..] => ("", 2),
            ["apis", group, _version, ..] => (*group, 3),
            _ => return None,
        };
        let (head, rest) = segments.split_at(split);
        let (namespace, rest) = match rest {
            ["namespaces", namespace, rest @ ..] if !rest.is_empty() => {
                (Some(namespace.to_string()), rest)
            }
            rest => (None, rest),
        };
        let (resource, name, subresource) = match rest {
            [resource] => (resource, None, None),
            [resource, name] => (resource, Some(name.to_string()), None),
            [resource, name, sub] => (resource, Some(name.to_string()), Some(sub.to_string())),
            _ => return None,
        };
        Some(Target {
            prefix: format!("/{}", head.join("/")),
            group: group.to_owned(),
            namespace,
            resource: resource.to_string(),
            name,
            subresource,
        })
    }

    fn is(&self, resource: &str, namespace: Option<&str>) -> bool {
        self.resource == resource && self.namespace.as_deref() == namespace
    }
}

/// Key of a stored object: prefix, namespace, resource, name.
type Key = (String, String, String, String);

fn key(prefix: &str, namespace: &str, resource: &str, name: &str) -> Key {
    (
        prefix.into(),
        namespace.into(),
        resource.into(),
        name.into(),
    )
}

#[derive(Default)]
struct State {
    objects: BTreeMap<Key, Value>,
    calls: Vec<Call>,
    version: u64,
}

struct FakeApi {
    state: Mutex<State>,
    changed: watch::Sender<u64>,
    address: SocketAddr,
}

impl FakeApi {
    async fn start() -> Arc<FakeApi> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake API server");
        let address = listener.local_addr().expect("local address");
        let api = Arc::new(FakeApi {
            state: Mutex::new(State::default()),
            changed: watch::channel(0).0,
            address,
        });
        let server = Arc::clone(&api);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let api = Arc::clone(&server);
                let service = hyper::service::service_fn(move |request| {
                    let api = Arc::clone(&api);
                    async move { Ok::<_, Infallible>(api.answer(request).await) }
                });
                tokio::spawn(async move {
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    // A connection ends when the client drops it; nothing to report.
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        api
    }

    fn client(&self) -> kube::Client {
        let url = format!("http://{}", self.address).parse().expect("url");
        kube::Client::try_from(kube::Config::new(url)).expect("client for the fake API server")
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn put(&self, prefix: &str, namespace: &str, resource: &str, name: &str, object: Value) {
        self.lock()
            .objects
            .insert(key(prefix, namespace, resource, name), object);
    }

    fn get(&self, prefix: &str, namespace: &str, resource: &str, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(&key(prefix, namespace, resource, name))
            .cloned()
    }

    fn accesses(&self) -> BTreeSet<Access> {
        self.lock().calls.iter().flat_map(Call::accesses).collect()
    }

    /// Waits until `done` holds for the calls recorded so far.
    async fn wait_until(&self, what: &str, done: impl Fn(&[Call]) -> bool) {
        let mut changes = self.changed.subscribe();
        let waiting = async {
            loop {
                if done(&self.lock().calls) {
                    return;
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        };
        if tokio::time::timeout(STEP_TIMEOUT, waiting).await.is_err() {
            let calls: Vec<String> = self
                .lock()
                .calls
                .iter()
                .map(|call| format!("{} {:?} watch={}", call.method, call.target, call.watch))
                .collect();
            panic!("timed out waiting for {what}; calls so far: {calls:#?}");
        }
    }

    async fn answer(&self, request: Request<Incoming>) -> Response<BoxBody<Bytes, Infallible>> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let watch = request.uri().query().is_some_and(|query| {
            query
                .split('&')
                .any(|pair| pair == "watch=true" || pair == "watch=1")
        });
        let bytes = request
            .into_body()
            .collect()
            .await
            .map(|body| body.to_bytes())
            .unwrap_or_default();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let Some(target) = Target::parse(&path) else {
            return status(StatusCode::NOT_FOUND, &format!("no such path {path}"));
        };
        let response = {
            let mut state = self.lock();
            let response = state.serve(&method, &target, watch, &body);
            state.calls.push(Call {
                method,
                target,
                watch,
            });
            response
        };
        self.changed.send_modify(|version| *version += 1);
        response
    }
}

impl State {
    fn serve(
        &mut self,
        method: &Method,
        target: &Target,
        watch: bool,
        body: &Value,
    ) -> Response<BoxBody<Bytes, Infallible>> {
        self.version += 1;
        let namespace = target.namespace.clone().unwrap_or_default();
        match (method, &target.name, &target.subresource) {
            (&Method::GET, None, None) if watch => {
                // A watch that stays open with nothing to report.
                let never = futures::stream::pending::<Result<Frame<Bytes>, Infallible>>();
                Response::builder()
                    .header(CONTENT_TYPE, "application/json")
                    .body(StreamBody::new(never).boxed())
                    .expect("response")
            }
            (&Method::GET, None, None) => {
                let items: Vec<Value> = self
                    .objects
                    .iter()
                    .filter(|((prefix, ns, resource, _), _)| {
                        *prefix == target.prefix
                            && *resource == target.resource
                            && (target.namespace.is_none() || *ns == namespace)
                    })
                    .map(|(_, object)| object.clone())
                    .collect();
                ok(&json!({
                    "apiVersion": "v1",
                    "kind": "List",
                    "metadata": {"resourceVersion": self.version.to_string()},
                    "items": items,
                }))
            }
            (&Method::GET, Some(name), None) => {
                match self
                    .objects
                    .get(&key(&target.prefix, &namespace, &target.resource, name))
                {
                    Some(object) => ok(object),
                    None => status(StatusCode::NOT_FOUND, "not found"),
                }
            }
            (&Method::PATCH, Some(name), None) => {
                let key = key(&target.prefix, &namespace, &target.resource, name);
                match self.objects.get_mut(&key) {
                    Some(object) => {
                        merge(object, body);
                        ok(object)
                    }
                    None => status(StatusCode::NOT_FOUND, "not found"),
                }
            }
            _ => status(StatusCode::METHOD_NOT_ALLOWED, "not supported by the fake"),
        }
    }
}

/// JSON merge patch (RFC 7386) of `patch` into `target`.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(fields) = target {
        for (field, value) in patch {
            if value.is_null() {
                fields.remove(field);
            } else {
                merge(fields.entry(field.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

fn ok(object: &Value) -> Response<BoxBody<Bytes, Infallible>> {
    Response::builder()
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(object.to_string())).boxed())
        .expect("response")
}

fn status(code: StatusCode, message: &str) -> Response<BoxBody<Bytes, Infallible>> {
    let body = json!({
        "apiVersion": "v1", "kind": "Status", "status": "Failure",
        "message": message, "code": code.as_u16(),
    });
    let mut response = ok(&body);
    *response.status_mut() = code;
    response
}
