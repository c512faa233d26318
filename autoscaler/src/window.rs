//! A Function's recent load: one sample per tick, kept for one stable window, plus
//! whether a request is held right now and when the last request was seen.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::backlog::Backlog;
use super::policy::ScalingPolicy;

/// One tick's load, summed over every activator replica.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    at: Instant,
    observed: f64,
}

/// Load averaged over the two windows at one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    /// Average over the stable window.
    pub stable: f64,
    /// Average over the panic window.
    pub panic: f64,
}

/// The load history of one Function, as the autoscaler's decision reads it.
///
/// Samples are in time order and only those within one stable window of the newest are
/// kept, so memory is bounded by `stable_window / tick` samples.
#[derive(Debug, Clone)]
pub struct Window {
    stable_window: Duration,
    panic_window: Duration,
    samples: VecDeque<Sample>,
    held: bool,
    last_request: Option<Instant>,
    backlog: Option<Backlog>,
}

impl Window {
    /// An empty window with the policy's stable and panic windows.
    pub fn new(policy: &ScalingPolicy) -> Self {
        Self {
            stable_window: policy.stable_window,
            panic_window: policy.panic_window,
            samples: VecDeque::new(),
            held: false,
            last_request: None,
            backlog: None,
        }
    }

    /// Takes the window lengths of a changed policy, keeping the samples that still fit.
    pub fn reconfigure(&mut self, policy: &ScalingPolicy) {
        self.stable_window = policy.stable_window;
        self.panic_window = policy.panic_window;
        self.trim();
    }

    /// Records one tick's load: the summed average concurrency (metric `concurrency`) or
    /// requests per second (metric `rps`) of all activator replicas during the tick that
    /// ended at `at`. Negative or non-finite values count as 0. A positive value also
    /// counts as a request seen at `at`.
    pub fn record(&mut self, at: Instant, observed: f64) {
        let observed = if observed.is_finite() && observed > 0.0 {
            self.saw_request(at);
            observed
        } else {
            0.0
        };
        let sample = Sample { at, observed };
        match self.samples.back() {
            Some(last) if last.at > at => {
                // A late sample (a slow activator answered after a newer tick) goes in
                // time order, so the averages and the trimming stay right.
                let index = self.samples.partition_point(|s| s.at <= at);
                self.samples.insert(index, sample);
            }
            _ => self.samples.push_back(sample),
        }
        self.trim();
    }

    /// Says whether any activator holds (queues) a request of this Function right now.
    pub fn set_held(&mut self, held: bool) {
        self.held = held;
    }

    /// Notes that a request arrived, or was still in flight, at `at`. The stats source
    /// calls it for every tick with in-flight requests, so a long request keeps the
    /// Function from scaling to zero even under the `rps` metric.
    pub fn saw_request(&mut self, at: Instant) {
        if self.last_request.is_none_or(|last| last < at) {
            self.last_request = Some(at);
        }
    }

    /// Sets what the Function's queue triggers hold right now; `None` when it has none.
    pub fn set_backlog(&mut self, backlog: Option<Backlog>) {
        self.backlog = backlog;
    }

    /// What the Function's queue triggers hold right now, if it has any.
    pub fn backlog(&self) -> Option<Backlog> {
        self.backlog
    }

    /// Whether a request is held right now.
    pub fn held(&self) -> bool {
        self.held
    }

    /// When a request was last seen, if ever.
    pub fn last_request(&self) -> Option<Instant> {
        self.last_request
    }

    /// Average load over the stable and the panic window ending at `now`, or `None` when
    /// no sample falls within the stable window (the stats are missing).
    ///
    /// Each average is over the samples present, so a window that is not yet full (the
    /// operator just started) averages what it has. When no sample falls within the
    /// panic window (a missed tick), the panic average is the newest sample's load.
    pub fn load(&self, now: Instant) -> Option<Load> {
        let stable = self.average(now, self.stable_window)?;
        let panic = match self.average(now, self.panic_window) {
            Some(panic) => panic,
            None => self.samples.iter().rev().find(|s| s.at <= now)?.observed,
        };
        Some(Load { stable, panic })
    }

    /// Mean of the samples in `(now - length, now]`, if any.
    fn average(&self, now: Instant, length: Duration) -> Option<f64> {
        let start = now.checked_sub(length);
        let (count, sum) = self
            .samples
            .iter()
            .filter(|s| s.at <= now && start.is_none_or(|start| s.at > start))
            .fold((0_u32, 0.0), |(count, sum), s| {
                (count + 1, sum + s.observed)
            });
        (count > 0).then(|| sum / f64::from(count))
    }

    /// Drops the samples older than one stable window before the newest.
    fn trim(&mut self) {
        let Some(newest) = self.samples.back().map(|s| s.at) else {
            return;
        };
        let Some(start) = newest.checked_sub(self.stable_window) else {
            return;
        };
        while self.samples.front().is_some_and(|s| s.at <= start) {
            self.samples.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroscale_api::validate::Durations;
    use zeroscale_api::{ScalingDefaults, ScalingSpec};

    fn window() -> Window {
        let durations = Durations {
            scale_to_zero_grace_period: None,
            scale_down_delay: None,
            stable_window: None,
            request_timeout: Duration::from_secs(300),
            max_queue_wait: Duration::from_secs(60),
        };
        Window::new(&ScalingPolicy::from_spec(
            &ScalingSpec::default(),
            &durations,
            &ScalingDefaults::default(),
        ))
    }

    fn at(start: Instant, secs: u64) -> Instant {
        start + Duration::from_secs(secs)
    }

    #[test]
    fn window_keeps_only_samples_within_the_stable_window() {
        let start = Instant::now();
        let mut window = window();
        for second in 1..=600 {
            window.record(at(start, second), 1.0);
        }
        assert_eq!(
            window.samples.len(),
            60,
            "one sample per second of a 60 s window"
        );
    }

    #[test]
    fn averages_cover_the_stable_and_the_panic_window() {
        let start = Instant::now();
        let mut window = window();
        // 54 s at 10, then 6 s at 40: the panic window (6 s) sees only the burst.
        for second in 1..=54 {
            window.record(at(start, second), 10.0);
        }
        for second in 55..=60 {
            window.record(at(start, second), 40.0);
        }
        let load = window.load(at(start, 60)).expect("samples");
        assert_eq!(load.stable, (54.0 * 10.0 + 6.0 * 40.0) / 60.0);
        assert_eq!(load.panic, 40.0);
    }

    #[test]
    fn averages_use_only_the_samples_present() {
        let start = Instant::now();
        let mut window = window();
        window.record(at(start, 1), 30.0);
        window.record(at(start, 2), 10.0);
        let load = window.load(at(start, 2)).expect("samples");
        assert_eq!(
            load,
            Load {
                stable: 20.0,
                panic: 20.0
            }
        );
    }

    #[test]
    fn panic_average_falls_back_to_the_newest_sample_after_missed_ticks() {
        let start = Instant::now();
        let mut window = window();
        window.record(at(start, 1), 30.0);
        window.record(at(start, 2), 10.0);
        let load = window.load(at(start, 20)).expect("samples");
        assert_eq!(load.stable, 20.0);
        assert_eq!(load.panic, 10.0);
    }

    #[test]
    fn load_is_missing_when_no_sample_is_within_the_stable_window() {
        let start = Instant::now();
        let mut window = window();
        assert_eq!(window.load(at(start, 1)), None);
        window.record(at(start, 1), 5.0);
        assert!(window.load(at(start, 60)).is_some());
        assert_eq!(window.load(at(start, 61)), None);
    }

    #[test]
    fn late_samples_are_kept_in_time_order() {
        let start = Instant::now();
        let mut window = window();
        window.record(at(start, 10), 6.0);
        window.record(at(start, 5), 100.0);
        window.record(at(start, 70), 0.0);
        // The late sample at 5 s is older than the 70 s one by more than a window.
        assert_eq!(window.samples.len(), 1);
        assert_eq!(window.load(at(start, 70)).map(|l| l.stable), Some(0.0));
    }

    #[test]
    fn positive_load_counts_as_a_request_and_bad_values_as_zero() {
        let start = Instant::now();
        let mut window = window();
        window.record(at(start, 1), 0.0);
        window.record(at(start, 2), f64::NAN);
        window.record(at(start, 3), -4.0);
        window.record(at(start, 4), f64::INFINITY);
        assert_eq!(window.last_request(), None);
        assert_eq!(window.load(at(start, 4)).map(|l| l.stable), Some(0.0));

        window.record(at(start, 5), 0.5);
        window.record(at(start, 6), 0.0);
        assert_eq!(window.last_request(), Some(at(start, 5)));

        // An older request never moves the last request back.
        window.saw_request(at(start, 3));
        assert_eq!(window.last_request(), Some(at(start, 5)));
    }

    #[test]
    fn reconfigure_trims_to_a_shorter_stable_window() {
        let start = Instant::now();
        let mut window = window();
        for second in 1..=60 {
            window.record(at(start, second), 1.0);
        }
        let mut policy = ScalingPolicy::from_spec(
            &ScalingSpec::default(),
            &Durations {
                stable_window: Some(Duration::from_secs(10)),
                scale_to_zero_grace_period: None,
                scale_down_delay: None,
                request_timeout: Duration::from_secs(300),
                max_queue_wait: Duration::from_secs(60),
            },
            &ScalingDefaults::default(),
        );
        policy.panic_window = Duration::from_secs(1);
        window.reconfigure(&policy);
        assert_eq!(window.samples.len(), 10);
    }
}
