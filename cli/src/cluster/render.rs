//! The human output of `list` and `describe`: pure functions of Function values, the
//! Events and live figures gathered for them, and the time now, so golden tests pin
//! them down without a cluster.

use std::fmt::Write as _;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use zeroscale_api::Function;

/// One Event about a Function, as `describe` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct EventLine {
    pub time: Option<Timestamp>,
    /// `Normal` or `Warning`.
    pub type_: String,
    pub reason: String,
    pub message: String,
    /// How many times it happened (1 for a single Event).
    pub count: i32,
}

impl EventLine {
    /// Whether it records a scaling decision (the autoscaler's `Scale` action).
    pub fn is_scale(&self) -> bool {
        matches!(
            self.reason.as_str(),
            "Scaled" | "ScaledToZero" | "ScaledFromZero"
        )
    }
}

/// What the activators report about a Function right now, summed over every activator.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LiveFigures {
    /// Activators that answered.
    pub activators: usize,
    pub requests_per_second: f64,
    /// Average in-flight plus queued requests over the sample.
    pub concurrency: f64,
    pub in_flight: u64,
    pub queued: u64,
    pub cold_starts: u64,
    /// Cold-start durations in seconds, estimated from histogram buckets.
    pub cold_start_p50: Option<f64>,
    pub cold_start_p95: Option<f64>,
}

/// `list`'s table: name (namespace first with `all_namespaces`), URL, Ready and its
/// reason, replicas ready/desired, the last scale and why, age.
pub fn list(functions: &[Function], all_namespaces: bool, now: Timestamp) -> String {
    let mut header = vec!["NAME", "URL", "READY", "REPLICAS", "LAST SCALE", "AGE"];
    if all_namespaces {
        header.insert(0, "NAMESPACE");
    }
    let rows = functions.iter().map(|function| {
        let status = function.status.clone().unwrap_or_default();
        let ready = match status.ready_condition() {
            Some(c) if c.reason.is_empty() => c.status.clone(),
            Some(c) => format!("{} {}", c.status, c.reason),
            None => "Unknown".into(),
        };
        let last_scale = match (&status.last_scale_reason, &status.last_scale_time) {
            (Some(reason), Some(time)) => format!("{reason} ({} ago)", age(now, time)),
            (Some(reason), None) => reason.clone(),
            _ => "-".into(),
        };
        let mut row = vec![
            function.name_any(),
            status.url.clone().unwrap_or_else(|| "-".into()),
            ready,
            format!(
                "{}/{}",
                status.ready_replicas.unwrap_or(0),
                status.desired_replicas.unwrap_or(0)
            ),
            last_scale,
            function
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or_else(|| "-".into(), |t| age(now, t)),
        ];
        if all_namespaces {
            row.insert(0, function.namespace().unwrap_or_default());
        }
        row
    });
    table(&header, rows)
}

/// `describe`'s text: the spec in a few lines, conditions, scaling decisions, other
/// Events, and the activators' live figures, or why they could not be read.
pub fn describe(
    function: &Function,
    events: &[EventLine],
    live: &Result<LiveFigures, String>,
    now: Timestamp,
) -> String {
    let spec = &function.spec;
    let status = function.status.clone().unwrap_or_default();
    let mut out = String::new();
    let mut field = |label: &str, value: String| {
        let _ = writeln!(out, "{:<13}{value}", format!("{label}:"));
    };
    field("Name", function.name_any());
    field("Namespace", function.namespace().unwrap_or_default());
    field("URL", status.url.clone().unwrap_or_else(|| "-".into()));
    field("Image", spec.image.clone());
    field(
        "Port",
        format!("{} ({})", spec.port, wire_name(&spec.protocol)),
    );
    let scaling = &spec.scaling;
    let target = scaling
        .target
        .map_or_else(|| "default".into(), |t| t.to_string());
    field(
        "Scaling",
        format!(
            "{}..{} replicas on {} (target {target} per pod){}",
            scaling.min_replicas,
            scaling.max_replicas,
            wire_name(&scaling.metric),
            scaling
                .scale_to_zero_grace_period
                .as_ref()
                .map(|grace| format!(", to zero after {grace} idle"))
                .unwrap_or_default(),
        ),
    );
    field(
        "Requests",
        format!(
            "timeout {}, queue up to {} for {}",
            spec.requests.timeout, spec.requests.max_queued_requests, spec.requests.max_queue_wait
        ),
    );
    field(
        "Replicas",
        format!(
            "{} ready / {} desired",
            status.ready_replicas.unwrap_or(0),
            status.desired_replicas.unwrap_or(0)
        ),
    );
    if let Some(reason) = &status.last_scale_reason {
        let when = status
            .last_scale_time
            .as_ref()
            .map(|t| format!(", {} ago", age(now, t)))
            .unwrap_or_default();
        field("Last scale", format!("{reason}{when}"));
    }

    out.push_str("\nConditions:\n");
    if status.conditions.is_empty() {
        out.push_str("  none yet\n");
    } else {
        let rows = status.conditions.iter().map(|c| {
            vec![
                c.type_.clone(),
                c.status.clone(),
                c.reason.clone(),
                age(now, &c.last_transition_time),
                c.message.clone(),
            ]
        });
        indent(
            &mut out,
            &table(&["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"], rows),
        );
    }

    let (scales, others): (Vec<&EventLine>, Vec<&EventLine>) =
        events.iter().partition(|e| e.is_scale());
    out.push_str("\nScaling decisions:\n");
    event_table(&mut out, &scales, now);
    out.push_str("\nEvents:\n");
    event_table(&mut out, &others, now);

    out.push_str("\nActivators (live):\n");
    match live {
        Err(reason) => {
            let _ = writeln!(out, "  not available: {reason}");
        }
        Ok(live) => {
            let _ = writeln!(
                out,
                "  Requests/s:    {:.1}\n  Concurrency:   {:.1} (in flight {}, queued {})",
                live.requests_per_second, live.concurrency, live.in_flight, live.queued
            );
            let quantile = |q: Option<f64>| q.map_or_else(|| "-".into(), seconds);
            let _ = writeln!(
                out,
                "  Cold starts:   {} (p50 {}, p95 {})\n  Activators:    {}",
                live.cold_starts,
                quantile(live.cold_start_p50),
                quantile(live.cold_start_p95),
                live.activators
            );
        }
    }
    out
}

fn event_table(out: &mut String, events: &[&EventLine], now: Timestamp) {
    if events.is_empty() {
        out.push_str("  none\n");
        return;
    }
    let rows = events.iter().map(|e| {
        let age = e
            .time
            .map_or_else(|| "-".into(), |time| age(now, &Time(time)));
        let count = if e.count > 1 {
            format!(" (x{})", e.count)
        } else {
            String::new()
        };
        vec![
            age,
            e.type_.clone(),
            e.reason.clone(),
            format!("{}{count}", e.message),
        ]
    });
    indent(out, &table(&["AGE", "TYPE", "REASON", "MESSAGE"], rows));
}

fn indent(out: &mut String, text: &str) {
    for line in text.lines() {
        let _ = writeln!(out, "  {line}");
    }
}

/// Columns left-aligned to their widest cell, three spaces apart; the last column is
/// not padded.
pub fn table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    lines.extend(rows);
    let mut widths = vec![0; header.len()];
    for line in &lines {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for line in &lines {
        let last = line.len().saturating_sub(1);
        let mut text = String::new();
        for (index, (cell, width)) in line.iter().zip(&widths).enumerate() {
            if index == last {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<width$}   ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

/// How long ago `then` was, as kubectl shows ages: `45s`, `12m`, `5h`, `3d`.
pub fn age(now: Timestamp, then: &Time) -> String {
    let seconds = now.duration_since(then.0).as_secs().max(0);
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// A duration in seconds as people read it: `850ms`, `1.2s`.
pub fn seconds(value: f64) -> String {
    if value < 1.0 {
        format!("{:.0}ms", value * 1000.0)
    } else {
        format!("{value:.1}s")
    }
}

/// An enum's name on the wire (`http1`, `concurrency`).
fn wire_name<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => "?".into(),
    }
}
