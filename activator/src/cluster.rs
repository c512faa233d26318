//! The Kubernetes side of the activator: watches of Functions and of their pods'
//! EndpointSlices feed [`Functions`], and [`KubeWake`] records wake requests on the
//! Function for the operator. The proxy itself knows none of this.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use tokio::time::Instant;
use zeroscale_admin::process::ErrorChain;
use zeroscale_api::{Function, keys};

use crate::endpoints::{EndpointSet, function_of_slice, pod_endpoints};
use crate::functions::Functions;
use crate::wake::Wake;
use zeroscale_api::routing::FunctionKey;

/// Least time between two wake requests for one Function: the operator acts on the first,
/// later ones would only add API writes.
const WAKE_INTERVAL: Duration = Duration::from_secs(1);

/// Keeps `functions` in step with the Functions in the cluster (or in `namespace`).
/// Calls `synced` once the first full list has been applied. Runs until the stream ends.
pub async fn watch_functions(
    client: Client,
    namespace: Option<&str>,
    functions: Arc<Functions>,
    synced: impl FnOnce(),
) {
    let api: Api<Function> = scoped(client, namespace);
    let events = watcher(api, watcher::Config::default());
    apply_function_events(events, &functions, synced).await;
}

/// What a watch has listed, by key. kube's watcher relists after a lost watch (`Init`,
/// `InitApply` for each object, `InitDone`); objects missing from the new list were
/// deleted meanwhile, so the list replaces what was known when it is done.
struct Listed<K, V> {
    current: BTreeMap<K, V>,
    relisting: Option<BTreeMap<K, V>>,
}

impl<K: Ord, V> Listed<K, V> {
    fn new() -> Self {
        Self {
            current: BTreeMap::new(),
            relisting: None,
        }
    }

    /// Handles one watch event; returns what was known before a relist that this
    /// event completed.
    fn on<T>(
        &mut self,
        event: Event<T>,
        entry: impl Fn(T) -> Option<(K, V)>,
    ) -> Option<BTreeMap<K, V>> {
        match event {
            Event::Apply(object) => {
                if let Some((key, value)) = entry(object) {
                    self.current.insert(key, value);
                }
            }
            Event::Delete(object) => {
                if let Some((key, _)) = entry(object) {
                    self.current.remove(&key);
                }
            }
            Event::Init => self.relisting = Some(BTreeMap::new()),
            Event::InitApply(object) => {
                if let Some((key, value)) = entry(object) {
                    self.relisting
                        .get_or_insert_with(BTreeMap::new)
                        .insert(key, value);
                }
            }
            Event::InitDone => {
                let listed = self.relisting.take().unwrap_or_default();
                return Some(std::mem::replace(&mut self.current, listed));
            }
        }
        None
    }
}

/// Applies watch events of Functions; after a relist, Functions that are gone are removed.
pub(crate) async fn apply_function_events(
    events: impl Stream<Item = Result<Event<Function>, watcher::Error>>,
    functions: &Functions,
    synced: impl FnOnce(),
) {
    let mut synced = Some(synced);
    let mut listed = Listed::new();
    futures::pin_mut!(events);
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                tracing::warn!(error = %ErrorChain(&error), "watching Functions failed; retrying");
                continue;
            }
        };
        // Listed Functions take their settings at once but their routes only when the
        // list is done: building the tables per Function made a list of n quadratic.
        // Meanwhile the tables of the previous list keep routing.
        match &event {
            Event::Apply(function) => functions.apply(function),
            Event::InitApply(function) => functions.apply_listed(function),
            Event::Delete(function) => {
                if let Some(key) = key_of(function) {
                    functions.remove(&key);
                }
            }
            Event::Init | Event::InitDone => {}
        }
        let entry = |function: Function| Some((key_of(&function)?, ()));
        if let Some(before) = listed.on(event, entry) {
            functions.finish_list(
                before
                    .keys()
                    .filter(|key| !listed.current.contains_key(key)),
            );
            if let Some(synced) = synced.take() {
                synced();
            }
        }
    }
}

/// Keeps every Function's pods in step with the EndpointSlices of its `<fn>-pods` Service.
/// Calls `synced` once the first full list has been applied.
pub async fn watch_endpoint_slices(
    client: Client,
    namespace: Option<&str>,
    functions: Arc<Functions>,
    synced: impl FnOnce(),
) {
    // The EndpointSlice controller copies the Service's labels onto its slices, so this
    // selects the slices of Functions' Services only.
    let api: Api<EndpointSlice> = scoped(client, namespace);
    let events = watcher(api, watcher::Config::default().labels(keys::FUNCTION_LABEL));
    apply_slice_events(events, &functions, synced).await;
}

/// Applies watch events of EndpointSlices, recomputing the pods of each Function touched.
pub(crate) async fn apply_slice_events(
    events: impl Stream<Item = Result<Event<EndpointSlice>, watcher::Error>>,
    functions: &Functions,
    synced: impl FnOnce(),
) {
    let mut synced = Some(synced);
    // Slices by Function and slice name.
    let mut slices = Listed::new();
    futures::pin_mut!(events);
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                tracing::warn!(error = %ErrorChain(&error), "watching EndpointSlices failed; retrying");
                continue;
            }
        };
        let touched = match &event {
            Event::Apply(slice) | Event::Delete(slice) => slice_key(slice),
            Event::Init | Event::InitApply(_) | Event::InitDone => None,
        };
        let entry = |slice: EndpointSlice| Some(((slice_key(&slice)?, slice.name_any()), slice));
        if let Some(before) = slices.on(event, entry) {
            // Every Function with slices before or after the relist.
            let touched: BTreeSet<FunctionKey> = before
                .into_keys()
                .chain(slices.current.keys().cloned())
                .map(|(key, _)| key)
                .collect();
            for key in touched {
                publish(functions, &key, &slices.current);
            }
            if let Some(synced) = synced.take() {
                synced();
            }
        } else if let Some(key) = touched {
            publish(functions, &key, &slices.current);
        }
    }
}

/// Sets `key`'s pods from its slices in `slices`.
fn publish(
    functions: &Functions,
    key: &FunctionKey,
    slices: &BTreeMap<(FunctionKey, String), EndpointSlice>,
) {
    let of_function = slices
        .range((key.clone(), String::new())..)
        .take_while(|((function, _), _)| function == key)
        .map(|(_, slice)| slice);
    functions.set_endpoints(key, EndpointSet::new(pod_endpoints(of_function)));
}

fn key_of(function: &Function) -> Option<FunctionKey> {
    Some(FunctionKey::new(function.namespace()?, function.name_any()))
}

fn slice_key(slice: &EndpointSlice) -> Option<FunctionKey> {
    Some(FunctionKey::new(
        slice.namespace()?,
        function_of_slice(slice)?,
    ))
}

fn scoped<K>(client: Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(namespace) => Api::namespaced(client, namespace),
        None => Api::all(client),
    }
}

fn watcher<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    use kube::runtime::WatchStreamExt;
    kube::runtime::watcher(api, config).default_backoff()
}

/// Records wake requests as the annotation `zeroscale.dev/wake-requested-at` on the
/// Function, which the leading operator replica watches. At most one write per Function
/// per second; writes happen in the background, never on the request path.
#[derive(Clone)]
pub struct KubeWake {
    client: Client,
    last: Arc<Mutex<HashMap<FunctionKey, Instant>>>,
}

impl KubeWake {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            last: Arc::default(),
        }
    }
}

impl Wake for KubeWake {
    fn wake(&self, function: &FunctionKey) {
        let now = Instant::now();
        {
            let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
            if last
                .get(function)
                .is_some_and(|at| now.duration_since(*at) < WAKE_INTERVAL)
            {
                return;
            }
            last.insert(function.clone(), now);
        }
        let api: Api<Function> = Api::namespaced(self.client.clone(), &function.namespace);
        let name = function.name.clone();
        let key = function.clone();
        tokio::spawn(async move {
            let patch = serde_json::json!({
                "metadata": {"annotations": {
                    keys::WAKE_REQUESTED_AT: jiff::Timestamp::now().to_string(),
                }}
            });
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => tracing::info!(function = %key, "asked the operator to wake the function"),
                Err(error) => {
                    tracing::warn!(function = %key, error = %ErrorChain(&error), "recording a wake request failed")
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::functions::Listener;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
    use kube::api::ObjectMeta;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicBool, Ordering};
    use zeroscale_api::FunctionSpec;
    use zeroscale_api::routing::Domains;

    fn function(name: &str) -> Function {
        let mut function = Function::new(name, FunctionSpec::with_image("example.com/f:1"));
        function.metadata.namespace = Some("team".into());
        function
    }

    fn slice(name: &str, service: &str, ip: &str) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("team".into()),
                labels: Some(BTreeMap::from([(
                    "kubernetes.io/service-name".to_owned(),
                    service.to_owned(),
                )])),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: vec![Endpoint {
                addresses: vec![ip.into()],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                ..Default::default()
            }]),
        }
    }

    fn functions() -> Functions {
        Functions::new(
            Domains::default(),
            crate::metrics::Metrics::new().expect("metrics"),
        )
    }

    fn ready_pods(functions: &Functions, host: &str) -> usize {
        functions
            .route(Listener::Cluster, host, "/")
            .map(|f| f.capacity.ready_pods().len())
            .unwrap_or(usize::MAX)
    }

    #[tokio::test]
    async fn function_events_add_update_and_remove_routes_and_relists_drop_the_missing() {
        let functions = functions();
        let synced = AtomicBool::new(false);
        let events = futures::stream::iter(vec![
            Ok(Event::Init),
            Ok(Event::InitApply(function("a"))),
            Ok(Event::InitApply(function("b"))),
            Ok(Event::InitDone),
            Ok(Event::Delete(function("a"))),
            Ok(Event::Apply(function("c"))),
            // A relist that no longer has b.
            Ok(Event::Init),
            Ok(Event::InitApply(function("c"))),
            Ok(Event::InitDone),
        ]);
        apply_function_events(events, &functions, || synced.store(true, Ordering::SeqCst)).await;
        assert!(synced.load(Ordering::SeqCst));
        assert!(functions.route(Listener::Cluster, "a.team", "/").is_err());
        assert!(functions.route(Listener::Cluster, "b.team", "/").is_err());
        assert!(functions.route(Listener::Cluster, "c.team", "/").is_ok());
    }

    #[tokio::test]
    async fn slices_of_a_function_merge_and_deleted_slices_remove_their_pods() {
        let functions = functions();
        functions.apply(&function("hello"));
        let events = futures::stream::iter(vec![
            Ok(Event::Init),
            Ok(Event::InitApply(slice("s1", "hello-pods", "10.0.0.1"))),
            Ok(Event::InitDone),
            Ok(Event::Apply(slice("s2", "hello-pods", "10.0.0.2"))),
            Ok(Event::Apply(slice("other", "unrelated", "10.0.0.9"))),
        ]);
        apply_slice_events(events, &functions, || {}).await;
        assert_eq!(ready_pods(&functions, "hello.team"), 2);
    }

    #[tokio::test]
    async fn relist_replaces_the_slices_and_drops_the_pods_of_missing_ones() {
        let functions = functions();
        functions.apply(&function("hello"));
        functions.apply(&function("bye"));
        let events = futures::stream::iter(vec![
            Ok(Event::Apply(slice("s1", "hello-pods", "10.0.0.1"))),
            Ok(Event::Apply(slice("s2", "bye-pods", "10.0.0.2"))),
            // A relist after a lost watch: s2 was deleted meanwhile, s3 created.
            Ok(Event::Init),
            Ok(Event::InitApply(slice("s1", "hello-pods", "10.0.0.1"))),
            Ok(Event::InitApply(slice("s3", "hello-pods", "10.0.0.3"))),
            Ok(Event::InitDone),
        ]);
        apply_slice_events(events, &functions, || {}).await;
        assert_eq!(ready_pods(&functions, "hello.team"), 2);
        assert_eq!(ready_pods(&functions, "bye.team"), 0);
    }

    #[tokio::test]
    async fn deleting_one_slice_keeps_the_pods_of_the_others() {
        let functions = functions();
        functions.apply(&function("hello"));
        let events = futures::stream::iter(vec![
            Ok(Event::Apply(slice("s1", "hello-pods", "10.0.0.1"))),
            Ok(Event::Apply(slice("s2", "hello-pods", "10.0.0.2"))),
            Ok(Event::Delete(slice("s1", "hello-pods", "10.0.0.1"))),
        ]);
        apply_slice_events(events, &functions, || {}).await;
        let state = functions
            .route(Listener::Cluster, "hello.team", "/")
            .expect("routed");
        let pods: Vec<_> = state.capacity.ready_pods().iter().map(|p| p.addr).collect();
        assert_eq!(pods, vec![SocketAddr::from(([10, 0, 0, 2], 8080))]);
    }
}
