//! Scaling state of every Function the autoscaler tracks, advanced one tick at a time:
//! feeds each Function's observed load into its window and asks [`decide`] for its
//! replicas. Pure: the loop in [`drive`](crate::drive) does the I/O around it.

use std::collections::HashMap;

use tokio::time::Instant;
use zeroscale_api::Metric;
use zeroscale_api::routing::FunctionKey;
use zeroscale_api::usage::PodResources;

use crate::{Backlog, Decision, DecisionState, Observed, Replicas, ScalingPolicy, Window, decide};

/// One Function to decide for this tick.
#[derive(Clone, Debug)]
pub struct Target {
    pub key: FunctionKey,
    pub policy: ScalingPolicy,
    pub replicas: Replicas,
    /// What one pod reserves, for usage metering.
    pub resources: PodResources,
}

/// Windows and decision state of every tracked Function.
#[derive(Debug, Default)]
pub struct Fleet {
    entries: HashMap<FunctionKey, Entry>,
}

#[derive(Debug)]
struct Entry {
    policy: ScalingPolicy,
    window: Window,
    state: DecisionState,
}

impl Fleet {
    /// Advances every target by one tick. `observed` is None when some activator could
    /// not be read: then nothing is decided and every Function keeps its scale, since a
    /// missing report could hide the requests that keep a Function up. Functions no
    /// longer among the targets are forgotten. `backlogs` holds what the queue triggers
    /// of the Functions that have some hold.
    pub fn tick(
        &mut self,
        now: Instant,
        targets: Vec<Target>,
        observed: Option<&HashMap<FunctionKey, Observed>>,
        backlogs: &HashMap<FunctionKey, Backlog>,
    ) -> Vec<(FunctionKey, Decision)> {
        let mut present: HashMap<FunctionKey, ()> = HashMap::with_capacity(targets.len());
        let mut decisions = Vec::new();
        for target in targets {
            present.insert(target.key.clone(), ());
            let entry = self
                .entries
                .entry(target.key.clone())
                .or_insert_with(|| Entry {
                    window: Window::new(&target.policy),
                    state: DecisionState::new(now, target.replicas),
                    policy: target.policy.clone(),
                });
            if entry.policy != target.policy {
                entry.window.reconfigure(&target.policy);
                entry.policy = target.policy.clone();
            }
            let Some(observed) = observed else {
                continue;
            };
            let load = observed.get(&target.key).copied().unwrap_or_default();
            let sample = match entry.policy.metric {
                Metric::Rps => load.rps,
                Metric::Concurrency | Metric::Cpu => load.concurrency,
            };
            entry.window.record(now, sample);
            entry.window.set_held(load.held);
            entry.window.set_backlog(backlogs.get(&target.key).copied());
            if load.active {
                entry.window.saw_request(now);
            }
            let decision = decide(
                &entry.policy,
                &entry.window,
                &mut entry.state,
                now,
                target.replicas,
            );
            decisions.push((target.key, decision));
        }
        self.entries.retain(|key, _| present.contains_key(key));
        decisions
    }

    /// Whether `key` is in panic mode, for metrics.
    pub fn panicking(&self, key: &FunctionKey) -> bool {
        self.entries
            .get(key)
            .is_some_and(|entry| entry.state.panicking())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Reason;
    use std::time::Duration;
    use zeroscale_api::{FunctionSpec, ScalingDefaults};

    fn target(replicas: i32) -> Target {
        let spec = FunctionSpec::with_image("x");
        let durations = spec.validate().expect("valid");
        Target {
            key: FunctionKey::new("team", "hello"),
            policy: ScalingPolicy::from_spec(
                &spec.scaling,
                &durations,
                &ScalingDefaults::default(),
            ),
            replicas: Replicas {
                desired: replicas,
                ready: replicas,
            },
            resources: PodResources::default(),
        }
    }

    fn load(concurrency: f64, held: bool) -> HashMap<FunctionKey, Observed> {
        HashMap::from([(
            FunctionKey::new("team", "hello"),
            Observed {
                concurrency,
                rps: 0.0,
                active: concurrency > 0.0 || held,
                held,
            },
        )])
    }

    fn none() -> HashMap<FunctionKey, Backlog> {
        HashMap::new()
    }

    fn backlog(messages: u64, target: i32) -> HashMap<FunctionKey, Backlog> {
        HashMap::from([(
            FunctionKey::new("team", "hello"),
            Backlog::of_triggers([Some((messages, target))]),
        )])
    }

    #[test]
    fn unreadable_activators_hold_every_function_even_past_the_grace_period() {
        let mut fleet = Fleet::default();
        let start = Instant::now();
        assert_eq!(
            fleet
                .tick(start, vec![target(1)], Some(&load(0.0, false)), &none())
                .len(),
            1
        );
        for second in 1..120 {
            let now = start + Duration::from_secs(second);
            assert!(
                fleet.tick(now, vec![target(1)], None, &none()).is_empty(),
                "no decision without stats"
            );
        }
    }

    #[test]
    fn idle_function_goes_to_zero_after_the_grace_period_tick_by_tick() {
        let mut fleet = Fleet::default();
        let start = Instant::now();
        let mut last = None;
        for second in 0..=31 {
            let now = start + Duration::from_secs(second);
            let decisions = fleet.tick(now, vec![target(1)], Some(&load(0.0, false)), &none());
            last = decisions.first().map(|(_, d)| *d);
        }
        let last = last.expect("a decision");
        assert_eq!((last.desired, last.reason), (0, Reason::ScaleToZero));
    }

    #[test]
    fn held_request_at_zero_wakes_the_function() {
        let mut fleet = Fleet::default();
        let decisions = fleet.tick(
            Instant::now(),
            vec![target(0)],
            Some(&load(1.0, true)),
            &none(),
        );
        let (_, decision) = decisions[0];
        assert_eq!((decision.desired, decision.reason), (1, Reason::Wake));
    }

    #[test]
    fn functions_that_disappear_are_forgotten() {
        let mut fleet = Fleet::default();
        let now = Instant::now();
        fleet.tick(now, vec![target(1)], Some(&load(300.0, false)), &none());
        fleet.tick(now, Vec::new(), Some(&HashMap::new()), &none());
        assert!(fleet.entries.is_empty());
    }

    #[test]
    fn a_backlog_at_zero_wakes_the_function_without_any_request() {
        let mut fleet = Fleet::default();
        let decisions = fleet.tick(
            Instant::now(),
            vec![target(0)],
            Some(&load(0.0, false)),
            &backlog(250, 100),
        );
        let (_, decision) = decisions[0];
        assert_eq!((decision.desired, decision.reason), (3, Reason::Backlog));
    }
}
