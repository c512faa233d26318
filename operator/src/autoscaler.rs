//! The autoscaler in a cluster: [`zeroscale_autoscaler::drive`] over `KubeRuntime`
//! (the Functions the controllers watch, their Deployments from watches of its own,
//! replicas written through `ReplicaWriter`), [`ActivatorStats`] (the activators'
//! `/stats`) and [`QueueBacklog`](zeroscale_queue::backlog::QueueBacklog) (the queue
//! triggers' backlog in NATS JetStream). Only the leader runs it. The decision itself is
//! in `zeroscale-autoscaler`.

mod stats;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use zeroscale_api::routing::FunctionKey;
use zeroscale_api::usage::PodResources;
use zeroscale_api::{Function, ScalingDefaults, keys};
use zeroscale_autoscaler::{
    BacklogSource, Decision, Metrics, Replicas, Runtime, ScalingPolicy, StatsSource, Target, Usage,
    drive,
};

use crate::replicas::ReplicaWriter;
use crate::watched::{WatchTask, WatchedFunctions};

pub use stats::ActivatorStats;

/// How the loop finds activators and how often it runs.
#[derive(Clone, Debug)]
pub struct AutoscalerConfig {
    /// Time between ticks.
    pub tick: Duration,
    /// Activator Service as `<name>.<namespace>`; its EndpointSlices list the replicas.
    pub activator_service: String,
    /// Port of the activators' admin server, which serves `/stats`.
    pub activator_admin_port: u16,
    /// Longest one activator may take to answer.
    pub scrape_timeout: Duration,
    /// Namespaces whose Functions are scaled; all when empty.
    pub namespaces: Vec<String>,
}

/// What the autoscaler loop needs.
pub struct Context {
    client: Client,
    /// Scaling settings for what a Function leaves unset.
    defaults: ScalingDefaults,
    metrics: Metrics,
    replicas: ReplicaWriter,
    /// The Functions the controllers watch: those the loop scales.
    functions: Arc<WatchedFunctions>,
}

impl Context {
    /// A context that scales `functions` (the controllers', see
    /// [`crate::controller::Context::watched`]), its Events naming `reporter`.
    pub fn new(
        client: Client,
        defaults: ScalingDefaults,
        metrics: Metrics,
        reporter: Reporter,
        functions: Arc<WatchedFunctions>,
    ) -> Self {
        Self {
            replicas: ReplicaWriter::new(client.clone(), reporter),
            client,
            defaults,
            metrics,
            functions,
        }
    }
}

/// Runs the Kubernetes autoscaler until `shutdown` resolves, over the Functions of
/// `ctx` and their Deployments, metering their usage in `usage`.
pub async fn run(
    ctx: Context,
    config: AutoscalerConfig,
    stats: impl StatsSource,
    backlog: impl BacklogSource,
    usage: Usage,
    shutdown: impl Future<Output = ()>,
) {
    let metrics = ctx.metrics.clone();
    let runtime = Arc::new(KubeRuntime::watch(ctx, &config.namespaces));
    drive(
        config.tick,
        stats,
        backlog,
        runtime,
        metrics,
        usage,
        shutdown,
    )
    .await;
}

/// Functions and their Deployments in a cluster: the Functions the controllers watch,
/// the Deployments from watches of its own; scaling goes through [`ReplicaWriter`].
struct KubeRuntime {
    ctx: Context,
    /// One store per watched namespace, or one for all namespaces: a watch of
    /// everything would need cluster-wide read access the operator otherwise lacks.
    deployments: Vec<Store<Deployment>>,
    /// The watches feeding `deployments`, stopped with the loop.
    _watches: Vec<WatchTask>,
    /// Each Function's policy as last read from its spec, so an unchanged spec is not
    /// validated and read again every tick.
    policies: Mutex<Policies>,
}

/// Policies by Function, each with the uid and generation of the spec it was read from;
/// `None` for a spec that does not validate.
type Policies = HashMap<FunctionKey, (SpecVersion, Option<ScalingPolicy>)>;

/// Which spec a policy was read from: the Function's uid (a Function deleted and made
/// again starts at generation 1 again) and generation.
type SpecVersion = (Option<String>, i64);

impl KubeRuntime {
    /// Starts watching zeroscale's Deployments in each of `namespaces` (all namespaces
    /// when empty).
    fn watch(ctx: Context, namespaces: &[String]) -> Self {
        let scopes: Vec<Option<&str>> = match namespaces {
            [] => vec![None],
            namespaces => namespaces.iter().map(|n| Some(n.as_str())).collect(),
        };
        let (deployments, watches) = scopes
            .into_iter()
            .map(|scope| watched_deployments(&ctx.client, scope))
            .unzip();
        Self {
            ctx,
            deployments,
            _watches: watches,
            policies: Mutex::new(HashMap::new()),
        }
    }
}

impl Runtime for KubeRuntime {
    fn targets(&self) -> Vec<Target> {
        let mut policies = self.policies.lock().unwrap_or_else(PoisonError::into_inner);
        targets(
            &self.ctx.functions.all(),
            &self.deployments,
            &self.ctx.defaults,
            &mut policies,
        )
    }

    async fn scale(
        &self,
        function: &FunctionKey,
        from: i32,
        decision: Decision,
    ) -> zeroscale_autoscaler::Result<()> {
        let key = ObjectRef::new(&function.name).within(&function.namespace);
        let Some(watched) = self.ctx.functions.get(&key) else {
            return Ok(());
        };
        self.ctx
            .replicas
            .scale(&watched, from, decision)
            .await
            .map_err(|error| zeroscale_autoscaler::Error::Scale {
                function: function.clone(),
                source: Box::new(error),
            })
    }
}

/// zeroscale's Deployments in `namespace` (or everywhere), kept current by a background
/// watch that stops when its [`WatchTask`] is dropped.
fn watched_deployments(client: &Client, namespace: Option<&str>) -> (Store<Deployment>, WatchTask) {
    let api = match namespace {
        Some(namespace) => Api::<Deployment>::namespaced(client.clone(), namespace),
        None => Api::<Deployment>::all(client.clone()),
    };
    let config = watcher::Config::default().labels(&format!(
        "app.kubernetes.io/managed-by={}",
        keys::MANAGED_BY
    ));
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config).modify(keep_replicas))
        .default_backoff()
        .touched_objects();
    (store, WatchTask::spawn(stream))
}

/// Keeps of a Deployment only what [`targets`] reads (its name and namespace,
/// `spec.replicas`, `status.readyReplicas`): the store holds one per Function, and its
/// pod template, labels and managed fields would be most of the operator's memory.
fn keep_replicas(deployment: &mut Deployment) {
    let metadata = &mut deployment.metadata;
    metadata.managed_fields = None;
    metadata.annotations = None;
    metadata.labels = None;
    metadata.owner_references = None;
    if let Some(spec) = deployment.spec.as_mut() {
        *spec = k8s_openapi::api::apps::v1::DeploymentSpec {
            replicas: spec.replicas,
            ..Default::default()
        };
    }
    if let Some(status) = deployment.status.as_mut() {
        *status = k8s_openapi::api::apps::v1::DeploymentStatus {
            ready_replicas: status.ready_replicas,
            ..Default::default()
        };
    }
}

/// Every valid Function whose Deployment exists, with its policy and replicas. Reads
/// a Function's policy from its spec only when `policies` has none for its uid and
/// generation; forgets the policies of Functions no longer given.
fn targets(
    functions: &[Arc<Function>],
    deployments: &[Store<Deployment>],
    defaults: &ScalingDefaults,
    policies: &mut Policies,
) -> Vec<Target> {
    let mut seen = HashSet::with_capacity(functions.len());
    let targets = functions
        .iter()
        .filter_map(|function| {
            let namespace = function.namespace()?;
            let name = function.name_any();
            let function_key = FunctionKey::new(namespace.clone(), name.clone());
            seen.insert(function_key.clone());
            let policy = policy(function, &function_key, defaults, policies)?;
            let key = ObjectRef::new(&name).within(&namespace);
            let deployment = deployments.iter().find_map(|store| store.get(&key))?;
            let replicas = Replicas {
                desired: deployment.spec.as_ref()?.replicas.unwrap_or(1),
                ready: deployment
                    .status
                    .as_ref()
                    .and_then(|s| s.ready_replicas)
                    .unwrap_or(0),
            };
            Some(Target {
                key: function_key,
                policy,
                replicas,
                resources: PodResources::from_requirements(function.spec.resources.as_ref()),
            })
        })
        .collect();
    policies.retain(|key, _| seen.contains(key));
    targets
}

/// `function`'s policy, from `policies` when its spec is the one read last time; None
/// when its spec does not validate.
fn policy(
    function: &Function,
    key: &FunctionKey,
    defaults: &ScalingDefaults,
    policies: &mut Policies,
) -> Option<ScalingPolicy> {
    let read = || {
        let durations = function.spec.validate().ok()?;
        Some(ScalingPolicy::from_spec(
            &function.spec.scaling,
            &durations,
            defaults,
        ))
    };
    // Without a generation (never from an API server) there is nothing to key on.
    let Some(generation) = function.metadata.generation else {
        return read();
    };
    let version = (function.metadata.uid.clone(), generation);
    match policies.get(key) {
        Some((read_from, policy)) if *read_from == version => policy.clone(),
        _ => {
            let policy = read();
            policies.insert(key.clone(), (version, policy.clone()));
            policy
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};
    use kube::api::ObjectMeta;
    use zeroscale_api::FunctionSpec;

    #[test]
    fn a_stripped_deployment_gives_the_same_targets_and_keeps_no_pod_template() {
        let mut function = Function::new("hello", FunctionSpec::with_image("example.com/a:1"));
        function.metadata.namespace = Some("team".into());
        let deployment = Deployment {
            metadata: ObjectMeta {
                name: Some("hello".into()),
                namespace: Some("team".into()),
                labels: Some([("a".to_owned(), "b".to_owned())].into()),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(3),
                template: Default::default(),
                min_ready_seconds: Some(5),
                ..Default::default()
            }),
            status: Some(DeploymentStatus {
                ready_replicas: Some(2),
                replicas: Some(3),
                ..Default::default()
            }),
        };
        let targets_of = |deployment: &Deployment| {
            let (store, mut writer) = reflector::store();
            writer.apply_watcher_event(&watcher::Event::Apply(deployment.clone()));
            let targets = targets(
                &[Arc::new(function.clone())],
                &[store],
                &ScalingDefaults::default(),
                &mut Policies::new(),
            );
            targets
                .iter()
                .map(|t| (t.key.clone(), t.replicas))
                .collect::<Vec<_>>()
        };
        let mut stripped = deployment.clone();
        keep_replicas(&mut stripped);
        assert_eq!(targets_of(&stripped), targets_of(&deployment));
        assert_eq!(targets_of(&stripped).len(), 1);
        assert_eq!(stripped.metadata.labels, None);
        let spec = stripped.spec.expect("spec");
        assert_eq!((spec.replicas, spec.min_ready_seconds), (Some(3), None));
        assert_eq!(stripped.status.expect("status").replicas, None);
    }

    #[test]
    fn a_policy_is_read_again_only_when_the_spec_changes_and_forgotten_with_its_function() {
        let mut function = Function::new("hello", FunctionSpec::with_image("example.com/a:1"));
        function.metadata.namespace = Some("team".into());
        function.metadata.uid = Some("uid-1".into());
        function.metadata.generation = Some(1);
        let key = FunctionKey::new("team", "hello");
        let defaults = ScalingDefaults::default();
        let mut policies = Policies::new();
        let first = policy(&function, &key, &defaults, &mut policies).expect("a policy");

        // A cached policy is returned as cached: a spec edited without a new generation
        // (which no API server does) shows that it was not read again.
        function.spec.scaling.max_replicas = 3;
        assert_eq!(
            policy(&function, &key, &defaults, &mut policies),
            Some(first.clone())
        );
        function.metadata.generation = Some(2);
        let changed = policy(&function, &key, &defaults, &mut policies).expect("a policy");
        assert_ne!(changed, first);
        assert_eq!(changed.max_replicas, 3);

        let (store, _writer) = reflector::store::<Deployment>();
        targets(&[], &[store], &defaults, &mut policies);
        assert!(policies.is_empty(), "forgotten with its Function");
    }
}
