//! The Function controller: an I/O shell around the pure builders in [`resources`] and
//! `status`. Each reconcile validates the spec, builds every desired object, applies
//! them with server-side apply under one field manager, and writes the status.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use tracing::Instrument;
use zeroscale_admin::process::ErrorChain;
use zeroscale_api::conditions::{HOSTS_CLAIMED, READY, Reason};
use zeroscale_api::routing::{Conflict, Domains, RouteSpec, RoutingTable, normalize_own_host};
use zeroscale_api::{Function, FunctionStatus, keys};
use zeroscale_autoscaler::ScalingPolicy;

use crate::backlog::{BACKLOG_PERMITS, Backlog};
use crate::gateway::{self, GatewayConfig, HTTPRoute, Route};
use crate::metrics::Metrics;
use crate::replicas::{self, ReplicaWriter};
use crate::resources::{self, Config};
use crate::status;
use crate::watched::WatchedFunctions;
use crate::{Error, Result};

/// Field manager of every object and status the reconciler applies.
pub const FIELD_MANAGER: &str = "zeroscale-operator";

/// How often a healthy Function is reconciled even when nothing changes.
const RESYNC: Duration = Duration::from_secs(300);

/// How soon a Function whose children's names are taken looks again: the objects in the
/// way are not the operator's, so no event of theirs reaches it.
const NOT_OWNED_RETRY: Duration = Duration::from_secs(30);

/// How soon a Function whose host claim is ignored looks again.
const HOST_CONFLICT_RETRY: Duration = Duration::from_secs(30);

/// Backoff of failed reconciles: doubles from the first delay up to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(300));

/// What every reconcile needs.
pub struct Context {
    client: Client,
    config: Config,
    recorder: Recorder,
    metrics: Metrics,
    /// The writer of replicas: hand-over and wake.
    replicas: ReplicaWriter,
    /// Consecutive failures per Function, for backoff.
    failures: Mutex<HashMap<ObjectRef<Function>, u32>>,
    /// What this process knows of each Function's children since it checked their
    /// names once; empty at start, so a new leader checks each Function once. A deleted
    /// Function leaves its entry here.
    children: Mutex<HashMap<ObjectRef<Function>, Children>>,
    /// The Functions every running controller watches: host claims are decided over
    /// all of them. The autoscaler's context shares them.
    watched: Arc<WatchedFunctions>,
    /// Whether the operator has a NATS server: without one, Functions with queue
    /// triggers are refused with `NatsNotConfigured`.
    nats: bool,
    /// Paces the start-up reconciles of Functions that were already up to date.
    backlog: Backlog,
}

/// A Function's children as the reconciler last left them.
#[derive(Clone, Copy, Debug)]
struct Children {
    /// An HPA of the Function's may exist: delete it when no longer needed.
    hpa: bool,
    /// A digest Secret of the Function's API keys may exist: delete it when the
    /// Function no longer has API keys.
    api_keys: bool,
}

impl Context {
    /// A context whose Events name `reporter`; its controllers add the Functions they
    /// watch to [`Context::watched`].
    pub fn new(client: Client, config: Config, metrics: Metrics, reporter: Reporter) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), reporter.clone()),
            replicas: ReplicaWriter::new(client.clone(), reporter),
            client,
            config,
            metrics,
            failures: Mutex::new(HashMap::new()),
            children: Mutex::new(HashMap::new()),
            watched: Arc::default(),
            nats: false,
            backlog: Backlog::new(BACKLOG_PERMITS),
        }
    }

    /// Says whether the operator has a NATS server (`--nats-url`); off by default.
    pub fn with_nats(mut self, configured: bool) -> Self {
        self.nats = configured;
        self
    }

    /// The Functions the controllers running on this context watch, for the autoscaler.
    pub fn watched(&self) -> &Arc<WatchedFunctions> {
        &self.watched
    }

    /// The claims of `function` on hosts that the routing rules ignore, because another
    /// watched Function keeps the host or it is another Function's address. Decided by
    /// the rules the activator routes by, over every watched Function and `function` as
    /// given; empty when it has no own hosts.
    fn host_conflicts(&self, function: &Function) -> Vec<Conflict> {
        if function.spec.routing.hosts.is_empty() {
            return Vec::new();
        }
        let Some(claimant) = RouteSpec::from_function(function) else {
            return Vec::new();
        };
        let watched = self.watched.all();
        let domains = Domains {
            cluster_domain: self.config.cluster_domain.clone(),
            public_domain: self.config.public_domain.clone(),
        };
        // The key given last counts, so `function` replaces its own copy in a store.
        let routes = watched
            .iter()
            .filter_map(|other| RouteSpec::from_function(other))
            .chain(std::iter::once(claimant.clone()))
            .map(|route| (route, ()));
        RoutingTable::build(routes, &domains)
            .conflicts()
            .iter()
            .filter(|conflict| conflict.ignored == claimant.key)
            .cloned()
            .collect()
    }

    /// Watched Functions whose claims `changed` may win or give up: those claiming one
    /// of its own hosts, its bare name, or a name derived from it (`<name>.<namespace>`
    /// and below). A superset of those whose conflicts change, which costs a reconcile.
    fn claims_near(&self, changed: &Function) -> Vec<ObjectRef<Function>> {
        let name = changed.name_any();
        let base = format!("{name}.{}", changed.namespace().unwrap_or_default());
        let below_base = format!("{base}.");
        let own: Vec<String> = changed
            .spec
            .routing
            .hosts
            .iter()
            .filter_map(|h| normalize_own_host(h))
            .collect();
        let changed_ref = ObjectRef::from_obj(changed);
        // Called for every Function event, so over the initial list of n Functions it
        // runs n times: those without own hosts are passed over without a clone.
        self.watched
            .filter(|other| {
                other.spec.routing.hosts.iter().any(|host| {
                    // A host no request can name claims nothing.
                    let Some(host) = normalize_own_host(host) else {
                        return false;
                    };
                    host == name
                        || host == base
                        || host.starts_with(&below_base)
                        || own.contains(&host)
                })
            })
            .iter()
            .map(|other| ObjectRef::from_obj(&**other))
            .filter(|other| *other != changed_ref)
            .collect()
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<Function>, u32>> {
        // A panic while holding this lock leaves only a counter behind: keep using it.
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn children(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<Function>, Children>> {
        // As for `failures`: a poisoned map costs at most one more check of the names.
        self.children
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Runs the controller over Functions in `namespace` (all namespaces when None) until
/// `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let functions = scoped::<Function>(&client, namespace);
    let managed = watcher::Config::default().labels(&format!(
        "app.kubernetes.io/managed-by={}",
        keys::MANAGED_BY
    ));
    let function_pods = watcher::Config::default().labels(keys::FUNCTION_LABEL);
    let controller = Controller::new(functions.clone(), watcher::Config::default().any_semantic());
    ctx.watched.add(controller.store());
    let claims = Arc::clone(&ctx);
    let controller = controller
        // A Function's change can win or give up a host that another one claims.
        .watches(
            functions,
            watcher::Config::default().any_semantic(),
            move |changed: Function| claims.claims_near(&changed),
        )
        .owns(scoped::<Deployment>(&client, namespace), managed.clone())
        .owns(scoped::<Service>(&client, namespace), managed.clone())
        .owns(
            scoped::<HorizontalPodAutoscaler>(&client, namespace),
            managed.clone(),
        );
    // Routes are read only when written: without --gateway-parent the Gateway API may
    // not even be installed.
    let controller = if ctx.config.gateway.is_some() {
        controller.owns(scoped::<HTTPRoute>(&client, namespace), managed)
    } else {
        controller
    };
    controller
        .watches(
            scoped::<Pod>(&client, namespace),
            function_pods,
            |pod: Pod| {
                let function = pod.labels().get(keys::FUNCTION_LABEL)?.clone();
                Some(ObjectRef::new(&function).within(&pod.namespace()?))
            },
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((function, _)) => tracing::debug!(%function, "reconciled"),
                Err(error) => tracing::warn!(error = %ErrorChain(&error), "reconcile failed"),
            }
        })
        .await;
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// Reconciles one Function and records the outcome in the metrics.
pub async fn reconcile(function: Arc<Function>, ctx: Arc<Context>) -> Result<Action> {
    let first_in_process = !ctx
        .children()
        .contains_key(&ObjectRef::from_obj(&*function));
    let _turn = ctx.backlog.admit(&function, first_in_process).await;
    let started = Instant::now();
    let span = tracing::info_span!("reconcile", function = %ObjectRef::from_obj(&*function));
    let outcome = reconcile_function(&function, &ctx).instrument(span).await;
    let result = match &outcome {
        Ok(Outcome::Applied) => "ok",
        Ok(Outcome::InvalidSpec) => "invalid_spec",
        Ok(Outcome::NotOwned) => "not_owned",
        Ok(Outcome::HostConflict) => "host_conflict",
        Ok(Outcome::NatsNotConfigured) => "nats_not_configured",
        Err(error) => {
            ctx.metrics
                .reconcile_errors
                .with_label_values(&[error.metric_label()])
                .inc();
            "error"
        }
    };
    ctx.metrics.reconciles.with_label_values(&[result]).inc();
    ctx.metrics
        .reconcile_duration
        .with_label_values(&[result])
        .observe(started.elapsed().as_secs_f64());
    let outcome = outcome?;
    ctx.failures().remove(&ObjectRef::from_obj(&*function));
    Ok(match outcome {
        Outcome::Applied => Action::requeue(RESYNC),
        // Nothing will change until the spec does.
        Outcome::InvalidSpec => Action::await_change(),
        // An operator given NATS later restarts, and reconciles every Function again.
        Outcome::NatsNotConfigured => Action::await_change(),
        Outcome::NotOwned => Action::requeue(NOT_OWNED_RETRY),
        // The Function keeping the host may drop it without any event naming this one.
        Outcome::HostConflict => Action::requeue(HOST_CONFLICT_RETRY),
    })
}

/// Transient failures (the API server busy, a conflict, the network) are retried with a
/// doubling delay; permanent ones (forbidden, a missing namespace) wait the longest delay,
/// since retrying sooner cannot help.
pub fn error_policy(function: Arc<Function>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = ObjectRef::from_obj(&*function);
    let delay = if error.is_transient() {
        let mut failures = ctx.failures();
        let count = failures.entry(key).or_insert(0);
        *count = count.saturating_add(1);
        backoff(*count)
    } else {
        BACKOFF.1
    };
    tracing::warn!(function = %ObjectRef::from_obj(&*function), error = %ErrorChain(error), retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Delay before retry number `failures` (1-based).
fn backoff(failures: u32) -> Duration {
    let (first, longest) = BACKOFF;
    first
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1)))
        .min(longest)
}

enum Outcome {
    Applied,
    InvalidSpec,
    NotOwned,
    /// Applied, but a claim on a host is ignored.
    HostConflict,
    /// Queue triggers, and no NATS server: nothing built.
    NatsNotConfigured,
}

/// The `Ready=False` message of a Function with queue triggers when the operator has no
/// NATS server.
pub const NATS_NOT_CONFIGURED: &str = "spec.triggers.queues needs NATS JetStream and the \
    operator has none: install the chart with nats.enabled=true (or nats.url=nats://HOST:4222), \
    or start the operator with --nats-url";

async fn reconcile_function(function: &Function, ctx: &Context) -> Result<Outcome> {
    let namespace = function.namespace().ok_or(Error::MissingNamespace)?;
    let name = function.name_any();
    let client = &ctx.client;
    let now = || Time(jiff::Timestamp::now());

    // Build every desired object before touching any, so an invalid spec changes nothing.
    let desired = function.spec.validate().and_then(|durations| {
        let policy =
            ScalingPolicy::from_spec(&function.spec.scaling, &durations, &ctx.config.scaling);
        Ok((resources::deployment(function)?, policy))
    });
    let (deployment, policy) = match desired {
        Ok(desired) => desired,
        Err(invalid) => {
            report_refused(function, ctx, Reason::InvalidSpec, invalid.to_string()).await?;
            return Ok(Outcome::InvalidSpec);
        }
    };
    if !function.spec.triggers.queues.is_empty() && !ctx.nats {
        let message = NATS_NOT_CONFIGURED.to_owned();
        report_refused(function, ctx, Reason::NatsNotConfigured, message).await?;
        return Ok(Outcome::NatsNotConfigured);
    }
    let service = resources::service(function, &ctx.config);
    let pods_service = resources::pods_service(function);
    let hpa = resources::hpa(function, &ctx.config);

    // Objects of the children's names that zeroscale does not manage are never taken
    // over: the Deployment is read on every reconcile, the others once per process.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &namespace);
    let hpa_name = zeroscale_api::names::hpa(&name);
    let existing = get_opt(&deployments, &name).await?;
    let function_ref = ObjectRef::from_obj(function);
    let known = ctx.children().get(&function_ref).copied();
    let (in_the_way, hpa_exists) = match (&existing, known) {
        (Some(found), _) if !managed_for(found.meta(), &name) => {
            (Some(format!("Deployment {name}")), false)
        }
        (_, Some(children)) => (None, children.hpa),
        (_, None) => {
            let pods_service_name = pods_service.name_any();
            let names = (name.as_str(), pods_service_name.as_str(), hpa_name.as_str());
            check_names(&services, &hpas, names, hpa.is_some()).await?
        }
    };
    if let Some(object) = in_the_way {
        let message = format!(
            "{object} already exists and is not managed by this Function: \
             delete or rename it, or rename the Function"
        );
        report_refused(function, ctx, Reason::NotOwned, message).await?;
        return Ok(Outcome::NotOwned);
    }

    // The Deployment goes first: it is the one object the API server may still reject
    // for the user's input (a volume, a resource quantity), and then nothing else is built.
    // Replicas are handed to the autoscaler once: the operator creates the Deployment
    // with its initial scale, then the autoscaler's field manager applies replicas alone,
    // so it owns that one field and nothing else. Later applies leave replicas out.
    let handover = replicas::to_hand_over(existing.as_ref(), function);
    let mut desired_deployment = deployment;
    if let (Some(replicas), Some(spec)) = (handover, desired_deployment.spec.as_mut()) {
        spec.replicas = Some(replicas);
    }
    let mut deployment = match apply(&deployments, &desired_deployment, FIELD_MANAGER).await {
        Err(error) if error.is_invalid() => {
            report_refused(function, ctx, Reason::InvalidSpec, error.api_message()).await?;
            return Ok(Outcome::InvalidSpec);
        }
        other => other?,
    };
    if let Some(replicas) = handover {
        deployment = ctx.replicas.hand_over(function, replicas).await?;
    }
    // An activator holds requests for this Function: wake it now, not at the next tick.
    if let Some(woken) = ctx.replicas.wake(function, &policy, &deployment).await? {
        deployment = woken;
    }

    apply(&services, &service, FIELD_MANAGER).await?;
    apply(&services, &pods_service, FIELD_MANAGER).await?;

    match &hpa {
        Some(hpa) => {
            apply(&hpas, hpa, FIELD_MANAGER).await?;
        }
        None if hpa_exists => delete_if_present(&hpas, &hpa_name).await?,
        None => {}
    }
    let route = match &ctx.config.gateway {
        Some(gateway) => apply_route(function, &namespace, gateway, ctx).await?,
        None => Route::None,
    };
    let had_api_keys = known.is_some_and(|children| children.api_keys);
    let api_keys = crate::api_keys::sync(
        client,
        function,
        &namespace,
        ctx.config.activator_namespace(),
        had_api_keys,
    )
    .await?;

    // Recorded only once every child is as wanted: a failure above checks again.
    ctx.children().insert(
        function_ref,
        Children {
            hpa: hpa.is_some(),
            api_keys,
        },
    );

    // Pods are read only while some are not ready: that is when they can say why.
    let desired_replicas = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(0);
    let ready = deployment
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let pods = if ready < desired_replicas {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        let selector = format!("{}={}", keys::FUNCTION_LABEL, name);
        pods.list(&ListParams::default().labels(&selector))
            .await
            .map_err(|source| Error::ListPods {
                name: name.clone(),
                source,
            })?
            .items
    } else {
        Vec::new()
    };

    let mut status = status::observe(function, &deployment, &pods, &ctx.config, now());
    let conflicts = ctx.host_conflicts(function);
    status::record_host_claims(&mut status, function, &conflicts, now());
    if let Some(gateway) = &ctx.config.gateway {
        gateway::record_route(&mut status, function, &route, gateway, now());
    }
    write_status(function, ctx, status).await?;
    Ok(if conflicts.is_empty() {
        Outcome::Applied
    } else {
        Outcome::HostConflict
    })
}

/// Applies the HTTPRoute `function` needs, or deletes the one it no longer needs (it
/// became cluster-local or lost its hosts). A route of that name zeroscale does not
/// manage is left alone.
async fn apply_route(
    function: &Function,
    namespace: &str,
    gateway: &GatewayConfig,
    ctx: &Context,
) -> Result<Route> {
    let routes: Api<HTTPRoute> = Api::namespaced(ctx.client.clone(), namespace);
    let name = function.name_any();
    let existing = get_opt(&routes, &name).await?;
    if existing
        .as_ref()
        .is_some_and(|found| !managed_for(found.meta(), &name))
    {
        return Ok(Route::NotOwned);
    }
    match gateway::http_route(function, &ctx.config, gateway) {
        Some(route) => Ok(Route::Applied(Box::new(
            apply(&routes, &route, FIELD_MANAGER).await?,
        ))),
        None => {
            if existing.is_some() {
                delete_if_present(&routes, &name).await?;
            }
            Ok(Route::None)
        }
    }
}

/// Server-side applies `object` under `manager`, taking ownership of conflicting fields.
pub(crate) async fn apply<K>(api: &Api<K>, object: &K, manager: &str) -> Result<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let name = object.name_any();
    api.patch(
        &name,
        &PatchParams::apply(manager).force(),
        &Patch::Apply(object),
    )
    .await
    .map_err(|source| Error::Apply {
        kind: K::kind(&()).into_owned(),
        name,
        source,
    })
}

/// The object `name`, or None when there is none.
pub(crate) async fn get_opt<K>(api: &Api<K>, name: &str) -> Result<Option<K>>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name).await.map_err(|source| Error::Get {
        kind: K::kind(&()).into_owned(),
        name: name.to_owned(),
        source,
    })
}

/// A Function's first reconcile in this process: the first of its Services and HPA
/// (`names`: the Function's, its pods Service's, its HPA's) taken by an object zeroscale
/// does not manage, and whether an HPA of the Function's exists. Someone else's HPA of
/// that name is in the way only when the Function needs one.
async fn check_names(
    services: &Api<Service>,
    hpas: &Api<HorizontalPodAutoscaler>,
    (function, pods_service, hpa_name): (&str, &str, &str),
    hpa_needed: bool,
) -> Result<(Option<String>, bool)> {
    for service_name in [function, pods_service] {
        if let Some(found) = get_opt(services, service_name).await?
            && !managed_for(found.meta(), function)
        {
            return Ok((Some(format!("Service {service_name}")), false));
        }
    }
    Ok(match get_opt(hpas, hpa_name).await? {
        Some(found) if managed_for(found.meta(), function) => (None, true),
        Some(_) if hpa_needed => (Some(format!("HorizontalPodAutoscaler {hpa_name}")), false),
        _ => (None, false),
    })
}

/// True when zeroscale made the object for Function `function`: its controller is a
/// Function of that name (of any uid, so a Function deleted and made again at once
/// adopts what garbage collection has not removed yet).
fn managed_for(meta: &ObjectMeta, function: &str) -> bool {
    meta.owner_references.iter().flatten().any(|owner| {
        owner.controller == Some(true)
            && owner.kind == "Function"
            && owner.api_version.starts_with("zeroscale.dev/")
            && owner.name == function
    })
}

pub(crate) async fn delete_if_present<K>(api: &Api<K>, name: &str) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(source) => Err(Error::Delete {
            kind: K::kind(&()).into_owned(),
            name: name.to_owned(),
            source,
        }),
    }
}

async fn report_refused(
    function: &Function,
    ctx: &Context,
    reason: Reason,
    message: String,
) -> Result<()> {
    let status = status::refused(function, reason, message, Time(jiff::Timestamp::now()));
    write_status(function, ctx, status).await
}

/// Applies the status and publishes an Event when the Ready or HostsClaimed reason changed.
async fn write_status(function: &Function, ctx: &Context, status: FunctionStatus) -> Result<()> {
    let previous = |type_: &str| {
        function
            .status
            .as_ref()
            .and_then(|s| s.condition(type_))
            .map(|c| c.reason.clone())
    };
    let (previous_ready, previous_claims) = (previous(READY), previous(HOSTS_CLAIMED));
    replicas::apply_status(&ctx.client, function, FIELD_MANAGER, &status).await?;

    if let Some(ready) = status.ready_condition()
        && previous_ready.as_deref() != Some(ready.reason.as_str())
    {
        publish_transition(function, ctx, ready).await;
    }
    // A conflict is news, and so is its end; hosts claimed from the start are not.
    if let Some(claims) = status.condition(HOSTS_CLAIMED)
        && previous_claims.as_deref() != Some(claims.reason.as_str())
        && (claims.status == "False" || previous_claims.is_some())
    {
        publish_transition(function, ctx, claims).await;
    }
    Ok(())
}

/// Largest Event note events.k8s.io/v1 accepts, in bytes.
const EVENT_NOTE_LIMIT: usize = 1024;

/// The longest prefix of `text` within `limit` bytes that ends on a character boundary.
fn truncate_bytes(text: &str, limit: usize) -> &str {
    let mut end = text.len().min(limit);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Publishes a condition's transition as an Event, a Warning when it turned `False`
/// (the Function cannot serve, or a host claim is ignored) or the Function waits for a
/// node; a failure to publish is logged, not fatal.
async fn publish_transition(function: &Function, ctx: &Context, condition: &Condition) {
    let warning = condition.status == "False" || condition.reason == Reason::Unschedulable.as_str();
    let event = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: condition.reason.clone(),
        note: Some(truncate_bytes(&condition.message, EVENT_NOTE_LIMIT).to_owned()),
        action: "Reconcile".into(),
        secondary: None,
    };
    replicas::publish(&ctx.recorder, function, &event, "event").await;
}

#[cfg(test)]
mod tests {
    use super::*;

    use zeroscale_api::routing::{ConflictReason, FunctionKey};

    #[test]
    fn event_notes_are_cut_on_a_character_boundary_within_the_byte_limit() {
        let message = "é".repeat(600);
        let cut = truncate_bytes(&message, EVENT_NOTE_LIMIT);
        assert_eq!(cut.len(), 1024);
        assert_eq!(truncate_bytes("short", EVENT_NOTE_LIMIT), "short");
        assert_eq!(truncate_bytes("aé", 2), "a");
    }

    /// A Function `namespace/name` claiming `hosts`.
    fn claiming(namespace: &str, name: &str, hosts: &[&str]) -> Function {
        let mut function = Function::new(
            name,
            zeroscale_api::FunctionSpec::with_image("example.com/a:1"),
        );
        function.metadata.namespace = Some(namespace.into());
        function.spec.routing.hosts = hosts.iter().map(|h| (*h).to_owned()).collect();
        function
    }

    /// A context whose client is never called, watching `functions` in two stores, as
    /// two controllers of two watched namespaces would.
    fn watching(functions: &[Function]) -> Context {
        let (service, _server) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        let registry = prometheus::Registry::new();
        let ctx = Context::new(
            Client::new(service, "default"),
            Config::test(),
            Metrics::register(&registry).expect("metrics register"),
            Reporter::from("zeroscale-operator"),
        );
        for half in functions.chunks(functions.len().div_ceil(2).max(1)) {
            let (store, mut writer) = kube::runtime::reflector::store();
            for function in half {
                writer.apply_watcher_event(&watcher::Event::Apply(function.clone()));
            }
            ctx.watched.add(store);
        }
        ctx
    }

    #[tokio::test]
    async fn host_claims_are_decided_over_every_watched_namespace_by_the_routing_rules() {
        let ctx = watching(&[
            claiming("a", "api", &["api.example.com"]),
            claiming("b", "web", &[]),
            claiming("c", "squatter", &["web.b.svc.cluster.local"]),
        ]);
        // `b/api` loses to `a/api`, a lower key in another namespace's store.
        let conflicts = ctx.host_conflicts(&claiming("b", "api", &["API.example.com."]));
        assert_eq!(conflicts.len(), 1, "{conflicts:?}");
        assert_eq!(conflicts[0].host, "api.example.com");
        assert_eq!(
            conflicts[0].reason,
            ConflictReason::SameHostAndPrefix {
                kept: FunctionKey::new("a", "api")
            }
        );
        // The winner, as given, has none; nor has a Function without own hosts.
        assert!(
            ctx.host_conflicts(&claiming("a", "api", &["api.example.com"]))
                .is_empty()
        );
        assert!(ctx.host_conflicts(&claiming("b", "web", &[])).is_empty());
        // An address of another Function is never taken.
        let squatter = ctx.host_conflicts(&claiming("c", "squatter", &["web.b.svc.cluster.local"]));
        assert_eq!(
            squatter.iter().map(|c| &c.reason).collect::<Vec<_>>(),
            [&ConflictReason::DerivedHostOf {
                owner: FunctionKey::new("b", "web")
            }]
        );
        // The Function as given replaces its stored copy: a claim given up is no conflict.
        assert!(
            ctx.host_conflicts(&claiming("c", "squatter", &["free.example.com"]))
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_change_to_a_function_reaches_the_functions_whose_claims_it_can_decide() {
        let ctx = watching(&[
            claiming("a", "api", &["api.example.com"]),
            claiming("b", "api", &["API.Example.com."]),
            claiming("c", "squatter", &["web.b.svc", "other.example.com"]),
            claiming("d", "bare", &["web"]),
            claiming("e", "unrelated", &["web.example.org", "web.bb"]),
            claiming("f", "web", &[]),
        ]);
        let near = |function: &Function| {
            let mut refs: Vec<String> = ctx
                .claims_near(function)
                .iter()
                .map(ToString::to_string)
                .collect();
            refs.sort();
            refs
        };
        // A shared own host, whatever its case or trailing dot; never the Function itself.
        let api = claiming("a", "api", &["api.example.com"]);
        assert_eq!(near(&api), ["Function.v1alpha1.zeroscale.dev/api.b"]);
        // A new `b/web` decides claims on its bare name and on names derived from it.
        assert_eq!(
            near(&claiming("b", "web", &[])),
            [
                "Function.v1alpha1.zeroscale.dev/bare.d",
                "Function.v1alpha1.zeroscale.dev/squatter.c"
            ]
        );
        assert!(near(&claiming("g", "nobody", &["nothing.example.com"])).is_empty());
    }

    #[test]
    fn backoff_doubles_up_to_the_longest_delay() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(20), Duration::from_secs(300));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(300));
    }
}
