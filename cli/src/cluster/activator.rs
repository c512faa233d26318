//! The activators behind a Function, seen from outside the cluster: found through the
//! Function's Service (an alias of the activator Service), read through the API
//! server's pod proxy (`/stats`, `/metrics`), and summed into [`LiveFigures`].

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use zeroscale_api::names;
use zeroscale_api::stats::StatsReport;

use super::connect::Cluster;
use super::render::LiveFigures;
use super::{Error, Result};

/// One ready activator pod and its ports.
#[derive(Clone, Debug, PartialEq)]
pub struct ActivatorPod {
    pub namespace: String,
    pub name: String,
    /// Where it takes requests (container port `http`).
    pub http_port: u16,
    /// Where it serves `/stats` and `/metrics` (container port `admin`).
    pub admin_port: u16,
}

/// The ready activator pods that serve Function `function`.
pub async fn pods(cluster: &Cluster, function: &str) -> Result<Vec<ActivatorPod>> {
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let service_name = names::service(function);
    let alias = services
        .get(&service_name)
        .await
        .map_err(|source| Error::api("get", "services", Some(&cluster.namespace), source))?;
    let external = alias
        .spec
        .and_then(|spec| spec.external_name)
        .ok_or_else(|| Error::NoActivator(function.to_owned()))?;
    // `<service>.<namespace>.svc.<cluster domain>`
    let mut labels = external.split('.');
    let (Some(service), Some(namespace)) = (labels.next(), labels.next()) else {
        return Err(Error::NoActivator(function.to_owned()));
    };
    let activator: Api<Service> = Api::namespaced(cluster.client.clone(), namespace);
    let activator = activator
        .get(service)
        .await
        .map_err(|source| Error::api("get", "services", Some(namespace), source))?;
    let selector = activator
        .spec
        .and_then(|spec| spec.selector)
        .unwrap_or_default()
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",");
    if selector.is_empty() {
        return Err(Error::NoActivator(function.to_owned()));
    }
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), namespace);
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| Error::api("list", "pods", Some(namespace), source))?;
    Ok(list
        .items
        .iter()
        .filter(|pod| is_ready(pod))
        .map(|pod| ActivatorPod {
            namespace: namespace.to_owned(),
            name: pod.name_any(),
            http_port: port(pod, "http").unwrap_or(8080),
            admin_port: port(pod, "admin").unwrap_or(9090),
        })
        .collect())
}

fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn port(pod: &Pod, name: &str) -> Option<u16> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(name))
        .and_then(|p| u16::try_from(p.container_port).ok())
}

/// GETs `path` from the pod's admin port through the API server's pod proxy.
pub async fn proxy_get(cluster: &Cluster, pod: &ActivatorPod, path: &str) -> Result<String> {
    let uri = format!(
        "/api/v1/namespaces/{}/pods/{}:{}/proxy{path}",
        pod.namespace, pod.name, pod.admin_port
    );
    let request = http::Request::get(&uri)
        .body(Vec::new())
        .map_err(|e| Error::Usage(format!("{uri}: {e}")))?;
    cluster
        .client
        .request_text(request)
        .await
        .map_err(|source| Error::api("get", "pods/proxy", Some(&pod.namespace), source))
}

/// The activators' live figures for one Function: two `/stats` samples `period` apart
/// (rates are their difference), plus the cold-start histogram of `/metrics`.
pub async fn live(
    cluster: &Cluster,
    namespace: &str,
    function: &str,
    period: Duration,
) -> Result<LiveFigures> {
    let pods = pods(cluster, function).await?;
    let mut before = Vec::new();
    let mut metrics = Vec::new();
    for pod in &pods {
        before.push(stats(cluster, pod).await?);
        metrics.push(proxy_get(cluster, pod, "/metrics").await?);
    }
    tokio::time::sleep(period).await;
    let mut after = Vec::new();
    for pod in &pods {
        after.push(stats(cluster, pod).await?);
    }
    Ok(figures(&before, &after, &metrics, namespace, function))
}

async fn stats(cluster: &Cluster, pod: &ActivatorPod) -> Result<StatsReport> {
    let text = proxy_get(cluster, pod, "/stats").await?;
    parse_stats(&pod.name, &text)
}

/// Reads a `/stats` answer.
pub fn parse_stats(source: &str, text: &str) -> Result<StatsReport> {
    serde_json::from_str(text).map_err(|e| Error::HttpBody {
        url: format!("{source}/stats"),
        reason: e.to_string(),
    })
}

/// Sums the figures of every activator: rates from the two samples of each (an
/// activator that restarted in between counts from its restart), cold starts from the
/// histogram buckets.
pub fn figures(
    before: &[StatsReport],
    after: &[StatsReport],
    metrics: &[String],
    namespace: &str,
    function: &str,
) -> LiveFigures {
    let of = |report: &StatsReport| {
        report
            .functions
            .iter()
            .find(|f| f.namespace == namespace && f.name == function)
            .cloned()
            .unwrap_or_default()
    };
    let mut live = LiveFigures {
        activators: after.len(),
        ..LiveFigures::default()
    };
    for (old, new) in before.iter().zip(after) {
        let (a, b) = (of(old), of(new));
        let restarted = old.instance != new.instance;
        let elapsed = if restarted {
            new.uptime_seconds
        } else {
            new.uptime_seconds - old.uptime_seconds
        };
        if elapsed > 0.0 {
            let (requests, concurrency) = if restarted {
                (b.requests_total, b.concurrency_seconds_total)
            } else {
                (
                    b.requests_total.saturating_sub(a.requests_total),
                    b.concurrency_seconds_total - a.concurrency_seconds_total,
                )
            };
            let requests = requests as f64;
            live.requests_per_second += requests / elapsed;
            live.concurrency += concurrency.max(0.0) / elapsed;
        }
        live.in_flight += b.in_flight;
        live.queued += b.queued;
    }
    let buckets = cold_start_buckets(metrics, namespace, function);
    live.cold_starts = buckets.last().map_or(0, |(_, count)| *count);
    live.cold_start_p50 = quantile(&buckets, 0.5);
    live.cold_start_p95 = quantile(&buckets, 0.95);
    live
}

const COLD_START_BUCKET: &str = "zeroscale_activator_cold_start_seconds_bucket{";

/// The cold-start histogram of one Function summed over every activator's `/metrics`:
/// (upper bound in seconds, cumulative count), by bound, ending with `+Inf`.
pub fn cold_start_buckets(metrics: &[String], namespace: &str, function: &str) -> Vec<(f64, u64)> {
    let mut buckets: Vec<(f64, u64)> = Vec::new();
    let wanted = [
        format!("function=\"{function}\""),
        format!("namespace=\"{namespace}\""),
    ];
    for text in metrics {
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(COLD_START_BUCKET) else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once("} ") else {
                continue;
            };
            let labels: Vec<&str> = labels.split(',').collect();
            if !wanted.iter().all(|w| labels.contains(&w.as_str())) {
                continue;
            }
            let bound = labels
                .iter()
                .find_map(|l| l.strip_prefix("le=\""))
                .map(|l| l.trim_end_matches('"'));
            let bound = match bound {
                Some("+Inf") => f64::INFINITY,
                Some(bound) => match bound.parse() {
                    Ok(bound) => bound,
                    Err(_) => continue,
                },
                None => continue,
            };
            let Ok(count) = value.trim().parse::<f64>() else {
                continue;
            };
            let count = count as u64;
            match buckets.iter_mut().find(|(b, _)| *b == bound) {
                Some((_, total)) => *total += count,
                None => buckets.push((bound, count)),
            }
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

/// The `q` quantile of a cumulative histogram, interpolated linearly inside its bucket
/// as Prometheus's `histogram_quantile` does; None when it is empty.
pub fn quantile(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut lower = (0.0, 0u64);
    for &(bound, count) in buckets {
        if count as f64 >= rank {
            if bound.is_infinite() {
                return Some(lower.0);
            }
            let in_bucket = count - lower.1;
            if in_bucket == 0 {
                return Some(bound);
            }
            let fraction = (rank - lower.1 as f64) / in_bucket as f64;
            return Some(lower.0 + (bound - lower.0) * fraction);
        }
        lower = (bound, count);
    }
    Some(lower.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroscale_api::stats::FunctionStats;

    const METRICS: &str = r#"# TYPE zeroscale_activator_cold_start_seconds histogram
zeroscale_activator_cold_start_seconds_bucket{function="hello",namespace="default",le="0.5"} 1
zeroscale_activator_cold_start_seconds_bucket{function="hello",namespace="default",le="1"} 2
zeroscale_activator_cold_start_seconds_bucket{function="hello",namespace="default",le="2"} 4
zeroscale_activator_cold_start_seconds_bucket{function="hello",namespace="default",le="+Inf"} 4
zeroscale_activator_cold_start_seconds_bucket{function="other",namespace="default",le="+Inf"} 9
"#;

    #[test]
    fn cold_start_buckets_sum_every_activator_of_the_function() {
        let buckets = cold_start_buckets(&[METRICS.into(), METRICS.into()], "default", "hello");
        assert_eq!(
            buckets,
            vec![(0.5, 2), (1.0, 4), (2.0, 8), (f64::INFINITY, 8)]
        );
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let buckets = cold_start_buckets(&[METRICS.into()], "default", "hello");
        assert_eq!(quantile(&buckets, 0.5), Some(1.0));
        assert_eq!(quantile(&buckets, 0.95), Some(1.9));
        assert_eq!(quantile(&[], 0.5), None);
    }

    fn report(instance: &str, uptime: f64, requests: u64, concurrency: f64) -> StatsReport {
        StatsReport {
            instance: instance.into(),
            uptime_seconds: uptime,
            functions: vec![FunctionStats {
                namespace: "default".into(),
                name: "hello".into(),
                requests_total: requests,
                concurrency_seconds_total: concurrency,
                in_flight: 2,
                queued: 1,
                ..FunctionStats::default()
            }],
        }
    }

    #[test]
    fn rates_are_the_difference_of_two_samples_summed_over_activators() {
        let before = [report("a", 10.0, 100, 5.0), report("b", 10.0, 50, 1.0)];
        let after = [report("a", 12.0, 110, 9.0), report("b", 12.0, 54, 2.0)];
        let live = figures(&before, &after, &[METRICS.into()], "default", "hello");
        assert_eq!(live.activators, 2);
        assert!((live.requests_per_second - 7.0).abs() < 1e-9);
        assert!((live.concurrency - 2.5).abs() < 1e-9);
        assert_eq!((live.in_flight, live.queued, live.cold_starts), (4, 2, 4));
    }

    #[test]
    fn a_restarted_activator_counts_from_its_restart() {
        let live = figures(
            &[report("a", 100.0, 1000, 0.0)],
            &[report("a2", 2.0, 6, 0.0)],
            &[],
            "default",
            "hello",
        );
        assert!((live.requests_per_second - 3.0).abs() < 1e-9);
    }
}
