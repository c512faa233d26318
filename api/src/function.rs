//! The `Function` custom resource (`zeroscale.dev/v1alpha1`): one HTTP function that
//! zeroscale runs, routes to and scales, down to zero when idle.
//!
//! Doc comments on fields become the CRD's descriptions, so they are written for the
//! person reading `kubectl explain function.spec`.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    EnvFromSource, EnvVar, LocalObjectReference, PodSecurityContext, ResourceRequirements,
    SecurityContext, Toleration, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use kube::CustomResourceExt;

use crate::auth::AuthSpec;
use crate::calls::{AsyncSpec, QueueTrigger};
use crate::gateway::{Cors, RateLimit};
use crate::{duration, names};

/// A function zeroscale runs: a container serving HTTP, scaled by request load and to
/// zero when idle, reachable at `http://<name>.<namespace>`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "zeroscale.dev",
    version = "v1alpha1",
    kind = "Function",
    plural = "functions",
    shortname = "fn",
    category = "zeroscale",
    namespaced,
    status = "FunctionStatus",
    derive = "PartialEq",
    doc = "A function zeroscale runs: a container serving HTTP, scaled by request load and to zero when idle.",
    validation = Rule::new("!self.metadata.name.endsWith('-pods')").message("metadata.name must not end in -pods: zeroscale names each Function's pods Service <name>-pods"),
    printcolumn(name = "URL", type_ = "string", json_path = ".status.url"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Desired", type_ = "integer", json_path = ".status.desiredReplicas", priority = 1),
    printcolumn(name = "Last Scale", type_ = "string", json_path = ".status.lastScaleReason", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct FunctionSpec {
    /// Container image that serves the function over HTTP.
    #[schemars(length(min = 1))]
    pub image: String,

    /// Entrypoint of the container; the image's ENTRYPOINT when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,

    /// Arguments to the entrypoint; the image's CMD when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,

    /// Environment variables of the container. `PORT` is set to `port` unless given here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,

    /// Sources (ConfigMaps, Secrets) of environment variables of the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_from: Vec<EnvFromSource>,

    /// CPU and memory requests and limits of the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Port the container listens on for HTTP.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// Protocol the container speaks on `port`: `http1`, or `h2c` (HTTP/2 without TLS).
    #[serde(default)]
    pub protocol: Protocol,

    /// HTTP path that answers 2xx once the container can take requests. When unset,
    /// readiness is a TCP connect to `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/"), length(max = 1024))]
    pub readiness_path: Option<String>,

    /// Security options of the container (runAsNonRoot, capabilities, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<SecurityContext>,

    /// Security options of the pod (fsGroup, seccompProfile, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_security_context: Option<PodSecurityContext>,

    /// ServiceAccount the pods run as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,

    /// Secrets used to pull the image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,

    /// Volumes of the pod, as in a Pod spec. Checked by the API server when the operator
    /// creates the Deployment; a volume it rejects makes the Function `Ready=False`
    /// with reason `InvalidSpec`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "free_form_objects")]
    pub volumes: Vec<serde_json::Value>,

    /// Where volumes are mounted in the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,

    /// Node labels the pods must run on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// Seconds a pod has to finish in-flight requests after SIGTERM before it is killed.
    #[serde(default = "default_termination_grace_period_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub termination_grace_period_seconds: i64,

    /// How the Function scales with load, and to zero.
    #[serde(default)]
    pub scaling: ScalingSpec,

    /// Limits on requests: timeouts, body size, and how many may wait while the
    /// Function starts from zero.
    #[serde(default)]
    pub requests: RequestsSpec,

    /// Extra hosts and path prefix the Function answers on, and who can reach it.
    #[serde(default)]
    pub routing: RoutingSpec,

    /// What invokes the Function besides HTTP callers.
    #[serde(default, skip_serializing_if = "TriggersSpec::is_empty")]
    pub triggers: TriggersSpec,

    /// Calls sent with `Prefer: respond-async`: stored in NATS JetStream, answered 202,
    /// then delivered with retries.
    #[serde(
        default,
        rename = "async",
        skip_serializing_if = "AsyncSpec::is_default"
    )]
    pub async_calls: AsyncSpec,
    /// Who may call the Function: API keys or JSON Web Tokens, checked by the activator
    /// before the Function is woken. Anyone who can reach the Function when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
}

/// The protocol a Function's container speaks.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1.
    #[default]
    Http1,
    /// HTTP/2 over cleartext.
    H2c,
}

/// How a Function scales.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(test, x_kube(cel))]
#[x_kube(
    validation = Rule::new("self.minReplicas <= self.maxReplicas").message("scaling.minReplicas must not exceed scaling.maxReplicas"),
    validation = Rule::new("!has(self.initialReplicas) || (self.initialReplicas >= self.minReplicas && self.initialReplicas <= self.maxReplicas)").message("scaling.initialReplicas must lie between minReplicas and maxReplicas")
)]
pub struct ScalingSpec {
    /// Fewest pods; 0 lets the Function scale to zero when idle.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub min_replicas: i32,

    /// Most pods.
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,

    /// Pods started when the Function is created (default 1, or minReplicas if larger).
    /// 0 creates it at zero: the first request wakes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub initial_replicas: Option<i32>,

    /// What load is measured: in-flight requests per pod (`concurrency`), requests per
    /// second per pod (`rps`), or CPU utilisation through a HorizontalPodAutoscaler (`cpu`).
    #[serde(default)]
    pub metric: Metric,

    /// Load per pod the autoscaler aims for: in-flight requests (concurrency), requests
    /// per second (rps) or percent CPU utilisation (cpu). When unset: 70% of
    /// containerConcurrency when that is set, else the operator's default for the
    /// metric (100, 200 and 80 unless configured otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub target: Option<i32>,

    /// Hard limit of requests in flight per pod; more wait in the activator. 0 = no limit.
    #[serde(default)]
    #[schemars(range(min = 0, max = 10000))]
    pub container_concurrency: i32,

    /// How long a Function must see no requests before it scales to zero. Unset: the
    /// operator's default (30s unless configured otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = duration::PATTERN))]
    pub scale_to_zero_grace_period: Option<String>,

    /// How long load must stay lower before the pod count goes down. Unset: the
    /// operator's default (0s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = duration::PATTERN))]
    pub scale_down_delay: Option<String>,

    /// Window over which load is averaged for normal scaling decisions (6s to 1h).
    /// Unset: the operator's default (60s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = duration::PATTERN))]
    pub stable_window: Option<String>,

    /// Length of the short window that detects bursts, in percent of stableWindow.
    /// Unset: the operator's default (10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub panic_window_percentage: Option<i32>,

    /// Load over the short window, in percent of what the current pods can take at
    /// target, above which the autoscaler scales up at once and holds (panic mode).
    /// Unset: the operator's default (200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 110, max = 1000))]
    pub panic_threshold_percentage: Option<i32>,

    /// Largest factor by which the pod count may grow in one decision. Unset: the
    /// operator's default (1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1.0, max = 10000.0))]
    pub max_scale_up_rate: Option<f64>,

    /// Largest factor by which the pod count may shrink in one decision. Unset: the
    /// operator's default (2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1.0, max = 10000.0))]
    pub max_scale_down_rate: Option<f64>,
}

/// The load measure that drives scaling.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Requests in flight per pod.
    #[default]
    Concurrency,
    /// Requests per second per pod.
    Rps,
    /// CPU utilisation, through a HorizontalPodAutoscaler.
    Cpu,
}

/// Limits on requests to a Function.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RequestsSpec {
    /// Longest a request may take from its arrival at the activator until its response
    /// starts (status and headers), waiting for a pod included. A response body that
    /// streams after that is not cut off.
    #[serde(default = "default_request_timeout")]
    #[schemars(regex(pattern = duration::PATTERN))]
    pub timeout: String,

    /// Most requests held while no pod can take them; more are refused with 503. With 0
    /// nothing is held: a request to the Function at zero wakes it and is refused with
    /// 503 and `Retry-After`.
    #[serde(default = "default_max_queued_requests")]
    #[schemars(range(min = 0, max = 1000000))]
    pub max_queued_requests: i32,

    /// Longest a request waits for a pod (while the Function starts from zero or all
    /// pods are at containerConcurrency) before it fails with 504.
    #[serde(default = "default_max_queue_wait")]
    #[schemars(regex(pattern = duration::PATTERN))]
    pub max_queue_wait: String,

    /// Largest request body in bytes; larger ones are refused with 413. No limit when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_body_bytes: Option<i64>,

    /// Requests per second the Function takes, in all and per caller; more are refused
    /// with 429 before they reach (or wake) the Function. No limit when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// `spec.requests.timeout` when the spec leaves it out (written `5m` in the CRD).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// `spec.requests.maxQueueWait` when the spec leaves it out (written `60s` in the CRD).
pub const DEFAULT_MAX_QUEUE_WAIT: Duration = Duration::from_secs(60);

impl RequestsSpec {
    /// `timeout` as requests get it: parsed, or [`DEFAULT_REQUEST_TIMEOUT`] while it is
    /// invalid (validation reports that; meanwhile requests stay bounded).
    pub fn effective_timeout(&self) -> Duration {
        self.parsed_timeout().unwrap_or(DEFAULT_REQUEST_TIMEOUT)
    }

    /// `maxQueueWait` as requests get it: parsed, or [`DEFAULT_MAX_QUEUE_WAIT`] while it
    /// is invalid.
    pub fn effective_max_queue_wait(&self) -> Duration {
        self.parsed_max_queue_wait()
            .unwrap_or(DEFAULT_MAX_QUEUE_WAIT)
    }

    /// `maxBodyBytes` as a byte count; None (no limit) when unset.
    pub fn body_limit(&self) -> Option<u64> {
        self.max_body_bytes
            .and_then(|bytes| u64::try_from(bytes).ok())
    }
}

/// Where a Function is reachable.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RoutingSpec {
    /// Extra hosts (besides `<name>.<namespace>` and its DNS forms) routed to the Function.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        inner(
            regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"),
            length(max = 253)
        )
    )]
    pub hosts: Vec<String>,

    /// Only requests whose path starts with this prefix are routed to the Function
    /// (longest prefix wins when several Functions share a host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/"), length(max = 1024))]
    pub path_prefix: Option<String>,

    /// `public`: reachable inside the cluster and through the public domain;
    /// `cluster-local`: only inside the cluster.
    #[serde(default)]
    pub visibility: Visibility,

    /// Cross-origin (CORS) access from browsers, answered by the activator. Off when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<Cors>,
}

/// Who can reach a Function.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Visibility {
    /// Inside the cluster and through the public domain.
    #[default]
    Public,
    /// Inside the cluster only.
    ClusterLocal,
}

/// What invokes a Function besides HTTP callers.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TriggersSpec {
    /// Cron schedules that send a request to the Function (waking it when at zero).
    /// Names are unique: the list is keyed by `name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schedules_schema")]
    pub schedules: Vec<Schedule>,

    /// JetStream streams whose messages are delivered to the Function. Names are unique:
    /// the list is keyed by `name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::calls::queues_schema")]
    pub queues: Vec<QueueTrigger>,
}

impl TriggersSpec {
    fn is_empty(&self) -> bool {
        self.schedules.is_empty() && self.queues.is_empty()
    }
}

/// A cron schedule that sends one request to the Function at each tick, through the
/// activator, with CloudEvents headers (`ce-id`, `ce-time` = the scheduled time, ...).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Schedule {
    /// Name of the schedule, unique within the Function.
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"), length(max = 63))]
    pub name: String,

    /// Standard 5-field cron expression (`minute hour day-of-month month day-of-week`),
    /// e.g. `*/5 * * * *`, or a macro such as `@hourly`, `@daily`, `@weekly`.
    #[schemars(length(min = 1, max = 256))]
    pub cron: String,

    /// IANA time zone the expression is read in, e.g. `Europe/Paris`. UTC when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub time_zone: Option<String>,

    /// HTTP method of the request.
    #[serde(default = "default_schedule_method")]
    #[schemars(regex(pattern = r"^[A-Z]+$"), length(max = 16))]
    pub method: String,

    /// Path of the request (under `routing.pathPrefix` when the Function has one).
    #[serde(default = "default_schedule_path")]
    #[schemars(regex(pattern = r"^/"), length(max = 1024))]
    pub path: String,

    /// Body of the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub body: Option<String>,

    /// Headers of the request.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,

    /// When true, ticks are not sent; ticks that pass while suspended are skipped, not
    /// sent later.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,

    /// How late a tick may still be sent (e.g. after an operator outage), counted from
    /// its scheduled time; failed calls are retried within it too. Past it the tick is
    /// recorded as missed. Unset: until the next tick is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = duration::PATTERN))]
    pub starting_deadline: Option<String>,

    /// `Allow`: a tick is sent even while the previous call is still running.
    /// `Forbid`: a tick that comes while the previous call runs is skipped.
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
}

impl Schedule {
    /// A schedule with every default, as the API server would store it.
    pub fn new(name: impl Into<String>, cron: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            cron: cron.into(),
            time_zone: None,
            method: default_schedule_method(),
            path: default_schedule_path(),
            body: None,
            headers: BTreeMap::new(),
            suspend: false,
            starting_deadline: None,
            concurrency_policy: ConcurrencyPolicy::default(),
        }
    }
}

/// Whether a schedule's calls may overlap.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConcurrencyPolicy {
    /// Send every tick, even while the previous call runs.
    #[default]
    Allow,
    /// Skip a tick while the previous call of the same schedule runs.
    Forbid,
}

/// What the scheduler recorded of one schedule. The leading operator replica writes it
/// before and after each call, with a resourceVersion precondition, so that two replicas
/// never both send a tick.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleStatus {
    /// Name of the schedule.
    pub name: String,

    /// The latest tick handled: sent, missed or skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,

    /// When a request of this schedule was last sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fired_time: Option<Time>,

    /// The next tick due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,

    /// How the last finished tick went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_result: Option<TickResult>,

    /// Ticks in a row whose call failed after its retries.
    #[serde(default)]
    pub consecutive_failures: i32,

    /// Ticks not sent because they were found past their startingDeadline.
    #[serde(default)]
    pub missed_ticks: i64,

    /// Ticks not sent because the schedule was suspended or, with concurrencyPolicy
    /// Forbid, the previous call was still running.
    #[serde(default)]
    pub skipped_ticks: i64,

    /// Ticks recorded as started whose call has not been recorded as done. A replica
    /// that finds one whose claim expired sends it again, with the same `ce-id`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active: Vec<ActiveTick>,
}

/// A tick recorded as started and not yet done.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ActiveTick {
    /// The tick's scheduled time (`ce-time`).
    pub schedule_time: Time,
    /// The operator replica sending it.
    pub started_by: String,
    /// When it was recorded as started (by its latest sender).
    pub started_time: Time,
    /// Until when `startedBy` may still be sending it; another replica sends it again only
    /// after that.
    pub claim_expires: Time,
    /// How many times it was claimed for sending; above 1 it was sent again after a
    /// replica stopped mid-call.
    pub deliveries: i32,
}

/// The outcome of one tick's call.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TickResult {
    /// The tick's scheduled time.
    pub schedule_time: Time,
    /// HTTP status of the last attempt, when one answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<i32>,
    /// Why the last attempt failed, when it did not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether the call succeeded (a 2xx, 3xx or a 4xx other than 429).
    pub succeeded: bool,
    /// Attempts made, retries included.
    pub attempts: i32,
    /// Milliseconds from the first attempt to the end of the last.
    pub duration_millis: i64,
    /// Milliseconds between the scheduled time and the first attempt.
    pub lateness_millis: i64,
    /// Whether the tick was sent late (more than 10 seconds after its scheduled time),
    /// e.g. by a replica that took over from a stopped leader.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub late: bool,
}

/// What zeroscale observed of a Function.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FunctionStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready` says whether the Function can serve: True (pods ready, or scaled to zero
    /// and able to wake), Unknown (deploying or waking), False (cannot start; reason
    /// and message say why).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,

    /// Pods of the Function's Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,

    /// Pods ready to take requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,

    /// Pods the autoscaler wants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,

    /// Where callers reach the Function: the public URL when a public domain is set and
    /// the Function is public, otherwise its in-cluster URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,

    /// In-cluster DNS name of the Function.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,

    /// When the autoscaler last changed the pod count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,

    /// Why the autoscaler last changed the pod count: the rule and the change, e.g.
    /// `ScaleToZero: 1 -> 0` or `Panic: 2 -> 6`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_reason: Option<String>,

    /// What the scheduler recorded of each schedule trigger.
    // Never serialized with the rest of the status: the scheduler writes it on its own,
    // with a resourceVersion precondition, so a status write built from a cached copy of
    // the Function (the reconciler's, the autoscaler's) cannot bring back a stale record.
    #[serde(default, skip_serializing)]
    pub schedules: Vec<ScheduleStatus>,
}

/// The Function CRD as installed: the derived schema plus limits on `metadata.name`, which
/// names the Function's Services and so must be a DNS-1035 label short enough for the
/// `-pods` suffix. (Declaring them in the schema also bounds the cost of CEL rules that
/// read the name.)
pub fn crd() -> CustomResourceDefinition {
    let mut crd = Function::crd();
    for version in &mut crd.spec.versions {
        let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|validation| validation.open_api_v3_schema.as_mut())
        else {
            continue;
        };
        let properties = schema.properties.get_or_insert_with(Default::default);
        let metadata = properties.entry("metadata".to_owned()).or_default();
        metadata.type_ = Some("object".to_owned());
        metadata
            .properties
            .get_or_insert_with(Default::default)
            .insert(
                "name".to_owned(),
                JSONSchemaProps {
                    type_: Some("string".to_owned()),
                    max_length: Some(names::MAX_FUNCTION_NAME_LEN as i64),
                    pattern: Some("^[a-z]([-a-z0-9]*[a-z0-9])?$".to_owned()),
                    ..Default::default()
                },
            );
    }
    crd
}

/// Conditions as a list keyed by `type`, so server-side apply merges them by type.
fn conditions_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<Vec<Condition>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema
}

/// Schedules as a list keyed by `name`, so the API server refuses two with one name.
fn schedules_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<Vec<Schedule>>();
    schema.insert("maxItems".into(), 32.into());
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["name"]),
    );
    schema
}

/// A list of objects the schema does not describe (validated by the API server later).
fn free_form_objects(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
    })
}

fn default_port() -> i32 {
    8080
}
fn default_termination_grace_period_seconds() -> i64 {
    30
}
fn default_max_replicas() -> i32 {
    10
}
/// [`DEFAULT_REQUEST_TIMEOUT`] as written in a spec.
fn default_request_timeout() -> String {
    "5m".into()
}
fn default_max_queued_requests() -> i32 {
    1000
}
/// [`DEFAULT_MAX_QUEUE_WAIT`] as written in a spec.
fn default_max_queue_wait() -> String {
    "60s".into()
}
fn default_schedule_method() -> String {
    "POST".into()
}
fn default_schedule_path() -> String {
    "/".into()
}

impl Default for ScalingSpec {
    fn default() -> Self {
        Self {
            min_replicas: 0,
            max_replicas: default_max_replicas(),
            initial_replicas: None,
            metric: Metric::default(),
            target: None,
            container_concurrency: 0,
            scale_to_zero_grace_period: None,
            scale_down_delay: None,
            stable_window: None,
            panic_window_percentage: None,
            panic_threshold_percentage: None,
            max_scale_up_rate: None,
            max_scale_down_rate: None,
        }
    }
}

impl Default for RequestsSpec {
    fn default() -> Self {
        Self {
            timeout: default_request_timeout(),
            max_queued_requests: default_max_queued_requests(),
            max_queue_wait: default_max_queue_wait(),
            max_body_bytes: None,
            rate_limit: None,
        }
    }
}

impl ScalingSpec {
    /// Pods a new Function starts with: `initialReplicas`, or 1 (never below minReplicas).
    pub fn effective_initial_replicas(&self) -> i32 {
        self.initial_replicas
            .unwrap_or_else(|| self.min_replicas.max(1))
    }

    /// Load per pod to aim for: `target`, else 70% of containerConcurrency for the
    /// concurrency metric, else the operator's default for the metric.
    pub fn effective_target(&self, defaults: &ScalingDefaults) -> i32 {
        if let Some(target) = self.target {
            return target;
        }
        match self.metric {
            Metric::Concurrency if self.container_concurrency > 0 => {
                (self.container_concurrency * 7 / 10).max(1)
            }
            Metric::Concurrency => defaults.target_concurrency,
            Metric::Rps => defaults.target_rps,
            Metric::Cpu => defaults.target_cpu,
        }
    }
}

/// The operator's defaults for the scaling knobs a Function leaves unset, so a cluster
/// administrator can tune them for every Function at once (operator flags) while each
/// Function can still override them.
#[derive(Clone, Debug, PartialEq)]
pub struct ScalingDefaults {
    pub target_concurrency: i32,
    pub target_rps: i32,
    pub target_cpu: i32,
    pub scale_to_zero_grace_period: Duration,
    pub scale_down_delay: Duration,
    pub stable_window: Duration,
    pub panic_window_percentage: i32,
    pub panic_threshold_percentage: i32,
    pub max_scale_up_rate: f64,
    pub max_scale_down_rate: f64,
}

impl Default for ScalingDefaults {
    /// Knative's defaults.
    fn default() -> Self {
        Self {
            target_concurrency: 100,
            target_rps: 200,
            target_cpu: 80,
            scale_to_zero_grace_period: Duration::from_secs(30),
            scale_down_delay: Duration::ZERO,
            stable_window: Duration::from_secs(60),
            panic_window_percentage: 10,
            panic_threshold_percentage: 200,
            max_scale_up_rate: 1000.0,
            max_scale_down_rate: 2.0,
        }
    }
}

impl FunctionSpec {
    /// A spec with every default and the given image, as the API server would store it.
    pub fn with_image(image: impl Into<String>) -> Self {
        Self {
            image: image.into(),
            command: None,
            args: None,
            env: Vec::new(),
            env_from: Vec::new(),
            resources: None,
            port: default_port(),
            protocol: Protocol::default(),
            readiness_path: None,
            security_context: None,
            pod_security_context: None,
            service_account_name: None,
            image_pull_secrets: Vec::new(),
            volumes: Vec::new(),
            volume_mounts: Vec::new(),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            termination_grace_period_seconds: default_termination_grace_period_seconds(),
            scaling: ScalingSpec::default(),
            requests: RequestsSpec::default(),
            routing: RoutingSpec::default(),
            triggers: TriggersSpec::default(),
            async_calls: AsyncSpec::default(),
            auth: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaling(value: serde_json::Value) -> serde_json::Value {
        let mut defaults = serde_json::to_value(ScalingSpec::default()).expect("serializes");
        if let (Some(defaults), Some(value)) = (defaults.as_object_mut(), value.as_object()) {
            defaults.extend(value.clone());
        }
        defaults
    }

    #[test]
    fn written_request_defaults_parse_to_the_default_durations() {
        let defaults = RequestsSpec::default();
        assert_eq!(defaults.parsed_timeout(), Ok(DEFAULT_REQUEST_TIMEOUT));
        assert_eq!(defaults.parsed_max_queue_wait(), Ok(DEFAULT_MAX_QUEUE_WAIT));
    }

    #[test]
    fn invalid_request_durations_take_effect_as_their_defaults() {
        let requests = RequestsSpec {
            timeout: "soon".into(),
            max_queue_wait: "0".into(),
            max_body_bytes: Some(-1),
            ..RequestsSpec::default()
        };
        assert_eq!(requests.effective_timeout(), DEFAULT_REQUEST_TIMEOUT);
        assert_eq!(requests.effective_max_queue_wait(), Duration::ZERO);
        assert_eq!(requests.body_limit(), None);

        let requests = RequestsSpec {
            timeout: "0".into(),
            max_queue_wait: "1m30s".into(),
            max_body_bytes: Some(1024),
            ..RequestsSpec::default()
        };
        assert_eq!(requests.effective_timeout(), DEFAULT_REQUEST_TIMEOUT);
        assert_eq!(requests.effective_max_queue_wait(), Duration::from_secs(90));
        assert_eq!(requests.body_limit(), Some(1024));
    }

    #[test]
    fn cel_rules_refuse_min_above_max_and_initial_out_of_bounds() {
        assert!(ScalingSpec::validate_cel(&scaling(serde_json::json!({})), None).is_ok());
        assert!(
            ScalingSpec::validate_cel(
                &scaling(
                    serde_json::json!({"minReplicas": 1, "maxReplicas": 3, "initialReplicas": 2})
                ),
                None
            )
            .is_ok()
        );
        assert!(
            ScalingSpec::validate_cel(
                &scaling(serde_json::json!({"minReplicas": 4, "maxReplicas": 3})),
                None
            )
            .is_err()
        );
        assert!(
            ScalingSpec::validate_cel(
                &scaling(serde_json::json!({"minReplicas": 2, "initialReplicas": 1})),
                None
            )
            .is_err()
        );
        assert!(
            ScalingSpec::validate_cel(&scaling(serde_json::json!({"initialReplicas": 11})), None)
                .is_err()
        );
    }
}
