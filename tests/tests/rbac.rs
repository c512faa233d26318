//! The chart's RBAC, derived from the code: every path of the operator and of the
//! activator that talks to the API server runs against a recording fake API server on
//! loopback, each request becomes the permission the API server would check (verb, API
//! group, resource, namespace, name), and each test fails unless the chart's rules for
//! that component (`charts/zeroscale/rbac/operator-*.yaml` and
//! `charts/zeroscale/rbac/activator-*.yaml`, the files its templates include)
//! grant every one of them and every grant in them was used. Adding an API call to
//! either without its grant, or leaving a grant the code no longer needs, fails here.
//!
//! Also checks that the chart ships the generated CRD unchanged.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::header::CONTENT_TYPE;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::runtime::events::Reporter;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use zeroscale_activator::cluster::{KubeWake, watch_endpoint_slices, watch_functions};
use zeroscale_activator::functions::{Functions, Listener};
use zeroscale_activator::key_digests::watch_key_digests;
use zeroscale_activator::metrics::Metrics as ActivatorMetrics;
use zeroscale_activator::wake::Wake;
use zeroscale_api::auth::{ApiKeysAuth, AuthSpec, SecretRef, digests_secret_name};
use zeroscale_api::routing::{Domains, FunctionKey};
use zeroscale_api::stats::{FunctionStats, StatsReport};
use zeroscale_api::{Function, FunctionSpec, Metric, ScalingDefaults, keys};
use zeroscale_autoscaler::StatsSource;
use zeroscale_operator::autoscaler::{self, ActivatorStats, AutoscalerConfig};
use zeroscale_operator::controller::{self, Context};
use zeroscale_operator::gateway::GatewayConfig;
use zeroscale_operator::lease::{Attempt, LeaderElector};
use zeroscale_operator::metrics::Metrics as OperatorMetrics;
use zeroscale_operator::resources::{self, Config};

/// The namespace the chart is installed in: the operator's Lease and the activator
/// Service live there, and only there does the chart's Role apply.
const RELEASE_NAMESPACE: &str = "zeroscale-system";
/// The operator's `--lease-name` default, which the chart keeps.
const LEASE_NAME: &str = "zeroscale-operator";
/// Longest any step of a scenario may take before the test fails.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn chart_rbac_grants_exactly_the_api_calls_the_operator_makes() {
    let api = FakeApi::start().await;
    let ctx = context(&api);

    reconcile_paths(&api, &ctx).await;
    controller_watches(&api, &ctx).await;
    autoscaler_paths(&api, &ctx).await;
    lease_paths(&api).await;

    let chart = chart_dir().join("rbac");
    let grants = Grants {
        component: "operator",
        cluster: read_rules(&chart.join("operator-clusterrole.yaml")),
        release_namespace: read_rules(&chart.join("operator-role.yaml")),
    };
    grants.assert_exactly(&api.accesses());
}

#[tokio::test]
async fn chart_rbac_grants_exactly_the_gateway_api_calls_the_operator_makes() {
    let api = FakeApi::start().await;
    let metrics =
        OperatorMetrics::register(&prometheus::Registry::new()).expect("metrics register");
    let config = Config {
        public_domain: Some("fn.example.com".into()),
        gateway: Some(
            GatewayConfig::parse(
                "edge/public",
                "zeroscale-activator-public.zeroscale-system:80",
            )
            .expect("valid"),
        ),
        scaling: scaling(),
        ..Config::test()
    };
    let ctx = Arc::new(Context::new(api.client(), config, metrics, reporter()));

    // A public Function gets its route; turned cluster-local, it loses it.
    let hello = function("hello");
    api.put_function(&hello);
    controller::reconcile(Arc::new(hello.clone()), ctx.clone())
        .await
        .expect("reconcile a public Function");
    let route = (
        "/apis/gateway.networking.k8s.io/v1",
        "default",
        "httproutes",
        "hello",
    );
    assert!(api.has(route.0, route.1, route.2, route.3));
    let mut local = hello;
    local.spec.routing.visibility = zeroscale_api::Visibility::ClusterLocal;
    controller::reconcile(Arc::new(local), ctx.clone())
        .await
        .expect("reconcile it cluster-local");
    assert!(!api.has(route.0, route.1, route.2, route.3));

    // The controllers watch the routes they own.
    let (stop, stopped) = watch::channel(false);
    let running = tokio::spawn(controller::run(ctx.clone(), None, async move {
        let mut stopped = stopped;
        let _ = stopped.wait_for(|stop| *stop).await;
    }));
    api.wait_until("the controller's watch of HTTPRoutes", |calls| {
        calls
            .iter()
            .any(|call| call.is_watch_of("httproutes", None))
    })
    .await;
    stop.send_replace(true);
    within("controller shutdown", running)
        .await
        .expect("controller task");

    let chart = chart_dir().join("rbac");
    let grants = Grants {
        component: "operator (gateway)",
        cluster: read_rules(&chart.join("operator-gateway-clusterrole.yaml")),
        release_namespace: Vec::new(),
    };
    let gateway_calls: BTreeSet<Access> = api
        .accesses()
        .into_iter()
        .filter(|access| access.group == "gateway.networking.k8s.io")
        .collect();
    grants.assert_exactly(&gateway_calls);
}

#[test]
fn chart_ships_the_generated_crd_unchanged() {
    let root = chart_dir().join("../..");
    let generated = std::fs::read(root.join("crds/function.yaml")).expect("crds/function.yaml");
    let shipped = std::fs::read(chart_dir().join("crds/function.yaml"))
        .expect("charts/zeroscale/crds/function.yaml");
    assert!(
        generated == shipped,
        "charts/zeroscale/crds/function.yaml differs from crds/function.yaml: \
         copy it (cp crds/function.yaml charts/zeroscale/crds/)"
    );
}

// ---------------------------------------------------------------------------------------
// The operator: its code paths that reach the API server.

fn context(api: &FakeApi) -> Arc<Context> {
    let metrics =
        OperatorMetrics::register(&prometheus::Registry::new()).expect("metrics register");
    let config = Config {
        scaling: scaling(),
        ..Config::test()
    };
    Arc::new(Context::new(api.client(), config, metrics, reporter()))
}

/// Scaling defaults with a grace period short enough for the autoscaler to scale an
/// idle Function to zero on its second tick.
fn scaling() -> ScalingDefaults {
    ScalingDefaults {
        scale_to_zero_grace_period: Duration::from_millis(1),
        ..ScalingDefaults::default()
    }
}

fn reporter() -> Reporter {
    Reporter {
        controller: "zeroscale-operator".into(),
        instance: Some("zeroscale-operator-0".into()),
    }
}

fn function(name: &str) -> Function {
    let mut function = Function::new(name, FunctionSpec::with_image("example.com/hello:1"));
    function.metadata.namespace = Some("default".into());
    function.metadata.uid = Some(format!("uid-{name}"));
    function.metadata.generation = Some(1);
    function.metadata.resource_version = Some("1".into());
    function
}

fn cpu(mut function: Function) -> Function {
    function.spec.scaling.metric = Metric::Cpu;
    function.spec.resources =
        Some(serde_json::from_value(json!({"requests": {"cpu": "100m"}})).expect("resources"));
    function
}

/// `function` with a wake requested by an activator.
fn woken(mut function: Function) -> Function {
    function
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(
            keys::WAKE_REQUESTED_AT.into(),
            "2026-11-24T09:00:00Z".into(),
        );
    function
}

async fn reconcile_paths(api: &FakeApi, ctx: &Arc<Context>) {
    // A new Function: every child is created by server-side apply, pods are listed while
    // none is ready, the status is written and the first Event created.
    let hello = function("hello");
    api.put_function(&hello);
    controller::reconcile(Arc::new(hello.clone()), ctx.clone())
        .await
        .expect("reconcile a new Function");
    // The same transition again: the Event recorder patches its Event instead.
    controller::reconcile(Arc::new(hello), ctx.clone())
        .await
        .expect("reconcile again");

    // CPU scaling applies an HPA; going back to concurrency deletes it.
    let cruncher = cpu(function("cruncher"));
    api.put_function(&cruncher);
    controller::reconcile(Arc::new(cruncher), ctx.clone())
        .await
        .expect("reconcile a cpu Function");
    assert!(api.has(
        "/apis/autoscaling/v2",
        "default",
        "horizontalpodautoscalers",
        "cruncher"
    ));
    let cruncher = function("cruncher");
    controller::reconcile(Arc::new(cruncher), ctx.clone())
        .await
        .expect("reconcile back to concurrency");
    assert!(!api.has(
        "/apis/autoscaling/v2",
        "default",
        "horizontalpodautoscalers",
        "cruncher"
    ));

    // A wake request on a Function at zero: replicas handed to the autoscaler, scale recorded.
    let sleepy = woken(function("sleepy"));
    api.put_function(&sleepy);
    api.put_deployment(&sleepy, 0);
    controller::reconcile(Arc::new(sleepy), ctx.clone())
        .await
        .expect("reconcile a wake request");

    // API keys: the one Secret the Function names is read, and the keys' digests
    // applied in the release namespace for the activator; dropping the keys deletes them.
    let mut keyed = function("keyed");
    keyed.spec.auth = Some(AuthSpec {
        api_keys: Some(ApiKeysAuth {
            secret_ref: SecretRef {
                name: "keyed-keys".into(),
            },
            header: None,
        }),
        jwt: None,
    });
    api.put_function(&keyed);
    api.put(
        "/api/v1",
        "default",
        "secrets",
        "keyed-keys",
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "keyed-keys", "namespace": "default"},
               "data": {"alice": "czNjcmV0"}}),
    );
    controller::reconcile(Arc::new(keyed), ctx.clone())
        .await
        .expect("reconcile a Function with API keys");
    let digests = digests_secret_name("default", "keyed");
    assert!(api.has("/api/v1", RELEASE_NAMESPACE, "secrets", &digests));
    controller::reconcile(Arc::new(function("keyed")), ctx.clone())
        .await
        .expect("reconcile it without");
    assert!(!api.has("/api/v1", RELEASE_NAMESPACE, "secrets", &digests));

    // An invalid spec: only the status and an Event are written.
    let mut broken = cpu(function("broken"));
    broken.spec.resources = None;
    api.put_function(&broken);
    controller::reconcile(Arc::new(broken), ctx.clone())
        .await
        .expect("reconcile an invalid spec");
}

async fn controller_watches(api: &FakeApi, ctx: &Arc<Context>) {
    let (stop, stopped) = watch::channel(false);
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    };
    let everywhere = tokio::spawn(controller::run(ctx.clone(), None, until_stopped()));
    let scoped = {
        let ctx = ctx.clone();
        let until_stopped = until_stopped.clone();
        tokio::spawn(async move { controller::run(ctx, Some("default"), until_stopped()).await })
    };
    let kinds = [
        "functions",
        "deployments",
        "services",
        "horizontalpodautoscalers",
        "pods",
    ];
    api.wait_until("the controllers' watches", |calls| {
        kinds.iter().all(|kind| {
            [None, Some("default")]
                .iter()
                .all(|namespace| calls.iter().any(|call| call.is_watch_of(kind, *namespace)))
        })
    })
    .await;
    stop.send_replace(true);
    within("controller shutdown", everywhere)
        .await
        .expect("controller task");
    within("controller shutdown", scoped)
        .await
        .expect("controller task");
}

/// Stats of one activator: the Function `zeroed` has a request waiting, every other one
/// is idle.
struct FakeStats {
    uptime: AtomicU64,
}

impl StatsSource for FakeStats {
    async fn scrape(&self) -> zeroscale_autoscaler::Result<Vec<StatsReport>> {
        let uptime = self.uptime.fetch_add(1, Ordering::Relaxed) as f64;
        let stats = |name: &str, queued: u64| FunctionStats {
            namespace: "default".into(),
            name: name.into(),
            queued,
            ..FunctionStats::default()
        };
        Ok(vec![StatsReport {
            instance: "activator-0".into(),
            uptime_seconds: uptime,
            functions: vec![stats("zeroed", 1), stats("idle", 0)],
        }])
    }
}

async fn autoscaler_paths(api: &FakeApi, ctx: &Arc<Context>) {
    let zeroed = function("zeroed");
    api.put_function(&zeroed);
    api.put_deployment(&zeroed, 0);
    let idle = woken(function("idle"));
    api.put_function(&idle);
    api.put_deployment(&idle, 1);
    // The autoscaler scales the Functions the controllers watch. Those of
    // `controller_watches` have stopped, so a store stands in for theirs.
    let (functions, mut writer) = kube::runtime::reflector::store();
    for function in [&zeroed, &idle] {
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(function.clone()));
    }
    ctx.watched().add(functions);

    let config = AutoscalerConfig {
        tick: Duration::from_millis(50),
        activator_service: format!("zeroscale-activator.{RELEASE_NAMESPACE}"),
        activator_admin_port: 9090,
        scrape_timeout: Duration::from_millis(500),
        namespaces: Vec::new(),
    };
    // The real source watches the activator Service's EndpointSlices; the loop reads
    // fixed stats instead of scraping pods.
    let _activators = ActivatorStats::watch(api.client(), &config);
    let (stop, stopped) = watch::channel(false);
    let autoscaler_ctx = autoscaler::Context::new(
        api.client(),
        scaling(),
        zeroscale_autoscaler::Metrics::register(&prometheus::Registry::new())
            .expect("metrics register"),
        reporter(),
        Arc::clone(ctx.watched()),
    );
    let loop_task = tokio::spawn(autoscaler::run(
        autoscaler_ctx,
        config,
        FakeStats {
            uptime: AtomicU64::new(1),
        },
        zeroscale_autoscaler::NoBacklog,
        zeroscale_autoscaler::Usage::new(jiff::Timestamp::now(), None),
        async move {
            let mut stopped = stopped;
            let _ = stopped.wait_for(|stop| *stop).await;
        },
    ));
    api.wait_until(
        "the autoscaler to wake `zeroed` and scale `idle` to zero",
        |calls| {
            calls
                .iter()
                .any(|call| call.is_watch_of("endpointslices", Some(RELEASE_NAMESPACE)))
                && calls.iter().any(|call| call.is_event_note("zeroed: 0 -> "))
                && calls.iter().any(|call| call.is_event_note("idle: 1 -> 0"))
        },
    )
    .await;
    stop.send_replace(true);
    within("autoscaler shutdown", loop_task)
        .await
        .expect("autoscaler task");
    let idle = api
        .get(
            "/apis/zeroscale.dev/v1alpha1",
            "default",
            "functions",
            "idle",
        )
        .expect("idle");
    assert!(
        idle["metadata"]["annotations"]
            .get(keys::WAKE_REQUESTED_AT)
            .is_none(),
        "scaling to zero clears the wake request"
    );
}

async fn lease_paths(api: &FakeApi) {
    let leases: Api<Lease> = Api::namespaced(api.client(), RELEASE_NAMESPACE);
    let first = LeaderElector::new(leases.clone(), LEASE_NAME, "operator-a");
    let second = LeaderElector::new(leases, LEASE_NAME, "operator-b");
    // Create, then follow, then renew and release.
    assert_eq!(
        first
            .try_acquire_or_renew()
            .await
            .expect("create the Lease"),
        Attempt::Leading
    );
    assert!(matches!(
        second.try_acquire_or_renew().await.expect("read the Lease"),
        Attempt::Following { .. }
    ));
    let leadership = within("acquire", first.acquire())
        .await
        .expect("renew the Lease");
    leadership.release().await.expect("release the Lease");
}

// ---------------------------------------------------------------------------------------
// The activator: its watches and its wake request.

#[tokio::test]
async fn chart_rbac_grants_exactly_the_api_calls_the_activator_makes() {
    let api = FakeApi::start().await;
    let mut hello = Function::new("hello", FunctionSpec::with_image("example.com/hello:1"));
    hello.metadata.namespace = Some("team".into());
    api.put_function(&hello);

    // The watches, across all namespaces (the default) and in one (--namespaces).
    let functions = Arc::new(Functions::new(
        Domains::default(),
        ActivatorMetrics::new().expect("metrics"),
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
    // The API key digests, in the release namespace only.
    let (client, functions_c) = (api.client(), Arc::clone(&functions));
    watches.push(tokio::spawn(async move {
        watch_key_digests(client, RELEASE_NAMESPACE, functions_c.auth()).await;
    }));
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
                    .any(|call| call.is_watch_of(resource, *namespace))
            })
        }) && calls.iter().any(|call| call.method == Method::PATCH)
            && calls
                .iter()
                .any(|call| call.is_watch_of("secrets", Some(RELEASE_NAMESPACE)))
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

    // Its Role in the release namespace covers the API key digests alone.
    let grants = Grants {
        component: "activator",
        cluster: read_rules(&chart_dir().join("rbac/activator-clusterrole.yaml")),
        release_namespace: read_rules(&chart_dir().join("rbac/activator-role.yaml")),
    };
    grants.assert_exactly(&api.accesses());
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

    /// Every single permission the rule grants, as (group, resource, verb, name).
    fn permissions(&self) -> Vec<(String, String, String, Option<String>)> {
        let names: Vec<Option<String>> = match self.resource_names.as_slice() {
            [] => vec![None],
            names => names.iter().cloned().map(Some).collect(),
        };
        let mut all = Vec::new();
        for group in &self.api_groups {
            for resource in &self.resources {
                for verb in &self.verbs {
                    for name in &names {
                        all.push((group.clone(), resource.clone(), verb.clone(), name.clone()));
                    }
                }
            }
        }
        all
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
            Some(namespace) => write!(f, " in {namespace}")?,
            None => write!(f, " in all namespaces")?,
        }
        match &self.name {
            Some(name) => write!(f, " ({name})"),
            None => Ok(()),
        }
    }
}

/// One component's rules: the ClusterRole's apply everywhere; the Role's (if it has one)
/// only in the release namespace.
struct Grants {
    /// `operator` or `activator`, for the failure message.
    component: &'static str,
    cluster: Vec<Rule>,
    release_namespace: Vec<Rule>,
}

impl Grants {
    fn allows(&self, access: &Access) -> bool {
        self.cluster.iter().any(|rule| rule.grants(access))
            || (access.namespace.as_deref() == Some(RELEASE_NAMESPACE)
                && self
                    .release_namespace
                    .iter()
                    .any(|rule| rule.grants(access)))
    }

    /// Fails unless the rules grant every access and every grant was used by one.
    fn assert_exactly(&self, accesses: &BTreeSet<Access>) {
        let denied: BTreeSet<String> = accesses
            .iter()
            .filter(|access| !self.allows(access))
            .map(Access::to_string)
            .collect();
        let used =
            |group: &str, resource: &str, verb: &str, name: &Option<String>, release_only: bool| {
                accesses.iter().any(|access| {
                    access.group == group
                        && access.resource == resource
                        && access.verb == verb
                        && (name.is_none() || access.name == *name)
                        && (!release_only || access.namespace.as_deref() == Some(RELEASE_NAMESPACE))
                })
            };
        let mut unused = Vec::new();
        for (rules, release_only) in [(&self.cluster, false), (&self.release_namespace, true)] {
            for (group, resource, verb, name) in rules.iter().flat_map(Rule::permissions) {
                if !used(&group, &resource, &verb, &name, release_only) {
                    unused.push(format!(
                        "{verb} {group}/{resource} {}",
                        name.unwrap_or_default()
                    ));
                }
            }
        }
        let component = self.component;
        assert!(
            denied.is_empty() && unused.is_empty(),
            "the chart's {component} rules do not match the {component}'s API calls\n\
             calls the rules do not grant: {denied:#?}\n\
             grants no call used: {unused:#?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// A fake API server on loopback: stores objects by path, answers like the real one
// closely enough for the operator's and the activator's client code, and records every
// request. Anything it does not support is still recorded (and refused), so a new kind of
// call still shows up as a permission to check.

/// A request the fake answered.
#[derive(Clone, Debug)]
struct Call {
    method: Method,
    target: Target,
    watch: bool,
    /// A server-side apply that created its object: authorized as create as well.
    created_by_apply: bool,
    body: Value,
}

impl Call {
    fn is_watch_of(&self, resource: &str, namespace: Option<&str>) -> bool {
        self.watch && self.target.is(resource, namespace)
    }

    fn is_event_note(&self, prefix: &str) -> bool {
        self.target.resource == "events"
            && self.body["note"]
                .as_str()
                .is_some_and(|note| note.starts_with(prefix))
    }

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
        match (&self.method, named) {
            (&Method::GET, true) => vec![access("get")],
            (&Method::GET, false) if self.watch => vec![access("watch")],
            (&Method::GET, false) => vec![access("list")],
            (&Method::POST, _) => vec![Access {
                name: None,
                ..access("create")
            }],
            (&Method::PATCH, _) if self.created_by_apply => vec![access("patch"), access("create")],
            (&Method::PATCH, _) => vec![access("patch")],
            (&Method::PUT, _) => vec![access("update")],
            (&Method::DELETE, true) => vec![access("delete")],
            (&Method::DELETE, false) => vec![access("deletecollection")],
            (method, _) => panic!("unexpected method {method}"),
        }
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

    /// Stores the Deployment of `function` (in `default`) as the API server would, at
    /// `replicas` pods.
    fn put_deployment(&self, function: &Function, replicas: i32) {
        let mut deployment =
            serde_json::to_value(resources::deployment(function).expect("valid spec"))
                .expect("json");
        deployment["spec"]["replicas"] = json!(replicas);
        deployment["metadata"]["namespace"] = json!("default");
        let name = function.metadata.name.clone().unwrap_or_default();
        self.put("/apis/apps/v1", "default", "deployments", &name, deployment);
    }

    /// Stores `function` in its namespace, as the API server would return it.
    fn put_function(&self, function: &Function) {
        let mut object = serde_json::to_value(function).expect("json");
        object["apiVersion"] = json!("zeroscale.dev/v1alpha1");
        object["kind"] = json!("Function");
        let name = function.metadata.name.clone().unwrap_or_default();
        let namespace = function
            .metadata
            .namespace
            .clone()
            .expect("a namespaced Function");
        self.put(
            "/apis/zeroscale.dev/v1alpha1",
            &namespace,
            "functions",
            &name,
            object,
        );
    }

    fn get(&self, prefix: &str, namespace: &str, resource: &str, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(&key(prefix, namespace, resource, name))
            .cloned()
    }

    fn has(&self, prefix: &str, namespace: &str, resource: &str, name: &str) -> bool {
        self.get(prefix, namespace, resource, name).is_some()
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
        let apply = request
            .headers()
            .get(CONTENT_TYPE)
            .is_some_and(|value| value.as_bytes().starts_with(b"application/apply-patch"));
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
            let (response, created_by_apply) = state.serve(&method, &target, watch, apply, &body);
            state.calls.push(Call {
                method,
                target,
                watch,
                created_by_apply,
                body,
            });
            response
        };
        self.changed.send_modify(|version| *version += 1);
        response
    }
}

fn key(prefix: &str, namespace: &str, resource: &str, name: &str) -> Key {
    (
        prefix.into(),
        namespace.into(),
        resource.into(),
        name.into(),
    )
}

impl State {
    /// Answers one request; the flag says whether a server-side apply created its object.
    fn serve(
        &mut self,
        method: &Method,
        target: &Target,
        watch: bool,
        apply: bool,
        body: &Value,
    ) -> (Response<BoxBody<Bytes, Infallible>>, bool) {
        let namespace = target.namespace.clone().unwrap_or_default();
        let Some(name) = target.name.clone() else {
            return (self.collection(method, target, watch, body), false);
        };
        let key = key(&target.prefix, &namespace, &target.resource, &name);
        self.version += 1;
        let version = self.version.to_string();
        let stored = self.objects.get(&key).cloned();
        let not_found = || {
            status(
                StatusCode::NOT_FOUND,
                &format!("{} {name} not found", target.resource),
            )
        };
        let answer = match (method, stored, &target.subresource) {
            (&Method::GET, Some(object), None) => ok(&object),
            (&Method::PATCH, Some(mut object), Some(_)) => {
                // Only the status changes through the status subresource.
                merge(&mut object["status"], &body["status"]);
                self.objects.insert(key, object.clone());
                ok(&object)
            }
            (&Method::PATCH, Some(mut object), None) => {
                merge(&mut object, body);
                object["metadata"]["resourceVersion"] = json!(version);
                self.objects.insert(key, object.clone());
                ok(&object)
            }
            (&Method::PATCH, None, None) if apply => {
                let object = created(body, &namespace, &name, &version);
                self.objects.insert(key, object.clone());
                return (ok(&object), true);
            }
            (&Method::PUT, Some(_), None) => {
                let object = created(body, &namespace, &name, &version);
                self.objects.insert(key, object.clone());
                ok(&object)
            }
            (&Method::DELETE, Some(_), None) => {
                self.objects.remove(&key);
                ok(&json!({"apiVersion": "v1", "kind": "Status", "status": "Success", "code": 200}))
            }
            _ => not_found(),
        };
        (answer, false)
    }

    fn collection(
        &mut self,
        method: &Method,
        target: &Target,
        watch: bool,
        body: &Value,
    ) -> Response<BoxBody<Bytes, Infallible>> {
        if watch {
            // A watch that stays open with nothing to report.
            let never = futures::stream::pending::<Result<Frame<Bytes>, Infallible>>();
            return Response::builder()
                .header(CONTENT_TYPE, "application/json")
                .body(StreamBody::new(never).boxed())
                .expect("response");
        }
        let namespace = target.namespace.clone().unwrap_or_default();
        match *method {
            Method::GET => {
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
            Method::POST => {
                self.version += 1;
                let name = body["metadata"]["name"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("generated-{}", self.version));
                let key = key(&target.prefix, &namespace, &target.resource, &name);
                if self.objects.contains_key(&key) {
                    return status(StatusCode::CONFLICT, &format!("{name} already exists"));
                }
                let object = created(body, &namespace, &name, &self.version.to_string());
                self.objects.insert(key, object.clone());
                let mut response = ok(&object);
                *response.status_mut() = StatusCode::CREATED;
                response
            }
            _ => status(StatusCode::METHOD_NOT_ALLOWED, "not supported by the fake"),
        }
    }
}

/// `body` as stored on creation: named, namespaced, versioned.
fn created(body: &Value, namespace: &str, name: &str, version: &str) -> Value {
    let mut object = body.clone();
    object["metadata"]["name"] = json!(name);
    if !namespace.is_empty() {
        object["metadata"]["namespace"] = json!(namespace);
    }
    object["metadata"]["uid"] = json!(format!("uid-{name}"));
    object["metadata"]["resourceVersion"] = json!(version);
    object
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
    let reason = match code {
        StatusCode::NOT_FOUND => "NotFound",
        StatusCode::CONFLICT => "AlreadyExists",
        _ => "MethodNotAllowed",
    };
    let body = json!({
        "apiVersion": "v1", "kind": "Status", "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    let mut response = ok(&body);
    *response.status_mut() = code;
    response
}
