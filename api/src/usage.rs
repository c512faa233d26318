//! The usage wire format: what `GET /usage` answers on the operator's and `zeroscale
//! dev`'s admin listeners, and `zeroscale usage` prints. Also the per-pod resources a
//! Function reserves, read from its resource requests, which turn replica-seconds into
//! vCPU-seconds and GiB-seconds.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ResourceRequirements;
use serde::{Deserialize, Serialize};

/// Usage of every Function over one period.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UsageReport {
    /// Start of the period (the first sample at or before the start asked for).
    pub from: Timestamp,
    /// End of the period: the last sample.
    pub to: Timestamp,
    /// Prices that turn usage into cost, when configured.
    pub prices: Option<Prices>,
    pub functions: Vec<FunctionUsage>,
}

/// Prices of what a Function uses, in any one currency.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Prices {
    pub per_million_requests: f64,
    pub per_vcpu_second: f64,
    pub per_gib_second: f64,
}

/// One Function's usage over the period.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FunctionUsage {
    pub namespace: String,
    pub name: String,
    pub invocations: Invocations,
    /// Sum of the time requests held a pod's slot, from pod pick to response end.
    pub execution_seconds: f64,
    /// Requests that found no pod ready and woke the Function.
    pub cold_starts: u64,
    /// Total time those requests waited for a pod.
    pub cold_start_seconds: f64,
    pub replica_seconds: ReplicaSeconds,
    /// What the Function's pods reserved: their requests times the time they existed.
    pub reserved: ResourceSeconds,
    /// What the same pods would have reserved had the Function never gone below one.
    pub always_on: ResourceSeconds,
    /// `alwaysOn - reserved`: what scaling to zero saved.
    pub saving: ResourceSeconds,
    /// Cost at the configured prices, when there are any.
    pub cost: Option<Cost>,
}

/// Requests by outcome.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Invocations {
    /// The Function answered with a status below 500.
    pub success: u64,
    /// The Function answered 5xx, timed out, or failed while answering.
    pub function_error: u64,
    /// The platform answered itself: queue full, activation timeout, cannot start,
    /// pod unreachable, body too large.
    pub refused: u64,
}

impl Invocations {
    /// Requests the Function itself handled (billed): successes and function errors.
    pub fn handled(&self) -> u64 {
        self.success + self.function_error
    }

    /// Every request, refused ones included.
    pub fn total(&self) -> u64 {
        self.handled() + self.refused
    }
}

/// Replica-seconds split by whether the pod had a request in flight.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaSeconds {
    pub busy: f64,
    pub idle: f64,
}

/// Resources reserved over time.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResourceSeconds {
    pub vcpu_seconds: f64,
    pub gib_seconds: f64,
}

/// Cost of a Function's usage at the configured prices.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Cost {
    pub requests: f64,
    pub vcpu: f64,
    pub memory: f64,
    pub total: f64,
}

impl Cost {
    /// The cost of `handled` requests and `reserved` resources at `prices`. Refused
    /// requests are not billed: the Function never ran for them.
    pub fn of(prices: &Prices, handled: u64, reserved: &ResourceSeconds) -> Self {
        let requests = handled as f64 / 1e6 * prices.per_million_requests;
        let vcpu = reserved.vcpu_seconds * prices.per_vcpu_second;
        let memory = reserved.gib_seconds * prices.per_gib_second;
        Self {
            requests,
            vcpu,
            memory,
            total: requests + vcpu + memory,
        }
    }
}

/// What one pod of a Function reserves.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PodResources {
    pub vcpu: f64,
    pub gib: f64,
}

impl PodResources {
    /// The pod's requests, or its limits where a request is unset (as the scheduler
    /// does); zero for what neither sets.
    pub fn from_requirements(resources: Option<&ResourceRequirements>) -> Self {
        let amount = |name: &str| {
            let find = |map: Option<&std::collections::BTreeMap<String, _>>| {
                map.and_then(|map| map.get(name)).and_then(
                    |q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity| quantity(&q.0),
                )
            };
            resources
                .and_then(|r| find(r.requests.as_ref()).or_else(|| find(r.limits.as_ref())))
                .unwrap_or(0.0)
        };
        Self {
            vcpu: amount("cpu"),
            gib: amount("memory") / GIB,
        }
    }
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// The value of a Kubernetes quantity (`500m`, `1.5`, `128Mi`, `1G`, `1e3`), or None
/// when it is not one.
pub fn quantity(text: &str) -> Option<f64> {
    let text = text.trim();
    let split = text
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => GIB,
        "Ti" => GIB * 1024.0,
        "Pi" => GIB * 1024.0 * 1024.0,
        "Ei" => GIB * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let value: f64 = number.parse().ok()?;
    value.is_finite().then_some(value * multiplier)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    #[test]
    fn quantities_parse_with_decimal_and_binary_suffixes() {
        assert_eq!(quantity("500m"), Some(0.5));
        assert_eq!(quantity("2"), Some(2.0));
        assert_eq!(quantity("128Mi"), Some(128.0 * 1024.0 * 1024.0));
        assert_eq!(quantity("1G"), Some(1e9));
        assert_eq!(quantity("1e3"), Some(1000.0));
        assert_eq!(quantity("lots"), None);
        assert_eq!(quantity("1Zi"), None);
    }

    #[test]
    fn pod_resources_take_requests_then_limits() {
        let requirements = ResourceRequirements {
            requests: Some([("cpu".to_owned(), Quantity("250m".into()))].into()),
            limits: Some(
                [
                    ("cpu".to_owned(), Quantity("1".into())),
                    ("memory".to_owned(), Quantity("512Mi".into())),
                ]
                .into(),
            ),
            ..ResourceRequirements::default()
        };
        let pod = PodResources::from_requirements(Some(&requirements));
        assert_eq!(
            pod,
            PodResources {
                vcpu: 0.25,
                gib: 0.5
            }
        );
        assert_eq!(
            PodResources::from_requirements(None),
            PodResources::default()
        );
    }

    #[test]
    fn cost_bills_handled_requests_and_reserved_resources() {
        let prices = Prices {
            per_million_requests: 0.2,
            per_vcpu_second: 0.00001,
            per_gib_second: 0.000001,
        };
        let reserved = ResourceSeconds {
            vcpu_seconds: 1000.0,
            gib_seconds: 2000.0,
        };
        let cost = Cost::of(&prices, 2_000_000, &reserved);
        assert!((cost.requests - 0.4).abs() < 1e-12);
        assert!((cost.vcpu - 0.01).abs() < 1e-12);
        assert!((cost.memory - 0.002).abs() < 1e-12);
        assert!((cost.total - 0.412).abs() < 1e-12);
    }

    #[test]
    fn report_serialises_in_camel_case_with_rfc3339_times() {
        let report = UsageReport {
            from: Timestamp::from_second(0).expect("valid"),
            to: Timestamp::from_second(60).expect("valid"),
            prices: None,
            functions: vec![FunctionUsage {
                namespace: "default".into(),
                name: "hello".into(),
                ..FunctionUsage::default()
            }],
        };
        let json = serde_json::to_value(&report).expect("serialises");
        assert_eq!(json["from"], "1970-01-01T00:00:00Z");
        assert_eq!(json["prices"], serde_json::Value::Null);
        let function = &json["functions"][0];
        assert_eq!(function["invocations"]["functionError"], 0);
        assert_eq!(function["replicaSeconds"]["busy"], 0.0);
        assert_eq!(function["alwaysOn"]["vcpuSeconds"], 0.0);
        assert_eq!(function["coldStartSeconds"], 0.0);
        assert_eq!(function["cost"], serde_json::Value::Null);
    }
}
