//! The stats wire format: what each activator replica serves on `GET /stats` (admin
//! port, JSON) and the operator's autoscaler reads every tick.
//!
//! Counters are cumulative since the activator started, so any number of readers can
//! scrape without resetting each other: a reader takes the difference of two scrapes
//! and divides by the time between them. `concurrency_seconds_total` is the integral of
//! (in-flight + queued) requests over time, so its rate is the average concurrency.

use serde::{Deserialize, Serialize};

/// Upper bounds, in seconds, of the activator's latency histograms: request duration,
/// queue wait and cold start (whose counts [`FunctionStats::cold_start_buckets`] carries).
pub const LATENCY_BUCKETS_SECONDS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// One activator replica's stats.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StatsReport {
    /// Identifies the activator process; a new value means its counters restarted.
    pub instance: String,
    /// Seconds since the activator started, at the time of this report.
    pub uptime_seconds: f64,
    pub functions: Vec<FunctionStats>,
}

/// Load of one Function seen by one activator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FunctionStats {
    pub namespace: String,
    pub name: String,
    /// Requests that arrived for the Function.
    pub requests_total: u64,
    /// Integral over time of requests in flight or queued, in request-seconds.
    pub concurrency_seconds_total: f64,
    /// Requests in flight to pods now.
    pub in_flight: u64,
    /// Requests waiting for a pod now.
    pub queued: u64,
    /// Requests the Function answered below 500 (the usage counters below default to
    /// zero when an older activator leaves them out).
    #[serde(default)]
    pub success_total: u64,
    /// Requests the Function answered 5xx, or failed while answering.
    #[serde(default)]
    pub function_errors_total: u64,
    /// Requests the activator answered itself (queue full, timeout, cannot start).
    #[serde(default)]
    pub refused_total: u64,
    /// Time requests held a pod's slot, counted when each ends.
    #[serde(default)]
    pub execution_seconds_total: f64,
    /// Pod-seconds with at least one request in flight through this activator, counted
    /// when each busy stretch ends.
    #[serde(default)]
    pub busy_seconds_total: f64,
    /// Requests that found no pod ready and woke the Function.
    #[serde(default)]
    pub cold_starts_total: u64,
    /// Time those requests waited for a pod.
    #[serde(default)]
    pub cold_start_seconds_total: f64,
    /// Cold starts that took at most each of [`LATENCY_BUCKETS_SECONDS`] (cumulative, as
    /// Prometheus keeps them); left out while there was none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cold_start_buckets: Vec<u64>,
    /// Responses with a 5xx status, the activator's own included.
    #[serde(default)]
    pub server_errors_total: u64,
    /// Responses of every status, the activator's own included (what the 5xx rate is a
    /// share of).
    #[serde(default)]
    pub responses_total: u64,
}
