//! Every Function the activator knows, as the request path needs it: the two routing
//! tables (in-cluster and public callers), and per Function its settings, capacity and
//! load counters. The control path (watches of Functions and EndpointSlices) calls
//! [`Functions::apply`], [`Functions::remove`] and [`Functions::set_endpoints`], and for
//! a whole list [`Functions::apply_listed`] then [`Functions::finish_list`], which build
//! the tables once instead of once per Function; the request path calls
//! [`Functions::route`], which takes no lock.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use zeroscale_api::Function;
use zeroscale_api::conditions::READY;
use zeroscale_api::gateway::RateLimit;
use zeroscale_api::stats::FunctionStats;

use crate::auth::{Gate, Policy};
use crate::capacity::{Capacity, Limits};
use crate::cors::CorsPolicy;
use crate::endpoints::{EndpointSet, PodProtocol};
use crate::metrics::{FunctionMetrics, Metrics};
use crate::ratelimit::RateLimiter;
use zeroscale_api::routing::{Domains, FunctionKey, RouteError, RouteSpec, RoutingTable};

/// Which listener a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// Callers inside the cluster, through the Functions' Services.
    Cluster,
    /// Callers outside the cluster, through an Ingress or load balancer.
    Public,
}

/// How the activator treats requests to one Function, from its spec.
#[derive(Debug)]
pub(crate) struct Settings {
    pub request_timeout: Duration,
    pub max_queue_wait: Duration,
    pub max_body_bytes: Option<u64>,
    /// Path to probe starting pods on; TCP connect when None.
    pub readiness_path: Option<String>,
    /// Asynchronous calls and queue triggers.
    pub calls: crate::calls::CallSettings,
    /// Cross-origin policy; CORS is off when None.
    pub cors: Option<CorsPolicy>,
    /// Who may call the Function; anyone when None.
    pub auth: Option<Arc<Policy>>,
}

impl Settings {
    fn from_function(key: &FunctionKey, function: &Function, gate: &Gate) -> (Self, Limits) {
        let spec = &function.spec;
        let settings = Settings {
            auth: gate.policy(key, spec.auth.as_ref()),
            request_timeout: spec.requests.effective_timeout(),
            max_queue_wait: spec.requests.effective_max_queue_wait(),
            max_body_bytes: spec.requests.body_limit(),
            readiness_path: spec.readiness_path.clone(),
            calls: crate::calls::CallSettings::from_function(function),
            cors: spec.routing.cors.as_ref().map(CorsPolicy::new),
        };
        let limits = Limits {
            container_concurrency: usize::try_from(spec.scaling.container_concurrency).unwrap_or(0),
            max_queued: usize::try_from(spec.requests.max_queued_requests).unwrap_or(0),
        };
        (settings, limits)
    }
}

/// One Function as the request path sees it.
#[derive(Debug)]
pub struct FunctionState {
    pub key: FunctionKey,
    pub(crate) metrics: FunctionMetrics,
    settings: ArcSwap<Settings>,
    pub capacity: Capacity,
    requests_total: AtomicU64,
    /// Integral of in-flight plus queued requests, in request-microseconds.
    concurrency_micros: AtomicU64,
    pods: Mutex<Pods>,
    /// Whether a prober runs for this Function (see [`crate::probe`]).
    probing: AtomicBool,
    /// Usage time already added to the Prometheus counters.
    published: crate::usage::Published,
    /// The Function's rate limits with their state, kept across updates that leave them.
    rate_limit: ArcSwapOption<RateLimiter>,
}

/// The Function's pods as the EndpointSlices say, plus starting pods that answered an
/// active probe before the kubelet marked them ready.
#[derive(Debug, Default)]
struct Pods {
    endpoints: EndpointSet,
    probed_ready: HashSet<SocketAddr>,
    /// Pods that refused a connection; kept from traffic for [`QUARANTINE`].
    unreachable: HashSet<SocketAddr>,
}

/// How long a pod that refused a connection gets no requests: long enough for the
/// EndpointSlice to catch up with a dead pod, short enough not to lose a live one.
const QUARANTINE: Duration = Duration::from_secs(5);

impl FunctionState {
    fn new(key: FunctionKey, settings: Settings, limits: Limits, metrics: FunctionMetrics) -> Self {
        Self {
            key,
            metrics,
            settings: ArcSwap::from_pointee(settings),
            capacity: Capacity::new(limits),
            requests_total: AtomicU64::new(0),
            concurrency_micros: AtomicU64::new(0),
            pods: Mutex::new(Pods::default()),
            probing: AtomicBool::new(false),
            published: crate::usage::Published::default(),
            rate_limit: ArcSwapOption::empty(),
        }
    }

    /// The Function's rate limiter, if it has limits.
    pub(crate) fn rate_limiter(&self) -> Option<Arc<RateLimiter>> {
        self.rate_limit.load_full()
    }

    /// Replaces the rate limiter when the spec's limits changed.
    fn set_rate_limit(&self, spec: Option<&RateLimit>) {
        let current = self.rate_limit.load();
        if current.as_deref().map(RateLimiter::spec) != spec {
            self.rate_limit
                .store(spec.map(|spec| Arc::new(RateLimiter::new(spec))));
        }
    }

    /// The Function's current settings.
    pub(crate) fn settings(&self) -> arc_swap::Guard<Arc<Settings>> {
        self.settings.load()
    }

    /// Counts one arriving request.
    pub(crate) fn count_request(&self) {
        self.requests_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `elapsed` times the current concurrency to the load integral.
    pub(crate) fn sample(&self, elapsed: Duration) {
        let concurrency = (self.capacity.in_flight() + self.capacity.queued()) as u64;
        if concurrency > 0 {
            let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
            self.concurrency_micros
                .fetch_add(concurrency.saturating_mul(micros), Ordering::Relaxed);
        }
        self.published.publish(&self.metrics, &self.capacity);
    }

    /// This Function's entry in the stats report.
    pub(crate) fn stats(&self) -> FunctionStats {
        let mut stats = FunctionStats {
            namespace: self.key.namespace.clone(),
            name: self.key.name.clone(),
            requests_total: self.requests_total.load(Ordering::Relaxed),
            concurrency_seconds_total: self.concurrency_micros.load(Ordering::Relaxed) as f64 / 1e6,
            in_flight: self.capacity.in_flight() as u64,
            queued: self.capacity.queued() as u64,
            ..FunctionStats::default()
        };
        crate::usage::fill(&mut stats, &self.metrics, &self.capacity);
        stats
    }

    /// Starting pods not yet known to answer, to probe, with the protocol each speaks.
    pub(crate) fn starting_pods(&self) -> Vec<(SocketAddr, PodProtocol)> {
        let pods = self.pods();
        pods.endpoints
            .starting()
            .filter(|pod| !pods.probed_ready.contains(&pod.addr))
            .map(|pod| (pod.addr, pod.protocol))
            .collect()
    }

    /// Records that a starting pod answered its probe: it takes requests from now on,
    /// unless it has left the EndpointSlices meanwhile.
    pub(crate) fn mark_probed_ready(&self, addr: SocketAddr) {
        let mut pods = self.pods();
        if pods.endpoints.starting().any(|pod| pod.addr == addr) {
            pods.probed_ready.insert(addr);
            self.publish_ready(&pods);
        }
    }

    /// Claims the right to run this Function's prober; false when one already runs.
    pub(crate) fn begin_probing(&self) -> bool {
        !self.probing.swap(true, Ordering::AcqRel)
    }

    /// Releases the prober's claim.
    pub(crate) fn end_probing(&self) {
        self.probing.store(false, Ordering::Release);
    }

    fn set_endpoints(&self, endpoints: EndpointSet) {
        let mut pods = self.pods();
        // Probe results count only while the pod is still starting.
        let starting: HashSet<SocketAddr> = endpoints.starting().map(|pod| pod.addr).collect();
        pods.probed_ready.retain(|addr| starting.contains(addr));
        pods.endpoints = endpoints;
        self.publish_ready(&pods);
    }

    /// Keeps a pod that refused a connection from new requests for a while.
    pub(crate) fn mark_unreachable(self: &Arc<Self>, addr: SocketAddr) {
        {
            let mut pods = self.pods();
            if !pods.unreachable.insert(addr) {
                return;
            }
            self.publish_ready(&pods);
        }
        let function = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(QUARANTINE).await;
            let mut pods = function.pods();
            pods.unreachable.remove(&addr);
            function.publish_ready(&pods);
        });
    }

    fn publish_ready(&self, pods: &Pods) {
        let probed = pods
            .endpoints
            .starting()
            .filter(|pod| pods.probed_ready.contains(&pod.addr));
        let ready = pods
            .endpoints
            .ready()
            .iter()
            .chain(probed)
            .filter(|pod| !pods.unreachable.contains(&pod.addr))
            .map(|pod| (pod.addr, pod.protocol));
        self.capacity.set_ready_pods(ready);
    }

    fn pods(&self) -> MutexGuard<'_, Pods> {
        self.pods.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The Ready=False message of a Function that cannot start, if it cannot.
fn cannot_start(function: &Function) -> Option<String> {
    let condition = function
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == READY)?;
    (condition.status == "False").then(|| format!("{}: {}", condition.reason, condition.message))
}

type Table = RoutingTable<Arc<FunctionState>>;

/// All Functions, routable from both listeners.
#[derive(Debug)]
pub struct Functions {
    domains: Domains,
    auth: Gate,
    metrics: Metrics,
    cluster: ArcSwap<Table>,
    public: ArcSwap<Table>,
    control: Mutex<Control>,
}

/// What the control path keeps to rebuild the tables.
#[derive(Debug, Default)]
struct Control {
    states: BTreeMap<FunctionKey, Arc<FunctionState>>,
    routes: BTreeMap<FunctionKey, RouteSpec>,
    /// Endpoints that arrived before their Function.
    early_endpoints: BTreeMap<FunctionKey, EndpointSet>,
    /// `routes` changed since the tables were last built (while a list is read).
    routes_stale: bool,
}

impl Functions {
    pub fn new(domains: Domains, metrics: Metrics) -> Self {
        Self {
            domains,
            auth: Gate::default(),
            metrics,
            cluster: ArcSwap::from_pointee(RoutingTable::empty()),
            public: ArcSwap::from_pointee(RoutingTable::empty()),
            control: Mutex::new(Control::default()),
        }
    }

    /// Uses `gate` for the Functions' `spec.auth`, instead of one with the defaults.
    pub fn with_auth(mut self, gate: Gate) -> Self {
        self.auth = gate;
        self
    }

    /// Where the Functions' API key digests are delivered.
    pub fn auth(&self) -> &Gate {
        &self.auth
    }

    /// The Function a request is for. Lock-free: one snapshot load and a table lookup.
    pub fn route(
        &self,
        listener: Listener,
        host: &str,
        path: &str,
    ) -> Result<Arc<FunctionState>, RouteError> {
        let table = match listener {
            Listener::Cluster => self.cluster.load(),
            Listener::Public => self.public.load(),
        };
        table.lookup(host, path).cloned()
    }

    /// Adds or updates a Function from its resource.
    pub fn apply(&self, function: &Function) {
        let mut control = self.control();
        if self.update(&mut control, function) {
            self.rebuild(&mut control);
        }
    }

    /// Adds or updates a Function of a list being read, like [`Functions::apply`] but
    /// for its route: the routing tables stay as they are until
    /// [`Functions::finish_list`], so a list of n Functions builds them once, not n times.
    /// Settings, limits and pods take effect at once.
    pub fn apply_listed(&self, function: &Function) {
        let mut control = self.control();
        if self.update(&mut control, function) {
            control.routes_stale = true;
        }
    }

    /// Ends a list: forgets the Functions in `gone` (known before, missing from the list)
    /// and rebuilds the routing tables once if anything listed or gone changed them.
    pub fn finish_list<'a>(&self, gone: impl IntoIterator<Item = &'a FunctionKey>) {
        let mut control = self.control();
        for key in gone {
            if self.forget(&mut control, key) {
                control.routes_stale = true;
            }
        }
        if control.routes_stale {
            self.rebuild(&mut control);
        }
    }

    /// Applies `function` to the control state; true when its route changed.
    fn update(&self, control: &mut Control, function: &Function) -> bool {
        let Some(route) = RouteSpec::from_function(function) else {
            return false;
        };
        let key = route.key.clone();
        let (settings, limits) = Settings::from_function(&key, function, &self.auth);
        let state = match control.states.get(&key) {
            Some(state) => {
                state.settings.store(Arc::new(settings));
                state.capacity.set_limits(limits);
                Arc::clone(state)
            }
            None => {
                let metrics = self.metrics.for_function(&key);
                let state = Arc::new(FunctionState::new(key.clone(), settings, limits, metrics));
                if let Some(endpoints) = control.early_endpoints.remove(&key) {
                    state.set_endpoints(endpoints);
                }
                control.states.insert(key.clone(), Arc::clone(&state));
                state
            }
        };
        state.capacity.set_cannot_start(cannot_start(function));
        state.set_rate_limit(function.spec.requests.rate_limit.as_ref());
        let routes_changed = control.routes.get(&key) != Some(&route);
        if routes_changed {
            control.routes.insert(key, route);
        }
        routes_changed
    }

    /// Forgets a deleted Function; requests still waiting for it time out or finish.
    pub fn remove(&self, key: &FunctionKey) {
        let mut control = self.control();
        if self.forget(&mut control, key) {
            self.rebuild(&mut control);
        }
    }

    /// Removes `key` from the control state; true when it had a route.
    fn forget(&self, control: &mut Control, key: &FunctionKey) -> bool {
        control.states.remove(key);
        control.early_endpoints.remove(key);
        self.metrics.forget(key);
        control.routes.remove(key).is_some()
    }

    /// Replaces a Function's pods, as its EndpointSlices now say.
    pub fn set_endpoints(&self, key: &FunctionKey, endpoints: EndpointSet) {
        let mut control = self.control();
        match control.states.get(key) {
            Some(state) => state.set_endpoints(endpoints),
            None => {
                control.early_endpoints.insert(key.clone(), endpoints);
            }
        }
    }

    /// Every known Function's state, for stats.
    pub fn all(&self) -> Vec<Arc<FunctionState>> {
        self.control().states.values().cloned().collect()
    }

    /// Calls `visit` with every known Function's state, under the control lock: the load
    /// sampler runs over all of them several times a second, and cloning thousands of
    /// `Arc`s for it would cost more than the sampling. `visit` must be quick.
    pub fn for_each(&self, mut visit: impl FnMut(&FunctionState)) {
        for state in self.control().states.values() {
            visit(state);
        }
    }

    fn rebuild(&self, control: &mut Control) {
        control.routes_stale = false;
        let control = &*control;
        let routes = || {
            control.routes.iter().filter_map(|(key, route)| {
                control
                    .states
                    .get(key)
                    .map(|state| (route.clone(), Arc::clone(state)))
            })
        };
        let cluster = RoutingTable::build(routes(), &self.domains);
        for conflict in cluster.conflicts() {
            tracing::warn!(%conflict, "routing conflict");
        }
        self.cluster.store(Arc::new(cluster));
        self.public.store(Arc::new(RoutingTable::build_public(
            routes(),
            &self.domains,
        )));
    }

    fn control(&self) -> MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::{EndpointState, PodEndpoint};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
    use zeroscale_api::{FunctionSpec, FunctionStatus};

    fn object_meta(namespace: &str, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        }
    }

    fn function(name: &str) -> Function {
        let mut function = Function::new(name, FunctionSpec::with_image("example.com/f:1"));
        function.metadata = object_meta("team", name);
        function
    }

    fn functions() -> Functions {
        Functions::new(
            Domains {
                cluster_domain: "cluster.local".into(),
                public_domain: Some("fn.example.com".into()),
            },
            Metrics::new().expect("metrics"),
        )
    }

    fn pod(port: u16, state: EndpointState) -> PodEndpoint {
        PodEndpoint {
            addr: SocketAddr::from(([10, 0, 0, 1], port)),
            pod: None,
            state,
            protocol: PodProtocol::Http1,
        }
    }

    #[test]
    fn applied_function_is_routed_from_both_listeners_and_removed_ones_are_not() {
        let functions = functions();
        functions.apply(&function("hello"));
        let state = functions
            .route(Listener::Cluster, "hello.team", "/")
            .expect("routed in cluster");
        assert_eq!(state.key, FunctionKey::new("team", "hello"));
        assert!(
            functions
                .route(Listener::Public, "hello.team.fn.example.com", "/")
                .is_ok()
        );
        assert!(
            functions
                .route(Listener::Public, "hello.team", "/")
                .is_err()
        );

        functions.remove(&FunctionKey::new("team", "hello"));
        assert_eq!(
            functions.route(Listener::Cluster, "hello.team", "/").err(),
            Some(RouteError::UnknownHost)
        );
    }

    #[test]
    fn a_listed_function_is_routed_once_the_list_is_finished_and_gone_ones_are_dropped() {
        let functions = functions();
        functions.apply(&function("old"));
        let tables_before = functions.cluster.load_full();
        functions.apply_listed(&function("a"));
        functions.apply_listed(&function("b"));
        assert!(
            Arc::ptr_eq(&tables_before, &functions.cluster.load_full()),
            "no table is built while the list is read"
        );
        assert!(functions.route(Listener::Cluster, "old.team", "/").is_ok());

        functions.finish_list([&FunctionKey::new("team", "old")]);
        for host in ["a.team", "b.team"] {
            assert!(
                functions.route(Listener::Cluster, host, "/").is_ok(),
                "{host}"
            );
            let public = format!("{host}.fn.example.com");
            assert!(
                functions.route(Listener::Public, &public, "/").is_ok(),
                "{public}"
            );
        }
        assert_eq!(
            functions.route(Listener::Cluster, "old.team", "/").err(),
            Some(RouteError::UnknownHost)
        );
    }

    #[test]
    fn a_list_that_changes_no_route_builds_no_table() {
        let functions = functions();
        functions.apply(&function("a"));
        let tables_before = functions.cluster.load_full();
        functions.apply_listed(&function("a"));
        functions.finish_list([]);
        assert!(Arc::ptr_eq(&tables_before, &functions.cluster.load_full()));
    }

    #[test]
    fn reapplying_keeps_the_same_state_and_updates_settings() {
        let functions = functions();
        functions.apply(&function("hello"));
        let before = functions
            .route(Listener::Cluster, "hello.team", "/")
            .expect("routed");
        let mut changed = function("hello");
        changed.spec.requests.max_queue_wait = "5s".into();
        functions.apply(&changed);
        let after = functions
            .route(Listener::Cluster, "hello.team", "/")
            .expect("routed");
        assert!(Arc::ptr_eq(&before, &after));
        assert_eq!(after.settings().max_queue_wait, Duration::from_secs(5));
    }

    #[test]
    fn endpoints_that_arrive_first_are_kept_for_their_function() {
        let functions = functions();
        let key = FunctionKey::new("team", "hello");
        functions.set_endpoints(&key, EndpointSet::new(vec![pod(1, EndpointState::Ready)]));
        functions.apply(&function("hello"));
        let state = functions
            .route(Listener::Cluster, "hello.team", "/")
            .expect("routed");
        assert_eq!(state.capacity.ready_pods().len(), 1);
    }

    #[test]
    fn probed_starting_pod_takes_requests_until_it_leaves_the_slices() {
        let functions = functions();
        functions.apply(&function("hello"));
        let key = FunctionKey::new("team", "hello");
        functions.set_endpoints(
            &key,
            EndpointSet::new(vec![pod(1, EndpointState::NotReady)]),
        );
        let state = functions
            .route(Listener::Cluster, "hello.team", "/")
            .expect("routed");
        assert_eq!(state.starting_pods().len(), 1);
        assert!(state.capacity.ready_pods().is_empty());

        state.mark_probed_ready(pod(1, EndpointState::NotReady).addr);
        assert_eq!(state.capacity.ready_pods().len(), 1);
        assert!(
            state.starting_pods().is_empty(),
            "no need to probe it again"
        );

        functions.set_endpoints(
            &key,
            EndpointSet::new(vec![pod(1, EndpointState::Terminating)]),
        );
        assert!(state.capacity.ready_pods().is_empty());
    }

    #[tokio::test]
    async fn function_that_cannot_start_fails_requests_with_its_reason() {
        let functions = functions();
        let mut failing = function("hello");
        failing.status = Some(FunctionStatus {
            conditions: vec![Condition {
                type_: READY.into(),
                status: "False".into(),
                reason: "DeploymentFailed".into(),
                message: "pod hello-1: ImagePullBackOff".into(),
                observed_generation: None,
                last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
            }],
            ..Default::default()
        });
        functions.apply(&failing);
        let state = functions
            .route(Listener::Cluster, "hello.team", "/")
            .expect("routed");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let result = state.capacity.acquire(deadline, |_| {}).await;
        assert_eq!(
            result.err(),
            Some(crate::capacity::CapacityError::CannotStart(
                "DeploymentFailed: pod hello-1: ImagePullBackOff".into()
            ))
        );
    }

    #[test]
    fn sampling_integrates_concurrency_over_time() {
        let functions = functions();
        functions.apply(&function("hello"));
        let state = functions
            .route(Listener::Cluster, "hello.team", "/")
            .expect("routed");
        state.count_request();
        state.sample(Duration::from_secs(1));
        assert_eq!(state.stats().concurrency_seconds_total, 0.0);
        assert_eq!(state.stats().requests_total, 1);
    }
}
