//! Checks of a Function spec beyond what the CRD schema expresses: durations, cron
//! expressions and time zones, volumes, and the cross-field rules the schema's CEL rules
//! also enforce (repeated here because local mode reads manifests without an API server).
//! A failure names the field and says what to change.

use std::collections::BTreeSet;
use std::time::Duration;

use croner::parser::{CronParser, Seconds, Year};
use k8s_openapi::api::core::v1::Volume;

use crate::duration;
use crate::function::{FunctionSpec, Metric, RequestsSpec};

/// A spec field that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidSpec {
    /// Path of the field, e.g. `spec.scaling.stableWindow`.
    pub field: String,
    /// What is wrong with it, written for the person who wrote the manifest.
    pub reason: String,
}

/// Durations of a valid spec, parsed once; scaling durations are None when the spec
/// leaves them to the operator's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durations {
    pub scale_to_zero_grace_period: Option<Duration>,
    pub scale_down_delay: Option<Duration>,
    pub stable_window: Option<Duration>,
    pub request_timeout: Duration,
    pub max_queue_wait: Duration,
}

/// Shortest and longest stable window, as in Knative.
pub const STABLE_WINDOW_RANGE: (Duration, Duration) =
    (Duration::from_secs(6), Duration::from_secs(3600));

/// Longest duration accepted for the other duration fields.
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> InvalidSpec {
    InvalidSpec {
        field: field.into(),
        reason: reason.into(),
    }
}

pub(crate) fn parse_duration(field: &str, text: &str) -> Result<Duration, InvalidSpec> {
    let value = duration::parse(text).map_err(|e| invalid(field, e.to_string()))?;
    if value > MAX_DURATION {
        return Err(invalid(field, format!("{text:?} is longer than 24h")));
    }
    Ok(value)
}

impl RequestsSpec {
    /// `timeout`, or why it cannot be used. See [`RequestsSpec::effective_timeout`].
    pub fn parsed_timeout(&self) -> Result<Duration, InvalidSpec> {
        let field = "spec.requests.timeout";
        let timeout = parse_duration(field, &self.timeout)?;
        if timeout.is_zero() {
            return Err(invalid(field, "must be longer than 0"));
        }
        Ok(timeout)
    }

    /// `maxQueueWait`, or why it cannot be used. See
    /// [`RequestsSpec::effective_max_queue_wait`].
    pub fn parsed_max_queue_wait(&self) -> Result<Duration, InvalidSpec> {
        parse_duration("spec.requests.maxQueueWait", &self.max_queue_wait)
    }
}

impl FunctionSpec {
    /// Checks the spec and returns its parsed durations, or the first field that is wrong.
    pub fn validate(&self) -> Result<Durations, InvalidSpec> {
        let scaling = &self.scaling;
        if scaling.min_replicas > scaling.max_replicas {
            return Err(invalid(
                "spec.scaling.minReplicas",
                format!(
                    "{} exceeds maxReplicas {}",
                    scaling.min_replicas, scaling.max_replicas
                ),
            ));
        }
        if let Some(initial) = scaling.initial_replicas
            && !(scaling.min_replicas..=scaling.max_replicas).contains(&initial)
        {
            return Err(invalid(
                "spec.scaling.initialReplicas",
                format!(
                    "{initial} must lie between minReplicas {} and maxReplicas {}",
                    scaling.min_replicas, scaling.max_replicas
                ),
            ));
        }
        if scaling.metric == Metric::Cpu && !self.requests_cpu() {
            return Err(invalid(
                "spec.resources.requests.cpu",
                "must be set when scaling.metric is cpu: CPU utilisation is measured against the request",
            ));
        }

        let optional = |field: &str, text: &Option<String>| {
            text.as_deref()
                .map(|text| parse_duration(field, text))
                .transpose()
        };
        let durations = Durations {
            scale_to_zero_grace_period: optional(
                "spec.scaling.scaleToZeroGracePeriod",
                &scaling.scale_to_zero_grace_period,
            )?,
            scale_down_delay: optional("spec.scaling.scaleDownDelay", &scaling.scale_down_delay)?,
            stable_window: optional("spec.scaling.stableWindow", &scaling.stable_window)?,
            request_timeout: self.requests.parsed_timeout()?,
            max_queue_wait: self.requests.parsed_max_queue_wait()?,
        };
        let (shortest, longest) = STABLE_WINDOW_RANGE;
        if let (Some(window), Some(text)) = (durations.stable_window, &scaling.stable_window)
            && !(shortest..=longest).contains(&window)
        {
            return Err(invalid(
                "spec.scaling.stableWindow",
                format!("{text:?} must lie between 6s and 1h"),
            ));
        }

        if let Some(limit) = &self.requests.rate_limit {
            limit.validate()?;
        }
        if let Some(cors) = &self.routing.cors {
            cors.validate()?;
        }
        self.validate_quantities()?;
        self.validate_volumes()?;
        self.validate_schedules()?;
        self.validate_calls()?;
        if let Some(auth) = &self.auth {
            auth.validate()?;
        }
        Ok(durations)
    }

    fn validate_quantities(&self) -> Result<(), InvalidSpec> {
        let Some(resources) = &self.resources else {
            return Ok(());
        };
        for (kind, quantities) in [
            ("requests", &resources.requests),
            ("limits", &resources.limits),
        ] {
            for (name, quantity) in quantities.iter().flatten() {
                if !is_quantity(&quantity.0) {
                    return Err(invalid(
                        format!("spec.resources.{kind}.{name}"),
                        format!(
                            "{:?} is not a quantity such as 250m, 0.5, 64Mi or 1G",
                            quantity.0
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn requests_cpu(&self) -> bool {
        self.resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .is_some_and(|requests| requests.contains_key("cpu"))
    }

    /// The spec's volumes as Kubernetes Volumes (the schema keeps them free-form so the
    /// CRD stays small).
    pub fn typed_volumes(&self) -> Result<Vec<Volume>, InvalidSpec> {
        self.volumes
            .iter()
            .enumerate()
            .map(|(index, value)| {
                let field = format!("spec.volumes[{index}]");
                let volume: Volume = serde_json::from_value(value.clone())
                    .map_err(|e| invalid(&field, e.to_string()))?;
                if volume.name.is_empty() {
                    return Err(invalid(
                        format!("{field}.name"),
                        "every volume needs a name",
                    ));
                }
                // Deserializing drops fields it does not know; a misspelt volume source
                // would vanish silently, so name it instead.
                let known = serde_json::to_value(&volume).unwrap_or_default();
                if let Some(unknown) = value
                    .as_object()
                    .into_iter()
                    .flat_map(|object| object.keys())
                    .find(|key| known.get(key.as_str()).is_none())
                {
                    return Err(invalid(
                        format!("{field}.{unknown}"),
                        "is not a field of a Kubernetes Volume",
                    ));
                }
                Ok(volume)
            })
            .collect()
    }

    fn validate_volumes(&self) -> Result<(), InvalidSpec> {
        let volumes = self.typed_volumes()?;
        let mut names = BTreeSet::new();
        for (index, volume) in volumes.iter().enumerate() {
            if !names.insert(volume.name.as_str()) {
                return Err(invalid(
                    format!("spec.volumes[{index}].name"),
                    format!("{:?} is used by another volume", volume.name),
                ));
            }
        }
        for (index, mount) in self.volume_mounts.iter().enumerate() {
            if !names.contains(mount.name.as_str()) {
                return Err(invalid(
                    format!("spec.volumeMounts[{index}].name"),
                    format!("no volume is named {:?}", mount.name),
                ));
            }
        }
        Ok(())
    }

    fn validate_schedules(&self) -> Result<(), InvalidSpec> {
        let mut names = BTreeSet::new();
        for (index, schedule) in self.triggers.schedules.iter().enumerate() {
            let field = |name: &str| format!("spec.triggers.schedules[{index}].{name}");
            let name = &schedule.name;
            if !names.insert(name.as_str()) {
                return Err(invalid(
                    field("name"),
                    format!("{name:?} is used by another schedule"),
                ));
            }
            parse_cron(&schedule.cron)
                .map_err(|reason| invalid(field("cron"), format!("schedule {name:?}: {reason}")))?;
            if let Some(zone) = &schedule.time_zone {
                parse_time_zone(zone).map_err(|reason| {
                    invalid(field("timeZone"), format!("schedule {name:?}: {reason}"))
                })?;
            }
            if let Some(deadline) = &schedule.starting_deadline {
                let value = parse_duration(&field("startingDeadline"), deadline)?;
                if value.is_zero() {
                    return Err(invalid(
                        field("startingDeadline"),
                        format!("schedule {name:?}: must be longer than 0"),
                    ));
                }
            }
            if let Some(prefix) = &self.routing.path_prefix
                && !under_prefix(&schedule.path, prefix)
            {
                return Err(invalid(
                    field("path"),
                    format!(
                        "schedule {name:?}: {:?} is not under routing.pathPrefix {prefix:?}, so the activator would not route it to this Function",
                        schedule.path
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Whether `path` lies under `prefix` on a segment boundary, as the activator routes.
pub(crate) fn under_prefix(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Reads an IANA time zone name such as `Europe/Paris`.
pub fn parse_time_zone(zone: &str) -> Result<jiff::tz::TimeZone, String> {
    jiff::tz::TimeZone::get(zone)
        .map_err(|_| format!("{zone:?} is not an IANA time zone such as Europe/Paris"))
}

/// Whether `text` is a Kubernetes resource quantity: a signed decimal number followed by
/// a binary suffix (Ki..Ei), a decimal suffix (n, u, m, k, M..E) or a decimal exponent.
fn is_quantity(text: &str) -> bool {
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
    let number_len = unsigned
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(number_len);
    let digits = number.replace('.', "");
    if digits.is_empty() || number.matches('.').count() > 1 {
        return false;
    }
    const SUFFIXES: [&str; 16] = [
        "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P", "E",
    ];
    if SUFFIXES.contains(&suffix) {
        return true;
    }
    let Some(exponent) = suffix.strip_prefix(['e', 'E']) else {
        return false;
    };
    let exponent = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
    !exponent.is_empty() && exponent.chars().all(|c| c.is_ascii_digit())
}

/// Parses a standard 5-field cron expression (or a nickname such as `@hourly`).
pub fn parse_cron(expression: &str) -> Result<croner::Cron, String> {
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(expression)
        .map_err(|e| format!("{expression:?} is not a 5-field cron expression: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::function::Schedule;
    use std::collections::BTreeMap;

    fn spec() -> FunctionSpec {
        FunctionSpec::with_image("example.com/hello:1")
    }

    fn schedule(name: &str, cron: &str) -> Schedule {
        Schedule::new(name, cron)
    }

    fn field_of(spec: &FunctionSpec) -> String {
        spec.validate().expect_err("spec should be invalid").field
    }

    #[test]
    fn default_spec_is_valid_and_leaves_scaling_durations_to_the_operator() {
        let durations = spec().validate().expect("valid");
        assert_eq!(durations.scale_to_zero_grace_period, None);
        assert_eq!(durations.stable_window, None);
        assert_eq!(durations.request_timeout, Duration::from_secs(300));
        assert_eq!(durations.max_queue_wait, Duration::from_secs(60));
    }

    #[test]
    fn min_above_max_names_min_replicas() {
        let mut spec = spec();
        spec.scaling.min_replicas = 5;
        spec.scaling.max_replicas = 2;
        assert_eq!(field_of(&spec), "spec.scaling.minReplicas");
    }

    #[test]
    fn initial_outside_bounds_names_initial_replicas() {
        let mut spec = spec();
        spec.scaling.min_replicas = 2;
        spec.scaling.initial_replicas = Some(1);
        assert_eq!(field_of(&spec), "spec.scaling.initialReplicas");
    }

    #[test]
    fn cpu_metric_requires_a_cpu_request() {
        let mut spec = spec();
        spec.scaling.metric = Metric::Cpu;
        assert_eq!(field_of(&spec), "spec.resources.requests.cpu");
    }

    #[test]
    fn malformed_or_out_of_range_durations_name_their_field() {
        let mut spec = spec();
        spec.scaling.stable_window = Some("2s".into());
        assert_eq!(field_of(&spec), "spec.scaling.stableWindow");

        let mut spec = self::spec();
        spec.requests.max_queue_wait = "soon".into();
        let error = spec.validate().expect_err("invalid");
        assert_eq!(error.field, "spec.requests.maxQueueWait");
        assert!(error.reason.contains("not a duration"), "{}", error.reason);

        let mut spec = self::spec();
        spec.requests.timeout = "0".into();
        assert_eq!(field_of(&spec), "spec.requests.timeout");
    }

    #[test]
    fn volume_mount_of_unknown_volume_is_rejected() {
        let mut spec = spec();
        spec.volumes = vec![serde_json::json!({"name": "data", "emptyDir": {}})];
        spec.volume_mounts = vec![k8s_openapi::api::core::v1::VolumeMount {
            name: "cache".into(),
            mount_path: "/cache".into(),
            ..Default::default()
        }];
        assert_eq!(field_of(&spec), "spec.volumeMounts[0].name");
    }

    #[test]
    fn volume_that_is_not_a_volume_is_rejected() {
        let mut spec = spec();
        spec.volumes = vec![serde_json::json!({"emptyDir": {}})];
        assert_eq!(field_of(&spec), "spec.volumes[0].name");
        spec.volumes = vec![serde_json::json!({"name": "data", "emtpyDir": {}})];
        assert_eq!(field_of(&spec), "spec.volumes[0].emtpyDir");
        spec.volumes = vec![serde_json::json!({"name": "data", "emptyDir": "big"})];
        assert_eq!(field_of(&spec), "spec.volumes[0]");
    }

    #[test]
    fn bad_cron_and_time_zone_are_rejected() {
        let mut spec = spec();
        spec.triggers.schedules = vec![schedule("tick", "61 * * * *")];
        assert_eq!(field_of(&spec), "spec.triggers.schedules[0].cron");

        let mut zoned = schedule("tick", "*/5 * * * *");
        zoned.time_zone = Some("Mars/Olympus".into());
        spec.triggers.schedules = vec![zoned];
        assert_eq!(field_of(&spec), "spec.triggers.schedules[0].timeZone");
    }

    #[test]
    fn valid_schedules_pass_and_duplicates_do_not() {
        let mut spec = spec();
        let mut paris = schedule("nightly", "0 3 * * *");
        paris.time_zone = Some("Europe/Paris".into());
        spec.triggers.schedules = vec![paris, schedule("often", "@hourly")];
        spec.validate().expect("valid schedules");

        spec.triggers
            .schedules
            .push(schedule("often", "*/5 * * * *"));
        assert_eq!(field_of(&spec), "spec.triggers.schedules[2].name");
    }

    #[test]
    fn quantities_follow_the_kubernetes_grammar() {
        for good in [
            "250m", "0.5", "1", "64Mi", "1G", "1e3", "1E-2", "+2", ".5", "10Ki",
        ] {
            assert!(is_quantity(good), "{good} should be a quantity");
        }
        for bad in ["", "m", "1.2.3", "10MB", "1e", "one", "1 Gi", "1gi"] {
            assert!(!is_quantity(bad), "{bad} should not be a quantity");
        }
    }

    #[test]
    fn malformed_resource_quantity_names_its_field() {
        let mut spec = spec();
        spec.resources = Some(k8s_openapi::api::core::v1::ResourceRequirements {
            limits: Some(BTreeMap::from([(
                "memory".to_owned(),
                k8s_openapi::apimachinery::pkg::api::resource::Quantity("64MB".into()),
            )])),
            ..Default::default()
        });
        assert_eq!(field_of(&spec), "spec.resources.limits.memory");
    }

    #[test]
    fn invalid_schedule_messages_name_the_trigger() {
        let mut spec = spec();
        spec.triggers.schedules = vec![schedule("report", "not cron")];
        let error = spec.validate().expect_err("invalid");
        assert_eq!(error.field, "spec.triggers.schedules[0].cron");
        assert!(error.reason.contains("\"report\""), "{}", error.reason);
    }

    #[test]
    fn zero_or_malformed_starting_deadline_is_rejected() {
        let mut spec = spec();
        let mut tick = schedule("tick", "* * * * *");
        tick.starting_deadline = Some("0".into());
        spec.triggers.schedules = vec![tick.clone()];
        assert_eq!(
            field_of(&spec),
            "spec.triggers.schedules[0].startingDeadline"
        );
        tick.starting_deadline = Some("soon".into());
        spec.triggers.schedules = vec![tick.clone()];
        assert_eq!(
            field_of(&spec),
            "spec.triggers.schedules[0].startingDeadline"
        );
        tick.starting_deadline = Some("30s".into());
        spec.triggers.schedules = vec![tick];
        spec.validate().expect("valid deadline");
    }

    #[test]
    fn schedule_path_outside_the_path_prefix_is_rejected() {
        let mut spec = spec();
        spec.routing.path_prefix = Some("/api".into());
        let mut tick = schedule("tick", "* * * * *");
        spec.triggers.schedules = vec![tick.clone()];
        assert_eq!(field_of(&spec), "spec.triggers.schedules[0].path");
        tick.path = "/apix".into();
        spec.triggers.schedules = vec![tick.clone()];
        assert_eq!(field_of(&spec), "spec.triggers.schedules[0].path");
        tick.path = "/api/cron".into();
        spec.triggers.schedules = vec![tick];
        spec.validate().expect("path under the prefix");
    }

    #[test]
    fn six_field_cron_with_seconds_is_rejected() {
        assert!(parse_cron("*/5 * * * * *").is_err());
        assert!(parse_cron("*/5 * * * *").is_ok());
    }
}
