//! What the activator counts for usage metering: each request's outcome (success,
//! function error, refused by the platform), and publishing the execution and busy
//! time that [`Capacity`] sums into the Function's counters and stats entry.

use std::sync::atomic::{AtomicU64, Ordering};

use http::StatusCode;
use zeroscale_api::stats::FunctionStats;

use crate::capacity::{Capacity, CapacityError};
use crate::errors::ActivatorError;
use crate::metrics::FunctionMetrics;

/// How a request ended, from the Function owner's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The Function answered below 500.
    Success = 0,
    /// The Function answered 5xx, did not answer in time, or failed while answering.
    FunctionError = 1,
    /// The platform answered without the Function running: queue full, activation
    /// timeout, cannot start, pod unreachable, request rejected.
    Refused = 2,
}

impl Outcome {
    pub(crate) const ALL: [Outcome; 3] = [Self::Success, Self::FunctionError, Self::Refused];

    pub(crate) fn metric_label(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::FunctionError => "function_error",
            Self::Refused => "refused",
        }
    }

    /// The outcome of a response a pod sent.
    pub(crate) fn of_status(status: StatusCode) -> Self {
        if status.is_server_error() {
            Self::FunctionError
        } else {
            Self::Success
        }
    }

    /// The outcome of an answer the activator made itself: a function error when the
    /// pod had the request, refused otherwise.
    pub(crate) fn of_error(error: &ActivatorError) -> Self {
        match error {
            ActivatorError::UpstreamTimeout(_) | ActivatorError::Upstream(_) => Self::FunctionError,
            ActivatorError::Capacity(
                CapacityError::QueueFull
                | CapacityError::NotHeldWhileStarting
                | CapacityError::ActivationTimeout(_)
                | CapacityError::CannotStart(_),
            )
            | ActivatorError::Route(_)
            | ActivatorError::BodyTooLarge { .. }
            | ActivatorError::Unsupported(_)
            | ActivatorError::RequestBody(_)
            | ActivatorError::UpstreamConnect(_)
            | ActivatorError::Auth(_)
            | ActivatorError::DuplicateHost => Self::Refused,
        }
    }
}

/// How much of the execution and busy time has been added to the Prometheus counters.
#[derive(Debug, Default)]
pub(crate) struct Published {
    execution_micros: AtomicU64,
    busy_micros: AtomicU64,
}

impl Published {
    /// Adds what `capacity` counted since the last call to the Function's counters.
    /// Called from one sampling task only.
    pub(crate) fn publish(&self, metrics: &FunctionMetrics, capacity: &Capacity) {
        // One writer: a load and a store, and no store for an idle Function.
        let catch_up = |published: &AtomicU64, total: u64| {
            let before = published.load(Ordering::Relaxed);
            if total == before {
                return 0.0;
            }
            published.store(total, Ordering::Relaxed);
            total.saturating_sub(before) as f64 / 1e6
        };
        let execution = catch_up(&self.execution_micros, capacity.execution_micros());
        let busy = catch_up(&self.busy_micros, capacity.busy_micros());
        if execution > 0.0 {
            metrics.execution_seconds.inc_by(execution);
        }
        if busy > 0.0 {
            metrics.busy_seconds.inc_by(busy);
        }
    }
}

/// Fills the usage counters of a Function's stats entry.
pub(crate) fn fill(stats: &mut FunctionStats, metrics: &FunctionMetrics, capacity: &Capacity) {
    stats.success_total = metrics.outcomes(Outcome::Success);
    stats.function_errors_total = metrics.outcomes(Outcome::FunctionError);
    stats.refused_total = metrics.outcomes(Outcome::Refused);
    stats.execution_seconds_total = capacity.execution_micros() as f64 / 1e6;
    stats.busy_seconds_total = capacity.busy_micros() as f64 / 1e6;
    stats.cold_starts_total = metrics.cold_start.get_sample_count();
    stats.cold_start_seconds_total = metrics.cold_start.get_sample_sum();
    if stats.cold_starts_total > 0 {
        stats.cold_start_buckets = metrics.cold_start_buckets();
    }
    stats.server_errors_total = metrics.server_errors();
    stats.responses_total = metrics.responses();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_pod_answer_is_a_success_below_500_and_a_function_error_from_500() {
        assert_eq!(Outcome::of_status(StatusCode::OK), Outcome::Success);
        assert_eq!(Outcome::of_status(StatusCode::NOT_FOUND), Outcome::Success);
        assert_eq!(
            Outcome::of_status(StatusCode::INTERNAL_SERVER_ERROR),
            Outcome::FunctionError
        );
    }

    #[test]
    fn the_activator_refuses_unless_the_pod_had_the_request() {
        let timeout = ActivatorError::UpstreamTimeout(Duration::from_secs(1));
        assert_eq!(Outcome::of_error(&timeout), Outcome::FunctionError);
        let full = ActivatorError::Capacity(CapacityError::QueueFull);
        assert_eq!(Outcome::of_error(&full), Outcome::Refused);
        let late = ActivatorError::Capacity(CapacityError::ActivationTimeout(Duration::ZERO));
        assert_eq!(Outcome::of_error(&late), Outcome::Refused);
    }
}
