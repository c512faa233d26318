//! The autoscaler loop: every tick it reads the stats of every activator replica,
//! advances the [`Fleet`], and applies changed replica counts through a [`Runtime`]. In a
//! cluster the leader runs it with [`KubeRuntime`], which applies replicas under the
//! autoscaler's field manager and records `lastScaleTime` and an Event.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use tokio::time::Instant;
use zeroscale_api::stats::StatsReport;
use zeroscale_api::{Function, ScalingDefaults, keys};

use super::{Decision, Fleet, FunctionId, LoadMeter, Replicas, ScalingPolicy, Target};
use crate::controller::{AUTOSCALER_FIELD_MANAGER, Context, hand_over_replicas};
use crate::metrics::Metrics;

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

/// Where the loop gets the activators' reports. Any failure means "unknown": the loop
/// then holds every Function's scale.
pub trait StatsSource: Send + Sync {
    fn scrape(&self) -> impl Future<Output = Result<Vec<StatsReport>, String>> + Send;
}

/// Reads `/stats` from every ready activator pod listed in the activator Service's
/// EndpointSlices.
pub struct ActivatorStats {
    slices: Store<EndpointSlice>,
    http: HttpClient<HttpConnector, Empty<Bytes>>,
    port: u16,
    timeout: Duration,
}

impl ActivatorStats {
    /// Starts watching the activator Service's EndpointSlices.
    pub fn watch(client: kube::Client, config: &AutoscalerConfig) -> Self {
        let (name, namespace) = config
            .activator_service
            .split_once('.')
            .unwrap_or((config.activator_service.as_str(), "default"));
        let api: Api<EndpointSlice> = Api::namespaced(client, namespace);
        let selector = format!("kubernetes.io/service-name={name}");
        let (slices, writer) = reflector::store();
        let stream = reflector::reflector(
            writer,
            watcher(api, watcher::Config::default().labels(&selector)),
        )
        .default_backoff()
        .touched_objects();
        tokio::spawn(stream.for_each(|_| async {}));
        Self {
            slices,
            http: HttpClient::builder(TokioExecutor::new()).build_http(),
            port: config.activator_admin_port,
            timeout: config.scrape_timeout,
        }
    }

    async fn scrape_one(&self, address: String) -> Result<StatsReport, String> {
        let uri = format!("http://{address}/stats");
        let request = async {
            let response = self
                .http
                .get(uri.parse().map_err(|e| format!("{uri}: {e}"))?)
                .await
                .map_err(|e| format!("{uri}: {e}"))?;
            if !response.status().is_success() {
                return Err(format!("{uri}: status {}", response.status()));
            }
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("{uri}: {e}"))?
                .to_bytes();
            serde_json::from_slice(&body).map_err(|e| format!("{uri}: {e}"))
        };
        tokio::time::timeout(self.timeout, request)
            .await
            .map_err(|_| format!("{uri}: no answer within {:?}", self.timeout))?
    }
}

impl StatsSource for ActivatorStats {
    async fn scrape(&self) -> Result<Vec<StatsReport>, String> {
        let addresses: Vec<String> = self
            .slices
            .state()
            .iter()
            .flat_map(|slice| slice.endpoints.clone())
            .filter(|endpoint| {
                endpoint
                    .conditions
                    .as_ref()
                    .and_then(|c| c.ready)
                    .unwrap_or(true)
            })
            .filter_map(|endpoint| endpoint.addresses.first().cloned())
            .map(|ip| match ip.contains(':') {
                true => format!("[{ip}]:{}", self.port),
                false => format!("{ip}:{}", self.port),
            })
            .collect();
        if addresses.is_empty() {
            return Err("no activator replica is ready".into());
        }
        futures::future::join_all(addresses.into_iter().map(|a| self.scrape_one(a)))
            .await
            .into_iter()
            .collect()
    }
}

/// Where Functions run, as the loop sees it: which Functions to decide for now, and how
/// to apply a changed replica count. Kubernetes ([`KubeRuntime`]) and `zeroscale dev`'s
/// local processes implement it; the loop itself knows neither.
pub trait Runtime: Send + Sync {
    /// Every Function to decide for this tick, with its policy and current replicas.
    fn targets(&self) -> Vec<Target>;
    /// Moves `id` from `from` replicas to `decision.desired`.
    fn scale(
        &self,
        id: &FunctionId,
        from: i32,
        decision: Decision,
    ) -> impl Future<Output = Result<(), String>> + Send;
}

/// Runs the loop until `shutdown` resolves: every `tick`, scrape `stats`, advance the
/// [`Fleet`] over `runtime`'s targets, and apply every decision that changes replicas.
pub async fn drive(
    tick: Duration,
    stats: impl StatsSource,
    runtime: &impl Runtime,
    metrics: &Metrics,
    shutdown: impl Future<Output = ()>,
) {
    let mut meter = LoadMeter::default();
    let mut fleet = Fleet::default();
    let mut ticks = tokio::time::interval(tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = ticks.tick() => {}
        }
        let started = Instant::now();
        let observed = match stats.scrape().await {
            Ok(reports) => Some(meter.observe(reports)),
            Err(error) => {
                tracing::warn!(%error, "activator stats unavailable; holding every Function's scale");
                None
            }
        };
        let targets = runtime.targets();
        let current: HashMap<FunctionId, Replicas> =
            targets.iter().map(|t| (t.id.clone(), t.replicas)).collect();
        let decisions = fleet.tick(Instant::now(), targets, observed.as_ref());
        for (id, decision) in decisions {
            let labels = [id.0.as_str(), id.1.as_str()];
            metrics
                .scaling_decisions
                .with_label_values(&[decision.reason.metric_label()])
                .inc();
            metrics
                .panic_mode
                .with_label_values(&labels)
                .set(i64::from(fleet.panicking(&id)));
            let Some(before) = current.get(&id).copied() else {
                continue;
            };
            metrics
                .actual_replicas
                .with_label_values(&labels)
                .set(i64::from(before.ready));
            metrics
                .desired_replicas
                .with_label_values(&labels)
                .set(i64::from(decision.desired));
            if decision.desired != before.desired
                && let Err(error) = runtime.scale(&id, before.desired, decision).await
            {
                tracing::warn!(function = %format!("{}/{}", id.0, id.1), %error, "scaling failed");
            }
        }
        metrics
            .autoscaler_tick_duration
            .observe(started.elapsed().as_secs_f64());
    }
}

/// Functions and their Deployments in a cluster: the Functions the controllers watch
/// (through `ctx`), the Deployments from watches of its own; scaling patches the
/// Deployment under the autoscaler's field manager.
pub struct KubeRuntime {
    ctx: Arc<Context>,
    /// One store per watched namespace, or one for all namespaces: a watch of
    /// everything would need cluster-wide read access the operator otherwise lacks.
    deployments: Vec<Store<Deployment>>,
}

impl KubeRuntime {
    /// Starts watching zeroscale's Deployments in each of `namespaces` (all namespaces
    /// when empty). The controllers of the same namespaces run on `ctx`.
    pub fn watch(ctx: Arc<Context>, namespaces: &[String]) -> Self {
        let scopes: Vec<Option<&str>> = match namespaces {
            [] => vec![None],
            namespaces => namespaces.iter().map(|n| Some(n.as_str())).collect(),
        };
        let deployments = scopes
            .into_iter()
            .map(|scope| watched_deployments(&ctx.client, scope))
            .collect();
        Self { ctx, deployments }
    }
}

impl Runtime for KubeRuntime {
    fn targets(&self) -> Vec<Target> {
        targets(
            &self.ctx.watched_functions(),
            &self.deployments,
            &self.ctx.config.scaling,
        )
    }

    async fn scale(&self, id: &FunctionId, from: i32, decision: Decision) -> Result<(), String> {
        let key = ObjectRef::new(&id.1).within(&id.0);
        let Some(function) = self.ctx.watched_function(&key) else {
            return Ok(());
        };
        scale(&self.ctx, &function, from, decision)
            .await
            .map_err(|error| error.to_string())
    }
}

/// Runs the Kubernetes autoscaler until `shutdown` resolves, over the Functions of the
/// controllers running on `ctx` (see [`KubeRuntime`]).
pub async fn run(
    ctx: Arc<Context>,
    config: AutoscalerConfig,
    stats: impl StatsSource,
    shutdown: impl Future<Output = ()>,
) {
    let runtime = KubeRuntime::watch(ctx.clone(), &config.namespaces);
    drive(config.tick, stats, &runtime, &ctx.metrics, shutdown).await;
}

/// zeroscale's Deployments in `namespace` (or everywhere), kept current by a background
/// watch.
fn watched_deployments(client: &kube::Client, namespace: Option<&str>) -> Store<Deployment> {
    let api = match namespace {
        Some(namespace) => Api::<Deployment>::namespaced(client.clone(), namespace),
        None => Api::<Deployment>::all(client.clone()),
    };
    let config = watcher::Config::default().labels(&format!(
        "app.kubernetes.io/managed-by={}",
        keys::MANAGED_BY
    ));
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config))
        .default_backoff()
        .touched_objects();
    tokio::spawn(stream.for_each(|_| async {}));
    store
}

/// Every valid Function whose Deployment exists, with its policy and replicas.
fn targets(
    functions: &[Arc<Function>],
    deployments: &[Store<Deployment>],
    defaults: &ScalingDefaults,
) -> Vec<Target> {
    functions
        .iter()
        .filter_map(|function| {
            let durations = function.spec.validate().ok()?;
            let namespace = function.namespace()?;
            let name = function.name_any();
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
                id: (namespace, name),
                policy: ScalingPolicy::from_spec(&function.spec.scaling, &durations, defaults),
                replicas,
            })
        })
        .collect()
}

/// Applies a decision: replicas, the Function's lastScaleTime, and an Event.
async fn scale(
    ctx: &Context,
    function: &Function,
    from: i32,
    decision: Decision,
) -> crate::Result<()> {
    let name = &function.name_any();
    let namespace = &function.namespace().unwrap_or_default();
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), namespace);
    if decision.desired == 0 {
        // From now on, the annotation's presence at zero means a new wake request.
        clear_wake_request(ctx, namespace, name).await?;
    }
    hand_over_replicas(&deployments, name, decision.desired).await?;
    tracing::info!(function = %format!("{namespace}/{name}"), from, to = decision.desired, reason = decision.reason.as_str(), "scaled");
    record_scale(
        ctx,
        function,
        from,
        decision.desired,
        decision.reason.as_str(),
    )
    .await
}

/// Removes the activators' wake annotation from a Function.
async fn clear_wake_request(ctx: &Context, namespace: &str, name: &str) -> crate::Result<()> {
    let functions: Api<Function> = Api::namespaced(ctx.client.clone(), namespace);
    let patch = serde_json::json!({"metadata": {"annotations": {keys::WAKE_REQUESTED_AT: null}}});
    functions
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(drop)
        .map_err(|source| crate::Error::ClearWake {
            name: name.to_owned(),
            source,
        })
}

/// Records a scale on the Function: `lastScaleTime` and `lastScaleReason` (owned by the
/// autoscaler's field manager) and an Event. A failure to publish the Event is logged, not returned.
pub(crate) async fn record_scale(
    ctx: &Context,
    function: &Function,
    from: i32,
    to: i32,
    reason: &str,
) -> crate::Result<()> {
    let name = function.name_any();
    let name = name.as_str();
    let namespace = function.namespace().unwrap_or_default();
    let functions: Api<Function> = Api::namespaced(ctx.client.clone(), &namespace);
    let body = serde_json::json!({
        "apiVersion": Function::api_version(&()),
        "kind": Function::kind(&()),
        "status": {
            "lastScaleTime": Time(jiff::Timestamp::now()),
            "lastScaleReason": format!("{reason}: {from} -> {to}"),
        },
    });
    functions
        .patch_status(
            name,
            &PatchParams::apply(AUTOSCALER_FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await
        .map_err(|source| crate::Error::PatchStatus {
            name: name.to_owned(),
            source,
        })?;
    let event = Event {
        type_: EventType::Normal,
        reason: match (from, to) {
            (_, 0) => "ScaledToZero".into(),
            (0, _) => "ScaledFromZero".into(),
            _ => "Scaled".into(),
        },
        note: Some(format!("{name}: {from} -> {to} ({reason})")),
        action: "Scale".into(),
        secondary: None,
    };
    if let Err(error) = ctx
        .recorder
        .publish(&event, &function.object_ref(&()))
        .await
    {
        tracing::warn!(%error, "publishing the scale event failed");
    }
    Ok(())
}
