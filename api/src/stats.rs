//! The stats wire format: what each activator replica serves on `GET /stats` (admin
//! port, JSON) and the operator's autoscaler reads every tick.
//!
//! Counters are cumulative since the activator started, so any number of readers can
//! scrape without resetting each other: a reader takes the difference of two scrapes
//! and divides by the time between them. `concurrency_seconds_total` is the integral of
//! (in-flight + queued) requests over time, so its rate is the average concurrency.

use serde::{Deserialize, Serialize};

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
}
