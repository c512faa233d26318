//! The live console of `zeroscale dev` on its admin listener: once a second, each
//! Function as the runtime shows it (Ready, replicas, URL), with the embedded
//! activator's counters (its stats: load, responses and cold starts), recorded into the
//! shared [`Console`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use zeroscale_activator::server::Activator;
use zeroscale_admin::console::{self, ColdStarts, Console, Observation, Responses};
use zeroscale_admin::process;
use zeroscale_api::FunctionStatus;

use super::runtime::ProcessRuntime;

/// Time between samples.
const PERIOD: Duration = Duration::from_secs(1);

/// What the sampler reads.
pub struct Sources {
    pub runtime: Arc<ProcessRuntime>,
    pub activator: Arc<Activator>,
    pub started: Instant,
    /// Where callers reach the Functions.
    pub address: SocketAddr,
}

/// Samples every Function into `console` each second until `shutdown` resolves.
pub async fn sample(console: Arc<Console>, sources: Sources, shutdown: impl Future<Output = ()>) {
    process::every(PERIOD, shutdown, async move || {
        console.record(console::unix_now(), observe(&sources));
    })
    .await;
}

/// Every Function now.
fn observe(sources: &Sources) -> Vec<Observation> {
    let stats = sources
        .activator
        .stats("zeroscale-dev", sources.started.elapsed());
    let stats: HashMap<(String, String), _> = stats
        .functions
        .into_iter()
        .map(|stats| ((stats.namespace.clone(), stats.name.clone()), stats))
        .collect();
    sources
        .runtime
        .view(|function| super::local_url(function, sources.address))
        .into_iter()
        .map(|function| {
            let namespace = function.metadata.namespace.clone().unwrap_or_default();
            let name = function.metadata.name.clone().unwrap_or_default();
            let status = function.status.unwrap_or_default();
            let stats = stats.get(&(namespace.clone(), name.clone()));
            let (mut responses, mut cold_starts) = (Responses::default(), ColdStarts::default());
            if let Some(stats) = stats {
                responses.add(stats);
                cold_starts.add(stats);
            }
            let (ready, reason, message) = ready(&status);
            Observation {
                ready,
                reason,
                message,
                replicas: status.ready_replicas.unwrap_or(0),
                desired: status.desired_replicas.unwrap_or(0),
                url: status.url,
                host: format!("{name}.{namespace}"),
                requests_total: stats.map_or(0, |stats| stats.requests_total),
                in_flight: stats.map_or(0, |stats| stats.in_flight),
                queued: stats.map_or(0, |stats| stats.queued),
                responses: Some(responses),
                cold_starts: Some(cold_starts),
                namespace,
                name,
            }
        })
        .collect()
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
