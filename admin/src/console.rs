//! The live console both `zeroscale dev` and the operator serve on their admin port: a
//! page (`/console`, one static file: console/page.html) that polls `/console/state`
//! every second, an invoke form (`POST /console/invoke`), and the bounded history
//! behind them. [`routes`] adds the three routes.
//!
//! A binary samples its Functions once a second into [`Observation`]s read from the
//! counters its stats already hold (the activators' `/stats`: requests, in flight,
//! queued, responses by class and the cold-start histogram, summed over activators with
//! [`Responses::add`] and [`ColdStarts::add`]; the autoscaler's desired replicas) and
//! hands them to [`Console::record`]. The console
//! turns counters into rates, keeps the last 300 samples (five minutes) per Function, marks a
//! scale event where the desired replicas changed, and answers the page with
//! [`Console::state_json`]. Nothing is estimated: a figure the binary cannot read is
//! `null` and the page says so.

mod invoke;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::Serialize;
use zeroscale_api::stats::{FunctionStats, LATENCY_BUCKETS_SECONDS};

use crate::AdminState;

/// The console page: HTML, inline CSS and plain JavaScript, with its own SVG charts.
const PAGE: &str = include_str!("console/page.html");

/// Where the page is served.
const PAGE_ROUTE: &str = "/console";

/// Where the page reads the console's state (JSON).
const STATE_ROUTE: &str = "/console/state";

/// Where the page's invoke form posts.
const INVOKE_ROUTE: &str = "/console/invoke";

/// Samples kept per Function: five minutes at one a second.
const HISTORY: usize = 300;

/// Lines of output or events kept.
const LOG_LINES: usize = 100;

/// Notes (scale events) kept per Function.
const NOTES: usize = 20;

/// One Function at one moment, as the binary's own counters show it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observation {
    pub namespace: String,
    pub name: String,
    /// The `Ready` condition: true, and its reason and message.
    pub ready: bool,
    pub reason: String,
    pub message: String,
    /// Ready replicas.
    pub replicas: i32,
    /// Replicas the autoscaler wants.
    pub desired: i32,
    /// Where callers reach it.
    pub url: Option<String>,
    /// The `Host` the activator routes to it, for the invoke form.
    pub host: String,
    /// Requests that arrived, since the activator started (a counter).
    pub requests_total: u64,
    /// Requests in flight to replicas now.
    pub in_flight: u64,
    /// Requests waiting for a replica now.
    pub queued: u64,
    /// Responses by status, when the binary reads them.
    pub responses: Option<Responses>,
    /// Cold starts, when the binary reads them.
    pub cold_starts: Option<ColdStarts>,
}

/// Responses the activator answered for one Function (counters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Responses {
    pub total: u64,
    /// Responses with a 5xx status.
    pub server_errors: u64,
}

/// The activator's cold-start histogram for one Function.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ColdStarts {
    pub count: u64,
    pub sum_seconds: f64,
    /// Cumulative counts at each upper bound, in seconds, as Prometheus keeps them.
    pub buckets: Vec<Bucket>,
}

/// One histogram bucket: how many cold starts took at most `le` seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Bucket {
    pub le: f64,
    pub count: u64,
}

impl Responses {
    /// Adds one activator's responses for a Function, from its `/stats` entry.
    pub fn add(&mut self, stats: &FunctionStats) {
        self.total += stats.responses_total;
        self.server_errors += stats.server_errors_total;
    }
}

impl ColdStarts {
    /// Adds one activator's cold starts of a Function, from its `/stats` entry.
    pub fn add(&mut self, stats: &FunctionStats) {
        self.count += stats.cold_starts_total;
        self.sum_seconds += stats.cold_start_seconds_total;
        if self.buckets.is_empty() {
            self.buckets = LATENCY_BUCKETS_SECONDS
                .iter()
                .map(|&le| Bucket { le, count: 0 })
                .collect();
        }
        // Left out of an entry with no cold start: every bucket then adds zero.
        for (bucket, count) in self.buckets.iter_mut().zip(&stats.cold_start_buckets) {
            bucket.count += count;
        }
    }
}

/// One second of a Function's history.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
struct Point {
    /// Unix time, seconds.
    t: f64,
    /// Requests per second since the previous sample; `None` for the first sample
    /// and after a counter restart.
    rps: Option<f64>,
    in_flight: u64,
    queued: u64,
    replicas: i32,
    desired: i32,
    /// `"0→1"` where the desired replicas changed at this sample.
    #[serde(skip_serializing_if = "Option::is_none")]
    scale: Option<String>,
    #[serde(skip)]
    requests_total: u64,
    #[serde(skip)]
    responses: Option<Responses>,
}

/// Something that happened, with its Unix time.
#[derive(Clone, Debug, PartialEq, Serialize)]
struct Note {
    t: f64,
    text: String,
}

/// What the console remembers of one Function.
#[derive(Debug)]
struct Tracked {
    latest: Observation,
    points: VecDeque<Point>,
    notes: VecDeque<Note>,
}

impl Tracked {
    fn new(observation: Observation) -> Self {
        Self {
            latest: observation,
            points: VecDeque::with_capacity(HISTORY),
            notes: VecDeque::new(),
        }
    }

    /// Adds the sample `observation` taken at `t`.
    fn record(&mut self, t: f64, observation: Observation) {
        let previous = self.points.back();
        let rps = previous.and_then(|previous| {
            let elapsed = t - previous.t;
            let arrived = observation
                .requests_total
                .checked_sub(previous.requests_total)?;
            (elapsed > 0.0).then(|| arrived as f64 / elapsed)
        });
        let scale = previous
            .filter(|previous| previous.desired != observation.desired)
            .map(|previous| format!("{}→{}", previous.desired, observation.desired));
        if let Some(scale) = &scale {
            push_bounded(
                &mut self.notes,
                Note {
                    t,
                    text: format!("scaled {scale}"),
                },
                NOTES,
            );
        }
        push_bounded(
            &mut self.points,
            Point {
                t,
                rps,
                in_flight: observation.in_flight,
                queued: observation.queued,
                replicas: observation.replicas,
                desired: observation.desired,
                scale,
                requests_total: observation.requests_total,
                responses: observation.responses,
            },
            HISTORY,
        );
        self.latest = observation;
    }

    /// The share of responses over the history that were 5xx, or `None` when no
    /// response was counted (or the binary does not read them).
    fn error_rate(&self) -> Option<f64> {
        let last = self.points.back()?.responses?;
        // After a counter restart only the samples since the restart count.
        let first = self
            .points
            .iter()
            .rev()
            .map_while(|point| {
                point
                    .responses
                    .filter(|r| r.total <= last.total && r.server_errors <= last.server_errors)
            })
            .last()?;
        let answered = last.total - first.total;
        (answered > 0).then(|| (last.server_errors - first.server_errors) as f64 / answered as f64)
    }

    fn view(&self) -> FunctionView<'_> {
        let latest = &self.latest;
        FunctionView {
            namespace: &latest.namespace,
            name: &latest.name,
            ready: latest.ready,
            reason: &latest.reason,
            message: &latest.message,
            replicas: latest.replicas,
            desired: latest.desired,
            at_zero: latest.desired == 0 && latest.replicas == 0,
            url: latest.url.as_deref(),
            requests_total: latest.requests_total,
            cold_starts: latest.cold_starts.as_ref(),
            error_rate: self.error_rate(),
            responses: latest.responses,
            points: &self.points,
            notes: &self.notes,
        }
    }
}

fn push_bounded<T>(queue: &mut VecDeque<T>, item: T, bound: usize) {
    if queue.len() == bound {
        queue.pop_front();
    }
    queue.push_back(item);
}

/// One Function in the state the page reads.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FunctionView<'a> {
    namespace: &'a str,
    name: &'a str,
    ready: bool,
    reason: &'a str,
    message: &'a str,
    replicas: i32,
    desired: i32,
    at_zero: bool,
    url: Option<&'a str>,
    requests_total: u64,
    cold_starts: Option<&'a ColdStarts>,
    error_rate: Option<f64>,
    responses: Option<Responses>,
    points: &'a VecDeque<Point>,
    notes: &'a VecDeque<Note>,
}

/// The state the page reads.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StateView<'a> {
    /// Which binary serves it: `zeroscale dev` or `operator`.
    source: &'a str,
    /// Whether the invoke form may send requests.
    invoke: bool,
    functions: Vec<FunctionView<'a>>,
    log: &'a VecDeque<Note>,
}

/// The console's memory: each Function's latest observation and history, and recent
/// log lines. Shared by the sampler that records and the routes that read.
#[derive(Debug)]
pub struct Console {
    source: &'static str,
    invoke: bool,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    functions: BTreeMap<(String, String), Tracked>,
    log: VecDeque<Note>,
}

impl Console {
    /// A console for the binary named `source`; `invoke` enables the invoke form.
    pub fn new(source: &'static str, invoke: bool) -> Self {
        Self {
            source,
            invoke,
            inner: Mutex::default(),
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the invoke form may send requests.
    pub fn invoke_enabled(&self) -> bool {
        self.invoke
    }

    /// Records every Function's observation taken at Unix time `t`; Functions not in
    /// `observations` are forgotten.
    pub fn record(&self, t: f64, observations: Vec<Observation>) {
        let mut inner = self.inner();
        let mut kept = BTreeMap::new();
        for observation in observations {
            let key = (observation.namespace.clone(), observation.name.clone());
            let mut tracked = inner
                .functions
                .remove(&key)
                .unwrap_or_else(|| Tracked::new(observation.clone()));
            tracked.record(t, observation);
            kept.insert(key, tracked);
        }
        inner.functions = kept;
    }

    /// Keeps `line` (output or an event) among the recent log lines, at Unix time `t`.
    pub fn log(&self, t: f64, line: String) {
        push_bounded(&mut self.inner().log, Note { t, text: line }, LOG_LINES);
    }

    /// The latest observation of `namespace/name`, if the console lists it.
    pub fn observation(&self, namespace: &str, name: &str) -> Option<Observation> {
        self.inner()
            .functions
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|tracked| tracked.latest.clone())
    }

    /// The state the page reads, as JSON.
    pub fn state_json(&self) -> String {
        let inner = self.inner();
        let state = StateView {
            source: self.source,
            invoke: self.invoke,
            functions: inner.functions.values().map(Tracked::view).collect(),
            log: &inner.log,
        };
        serde_json::to_string(&state).unwrap_or_else(|_| "{}".into())
    }
}

/// Adds the console's page (`/console`, and `/` redirecting to it), its state
/// (`/console/state`) and its invoke form (`/console/invoke`, sending through the
/// activator at `activator`, `host:port`) to `state`.
pub fn routes(state: AdminState, console: Arc<Console>, activator: String) -> AdminState {
    let activator: Arc<str> = activator.into();
    let state_console = Arc::clone(&console);
    state
        .with_page(PAGE_ROUTE, PAGE)
        .with_json_route(STATE_ROUTE, Arc::new(move || state_console.state_json()))
        .with_post_route(
            INVOKE_ROUTE,
            Arc::new(move |body| {
                let console = Arc::clone(&console);
                let activator = Arc::clone(&activator);
                Box::pin(async move { invoke::invoke(&console, &activator, &body).await })
            }),
        )
}

/// Now, as Unix seconds.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(requests_total: u64, desired: i32) -> Observation {
        Observation {
            namespace: "default".into(),
            name: "hello".into(),
            replicas: desired,
            desired,
            requests_total,
            ..Observation::default()
        }
    }

    fn state(console: &Console) -> serde_json::Value {
        serde_json::from_str(&console.state_json()).expect("valid JSON")
    }

    #[test]
    fn rates_come_from_counter_differences_and_restarts_give_no_rate() {
        let console = Console::new("test", false);
        console.record(100.0, vec![observed(10, 1)]);
        console.record(102.0, vec![observed(30, 1)]);
        console.record(103.0, vec![observed(4, 1)]);
        let state = state(&console);
        let points = &state["functions"][0]["points"];
        assert_eq!(points[0]["rps"], serde_json::Value::Null);
        assert_eq!(points[1]["rps"], 10.0);
        assert_eq!(points[2]["rps"], serde_json::Value::Null);
    }

    #[test]
    fn a_change_of_desired_replicas_is_marked_as_a_scale_event() {
        let console = Console::new("test", false);
        console.record(1.0, vec![observed(0, 0)]);
        console.record(2.0, vec![observed(1, 1)]);
        console.record(3.0, vec![observed(1, 1)]);
        let state = state(&console);
        let function = &state["functions"][0];
        assert_eq!(function["points"][1]["scale"], "0→1");
        assert!(function["points"][2].get("scale").is_none());
        assert_eq!(function["notes"][0]["text"], "scaled 0→1");
        assert_eq!(function["atZero"], false);
    }

    #[test]
    fn history_keeps_only_the_last_five_minutes_of_samples() {
        let console = Console::new("test", false);
        for second in 0..HISTORY + 10 {
            console.record(second as f64, vec![observed(second as u64, 1)]);
        }
        let state = state(&console);
        let points = state["functions"][0]["points"]
            .as_array()
            .expect("points")
            .clone();
        assert_eq!(points.len(), HISTORY);
        assert_eq!(points[0]["t"], 10.0);
    }

    #[test]
    fn functions_no_longer_observed_are_forgotten() {
        let console = Console::new("test", true);
        console.record(1.0, vec![observed(0, 0)]);
        console.record(2.0, vec![]);
        let state = state(&console);
        assert_eq!(state["functions"], serde_json::json!([]));
        assert_eq!(state["invoke"], true);
        assert!(console.observation("default", "hello").is_none());
    }

    #[test]
    fn error_rate_is_the_share_of_5xx_responses_since_the_last_restart() {
        let console = Console::new("test", false);
        let with = |total, server_errors| Observation {
            responses: Some(Responses {
                total,
                server_errors,
            }),
            ..observed(total, 1)
        };
        console.record(1.0, vec![with(100, 50)]);
        console.record(2.0, vec![with(0, 0)]);
        console.record(3.0, vec![with(10, 1)]);
        console.record(4.0, vec![with(20, 2)]);
        let state = state(&console);
        assert_eq!(state["functions"][0]["errorRate"], 0.1);
    }

    #[tokio::test]
    async fn routes_serve_the_page_the_state_and_a_read_only_invoke() {
        let console = Arc::new(Console::new("test", false));
        console.record(1.0, vec![observed(3, 1)]);
        let state = crate::AdminState::new(
            prometheus::Registry::new(),
            crate::Readiness::not_ready("test"),
        );
        let state = routes(state, console, "127.0.0.1:9".into());
        let page = crate::respond(&state, &http::Method::GET, PAGE_ROUTE);
        assert_eq!(page.status(), http::StatusCode::OK);
        let json = crate::respond(&state, &http::Method::GET, STATE_ROUTE);
        let body = http_body_util::BodyExt::collect(json.into_body())
            .await
            .expect("a body")
            .to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(json["functions"][0]["requestsTotal"], 3);
        let handler = &state.post_routes[0];
        assert_eq!(handler.0, INVOKE_ROUTE);
        let (status, _) = (handler.1)(hyper::body::Bytes::from_static(b"{}")).await;
        assert_eq!(status, http::StatusCode::FORBIDDEN);
        assert!(PAGE.contains("console/state") && PAGE.contains("console/invoke"));
    }

    #[test]
    fn the_log_keeps_the_last_lines() {
        let console = Console::new("test", false);
        for line in 0..LOG_LINES + 1 {
            console.log(line as f64, format!("line {line}"));
        }
        let state = state(&console);
        assert_eq!(state["log"][0]["text"], "line 1");
        assert_eq!(
            state["log"].as_array().map(Vec::len),
            Some(LOG_LINES),
            "{state}"
        );
    }

    #[test]
    fn cold_starts_and_errors_add_up_over_the_activators_stats() {
        let hello = |responses_total, server_errors_total, cold: bool| FunctionStats {
            namespace: "default".into(),
            name: "hello".into(),
            responses_total,
            server_errors_total,
            cold_starts_total: u64::from(cold),
            cold_start_seconds_total: if cold { 0.7 } else { 0.0 },
            // Cumulative: 0.7 s is within 1 s and every larger bound.
            cold_start_buckets: if cold {
                LATENCY_BUCKETS_SECONDS
                    .iter()
                    .map(|&le| u64::from(le >= 1.0))
                    .collect()
            } else {
                Vec::new()
            },
            ..FunctionStats::default()
        };
        let (mut responses, mut cold_starts) = (Responses::default(), ColdStarts::default());
        for stats in [hello(3, 0, true), hello(1, 1, false)] {
            responses.add(&stats);
            cold_starts.add(&stats);
        }
        assert_eq!(
            responses,
            Responses {
                total: 4,
                server_errors: 1
            }
        );
        assert_eq!(cold_starts.count, 1);
        let at = |le: f64| {
            cold_starts
                .buckets
                .iter()
                .find(|bucket| bucket.le == le)
                .map(|bucket| bucket.count)
        };
        assert_eq!((at(0.5), at(1.0), at(60.0)), (Some(0), Some(1), Some(1)));
    }
}
