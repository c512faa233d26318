//! A mocked Kubernetes API server for the scale scenarios: an in-memory store of JSON
//! objects by resource, serving lists (with label selectors), watches (held open,
//! fed by later writes), gets, creates, merge and server-side-apply patches (a write
//! that changes nothing keeps the resourceVersion and sends no watch event, as the real
//! server does) and deletes, on 127.0.0.1:0. It also serves `/stats` as an activator
//! with no load, so the operator's autoscaler has an activator to read. It records when
//! each Function's status is first written (the operator's reconcile is done) and when
//! each resource was last listed.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use anyhow::Context as _;
use http::{Method, Request, Response, StatusCode};
use http_body_util::channel::{Channel, Sender};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Bytes, Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};
use zeroscale_api::stats::StatsReport;
use zeroscale_api::{Function, FunctionSpec};

/// Namespace of the Functions the scenarios create.
pub const NAMESPACE: &str = "bench";

/// The API server's state, shared with its connections.
pub struct ApiServer {
    pub addr: SocketAddr,
    state: Arc<State>,
    _task: tokio::task::JoinHandle<()>,
}

struct State {
    objects: Mutex<Objects>,
    changes: broadcast::Sender<Change>,
    version: AtomicU64,
    started: Instant,
    /// Functions (namespace, name) whose status was written, and when first.
    reconciled: Mutex<HashMap<(String, String), Instant>>,
    reconciled_count: watch::Sender<usize>,
    /// Per resource, when its last full list was sent.
    listed: Mutex<HashMap<String, Instant>>,
    /// Kubernetes API requests answered (not `/stats`), by method and resource.
    requests: Mutex<BTreeMap<String, u64>>,
}

/// Objects by resource (plural) and (namespace, name).
type Objects = HashMap<String, BTreeMap<(String, String), Value>>;

/// One stored change, for watches.
#[derive(Clone)]
struct Change {
    resource: String,
    namespace: String,
    kind: &'static str,
    object: Value,
}

type Body = Either<Full<Bytes>, Channel<Bytes>>;

/// What a request path names.
struct Target {
    api_version: String,
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

impl ApiServer {
    /// Starts the server with `functions` Functions, all at zero and reconciled by an
    /// earlier operator.
    pub async fn start(functions: usize) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the mocked API server")?;
        let addr = listener.local_addr()?;
        let (changes, _) = broadcast::channel(65_536);
        let state = Arc::new(State {
            objects: Mutex::new(HashMap::new()),
            changes,
            version: AtomicU64::new(1),
            started: Instant::now(),
            reconciled: Mutex::new(HashMap::new()),
            reconciled_count: watch::Sender::new(0),
            listed: Mutex::new(HashMap::new()),
            requests: Mutex::new(BTreeMap::new()),
        });
        for index in 0..functions {
            state.store(
                "functions",
                reconciled_function(&format!("fn-{index:05}"))?,
                false,
            );
        }
        state.store("endpointslices", activator_slice(addr.port()), false);
        let serving = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = Arc::clone(&serving);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(state.answer(request).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            state,
            _task: task,
        })
    }

    /// Writes a kubeconfig for this server into `dir`.
    pub fn kubeconfig(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let path = dir.join(format!("kubeconfig-{}", self.addr.port()));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: bench\n  cluster:\n    server: http://{}\n\
             users:\n- name: bench\n  user: {{}}\ncontexts:\n- name: bench\n  context:\n    cluster: bench\n    user: bench\n    namespace: {NAMESPACE}\n\
             current-context: bench\n",
            self.addr
        );
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Creates a Function now, as `kubectl apply` would.
    pub fn create_function(&self, name: &str) -> anyhow::Result<()> {
        self.state.store("functions", function(name)?, true);
        Ok(())
    }

    /// The number of Functions whose status was written, as it changes.
    pub fn reconciled(&self) -> watch::Receiver<usize> {
        self.state.reconciled_count.subscribe()
    }

    /// When `name`'s status was first written.
    pub fn reconciled_at(&self, name: &str) -> Option<Instant> {
        lock(&self.state.reconciled)
            .get(&(NAMESPACE.to_owned(), name.to_owned()))
            .copied()
    }

    /// Kubernetes API requests answered so far, by method and resource.
    pub fn requests(&self) -> BTreeMap<String, u64> {
        lock(&self.state.requests).clone()
    }

    /// When `resource` (plural) was last listed whole.
    pub fn listed_at(&self, resource: &str) -> Option<Instant> {
        lock(&self.state.listed).get(resource).copied()
    }
}

impl State {
    async fn answer(&self, request: Request<Incoming>) -> Response<Body> {
        let (parts, body) = request.into_parts();
        if parts.uri.path() == "/stats" {
            let report = StatsReport {
                instance: "bench".into(),
                uptime_seconds: self.started.elapsed().as_secs_f64(),
                functions: Vec::new(),
            };
            return reply(StatusCode::OK, &json!(report));
        }
        let Some(target) = parse(parts.uri.path()) else {
            return reply(StatusCode::NOT_FOUND, &status(404, "NotFound"));
        };
        let what = format!(
            "{} {}{}",
            parts.method,
            target.resource,
            target
                .subresource
                .as_deref()
                .map(|sub| format!("/{sub}"))
                .unwrap_or_default()
        );
        *lock(&self.requests).entry(what).or_default() += 1;
        let query: HashMap<String, String> = parts
            .uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .map(|(key, value)| (key.to_owned(), decode(value)))
            .collect();
        let body = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => return reply(StatusCode::BAD_REQUEST, &status(400, "BadRequest")),
        };
        let namespace = target.namespace.clone().unwrap_or_default();
        match (&parts.method, &target.name) {
            (&Method::GET, None) if query.get("watch").is_some_and(|w| w == "true" || w == "1") => {
                self.watch(target, query.get("labelSelector").cloned())
            }
            (&Method::GET, None) => {
                let selector = query.get("labelSelector").map(String::as_str);
                self.list(&target, selector)
            }
            (&Method::GET, Some(name)) => {
                match lock(&self.objects)
                    .get(&target.resource)
                    .and_then(|objects| objects.get(&(namespace, name.clone())))
                {
                    Some(object) => reply(StatusCode::OK, object),
                    None => reply(StatusCode::NOT_FOUND, &status(404, "NotFound")),
                }
            }
            (&Method::POST, _) => {
                let Ok(mut object) = serde_json::from_slice::<Value>(&body) else {
                    return reply(StatusCode::BAD_REQUEST, &status(400, "BadRequest"));
                };
                // Events are answered, not kept: the store would only grow.
                if target.resource == "events" {
                    object["metadata"]["resourceVersion"] = json!("1");
                    return reply(StatusCode::CREATED, &object);
                }
                object["metadata"]["namespace"] = json!(namespace);
                reply(
                    StatusCode::CREATED,
                    &self.store(&target.resource, object, true),
                )
            }
            (&Method::PATCH | &Method::PUT, Some(name)) => {
                let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
                    return reply(StatusCode::BAD_REQUEST, &status(400, "BadRequest"));
                };
                let manager = query.get("fieldManager").map(String::as_str);
                let written = self.patch(&target, &namespace, name, patch, manager);
                if target.resource == "functions" && target.subresource.as_deref() == Some("status")
                {
                    self.record_reconciled(&namespace, name);
                }
                match written {
                    Some(object) => reply(StatusCode::OK, &object),
                    None => reply(StatusCode::NOT_FOUND, &status(404, "NotFound")),
                }
            }
            (&Method::DELETE, Some(name)) => {
                let removed = lock(&self.objects)
                    .get_mut(&target.resource)
                    .and_then(|objects| objects.remove(&(namespace.clone(), name.clone())));
                match removed {
                    Some(object) => {
                        let _ = self.changes.send(Change {
                            resource: target.resource,
                            namespace,
                            kind: "DELETED",
                            object: object.clone(),
                        });
                        reply(StatusCode::OK, &object)
                    }
                    None => reply(StatusCode::NOT_FOUND, &status(404, "NotFound")),
                }
            }
            _ => reply(
                StatusCode::METHOD_NOT_ALLOWED,
                &status(405, "MethodNotAllowed"),
            ),
        }
    }

    fn list(&self, target: &Target, selector: Option<&str>) -> Response<Body> {
        let items: Vec<Value> = lock(&self.objects)
            .get(&target.resource)
            .map(|objects| {
                objects
                    .iter()
                    .filter(|((namespace, _), _)| {
                        target.namespace.as_ref().is_none_or(|n| n == namespace)
                    })
                    .filter(|(_, object)| selector.is_none_or(|s| matches(object, s)))
                    .map(|(_, object)| object.clone())
                    .collect()
            })
            .unwrap_or_default();
        let list = json!({
            "apiVersion": target.api_version,
            "kind": format!("{}List", kind_of(&target.resource)),
            "metadata": {"resourceVersion": self.version.load(Ordering::SeqCst).to_string()},
            "items": items,
        });
        let response = reply(StatusCode::OK, &list);
        lock(&self.listed).insert(target.resource.clone(), Instant::now());
        response
    }

    /// A watch that stays open and carries every later change of the resource.
    fn watch(&self, target: Target, selector: Option<String>) -> Response<Body> {
        let (mut sender, body): (Sender<Bytes>, _) = Channel::new(64);
        let mut changes = self.changes.subscribe();
        tokio::spawn(async move {
            loop {
                let change = match changes.recv().await {
                    Ok(change) => change,
                    // A watch that fell behind ends; the client lists again.
                    Err(_) => return,
                };
                if change.resource != target.resource
                    || target
                        .namespace
                        .as_ref()
                        .is_some_and(|n| *n != change.namespace)
                    || selector
                        .as_deref()
                        .is_some_and(|s| !matches(&change.object, s))
                {
                    continue;
                }
                let mut line = json!({"type": change.kind, "object": change.object}).to_string();
                line.push('\n');
                if sender.send(Frame::data(Bytes::from(line))).await.is_err() {
                    return;
                }
            }
        });
        Response::builder()
            .header("content-type", "application/json")
            .body(Either::Right(body))
            .unwrap_or_else(|_| Response::new(Either::Left(Full::default())))
    }

    /// Merges `patch` into the object (creating it when absent and the patch is whole).
    /// Of the managed fields, only the autoscaler's ownership of a Deployment's
    /// replicas is kept, which the operator reads.
    fn patch(
        &self,
        target: &Target,
        namespace: &str,
        name: &str,
        mut patch: Value,
        manager: Option<&str>,
    ) -> Option<Value> {
        let owns_replicas = manager == Some("zeroscale-autoscaler")
            && target.resource == "deployments"
            && patch
                .get("spec")
                .and_then(|spec| spec.get("replicas"))
                .is_some();
        // `get_mut`, not indexing: indexing a missing key inserts a null, which the
        // merge would read as "delete the metadata".
        if let Some(metadata) = patch.get_mut("metadata").and_then(Value::as_object_mut) {
            metadata.remove("managedFields");
        }
        let existing = lock(&self.objects)
            .get(&target.resource)
            .and_then(|objects| objects.get(&(namespace.to_owned(), name.to_owned())))
            .cloned();
        let mut object = match existing.clone() {
            Some(object) => object,
            None if target.subresource.is_none() && patch.get("kind").is_some() => json!({}),
            None => return None,
        };
        merge(&mut object, patch);
        object["metadata"]["name"] = json!(name);
        object["metadata"]["namespace"] = json!(namespace);
        if owns_replicas {
            object["metadata"]["managedFields"] = json!([{
                "manager": "zeroscale-autoscaler",
                "operation": "Apply",
                "apiVersion": "apps/v1",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:spec": {"f:replicas": {}}},
            }]);
        }
        if let Some(existing) = existing {
            let mut unchanged = object.clone();
            unchanged["metadata"]["resourceVersion"] =
                existing["metadata"]["resourceVersion"].clone();
            if unchanged == existing {
                return Some(existing);
            }
        }
        Some(self.store(&target.resource, object, true))
    }

    /// Stores `object` under a new resourceVersion and tells the watches.
    fn store(&self, resource: &str, mut object: Value, announce: bool) -> Value {
        let version = self.version.fetch_add(1, Ordering::SeqCst) + 1;
        let metadata = &mut object["metadata"];
        metadata["resourceVersion"] = json!(version.to_string());
        if metadata.get("uid").is_none() {
            metadata["uid"] = json!(format!("uid-{version}"));
            metadata["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
            metadata["generation"] = json!(1);
        }
        let namespace = metadata["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let name = metadata["name"].as_str().unwrap_or_default().to_owned();
        let created = lock(&self.objects)
            .entry(resource.to_owned())
            .or_default()
            .insert((namespace.clone(), name), object.clone())
            .is_none();
        if announce {
            if std::env::var_os("ZEROSCALE_BENCH_API_TRACE").is_some() {
                eprintln!(
                    "apiserver: {resource} {} {}",
                    if created { "ADDED" } else { "MODIFIED" },
                    object
                );
            }
            let _ = self.changes.send(Change {
                resource: resource.to_owned(),
                namespace,
                kind: if created { "ADDED" } else { "MODIFIED" },
                object: object.clone(),
            });
        }
        object
    }

    fn record_reconciled(&self, namespace: &str, name: &str) {
        let mut reconciled = lock(&self.reconciled);
        reconciled
            .entry((namespace.to_owned(), name.to_owned()))
            .or_insert_with(Instant::now);
        let count = reconciled.len();
        self.reconciled_count.send_replace(count);
    }
}

/// A Function `name` in [`NAMESPACE`] with every default: at zero until a request comes.
fn function(name: &str) -> anyhow::Result<Value> {
    let mut function = Function::new(name, FunctionSpec::with_image("example.com/hello:1"));
    function.metadata.namespace = Some(NAMESPACE.into());
    function.metadata.generation = Some(1);
    // Created at zero, so the autoscaler has nothing to do once it is reconciled.
    function.spec.scaling.initial_replicas = Some(0);
    serde_json::to_value(&function).context("serializing a Function")
}

/// [`function`] as an operator left it before this one started: its status observed its
/// generation, and it is scaled to zero.
fn reconciled_function(name: &str) -> anyhow::Result<Value> {
    let mut function = function(name)?;
    function["status"] = json!({
        "observedGeneration": 1,
        "conditions": [{
            "type": "Ready",
            "status": "True",
            "reason": "ScaledToZero",
            "message": "scaled to zero; the next request wakes it",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
            "observedGeneration": 1,
        }],
    });
    Ok(function)
}

/// The activator Service's EndpointSlice: one ready activator on 127.0.0.1, whose admin
/// port is this server's (which answers `/stats`).
fn activator_slice(port: u16) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "zeroscale-activator-1",
            "namespace": "zeroscale-system",
            "labels": {"kubernetes.io/service-name": "zeroscale-activator"},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}],
        "ports": [{"name": "admin", "port": port}],
    })
}

/// Parses `/api/v1/...` and `/apis/<group>/<version>/...` paths.
fn parse(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (api_version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ((*version).to_owned(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", namespace, rest @ ..] if !rest.is_empty() => {
            (Some((*namespace).to_owned()), rest)
        }
        rest => (None, rest),
    };
    let (resource, name, subresource) = match rest {
        [resource] => (*resource, None, None),
        [resource, name] => (*resource, Some(*name), None),
        [resource, name, sub] => (*resource, Some(*name), Some(*sub)),
        _ => return None,
    };
    Some(Target {
        api_version,
        resource: resource.to_owned(),
        namespace,
        name: name.map(str::to_owned),
        subresource: subresource.map(str::to_owned),
    })
}

fn kind_of(resource: &str) -> &'static str {
    match resource {
        "functions" => "Function",
        "deployments" => "Deployment",
        "services" => "Service",
        "pods" => "Pod",
        "horizontalpodautoscalers" => "HorizontalPodAutoscaler",
        "endpointslices" => "EndpointSlice",
        "leases" => "Lease",
        "events" => "Event",
        _ => "Object",
    }
}

/// Whether `object`'s labels satisfy `selector` (`key`, `key=value`, comma-separated).
fn matches(object: &Value, selector: &str) -> bool {
    let labels = &object["metadata"]["labels"];
    selector
        .split(',')
        .filter(|term| !term.is_empty())
        .all(|term| match term.split_once('=') {
            Some((key, value)) => labels[key].as_str() == Some(value.trim_start_matches('=')),
            None => labels.get(term).is_some(),
        })
}

/// JSON merge patch (RFC 7386), which is also close enough to server-side apply here.
fn merge(target: &mut Value, patch: Value) {
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = json!({});
            }
            for (key, value) in fields {
                if value.is_null() {
                    if let Some(object) = target.as_object_mut() {
                        object.remove(&key);
                    }
                } else {
                    merge(&mut target[key.as_str()], value);
                }
            }
        }
        patch => *target = patch,
    }
}

/// Percent-decodes a query value.
fn decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'%' if index + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[index + 1..index + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(byte) => {
                        out.push(byte);
                        index += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        index += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                index += 1;
            }
            byte => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status(code: u16, reason: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": reason, "code": code, "message": reason})
}

fn reply(code: StatusCode, value: &Value) -> Response<Body> {
    let mut response = Response::new(Either::Left(Full::new(Bytes::from(value.to_string()))));
    *response.status_mut() = code;
    response.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_resource_namespace_and_subresource() {
        let target = parse("/apis/zeroscale.dev/v1alpha1/namespaces/bench/functions/a/status")
            .expect("parsed");
        assert_eq!(target.api_version, "zeroscale.dev/v1alpha1");
        assert_eq!(target.resource, "functions");
        assert_eq!(target.namespace.as_deref(), Some("bench"));
        assert_eq!(target.name.as_deref(), Some("a"));
        assert_eq!(target.subresource.as_deref(), Some("status"));
        let all = parse("/api/v1/pods").expect("parsed");
        assert_eq!((all.resource.as_str(), all.namespace), ("pods", None));
    }

    #[test]
    fn label_selectors_match_equality_and_existence() {
        let object = json!({"metadata": {"labels": {"a": "1", "b": "2"}}});
        assert!(matches(&object, "a=1,b"));
        assert!(!matches(&object, "a=2"));
        assert!(!matches(&object, "c"));
        assert_eq!(decode("a%3D1%2Cb"), "a=1,b");
    }

    #[test]
    fn a_merge_patch_replaces_values_and_removes_nulls() {
        let mut object = json!({"spec": {"a": 1, "b": 2}});
        merge(
            &mut object,
            json!({"spec": {"a": 3, "b": null}, "status": {"c": 4}}),
        );
        assert_eq!(object, json!({"spec": {"a": 3}, "status": {"c": 4}}));
    }
}
