//! `zeroscale usage`: usage and cost per Function, as the operator (on a cluster) or a
//! running `zeroscale dev` meters it, printed as a table.
//!
//! On a cluster the figures come from the operator's `/usage`, read through the API
//! server's pod proxy from the operator replica that holds the leader Lease (only the
//! leader meters: a Service could answer from a standby with nothing counted). That
//! needs `get` on `leases` and on `pods/proxy` in the operator's namespace. Without a
//! Lease (leader election off: one replica) it asks the running operator pod, which
//! also needs `list` on `pods` there.

use std::io::Write;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use zeroscale_api::usage::{FunctionUsage, UsageReport};

use super::connect::Cluster;
use super::{DevTarget, Error, Format, Result, Target, render, write_data};

/// `zeroscale usage`'s arguments.
#[derive(clap::Args, Clone, Debug)]
#[command(after_help = "Examples:
  zeroscale usage                 every Function of the current namespace
  zeroscale usage hello --since 1h
  zeroscale usage -A -o json      every namespace, as JSON
  zeroscale usage --dev           a running `zeroscale dev`, since it started")]
pub struct Args {
    /// Only this Function.
    pub name: Option<String>,
    /// Usage over this much time up to now (like 90m, 24h); since the operator (or
    /// `zeroscale dev`) started when unset.
    #[arg(long, value_parser = zeroscale_api::duration::parse, env = "ZEROSCALE_SINCE")]
    pub since: Option<std::time::Duration>,
    #[command(flatten)]
    pub target: Target,
    /// Functions of every namespace.
    #[arg(short = 'A', long, env = "ZEROSCALE_ALL_NAMESPACES")]
    pub all_namespaces: bool,
    /// Output format.
    #[arg(
        short,
        long,
        value_enum,
        default_value = "human",
        env = "ZEROSCALE_OUTPUT"
    )]
    pub output: Format,
    /// The operator's namespace.
    #[arg(
        long,
        env = "ZEROSCALE_OPERATOR_NAMESPACE",
        default_value = "zeroscale-system"
    )]
    pub operator_namespace: String,
    /// The operator's leader Lease, whose holder meters usage.
    #[arg(
        long,
        env = "ZEROSCALE_OPERATOR_LEASE",
        default_value = "zeroscale-operator"
    )]
    pub operator_lease: String,
    /// The operator's admin port.
    #[arg(long, env = "ZEROSCALE_OPERATOR_ADMIN_PORT", default_value_t = 9090)]
    pub operator_admin_port: u16,
    #[command(flatten)]
    pub dev: DevTarget,
}

impl Args {
    /// The `since` query value, in seconds.
    pub fn since_query(&self) -> Option<String> {
        self.since
            .map(|since| format!("{}s", since.as_secs().max(1)))
    }
}

/// The operator's usage report, from the leader through the API server's pod proxy.
pub async fn from_cluster(cluster: &Cluster, args: &Args) -> Result<UsageReport> {
    let namespace = args.operator_namespace.as_str();
    let holder = operator_pod(cluster, args).await?;
    let mut uri = format!(
        "/api/v1/namespaces/{namespace}/pods/{holder}:{}/proxy/usage",
        args.operator_admin_port
    );
    if let Some(since) = args.since_query() {
        uri.push_str("?since=");
        uri.push_str(&since);
    }
    let request = http::Request::get(&uri)
        .body(Vec::new())
        .map_err(|e| Error::Usage(format!("{uri}: {e}")))?;
    let text = cluster
        .client
        .request_text(request)
        .await
        .map_err(|source| Error::api("get", "pods/proxy", Some(namespace), source))?;
    serde_json::from_str(&text).map_err(|e| Error::HttpBody {
        url: uri,
        reason: e.to_string(),
    })
}

/// The operator pod that meters: the leader Lease's holder, or with no Lease the one
/// running operator pod.
async fn operator_pod(cluster: &Cluster, args: &Args) -> Result<String> {
    let namespace = args.operator_namespace.as_str();
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), namespace);
    let lease = leases
        .get_opt(&args.operator_lease)
        .await
        .map_err(|source| Error::api("get", "leases", Some(namespace), source))?;
    if let Some(lease) = lease {
        return lease
            .spec
            .and_then(|spec| spec.holder_identity)
            .filter(|holder| !holder.is_empty())
            .ok_or_else(|| {
                Error::Usage(format!(
                    "no operator leads now (Lease {namespace}/{} has no holder): try again shortly",
                    args.operator_lease
                ))
            });
    }
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), namespace);
    let selector = ListParams::default().labels("app.kubernetes.io/component=operator");
    let running = pods
        .list(&selector)
        .await
        .map_err(|source| Error::api("list", "pods", Some(namespace), source))?
        .items
        .into_iter()
        .find(|pod| pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"));
    running.map(|pod| pod.name_any()).ok_or_else(|| {
        Error::Usage(format!(
            "no operator runs in namespace {namespace} (no Lease {} and no running operator pod): pass --operator-namespace",
            args.operator_lease
        ))
    })
}

/// Keeps the Functions of `namespace` (all when None) named `name` (all when None).
pub fn select(mut report: UsageReport, namespace: Option<&str>, name: Option<&str>) -> UsageReport {
    report.functions.retain(|function| {
        namespace.is_none_or(|namespace| function.namespace == namespace)
            && name.is_none_or(|name| function.name == name)
    });
    report
}

/// Prints `report` as a table (with a NAMESPACE column when `all_namespaces`), or as
/// JSON or YAML.
pub fn print(
    report: &UsageReport,
    all_namespaces: bool,
    format: Format,
    out: &mut dyn Write,
) -> Result<()> {
    if format != Format::Human {
        return write_data(out, format, report);
    }
    let mut header = vec![
        "NAME",
        "SUCCESS",
        "ERRORS",
        "REFUSED",
        "EXEC-S",
        "COLD",
        "COLD-S",
        "BUSY-S",
        "IDLE-S",
        "VCPU-S",
        "GIB-S",
        "SAVED-VCPU-S",
    ];
    if all_namespaces {
        header.insert(0, "NAMESPACE");
    }
    if report.prices.is_some() {
        header.push("COST");
    }
    let rows = report
        .functions
        .iter()
        .map(|function| row(function, all_namespaces));
    let mut text = format!(
        "Usage from {} to {}\n",
        report.from.strftime("%Y-%m-%d %H:%M:%S UTC"),
        report.to.strftime("%Y-%m-%d %H:%M:%S UTC")
    );
    if report.functions.is_empty() {
        text.push_str("No Functions used anything in this period.\n");
    } else {
        text.push_str(&render::table(&header, rows));
    }
    out.write_all(text.as_bytes()).map_err(Error::Output)
}

fn row(function: &FunctionUsage, all_namespaces: bool) -> Vec<String> {
    let seconds = |value: f64| format!("{value:.1}");
    let mut row = Vec::with_capacity(14);
    if all_namespaces {
        row.push(function.namespace.clone());
    }
    let invocations = function.invocations;
    row.extend([
        function.name.clone(),
        invocations.success.to_string(),
        invocations.function_error.to_string(),
        invocations.refused.to_string(),
        format!("{:.3}", function.execution_seconds),
        function.cold_starts.to_string(),
        format!("{:.3}", function.cold_start_seconds),
        seconds(function.replica_seconds.busy),
        seconds(function.replica_seconds.idle),
        seconds(function.reserved.vcpu_seconds),
        seconds(function.reserved.gib_seconds),
        seconds(function.saving.vcpu_seconds),
    ]);
    if let Some(cost) = function.cost {
        row.push(format!("{:.6}", cost.total));
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;
    use zeroscale_api::usage::{Cost, Invocations, Prices, ReplicaSeconds, ResourceSeconds};

    fn report() -> UsageReport {
        let function = |namespace: &str, name: &str| FunctionUsage {
            namespace: namespace.into(),
            name: name.into(),
            invocations: Invocations {
                success: 10,
                function_error: 2,
                refused: 1,
            },
            execution_seconds: 1.25,
            cold_starts: 1,
            cold_start_seconds: 0.5,
            replica_seconds: ReplicaSeconds {
                busy: 1.3,
                idle: 28.7,
            },
            reserved: ResourceSeconds {
                vcpu_seconds: 3.0,
                gib_seconds: 3.75,
            },
            saving: ResourceSeconds {
                vcpu_seconds: 6.0,
                gib_seconds: 7.5,
            },
            cost: Some(Cost {
                total: 0.25,
                ..Cost::default()
            }),
            ..FunctionUsage::default()
        };
        UsageReport {
            from: Timestamp::from_second(0).expect("valid"),
            to: Timestamp::from_second(90).expect("valid"),
            prices: Some(Prices::default()),
            functions: vec![function("default", "hello"), function("team", "hello")],
        }
    }

    #[test]
    fn the_table_has_a_row_per_function_with_counts_seconds_and_cost() {
        let mut out = Vec::new();
        print(&report(), true, Format::Human, &mut out).expect("prints");
        let text = String::from_utf8(out).expect("UTF-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "Usage from 1970-01-01 00:00:00 UTC to 1970-01-01 00:01:30 UTC"
        );
        assert!(
            lines[1].starts_with("NAMESPACE   NAME    SUCCESS   ERRORS   REFUSED"),
            "{text}"
        );
        assert!(lines[1].ends_with("COST"), "{text}");
        let cells: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "default", "hello", "10", "2", "1", "1.250", "1", "0.500", "1.3", "28.7", "3.0",
                "3.8", "6.0", "0.250000"
            ]
        );
    }

    #[test]
    fn selection_keeps_the_namespace_and_name_asked_for() {
        let selected = select(report(), Some("team"), Some("hello"));
        assert_eq!(selected.functions.len(), 1);
        assert_eq!(selected.functions[0].namespace, "team");
        assert!(select(report(), None, Some("other")).functions.is_empty());
        assert_eq!(select(report(), None, None).functions.len(), 2);
    }
}
