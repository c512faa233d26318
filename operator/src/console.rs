//! The operator's live console on its admin port (reach it with `kubectl
//! port-forward`): once a second, each Function the controllers watch, with its status
//! (Ready, replicas, URL) and the load the activators last reported to the autoscaler
//! ([`Tee`] keeps a copy of each scrape, so the console adds no scrapes of its own),
//! cold starts and 5xx responses included.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use kube::ResourceExt;
use zeroscale_admin::console::{self, ColdStarts, Console, Observation, Responses};
use zeroscale_admin::process;
use zeroscale_api::stats::StatsReport;
use zeroscale_api::{Function, FunctionStatus};
use zeroscale_autoscaler::StatsSource;

use crate::watched::WatchedFunctions;

/// Time between samples.
const PERIOD: Duration = Duration::from_secs(1);

/// The activators' reports of the autoscaler's last successful scrape.
#[derive(Clone, Default)]
pub struct LastScrape(Arc<Mutex<Vec<StatsReport>>>);

impl LastScrape {
    fn reports(&self) -> MutexGuard<'_, Vec<StatsReport>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A [`StatsSource`] that hands on what `inner` scrapes and keeps a copy in a
/// [`LastScrape`].
pub struct Tee<S> {
    pub inner: S,
    pub last: LastScrape,
}

impl<S: StatsSource> StatsSource for Tee<S> {
    async fn scrape(&self) -> zeroscale_autoscaler::Result<Vec<StatsReport>> {
        let reports = self.inner.scrape().await?;
        self.last.reports().clone_from(&reports);
        Ok(reports)
    }
}

/// Samples every watched Function into `console` each second until `shutdown`.
pub async fn sample(
    console: Arc<Console>,
    functions: Arc<WatchedFunctions>,
    last: LastScrape,
    shutdown: impl Future<Output = ()>,
) {
    process::every(PERIOD, shutdown, async move || {
        let load = load(&last.reports());
        let observations = functions
            .all()
            .iter()
            .map(|function| observe(function, &load))
            .collect();
        console.record(console::unix_now(), observations);
    })
    .await;
}

/// Load of one Function summed over every activator.
#[derive(Clone, Debug, Default, PartialEq)]
struct Load {
    requests_total: u64,
    in_flight: u64,
    queued: u64,
    responses: Responses,
    cold_starts: ColdStarts,
}

/// Each Function's load summed over the activators' `reports`.
fn load(reports: &[StatsReport]) -> HashMap<(String, String), Load> {
    let mut load: HashMap<(String, String), Load> = HashMap::new();
    for stats in reports.iter().flat_map(|report| &report.functions) {
        let entry = load
            .entry((stats.namespace.clone(), stats.name.clone()))
            .or_default();
        entry.requests_total += stats.requests_total;
        entry.in_flight += stats.in_flight;
        entry.queued += stats.queued;
        entry.responses.add(stats);
        entry.cold_starts.add(stats);
    }
    load
}

/// One Function now, from its status and the activators' load.
fn observe(function: &Function, load: &HashMap<(String, String), Load>) -> Observation {
    let namespace = function.namespace().unwrap_or_default();
    let name = function.name_any();
    let status = function.status.clone().unwrap_or_default();
    let load = load
        .get(&(namespace.clone(), name.clone()))
        .cloned()
        .unwrap_or_default();
    let (ready, reason, message) = ready(&status);
    Observation {
        ready,
        reason,
        message,
        replicas: status.ready_replicas.unwrap_or(0),
        desired: status.desired_replicas.unwrap_or(0),
        url: status.url,
        // What the activator routes for in-cluster callers.
        host: format!("{name}.{namespace}"),
        requests_total: load.requests_total,
        in_flight: load.in_flight,
        queued: load.queued,
        responses: Some(load.responses),
        cold_starts: Some(load.cold_starts),
        namespace,
        name,
    }
}

/// The Ready condition: whether it is true, its reason and message.
fn ready(status: &FunctionStatus) -> (bool, String, String) {
    status
        .ready_condition()
        .map_or((false, "Unknown".into(), String::new()), |condition| {
            (
                condition.status == "True",
                condition.reason.clone(),
                condition.message.clone(),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    use zeroscale_api::stats::{FunctionStats, LATENCY_BUCKETS_SECONDS};

    fn report(instance: &str, requests_total: u64, in_flight: u64) -> StatsReport {
        StatsReport {
            instance: instance.into(),
            uptime_seconds: 1.0,
            functions: vec![FunctionStats {
                namespace: "default".into(),
                name: "hello".into(),
                requests_total,
                in_flight,
                queued: 1,
                ..FunctionStats::default()
            }],
        }
    }

    /// `report` with answers and cold starts: `cold` cold starts of 0.3 s each.
    fn answering(instance: &str, ok: u64, errors: u64, cold: u64) -> StatsReport {
        let mut report = report(instance, ok + errors, 0);
        let stats = &mut report.functions[0];
        stats.success_total = ok;
        stats.function_errors_total = errors;
        stats.server_errors_total = errors;
        stats.responses_total = ok + errors;
        stats.cold_starts_total = cold;
        stats.cold_start_seconds_total = 0.3 * cold as f64;
        if cold > 0 {
            // Cumulative: none up to 0.25 s, all from 0.5 s on.
            stats.cold_start_buckets = LATENCY_BUCKETS_SECONDS
                .iter()
                .map(|&le| if le >= 0.5 { cold } else { 0 })
                .collect();
        }
        report
    }

    #[test]
    fn load_is_summed_over_every_activator() {
        let load = load(&[answering("a", 8, 2, 1), answering("b", 5, 0, 2)]);
        let hello = &load[&("default".to_owned(), "hello".to_owned())];
        assert_eq!(
            (hello.requests_total, hello.in_flight, hello.queued),
            (15, 0, 2)
        );
        assert_eq!(
            hello.responses,
            Responses {
                total: 15,
                server_errors: 2
            }
        );
        assert_eq!(hello.cold_starts.count, 3);
        assert!((hello.cold_starts.sum_seconds - 0.9).abs() < 1e-9);
        let at = |le: f64| {
            hello
                .cold_starts
                .buckets
                .iter()
                .find(|bucket| bucket.le == le)
                .map(|bucket| bucket.count)
        };
        assert_eq!((at(0.25), at(0.5), at(60.0)), (Some(0), Some(3), Some(3)));
    }

    struct Fixed(Vec<StatsReport>);

    impl StatsSource for Fixed {
        async fn scrape(&self) -> zeroscale_autoscaler::Result<Vec<StatsReport>> {
            Ok(self.0.clone())
        }
    }

    #[tokio::test]
    async fn the_tee_hands_on_each_scrape_and_keeps_a_copy() {
        let last = LastScrape::default();
        let tee = Tee {
            inner: Fixed(vec![report("a", 1, 0)]),
            last: last.clone(),
        };
        let scraped = tee.scrape().await.expect("a scrape");
        assert_eq!(scraped, vec![report("a", 1, 0)]);
        assert_eq!(*last.reports(), scraped);
    }

    #[test]
    fn a_function_is_observed_with_its_status_and_load() {
        let mut function = Function::new("hello", zeroscale_api::FunctionSpec::with_image("hello"));
        function.metadata.namespace = Some("default".into());
        function.status = Some(FunctionStatus {
            ready_replicas: Some(0),
            desired_replicas: Some(0),
            ..FunctionStatus::default()
        });
        let observed = observe(&function, &load(&[report("a", 7, 0)]));
        assert_eq!(observed.requests_total, 7);
        assert_eq!(observed.host, "hello.default");
        assert_eq!(
            observed.cold_starts.map(|cold| cold.count),
            Some(0),
            "none yet, not unknown"
        );
        assert!(!observed.ready);
    }
}
