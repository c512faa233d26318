//! Prometheus metrics of the activator. Per-Function series are resolved once, when the
//! Function is added ([`FunctionMetrics`]), so the request path only touches atomics.

use prometheus::{
    Counter, CounterVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry,
};

use zeroscale_api::routing::FunctionKey;
use zeroscale_api::stats::LATENCY_BUCKETS_SECONDS;

use crate::connections::ConnectionMetrics;
use crate::usage::Outcome;

/// Status classes a response is counted under.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// All activator metrics.
#[derive(Clone, Debug)]
pub struct Metrics {
    requests: IntCounterVec,
    request_duration: HistogramVec,
    queue_wait: HistogramVec,
    cold_start: HistogramVec,
    wakes: IntCounterVec,
    in_flight: IntGaugeVec,
    queued: IntGaugeVec,
    /// Activator-generated errors by cause (the `x-zeroscale-error` value).
    pub errors: IntCounterVec,
    /// Active probes of starting pods by result (`ready`, `not_ready`).
    pub probes: IntCounterVec,
    /// Client connections open, refused and closed for idling.
    pub(crate) connections: ConnectionMetrics,
    invocations: IntCounterVec,
    execution_seconds: CounterVec,
    busy_seconds: CounterVec,
    telemetry_dropped: IntCounterVec,
    /// Spans the exporter dropped because its queue was full.
    pub dropped_spans: IntCounter,
    /// Access log lines dropped because the writer was behind.
    pub dropped_access_log_lines: IntCounter,
}

/// One Function's series.
#[derive(Clone, Debug)]
pub(crate) struct FunctionMetrics {
    requests_by_class: [IntCounter; 5],
    pub request_duration: Histogram,
    pub queue_wait: Histogram,
    pub cold_start: Histogram,
    pub wakes: IntCounter,
    in_flight: IntGauge,
    queued: IntGauge,
    /// Requests by [`Outcome`], in the order of [`Outcome::ALL`].
    invocations: [IntCounter; 3],
    pub execution_seconds: Counter,
    pub busy_seconds: Counter,
}

impl FunctionMetrics {
    /// Counts a response with `status`.
    pub(crate) fn count_response(&self, status: http::StatusCode) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.requests_by_class[class].inc();
    }

    /// Sets the requests in flight and waiting.
    pub(crate) fn set_load(&self, in_flight: usize, queued: usize) {
        let gauge = |count: usize| i64::try_from(count).unwrap_or(i64::MAX);
        self.in_flight.set(gauge(in_flight));
        self.queued.set(gauge(queued));
    }

    /// Responses with a 5xx status.
    pub(crate) fn server_errors(&self) -> u64 {
        self.requests_by_class[4].get()
    }

    /// Responses of every status.
    pub(crate) fn responses(&self) -> u64 {
        self.requests_by_class.iter().map(IntCounter::get).sum()
    }

    /// Cumulative cold-start counts at each of [`LATENCY_BUCKETS_SECONDS`].
    pub(crate) fn cold_start_buckets(&self) -> Vec<u64> {
        use prometheus::core::Metric as _;
        self.cold_start
            .metric()
            .get_histogram()
            .get_bucket()
            .iter()
            .map(|bucket| bucket.cumulative_count())
            .collect()
    }

    /// Counts a request's outcome.
    pub(crate) fn count_outcome(&self, outcome: Outcome) {
        self.invocations[outcome as usize].inc();
    }

    /// Requests counted with `outcome`.
    pub(crate) fn outcomes(&self, outcome: Outcome) -> u64 {
        self.invocations[outcome as usize].get()
    }
}

impl Metrics {
    /// Creates the metrics, not yet registered.
    pub fn new() -> prometheus::Result<Self> {
        let function = &["namespace", "function"];
        let histogram = |name: &str, help: &str| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS_SECONDS.to_vec()),
                function,
            )
        };
        let telemetry_dropped = IntCounterVec::new(
            Opts::new(
                "zeroscale_activator_telemetry_dropped_total",
                "Spans and access log lines dropped because their writer was behind, by signal",
            ),
            &["signal"],
        )?;
        Ok(Self {
            dropped_spans: telemetry_dropped.with_label_values(&["span"]),
            dropped_access_log_lines: telemetry_dropped.with_label_values(&["access_log_line"]),
            telemetry_dropped,
            requests: IntCounterVec::new(
                Opts::new(
                    "zeroscale_activator_requests_total",
                    "Requests answered, by Function and status class",
                ),
                &["namespace", "function", "code_class"],
            )?,
            request_duration: histogram(
                "zeroscale_activator_request_duration_seconds",
                "Time from a request's arrival to its response headers",
            )?,
            queue_wait: histogram(
                "zeroscale_activator_queue_wait_seconds",
                "Time requests waited for a pod",
            )?,
            cold_start: histogram(
                "zeroscale_activator_cold_start_seconds",
                "Time from the first request at zero to a pod taking it",
            )?,
            wakes: IntCounterVec::new(
                Opts::new(
                    "zeroscale_activator_wakes_total",
                    "Wake requests sent to the control plane",
                ),
                function,
            )?,
            in_flight: IntGaugeVec::new(
                Opts::new(
                    "zeroscale_activator_in_flight_requests",
                    "Requests in flight to pods",
                ),
                function,
            )?,
            queued: IntGaugeVec::new(
                Opts::new(
                    "zeroscale_activator_queued_requests",
                    "Requests waiting for a pod",
                ),
                function,
            )?,
            errors: IntCounterVec::new(
                Opts::new(
                    "zeroscale_activator_errors_total",
                    "Responses the activator generated itself, by cause",
                ),
                &["cause"],
            )?,
            probes: IntCounterVec::new(
                Opts::new(
                    "zeroscale_activator_probes_total",
                    "Active probes of starting pods, by result",
                ),
                &["result"],
            )?,
            connections: ConnectionMetrics::new()?,
            invocations: IntCounterVec::new(
                Opts::new(
                    "zeroscale_function_invocations_total",
                    "Requests for a Function by outcome: success, function_error, refused",
                ),
                &["namespace", "function", "outcome"],
            )?,
            execution_seconds: CounterVec::new(
                Opts::new(
                    "zeroscale_function_execution_seconds_total",
                    "Time requests held a pod of the Function, counted as each ends",
                ),
                function,
            )?,
            busy_seconds: CounterVec::new(
                Opts::new(
                    "zeroscale_function_busy_seconds_total",
                    "Pod-seconds with a request in flight, counted as each busy stretch ends",
                ),
                function,
            )?,
        })
    }

    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.requests.clone()))?;
        registry.register(Box::new(self.request_duration.clone()))?;
        registry.register(Box::new(self.queue_wait.clone()))?;
        registry.register(Box::new(self.cold_start.clone()))?;
        registry.register(Box::new(self.wakes.clone()))?;
        registry.register(Box::new(self.in_flight.clone()))?;
        registry.register(Box::new(self.queued.clone()))?;
        registry.register(Box::new(self.errors.clone()))?;
        registry.register(Box::new(self.probes.clone()))?;
        self.connections.register(registry)?;
        registry.register(Box::new(self.invocations.clone()))?;
        registry.register(Box::new(self.execution_seconds.clone()))?;
        registry.register(Box::new(self.busy_seconds.clone()))?;
        registry.register(Box::new(self.telemetry_dropped.clone()))?;
        Ok(())
    }

    /// The series of one Function.
    pub(crate) fn for_function(&self, key: &FunctionKey) -> FunctionMetrics {
        let labels = labels(key);
        let [namespace, name] = labels;
        let class = |class: &str| self.requests.with_label_values(&[namespace, name, class]);
        FunctionMetrics {
            requests_by_class: STATUS_CLASSES.map(class),
            request_duration: self.request_duration.with_label_values(&labels),
            queue_wait: self.queue_wait.with_label_values(&labels),
            cold_start: self.cold_start.with_label_values(&labels),
            wakes: self.wakes.with_label_values(&labels),
            in_flight: self.in_flight.with_label_values(&labels),
            queued: self.queued.with_label_values(&labels),
            invocations: Outcome::ALL.map(|outcome| {
                self.invocations
                    .with_label_values(&[namespace, name, outcome.metric_label()])
            }),
            execution_seconds: self.execution_seconds.with_label_values(&labels),
            busy_seconds: self.busy_seconds.with_label_values(&labels),
        }
    }

    /// Drops the series of a deleted Function.
    pub(crate) fn forget(&self, key: &FunctionKey) {
        let labels = labels(key);
        let [namespace, name] = labels;
        for class in STATUS_CLASSES {
            let _ = self.requests.remove_label_values(&[namespace, name, class]);
        }
        for outcome in Outcome::ALL {
            let _ =
                self.invocations
                    .remove_label_values(&[namespace, name, outcome.metric_label()]);
        }
        let _ = self.execution_seconds.remove_label_values(&labels);
        let _ = self.busy_seconds.remove_label_values(&labels);
        for vec in [&self.request_duration, &self.queue_wait, &self.cold_start] {
            let _ = vec.remove_label_values(&labels);
        }
        let _ = self.wakes.remove_label_values(&labels);
        let _ = self.in_flight.remove_label_values(&labels);
        let _ = self.queued.remove_label_values(&labels);
    }
}

/// The `namespace` and `function` labels of a Function's series.
fn labels(key: &FunctionKey) -> [&str; 2] {
    [key.namespace.as_str(), key.name.as_str()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_series_are_labelled_and_forgotten_with_the_function() {
        let registry = Registry::new();
        let metrics = Metrics::new().expect("metrics");
        metrics.register(&registry).expect("registers");
        let key = FunctionKey::new("team", "hello");
        let function = metrics.for_function(&key);
        function.count_response(http::StatusCode::OK);
        function.count_response(http::StatusCode::SERVICE_UNAVAILABLE);
        function.count_outcome(Outcome::FunctionError);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .expect("encodes");
        assert!(text.contains(
            r#"zeroscale_activator_requests_total{code_class="2xx",function="hello",namespace="team"} 1"#
        ), "{text}");
        assert!(text.contains(r#"code_class="5xx",function="hello",namespace="team"} 1"#));
        assert!(text.contains(
            r#"zeroscale_function_invocations_total{function="hello",namespace="team",outcome="function_error"} 1"#
        ), "{text}");

        metrics.forget(&key);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .expect("encodes");
        assert!(!text.contains(r#"function="hello""#), "{text}");
    }
}
