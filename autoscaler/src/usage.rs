//! Usage metering: turns the activators' cumulative counters and the replicas the
//! runtime reports each tick into per-Function totals, and answers the usage of a period
//! from snapshots of those totals. Pure: time is passed in, so tests drive it with a
//! fake clock; [`drive`](crate::drive) feeds it once per tick.
//!
//! Counting rules:
//! - Activator counters are summed as differences per activator process (its
//!   `instance` id), each counter on its own; a counter lower than before counts whole
//!   (it restarted). A restarted activator has a new instance id and counts from zero,
//!   so nothing is counted twice. An activator seen for the first time counts whole when
//!   it started after this meter (its uptime is at most the meter's age); otherwise only
//!   what it counts from then on, since the rest predates the meter.
//! - The meter's own totals start at zero when the process holding it starts (an
//!   operator restart, a new `zeroscale dev`); the Prometheus counters keep the history.
//! - Replica-seconds: at each tick, the pods counted at the previous tick times the
//!   time since, where pods = max(desired, ready): a pod reserves its requests from the
//!   moment it is asked for until it is gone, starting and terminating included (an
//!   approximation of each pod's lifetime, to within one tick). Resource-seconds are
//!   replica-seconds times the pod's requests; always-on counts at least one pod.
//! - Busy seconds are the activators' (pod-seconds with a request in flight), capped at
//!   the replica-seconds: two activators sending to one pod at once both count it busy.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use jiff::Timestamp;
use zeroscale_api::routing::FunctionKey;
use zeroscale_api::stats::{FunctionStats, StatsReport};
use zeroscale_api::usage::{
    Cost, FunctionUsage, Invocations, PodResources, Prices, ReplicaSeconds, ResourceSeconds,
    UsageReport,
};

use crate::Target;

/// How often the totals are snapshotted, which bounds how exactly `since` is met.
const SNAPSHOT_PERIOD: Duration = Duration::from_secs(60);
/// Snapshots younger than this are all kept; older ones one per hour.
const FINE_HISTORY: Duration = Duration::from_secs(2 * 3600);
/// Snapshots older than this are dropped.
const HISTORY: Duration = Duration::from_secs(8 * 24 * 3600);
/// An activator not seen for this long is forgotten.
const FORGET_ACTIVATOR: Duration = Duration::from_secs(3600);
/// A longer time between two ticks means the loop stopped (this operator replica lost
/// the lead, say): what the pods did meanwhile is unknown and not counted.
const MAX_TICK_GAP: Duration = Duration::from_secs(600);

/// The usage meter, shared between the loop that feeds it and the routes that read it.
/// Clones share one meter.
#[derive(Clone, Debug)]
pub struct Usage {
    meter: Arc<Mutex<UsageMeter>>,
    prices: Option<Prices>,
}

/// What one tick reserved for one Function, for the Prometheus counters.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Reserved {
    pub replica_seconds: f64,
    pub reserved: ResourceSeconds,
    pub always_on: ResourceSeconds,
}

impl Usage {
    /// A meter whose totals start at zero at `started`, costed at `prices` if any.
    pub fn new(started: Timestamp, prices: Option<Prices>) -> Self {
        Self {
            meter: Arc::new(Mutex::new(UsageMeter::new(started))),
            prices,
        }
    }

    /// Records one tick at `now`: the activators' reports (None when they could not be
    /// read: their counters are picked up at the next successful scrape) and the
    /// runtime's targets. Returns what each Function reserved since the previous tick.
    pub fn record(
        &self,
        now: Timestamp,
        reports: Option<&[StatsReport]>,
        targets: &[Target],
    ) -> Vec<(FunctionKey, Reserved)> {
        let mut meter = self.meter();
        let reserved = meter.record_replicas(now, targets);
        if let Some(reports) = reports {
            meter.record_reports(now, reports);
        }
        meter.snapshot(now);
        reserved
    }

    /// Usage from `since` before `now` (from the meter's start when None or when that is
    /// earlier) up to the last tick.
    pub fn report(&self, now: Timestamp, since: Option<Duration>) -> UsageReport {
        self.meter().report(now, since, self.prices)
    }

    /// The JSON answer of `GET /usage?since=<duration>` at `now`, or why the query is
    /// wrong.
    pub fn answer(&self, now: Timestamp, query: Option<&str>) -> Result<String, String> {
        let mut since = None;
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            match pair.split_once('=') {
                Some(("since", value)) => {
                    let parsed = zeroscale_api::duration::parse(value)
                        .map_err(|error| format!("since: {error}"))?;
                    since = Some(parsed);
                }
                _ => {
                    return Err(format!(
                        "unknown query parameter {pair:?}; use since=<duration>"
                    ));
                }
            }
        }
        serde_json::to_string(&self.report(now, since)).map_err(|error| error.to_string())
    }

    fn meter(&self) -> MutexGuard<'_, UsageMeter> {
        // The totals stay consistent across a panic elsewhere: keep serving.
        self.meter.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One Function's totals since the meter started.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Totals {
    invocations: Invocations,
    execution_seconds: f64,
    busy_seconds: f64,
    cold_starts: u64,
    cold_start_seconds: f64,
    replica_seconds: f64,
    reserved: ResourceSeconds,
    always_on: ResourceSeconds,
}

impl Totals {
    /// Adds what `now` counted since `before` (all of it when there is no `before`).
    fn add_counters(&mut self, now: &FunctionStats, before: Option<&FunctionStats>) {
        fn count(now: u64, before: Option<u64>) -> u64 {
            match before {
                Some(before) if now >= before => now - before,
                _ => now,
            }
        }
        fn seconds(now: f64, before: Option<f64>) -> f64 {
            match before {
                Some(before) if now >= before => now - before,
                _ => now.max(0.0),
            }
        }
        let invocations = &mut self.invocations;
        invocations.success += count(now.success_total, before.map(|b| b.success_total));
        invocations.function_error += count(
            now.function_errors_total,
            before.map(|b| b.function_errors_total),
        );
        invocations.refused += count(now.refused_total, before.map(|b| b.refused_total));
        self.execution_seconds += seconds(
            now.execution_seconds_total,
            before.map(|b| b.execution_seconds_total),
        );
        self.busy_seconds += seconds(now.busy_seconds_total, before.map(|b| b.busy_seconds_total));
        self.cold_starts += count(now.cold_starts_total, before.map(|b| b.cold_starts_total));
        self.cold_start_seconds += seconds(
            now.cold_start_seconds_total,
            before.map(|b| b.cold_start_seconds_total),
        );
    }

    /// What was counted after `base`.
    fn since(&self, base: &Totals) -> Totals {
        let resources = |now: ResourceSeconds, base: ResourceSeconds| ResourceSeconds {
            vcpu_seconds: now.vcpu_seconds - base.vcpu_seconds,
            gib_seconds: now.gib_seconds - base.gib_seconds,
        };
        Totals {
            // Totals only grow, so the base never exceeds them; saturating all the same.
            invocations: Invocations {
                success: (self.invocations.success).saturating_sub(base.invocations.success),
                function_error: (self.invocations.function_error)
                    .saturating_sub(base.invocations.function_error),
                refused: (self.invocations.refused).saturating_sub(base.invocations.refused),
            },
            execution_seconds: self.execution_seconds - base.execution_seconds,
            busy_seconds: self.busy_seconds - base.busy_seconds,
            cold_starts: self.cold_starts.saturating_sub(base.cold_starts),
            cold_start_seconds: self.cold_start_seconds - base.cold_start_seconds,
            replica_seconds: self.replica_seconds - base.replica_seconds,
            reserved: resources(self.reserved, base.reserved),
            always_on: resources(self.always_on, base.always_on),
        }
    }
}

/// The last report of one activator process.
#[derive(Debug)]
struct Seen {
    last_seen: Timestamp,
    functions: HashMap<FunctionKey, FunctionStats>,
}

/// The arithmetic behind [`Usage`].
#[derive(Debug)]
struct UsageMeter {
    started: Timestamp,
    last_tick: Option<Timestamp>,
    totals: BTreeMap<FunctionKey, Totals>,
    /// Pods and per-pod resources of each Function at the last tick.
    pods: HashMap<FunctionKey, (f64, PodResources)>,
    activators: HashMap<String, Seen>,
    /// Totals at past ticks, oldest first.
    history: VecDeque<(Timestamp, BTreeMap<FunctionKey, Totals>)>,
}

impl UsageMeter {
    fn new(started: Timestamp) -> Self {
        Self {
            started,
            last_tick: None,
            totals: BTreeMap::new(),
            pods: HashMap::new(),
            activators: HashMap::new(),
            history: VecDeque::new(),
        }
    }

    /// Adds the pods of the previous tick times the time since it, then remembers
    /// `targets`' pods for the next.
    fn record_replicas(
        &mut self,
        now: Timestamp,
        targets: &[Target],
    ) -> Vec<(FunctionKey, Reserved)> {
        let elapsed = self
            .last_tick
            .map_or(0.0, |last| seconds_between(last, now))
            .min(MAX_TICK_GAP.as_secs_f64());
        let mut reserved = Vec::with_capacity(self.pods.len());
        for (key, (pods, resources)) in &self.pods {
            let replica_seconds = pods * elapsed;
            let always_on = pods.max(1.0) * elapsed;
            let tick = Reserved {
                replica_seconds,
                reserved: ResourceSeconds {
                    vcpu_seconds: replica_seconds * resources.vcpu,
                    gib_seconds: replica_seconds * resources.gib,
                },
                always_on: ResourceSeconds {
                    vcpu_seconds: always_on * resources.vcpu,
                    gib_seconds: always_on * resources.gib,
                },
            };
            let totals = self.totals.entry(key.clone()).or_default();
            totals.replica_seconds += tick.replica_seconds;
            add(&mut totals.reserved, tick.reserved);
            add(&mut totals.always_on, tick.always_on);
            reserved.push((key.clone(), tick));
        }
        self.pods = targets
            .iter()
            .map(|target| {
                let pods = target.replicas.desired.max(target.replicas.ready).max(0);
                (target.key.clone(), (f64::from(pods), target.resources))
            })
            .collect();
        for key in self.pods.keys() {
            self.totals.entry(key.clone()).or_default();
        }
        self.last_tick = Some(self.last_tick.map_or(now, |last| last.max(now)));
        reserved
    }

    /// Adds what each activator counted since its previous report.
    fn record_reports(&mut self, now: Timestamp, reports: &[StatsReport]) {
        let age = seconds_between(self.started, now);
        for report in reports {
            let previous = self.activators.get(&report.instance);
            // A process older than the meter counted things before it: baseline them.
            let baseline_only = previous.is_none() && report.uptime_seconds > age;
            let mut functions = HashMap::with_capacity(report.functions.len());
            for function in &report.functions {
                let key = FunctionKey::new(&function.namespace, &function.name);
                if !baseline_only {
                    let before = previous.and_then(|seen| seen.functions.get(&key));
                    self.totals
                        .entry(key.clone())
                        .or_default()
                        .add_counters(function, before);
                }
                functions.insert(key, function.clone());
            }
            self.activators.insert(
                report.instance.clone(),
                Seen {
                    last_seen: now,
                    functions,
                },
            );
        }
        self.activators.retain(|_, seen| {
            seconds_between(seen.last_seen, now) < FORGET_ACTIVATOR.as_secs_f64()
        });
    }

    /// Keeps a copy of the totals at most every [`SNAPSHOT_PERIOD`], thinning old ones.
    fn snapshot(&mut self, now: Timestamp) {
        let due = self
            .history
            .back()
            .is_none_or(|(taken, _)| seconds_between(*taken, now) >= SNAPSHOT_PERIOD.as_secs_f64());
        if due {
            self.history.push_back((now, self.totals.clone()));
        }
        let mut last_hour = None;
        self.history.retain(|(taken, _)| {
            let age = seconds_between(*taken, now);
            if age > HISTORY.as_secs_f64() {
                return false;
            }
            if age <= FINE_HISTORY.as_secs_f64() {
                return true;
            }
            let hour = taken.as_second().div_euclid(3600);
            let first_of_its_hour = last_hour != Some(hour);
            last_hour = Some(hour);
            first_of_its_hour
        });
    }

    fn report(
        &self,
        now: Timestamp,
        since: Option<Duration>,
        prices: Option<Prices>,
    ) -> UsageReport {
        let empty = BTreeMap::new();
        let (from, base) = since
            .and_then(|since| {
                let cutoff =
                    now.as_millisecond() - i64::try_from(since.as_millis()).unwrap_or(i64::MAX);
                self.history
                    .iter()
                    .rev()
                    .find(|(taken, _)| taken.as_millisecond() <= cutoff)
            })
            .map_or((self.started, &empty), |(taken, totals)| (*taken, totals));
        let functions = self
            .totals
            .iter()
            .map(|(key, totals)| {
                let usage = totals.since(&base.get(key).copied().unwrap_or_default());
                function_usage(key, &usage, prices.as_ref())
            })
            .collect();
        UsageReport {
            from,
            to: self.last_tick.unwrap_or(self.started),
            prices,
            functions,
        }
    }
}

/// One Function's entry in the report, from its totals over the period.
fn function_usage(key: &FunctionKey, usage: &Totals, prices: Option<&Prices>) -> FunctionUsage {
    let busy = usage.busy_seconds.min(usage.replica_seconds).max(0.0);
    let saving = ResourceSeconds {
        vcpu_seconds: usage.always_on.vcpu_seconds - usage.reserved.vcpu_seconds,
        gib_seconds: usage.always_on.gib_seconds - usage.reserved.gib_seconds,
    };
    FunctionUsage {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        invocations: usage.invocations,
        execution_seconds: usage.execution_seconds,
        cold_starts: usage.cold_starts,
        cold_start_seconds: usage.cold_start_seconds,
        replica_seconds: ReplicaSeconds {
            busy,
            idle: (usage.replica_seconds - busy).max(0.0),
        },
        reserved: usage.reserved,
        always_on: usage.always_on,
        saving,
        cost: prices.map(|prices| Cost::of(prices, usage.invocations.handled(), &usage.reserved)),
    }
}

fn add(total: &mut ResourceSeconds, more: ResourceSeconds) {
    total.vcpu_seconds += more.vcpu_seconds;
    total.gib_seconds += more.gib_seconds;
}

/// Seconds from `from` to `to`; zero if the clock went back.
fn seconds_between(from: Timestamp, to: Timestamp) -> f64 {
    to.duration_since(from).as_secs_f64().max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Replicas, ScalingPolicy};
    use zeroscale_api::{FunctionSpec, ScalingDefaults};

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + second).expect("valid time")
    }

    fn key() -> FunctionKey {
        FunctionKey::new("team", "hello")
    }

    fn target(pods: i32) -> Target {
        let spec = FunctionSpec::with_image("example.com/hello:1");
        let durations = spec.validate().expect("valid spec");
        Target {
            key: key(),
            policy: ScalingPolicy::from_spec(
                &spec.scaling,
                &durations,
                &ScalingDefaults::default(),
            ),
            replicas: Replicas {
                desired: pods,
                ready: pods,
            },
            resources: PodResources {
                vcpu: 0.5,
                gib: 0.25,
            },
        }
    }

    /// An activator report with `success` answered requests and `busy` seconds.
    fn report(instance: &str, uptime: f64, success: u64, busy: f64) -> StatsReport {
        StatsReport {
            instance: instance.into(),
            uptime_seconds: uptime,
            functions: vec![FunctionStats {
                namespace: "team".into(),
                name: "hello".into(),
                success_total: success,
                busy_seconds_total: busy,
                execution_seconds_total: busy,
                ..FunctionStats::default()
            }],
        }
    }

    fn hello(report: &UsageReport) -> &FunctionUsage {
        report
            .functions
            .iter()
            .find(|f| f.name == "hello")
            .expect("hello is reported")
    }

    #[test]
    fn replica_seconds_split_into_busy_and_idle_and_reserved_resources() {
        let usage = Usage::new(at(0), None);
        usage.record(at(0), Some(&[report("a", 0.0, 0, 0.0)]), &[target(2)]);
        // Two pods for 10 s, busy for 5 pod-seconds of them; then zero pods for 10 s.
        usage.record(at(10), Some(&[report("a", 10.0, 7, 5.0)]), &[target(0)]);
        usage.record(at(20), Some(&[report("a", 20.0, 7, 5.0)]), &[target(0)]);

        let report = usage.report(at(20), None);
        let hello = hello(&report);
        assert_eq!(hello.invocations.success, 7);
        assert_eq!(
            hello.replica_seconds,
            ReplicaSeconds {
                busy: 5.0,
                idle: 15.0
            }
        );
        assert_eq!(hello.reserved.vcpu_seconds, 10.0);
        assert_eq!(hello.reserved.gib_seconds, 5.0);
        // Always on: two pods for 10 s, then one for 10 s.
        assert_eq!(hello.always_on.vcpu_seconds, 15.0);
        assert_eq!(hello.saving.vcpu_seconds, 5.0);
        assert_eq!((report.from, report.to), (at(0), at(20)));
    }

    #[test]
    fn busy_seconds_never_exceed_replica_seconds() {
        let usage = Usage::new(at(0), None);
        usage.record(
            at(0),
            Some(&[report("a", 0.0, 0, 0.0), report("b", 0.0, 0, 0.0)]),
            &[target(1)],
        );
        // Both activators kept the one pod busy the whole 10 s.
        usage.record(
            at(10),
            Some(&[report("a", 10.0, 1, 10.0), report("b", 10.0, 1, 10.0)]),
            &[target(1)],
        );
        let report = usage.report(at(10), None);
        assert_eq!(
            hello(&report).replica_seconds,
            ReplicaSeconds {
                busy: 10.0,
                idle: 0.0
            }
        );
    }

    #[test]
    fn two_activators_add_up() {
        let usage = Usage::new(at(0), None);
        usage.record(
            at(1),
            Some(&[report("a", 1.0, 3, 0.0), report("b", 1.0, 4, 0.0)]),
            &[],
        );
        usage.record(
            at(2),
            Some(&[report("a", 2.0, 10, 0.0), report("b", 2.0, 20, 0.0)]),
            &[],
        );
        assert_eq!(hello(&usage.report(at(2), None)).invocations.success, 30);
    }

    #[test]
    fn restarted_activator_counts_from_zero_and_never_twice() {
        let usage = Usage::new(at(0), None);
        usage.record(at(1), Some(&[report("a", 1.0, 10, 0.0)]), &[]);
        usage.record(at(2), Some(&[report("a", 2.0, 15, 0.0)]), &[]);
        // Restarted: a new instance id, counters from zero; the old one is gone.
        usage.record(at(3), Some(&[report("a2", 0.5, 2, 0.0)]), &[]);
        usage.record(at(4), Some(&[report("a2", 1.5, 6, 0.0)]), &[]);
        assert_eq!(hello(&usage.report(at(4), None)).invocations.success, 21);
    }

    #[test]
    fn missed_scrapes_are_caught_up_by_the_next_one() {
        let usage = Usage::new(at(0), None);
        usage.record(at(1), Some(&[report("a", 1.0, 1, 0.0)]), &[]);
        usage.record(at(2), None, &[]);
        usage.record(at(3), Some(&[report("a", 3.0, 9, 0.0)]), &[]);
        assert_eq!(hello(&usage.report(at(3), None)).invocations.success, 9);
    }

    #[test]
    fn restarted_operator_counts_only_what_happens_after_it_started() {
        // The activator has run for an hour and answered 1000 requests.
        let usage = Usage::new(at(3600), None);
        usage.record(at(3601), Some(&[report("a", 3601.0, 1000, 0.0)]), &[]);
        usage.record(at(3602), Some(&[report("a", 3602.0, 1004, 0.0)]), &[]);
        assert_eq!(hello(&usage.report(at(3602), None)).invocations.success, 4);
    }

    #[test]
    fn activator_started_after_the_meter_counts_whole() {
        let usage = Usage::new(at(0), None);
        usage.record(at(30), Some(&[report("a", 20.0, 5, 0.0)]), &[]);
        assert_eq!(hello(&usage.report(at(30), None)).invocations.success, 5);
    }

    #[test]
    fn since_starts_at_the_latest_snapshot_before_it() {
        let usage = Usage::new(at(0), None);
        for minute in 0..=10 {
            let second = minute * 60;
            usage.record(
                at(second),
                Some(&[report("a", second as f64, minute as u64 * 10, 0.0)]),
                &[target(1)],
            );
        }
        let report = usage.report(at(600), Some(Duration::from_secs(150)));
        assert_eq!(report.from, at(420));
        let hello = hello(&report);
        assert_eq!(hello.invocations.success, 30);
        assert_eq!(hello.replica_seconds.idle, 180.0);
        // Longer than the meter has run: everything since it started.
        let report = usage.report(at(600), Some(Duration::from_secs(3600)));
        assert_eq!(report.from, at(0));
        assert_eq!(self::hello(&report).invocations.success, 100);
    }

    #[test]
    fn a_stopped_loop_does_not_count_the_gap_as_reserved() {
        let usage = Usage::new(at(0), None);
        usage.record(at(0), None, &[target(1)]);
        usage.record(at(3600), None, &[target(1)]);
        let report = usage.report(at(3600), None);
        assert_eq!(hello(&report).replica_seconds.idle, 600.0);
    }

    #[test]
    fn the_answer_reads_since_from_the_query() {
        let usage = Usage::new(at(0), None);
        usage.record(at(0), None, &[target(1)]);
        let json = usage
            .answer(at(0), Some("since=24h"))
            .expect("a valid query");
        let report: UsageReport = serde_json::from_str(&json).expect("a report");
        assert_eq!(report.functions.len(), 1);
        assert!(usage.answer(at(0), Some("since=soon")).is_err());
        assert!(usage.answer(at(0), Some("until=1h")).is_err());
    }

    #[test]
    fn prices_turn_usage_into_cost() {
        let prices = Prices {
            per_million_requests: 1_000_000.0,
            per_vcpu_second: 2.0,
            per_gib_second: 4.0,
        };
        let usage = Usage::new(at(0), Some(prices));
        usage.record(at(0), Some(&[report("a", 0.0, 0, 0.0)]), &[target(1)]);
        usage.record(at(10), Some(&[report("a", 10.0, 3, 1.0)]), &[target(1)]);
        let report = usage.report(at(10), None);
        let cost = hello(&report).cost.expect("priced");
        assert_eq!(
            cost,
            Cost {
                requests: 3.0,
                vcpu: 10.0,
                memory: 10.0,
                total: 23.0
            }
        );
        assert_eq!(report.prices, Some(prices));
    }
}
