//! A Function's scaling settings as plain values, defaults applied, ready for
//! [`decide`](super::decide).

use std::time::Duration;

use zeroscale_api::validate::Durations;
use zeroscale_api::{Metric, ScalingDefaults, ScalingSpec};

/// Shortest panic window: a shorter one would hold less than one 1 s tick of samples.
pub const MIN_PANIC_WINDOW: Duration = Duration::from_secs(1);

/// How one Function scales, read from its `spec.scaling` with every default applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingPolicy {
    /// What the samples measure; `Cpu` leaves 1..N to the HorizontalPodAutoscaler.
    pub metric: Metric,
    /// Fewest pods; 0 allows scale to zero.
    pub min_replicas: i32,
    /// Most pods.
    pub max_replicas: i32,
    /// Pods a new Function starts with (`effective_initial_replicas()`); a wake from
    /// zero asks for at least this many (see [`ScalingPolicy::wake_scale`]).
    pub initial_replicas: i32,
    /// Load per pod aimed for, in the unit of `metric` (at least 1).
    pub target: f64,
    /// Window over which load is averaged for normal decisions.
    pub stable_window: Duration,
    /// Short window that detects bursts.
    pub panic_window: Duration,
    /// Load over the panic window, as a multiple of what the ready pods take at target,
    /// from which panic mode starts (200% is 2.0).
    pub panic_threshold: f64,
    /// Largest factor by which the pod count may grow in one decision (at least 1).
    pub max_scale_up_rate: f64,
    /// Largest factor by which the pod count may shrink in one decision (at least 1).
    pub max_scale_down_rate: f64,
    /// How long a Function must see no request before it scales to zero.
    pub scale_to_zero_grace_period: Duration,
    /// How long a lower pod count must be wanted before it is applied; zero turns the
    /// delay off.
    pub scale_down_delay: Duration,
}

impl ScalingPolicy {
    /// The policy of a spec whose durations `FunctionSpec::validate` parsed, with the
    /// operator's `defaults` for what the spec leaves unset.
    ///
    /// The panic window is `panicWindowPercentage` percent of the stable window, at
    /// least `MIN_PANIC_WINDOW` (1 s). Values the schema already bounds are clamped again
    /// so that a spec that skipped validation cannot make the decision divide by zero.
    pub fn from_spec(
        spec: &ScalingSpec,
        durations: &Durations,
        defaults: &ScalingDefaults,
    ) -> Self {
        let stable_window = durations.stable_window.unwrap_or(defaults.stable_window);
        let percentage = spec
            .panic_window_percentage
            .unwrap_or(defaults.panic_window_percentage)
            .clamp(1, 100)
            .unsigned_abs();
        let panic_window = (stable_window * percentage / 100).max(MIN_PANIC_WINDOW);
        let threshold = spec
            .panic_threshold_percentage
            .unwrap_or(defaults.panic_threshold_percentage);
        Self {
            metric: spec.metric,
            min_replicas: spec.min_replicas.max(0),
            max_replicas: spec.max_replicas.max(1),
            initial_replicas: spec.effective_initial_replicas().max(0),
            target: f64::from(spec.effective_target(defaults).max(1)),
            stable_window,
            panic_window,
            panic_threshold: f64::from(threshold) / 100.0,
            max_scale_up_rate: spec
                .max_scale_up_rate
                .unwrap_or(defaults.max_scale_up_rate)
                .max(1.0),
            max_scale_down_rate: spec
                .max_scale_down_rate
                .unwrap_or(defaults.max_scale_down_rate)
                .max(1.0),
            scale_to_zero_grace_period: durations
                .scale_to_zero_grace_period
                .unwrap_or(defaults.scale_to_zero_grace_period),
            scale_down_delay: durations
                .scale_down_delay
                .unwrap_or(defaults.scale_down_delay),
        }
    }

    /// Pods a wake from zero asks for at once: `initialReplicas`, and at least one.
    pub fn wake_scale(&self) -> i32 {
        self.initial_replicas.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroscale_api::FunctionSpec;

    fn durations() -> Durations {
        FunctionSpec::with_image("example.com/hello:1")
            .validate()
            .expect("the default spec is valid")
    }

    fn secs(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn default_spec_gives_knative_defaults() {
        let policy = ScalingPolicy::from_spec(
            &ScalingSpec::default(),
            &durations(),
            &ScalingDefaults::default(),
        );
        assert_eq!(
            policy,
            ScalingPolicy {
                metric: Metric::Concurrency,
                min_replicas: 0,
                max_replicas: 10,
                initial_replicas: 1,
                target: 100.0,
                stable_window: secs(60),
                panic_window: secs(6),
                panic_threshold: 2.0,
                max_scale_up_rate: 1000.0,
                max_scale_down_rate: 2.0,
                scale_to_zero_grace_period: secs(30),
                scale_down_delay: secs(0),
            }
        );
    }

    #[test]
    fn panic_window_is_a_share_of_the_stable_window_and_at_least_one_second() {
        let cases = [
            // (stable window, panic window percentage, panic window)
            (secs(60), 10, Duration::from_secs(6)),
            (secs(60), 100, Duration::from_secs(60)),
            (secs(100), 15, Duration::from_secs(15)),
            (secs(90), 5, Duration::from_millis(4500)),
            (secs(6), 10, MIN_PANIC_WINDOW),
            (secs(6), 1, MIN_PANIC_WINDOW),
        ];
        for (stable, percentage, expected) in cases {
            let spec = ScalingSpec {
                panic_window_percentage: Some(percentage),
                ..ScalingSpec::default()
            };
            let durations = Durations {
                stable_window: Some(stable),
                ..durations()
            };
            let policy = ScalingPolicy::from_spec(&spec, &durations, &ScalingDefaults::default());
            assert_eq!(policy.panic_window, expected, "{stable:?} at {percentage}%");
        }
    }

    #[test]
    fn target_comes_from_the_metric_and_container_concurrency() {
        let cases = [
            // (metric, target, containerConcurrency, effective target)
            (Metric::Concurrency, None, 0, 100.0),
            (Metric::Concurrency, None, 10, 7.0),
            (Metric::Concurrency, None, 1, 1.0),
            (Metric::Concurrency, Some(3), 10, 3.0),
            (Metric::Rps, None, 0, 200.0),
            (Metric::Cpu, None, 0, 80.0),
        ];
        for (metric, target, container_concurrency, expected) in cases {
            let spec = ScalingSpec {
                metric,
                target,
                container_concurrency,
                ..ScalingSpec::default()
            };
            let policy = ScalingPolicy::from_spec(&spec, &durations(), &ScalingDefaults::default());
            assert_eq!(
                policy.target, expected,
                "{metric:?} target {target:?} containerConcurrency {container_concurrency}"
            );
        }
    }

    #[test]
    fn wake_scale_is_initial_replicas_and_at_least_one() {
        let cases = [
            // (minReplicas, initialReplicas, wake scale)
            (0, None, 1),
            (0, Some(0), 1),
            (0, Some(3), 3),
            (2, None, 2),
        ];
        for (min_replicas, initial_replicas, expected) in cases {
            let spec = ScalingSpec {
                min_replicas,
                initial_replicas,
                ..ScalingSpec::default()
            };
            let policy = ScalingPolicy::from_spec(&spec, &durations(), &ScalingDefaults::default());
            assert_eq!(
                policy.wake_scale(),
                expected,
                "min {min_replicas} initial {initial_replicas:?}"
            );
        }
    }

    #[test]
    fn operator_defaults_fill_what_the_function_leaves_unset_and_its_own_values_win() {
        let defaults = ScalingDefaults {
            target_concurrency: 40,
            stable_window: secs(120),
            scale_to_zero_grace_period: secs(300),
            ..ScalingDefaults::default()
        };
        let policy = ScalingPolicy::from_spec(&ScalingSpec::default(), &durations(), &defaults);
        assert_eq!(policy.target, 40.0);
        assert_eq!(policy.stable_window, secs(120));
        assert_eq!(policy.panic_window, secs(12));
        assert_eq!(policy.scale_to_zero_grace_period, secs(300));

        let spec = ScalingSpec {
            target: Some(10),
            panic_window_percentage: Some(50),
            ..ScalingSpec::default()
        };
        let own = Durations {
            scale_to_zero_grace_period: Some(secs(5)),
            ..durations()
        };
        let policy = ScalingPolicy::from_spec(&spec, &own, &defaults);
        assert_eq!(policy.target, 10.0);
        assert_eq!(policy.panic_window, secs(60));
        assert_eq!(policy.scale_to_zero_grace_period, secs(5));
    }

    #[test]
    fn rates_below_one_are_raised_to_one() {
        let spec = ScalingSpec {
            max_scale_up_rate: Some(0.5),
            max_scale_down_rate: Some(0.0),
            ..ScalingSpec::default()
        };
        let policy = ScalingPolicy::from_spec(&spec, &durations(), &ScalingDefaults::default());
        assert_eq!(policy.max_scale_up_rate, 1.0);
        assert_eq!(policy.max_scale_down_rate, 1.0);
    }
}
