//! The parts of a Function spec that concern durable work on NATS JetStream:
//! asynchronous calls (`spec.async`, requests sent with `Prefer: respond-async`) and
//! queue triggers (`spec.triggers.queues`), with their checks.

use std::collections::BTreeSet;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration;
use crate::function::FunctionSpec;
use crate::validate::{InvalidSpec, invalid, parse_duration, under_prefix};

/// How calls sent with `Prefer: respond-async` are stored and delivered.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AsyncSpec {
    /// Most stored calls (and queue messages) delivered to the Function at once, over
    /// all activator replicas together.
    #[serde(default = "default_max_concurrency")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_concurrency: i32,

    /// Largest body of an asynchronous call in bytes; larger ones are refused with 413.
    /// At most 960Ki: NATS refuses messages over 1Mi, headers included.
    #[serde(default = "default_max_body_bytes")]
    #[schemars(range(min = 1, max = 983040))]
    pub max_body_bytes: i64,

    /// When and how often a failed delivery is tried again.
    #[serde(default)]
    pub retry: RetrySpec,

    /// Longest a call may wait, from its acceptance, to be delivered; an older one goes
    /// to the dead-letter stream instead of being tried again (at most 24h).
    #[serde(default = "default_max_event_age")]
    #[schemars(regex(pattern = duration::PATTERN))]
    pub max_event_age: String,

    /// How long the state of a call (`GET /.zeroscale/calls/<id>`) and an
    /// `Idempotency-Key` are kept after the call's last change (at most 24h).
    #[serde(default = "default_result_retention")]
    #[schemars(regex(pattern = duration::PATTERN))]
    pub result_retention: String,
}

/// When and how often a failed delivery is tried again: after `initialDelay`, doubling
/// up to `maxDelay`, with random jitter, until `maxAttempts` deliveries were made.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RetrySpec {
    /// Most deliveries of one call, the first included; 1 never retries.
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1, max = 100))]
    pub max_attempts: i32,

    /// Wait before the second delivery.
    #[serde(default = "default_initial_delay")]
    #[schemars(regex(pattern = duration::PATTERN))]
    pub initial_delay: String,

    /// Longest wait between two deliveries.
    #[serde(default = "default_max_delay")]
    #[schemars(regex(pattern = duration::PATTERN))]
    pub max_delay: String,

    /// Outcomes tried again: `connect-failure` (no response from the Function: not
    /// reachable, not started in time, or its queue full), a status such as `429` or
    /// `503`, or a class `4xx` / `5xx`. Any other outcome is final.
    #[serde(default = "default_retry_on")]
    #[schemars(
        length(max = 32),
        inner(regex(pattern = r"^(connect-failure|[45]xx|[1-5][0-9][0-9])$"))
    )]
    pub retry_on: Vec<String>,
}

/// A JetStream stream whose messages are delivered to the Function, one POST each in
/// CloudEvents binary mode (`ce-id` = the message's stream sequence), retried like
/// asynchronous calls and acknowledged on success.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct QueueTrigger {
    /// Name of the trigger, unique within the Function.
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"), length(max = 63))]
    pub name: String,

    /// Name of the JetStream stream, which must exist.
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]+$"), length(max = 255))]
    pub stream: String,

    /// Subject filter within the stream, e.g. `orders.created` or `orders.>`. All of
    /// the stream's subjects when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[^\s]+$"), length(max = 255))]
    pub subject: Option<String>,

    /// Path the messages are POSTed to (under `routing.pathPrefix` when set).
    #[serde(default = "default_queue_path")]
    #[schemars(regex(pattern = r"^/"), length(max = 1024))]
    pub path: String,

    /// Messages waiting per replica the autoscaler aims for: a backlog of `target`
    /// messages asks for one replica, `2 * target` for two, ...
    #[serde(default = "default_queue_target")]
    #[schemars(range(min = 1, max = 100000))]
    pub target: i32,

    /// Retries of this trigger's messages; `spec.async.retry` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
}

impl QueueTrigger {
    /// A trigger with every default, as the API server would store it.
    pub fn new(name: impl Into<String>, stream: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            stream: stream.into(),
            subject: None,
            path: default_queue_path(),
            target: default_queue_target(),
            retry: None,
        }
    }
}

/// Queue triggers as a list keyed by `name`, so the API server refuses two with one name.
pub(crate) fn queues_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<Vec<QueueTrigger>>();
    schema.insert("maxItems".into(), 16.into());
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["name"]),
    );
    schema
}

fn default_max_concurrency() -> i32 {
    100
}
fn default_max_body_bytes() -> i64 {
    256 * 1024
}
fn default_max_event_age() -> String {
    "6h".into()
}
fn default_result_retention() -> String {
    "24h".into()
}
fn default_max_attempts() -> i32 {
    3
}
fn default_initial_delay() -> String {
    "1s".into()
}
fn default_max_delay() -> String {
    "5m".into()
}
fn default_retry_on() -> Vec<String> {
    vec!["connect-failure".into(), "429".into(), "5xx".into()]
}
fn default_queue_path() -> String {
    "/".into()
}
fn default_queue_target() -> i32 {
    10
}

impl AsyncSpec {
    /// Whether every setting is the default, so a written spec can leave it out.
    pub(crate) fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl Default for AsyncSpec {
    fn default() -> Self {
        Self {
            max_concurrency: default_max_concurrency(),
            max_body_bytes: default_max_body_bytes(),
            retry: RetrySpec::default(),
            max_event_age: default_max_event_age(),
            result_retention: default_result_retention(),
        }
    }
}

impl Default for RetrySpec {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            initial_delay: default_initial_delay(),
            max_delay: default_max_delay(),
            retry_on: default_retry_on(),
        }
    }
}

/// What one delivery came to, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// No response from the Function.
    ConnectFailure,
    /// The Function answered with this status.
    Status(u16),
}

/// Durations of a valid [`RetrySpec`], parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_delay: Duration,
    pub max_delay: Duration,
    retry_on: Vec<String>,
}

impl RetryPolicy {
    /// Whether `outcome` is tried again (when attempts remain).
    pub fn retries(&self, outcome: Outcome) -> bool {
        self.retry_on.iter().any(|rule| match outcome {
            Outcome::ConnectFailure => rule == "connect-failure",
            Outcome::Status(status) => {
                let text = status.to_string();
                rule == &text || (rule.ends_with("xx") && rule[..1] == text[..1])
            }
        })
    }

    /// Wait before the delivery that follows attempt `attempt` (1 = the first), without
    /// jitter: `initialDelay * 2^(attempt-1)`, at most `maxDelay`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.initial_delay
            .saturating_mul(factor)
            .min(self.max_delay)
    }
}

impl RetrySpec {
    /// The parsed policy, or the first field that is wrong; `field` is where this spec
    /// lives, e.g. `spec.async.retry`.
    pub fn policy(&self, field: &str) -> Result<RetryPolicy, InvalidSpec> {
        let max_attempts = u32::try_from(self.max_attempts)
            .ok()
            .filter(|attempts| *attempts >= 1)
            .ok_or_else(|| invalid(format!("{field}.maxAttempts"), "must be at least 1"))?;
        let initial_delay = parse_duration(&format!("{field}.initialDelay"), &self.initial_delay)?;
        let max_delay = parse_duration(&format!("{field}.maxDelay"), &self.max_delay)?;
        if max_delay < initial_delay {
            return Err(invalid(
                format!("{field}.maxDelay"),
                format!(
                    "{:?} is shorter than initialDelay {:?}",
                    self.max_delay, self.initial_delay
                ),
            ));
        }
        for (index, rule) in self.retry_on.iter().enumerate() {
            let known = rule == "connect-failure"
                || matches!(rule.as_bytes(), [b'4' | b'5', b'x', b'x'])
                || rule
                    .parse::<u16>()
                    .is_ok_and(|code| (100..600).contains(&code));
            if !known {
                return Err(invalid(
                    format!("{field}.retryOn[{index}]"),
                    format!(
                        "{rule:?} is not an outcome: use connect-failure, a status such as 429, or 4xx / 5xx"
                    ),
                ));
            }
        }
        Ok(RetryPolicy {
            max_attempts,
            initial_delay,
            max_delay,
            retry_on: self.retry_on.clone(),
        })
    }
}

/// `spec.async` parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsyncPolicy {
    pub max_concurrency: usize,
    pub max_body_bytes: usize,
    pub retry: RetryPolicy,
    pub max_event_age: Duration,
    pub result_retention: Duration,
}

impl AsyncSpec {
    /// The parsed settings, or the first field that is wrong.
    pub fn policy(&self) -> Result<AsyncPolicy, InvalidSpec> {
        let max_concurrency = usize::try_from(self.max_concurrency)
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| invalid("spec.async.maxConcurrency", "must be at least 1"))?;
        let max_body_bytes = usize::try_from(self.max_body_bytes)
            .ok()
            .filter(|n| (1..=983_040).contains(n))
            .ok_or_else(|| {
                invalid(
                    "spec.async.maxBodyBytes",
                    "must lie between 1 and 983040 (960Ki): NATS refuses messages over 1Mi",
                )
            })?;
        let positive = |field: &str, text: &str| {
            let value = parse_duration(field, text)?;
            if value.is_zero() {
                return Err(invalid(field, "must be longer than 0"));
            }
            Ok(value)
        };
        Ok(AsyncPolicy {
            max_concurrency,
            max_body_bytes,
            retry: self.retry.policy("spec.async.retry")?,
            max_event_age: positive("spec.async.maxEventAge", &self.max_event_age)?,
            result_retention: positive("spec.async.resultRetention", &self.result_retention)?,
        })
    }
}

impl FunctionSpec {
    /// Checks `spec.async` and `spec.triggers.queues`.
    pub(crate) fn validate_calls(&self) -> Result<(), InvalidSpec> {
        self.async_calls.policy()?;
        let mut names = BTreeSet::new();
        for (index, queue) in self.triggers.queues.iter().enumerate() {
            let field = |name: &str| format!("spec.triggers.queues[{index}].{name}");
            let name = &queue.name;
            if !names.insert(name.as_str()) {
                return Err(invalid(
                    field("name"),
                    format!("{name:?} is used by another queue trigger"),
                ));
            }
            if queue.target < 1 {
                return Err(invalid(
                    field("target"),
                    format!("queue {name:?}: must be at least 1"),
                ));
            }
            if let Some(retry) = &queue.retry {
                retry.policy(&field("retry"))?;
            }
            if let Some(prefix) = &self.routing.path_prefix
                && !under_prefix(&queue.path, prefix)
            {
                return Err(invalid(
                    field("path"),
                    format!(
                        "queue {name:?}: {:?} is not under routing.pathPrefix {prefix:?}, so the activator would not route it to this Function",
                        queue.path
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The retry policy of queue trigger `queue`: its own, else `spec.async.retry`.
    /// None while either is invalid (validation reports it).
    pub fn queue_retry(&self, queue: &QueueTrigger) -> Option<RetryPolicy> {
        match &queue.retry {
            Some(retry) => retry.policy("retry").ok(),
            None => self.async_calls.retry.policy("retry").ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(spec: &FunctionSpec) -> String {
        spec.validate().expect_err("invalid spec").field
    }

    #[test]
    fn defaults_retry_connection_failures_429_and_5xx_three_times() {
        let policy = AsyncSpec::default().policy().expect("defaults are valid");
        assert_eq!(policy.retry.max_attempts, 3);
        assert_eq!(policy.max_event_age, Duration::from_secs(6 * 3600));
        assert_eq!(policy.result_retention, Duration::from_secs(24 * 3600));
        let retry = &policy.retry;
        assert!(retry.retries(Outcome::ConnectFailure));
        assert!(retry.retries(Outcome::Status(429)));
        assert!(retry.retries(Outcome::Status(503)));
        assert!(!retry.retries(Outcome::Status(400)));
        assert!(!retry.retries(Outcome::Status(404)));
    }

    #[test]
    fn backoff_doubles_from_the_initial_delay_up_to_the_maximum() {
        let retry = RetrySpec {
            initial_delay: "100ms".into(),
            max_delay: "1s".into(),
            ..RetrySpec::default()
        }
        .policy("spec.async.retry")
        .expect("valid");
        let millis: Vec<u128> = (1..=6).map(|n| retry.backoff(n).as_millis()).collect();
        assert_eq!(millis, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(retry.backoff(200), Duration::from_secs(1));
    }

    #[test]
    fn unknown_retry_outcome_and_inverted_delays_name_their_field() {
        let mut spec = FunctionSpec::with_image("example.com/hello:1");
        spec.async_calls.retry.retry_on = vec!["5xx".into(), "sometimes".into()];
        assert_eq!(field_of(&spec), "spec.async.retry.retryOn[1]");

        spec.async_calls.retry = RetrySpec {
            initial_delay: "10s".into(),
            max_delay: "1s".into(),
            ..RetrySpec::default()
        };
        assert_eq!(field_of(&spec), "spec.async.retry.maxDelay");
    }

    #[test]
    fn zero_or_too_long_ages_are_rejected() {
        let mut spec = FunctionSpec::with_image("example.com/hello:1");
        spec.async_calls.max_event_age = "0".into();
        assert_eq!(field_of(&spec), "spec.async.maxEventAge");
        spec.async_calls.max_event_age = "1h".into();
        spec.async_calls.result_retention = "48h".into();
        assert_eq!(field_of(&spec), "spec.async.resultRetention");
        spec.async_calls.result_retention = "1h".into();
        spec.async_calls.max_body_bytes = 2 * 1024 * 1024;
        assert_eq!(field_of(&spec), "spec.async.maxBodyBytes");
    }

    #[test]
    fn queue_triggers_need_unique_names_and_paths_under_the_prefix() {
        let mut spec = FunctionSpec::with_image("example.com/hello:1");
        spec.triggers.queues = vec![
            QueueTrigger::new("orders", "ORDERS"),
            QueueTrigger::new("orders", "PAYMENTS"),
        ];
        assert_eq!(field_of(&spec), "spec.triggers.queues[1].name");

        spec.triggers.queues.pop();
        spec.routing.path_prefix = Some("/api".into());
        assert_eq!(field_of(&spec), "spec.triggers.queues[0].path");
        spec.triggers.queues[0].path = "/api/orders".into();
        spec.validate().expect("valid");
    }

    #[test]
    fn a_queue_retry_override_replaces_the_async_retry() {
        let mut spec = FunctionSpec::with_image("example.com/hello:1");
        let mut queue = QueueTrigger::new("orders", "ORDERS");
        assert_eq!(spec.queue_retry(&queue).map(|r| r.max_attempts), Some(3));
        queue.retry = Some(RetrySpec {
            max_attempts: 10,
            ..RetrySpec::default()
        });
        assert_eq!(spec.queue_retry(&queue).map(|r| r.max_attempts), Some(10));
        queue.retry = Some(RetrySpec {
            retry_on: vec!["never".into()],
            ..RetrySpec::default()
        });
        spec.triggers.queues = vec![queue];
        assert_eq!(field_of(&spec), "spec.triggers.queues[0].retry.retryOn[0]");
    }

    #[test]
    fn specs_without_async_settings_read_with_defaults_and_write_none() {
        let mut spec: FunctionSpec =
            serde_json::from_value(serde_json::json!({"image": "example.com/hello:1"}))
                .expect("minimal spec");
        assert_eq!(spec.async_calls, AsyncSpec::default());
        let written = serde_json::to_value(&spec).expect("serializes");
        assert!(written.get("async").is_none(), "{written}");

        spec.async_calls.retry.max_attempts = 5;
        let written = serde_json::to_value(&spec).expect("serializes");
        assert_eq!(written["async"]["retry"]["maxAttempts"], 5);
    }
}
