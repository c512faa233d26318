//! Decisions driven by a fake clock: single decisions after a full stable window of
//! steady load (tables), and tick-by-tick scenarios where the Deployment follows each
//! decision.

use std::time::Duration;

use tokio::time::Instant;
use zeroscale_api::ScalingDefaults;
use zeroscale_api::{FunctionSpec, Metric, ScalingSpec};

use super::*;

fn secs(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

/// The policy of `spec`, with the durations of the default spec.
fn policy_of(spec: ScalingSpec) -> ScalingPolicy {
    let durations = FunctionSpec::with_image("example.com/hello:1")
        .validate()
        .expect("the default spec is valid");
    ScalingPolicy::from_spec(&spec, &durations, &ScalingDefaults::default())
}

/// Concurrency 10 per pod, up to 100 pods, every other setting at its default (stable
/// window 60 s, panic window 6 s, panic at 200%, grace period 30 s, no delay).
fn policy() -> ScalingPolicy {
    policy_of(ScalingSpec {
        target: Some(10),
        max_replicas: 100,
        ..ScalingSpec::default()
    })
}

fn replicas(desired: i32, ready: i32) -> Replicas {
    Replicas { desired, ready }
}

/// One decision after a stable window of steady load, on state created at its start.
struct Case {
    name: &'static str,
    policy: ScalingPolicy,
    current: Replicas,
    /// Load recorded every second of the stable window; `None` records nothing.
    load: Option<f64>,
    held: bool,
    backlog: Option<Backlog>,
    expected: (i32, Reason),
}

impl Case {
    fn new(name: &'static str, current: Replicas, load: Option<f64>) -> Self {
        Self {
            name,
            policy: policy(),
            current,
            load,
            held: false,
            backlog: None,
            expected: (-1, Reason::NoData),
        }
    }

    fn policy(mut self, tweak: impl FnOnce(&mut ScalingPolicy)) -> Self {
        tweak(&mut self.policy);
        self
    }

    fn held(mut self) -> Self {
        self.held = true;
        self
    }

    /// Queue triggers holding `messages` that ask for `replicas` pods.
    fn backlog(mut self, messages: u64, replicas: f64) -> Self {
        self.backlog = Some(Backlog::Pending { messages, replicas });
        self
    }

    fn backlog_unknown(mut self) -> Self {
        self.backlog = Some(Backlog::Unknown);
        self
    }

    fn expect(mut self, desired: i32, reason: Reason) -> Self {
        self.expected = (desired, reason);
        self
    }
}

fn check(cases: Vec<Case>) {
    for case in cases {
        let start = Instant::now();
        let mut window = Window::new(&case.policy);
        let mut state = DecisionState::new(start, case.current);
        let seconds = case.policy.stable_window.as_secs();
        if let Some(load) = case.load {
            for second in 1..=seconds {
                window.record(start + secs(second), load);
            }
        }
        window.set_held(case.held);
        window.set_backlog(case.backlog);
        let decision = decide(
            &case.policy,
            &window,
            &mut state,
            start + secs(seconds),
            case.current,
        );
        assert_eq!(
            (decision.desired, decision.reason),
            case.expected,
            "{}",
            case.name
        );
    }
}

/// One Function on a fake clock ticking every second. The Deployment takes each
/// decision before the next tick, and its pods are ready at once unless
/// `pods_start_at_once` is false.
struct Sim {
    policy: ScalingPolicy,
    window: Window,
    state: DecisionState,
    start: Instant,
    second: u64,
    current: Replicas,
    pods_start_at_once: bool,
    /// What the queue triggers hold at the next ticks.
    backlog: Option<Backlog>,
}

impl Sim {
    /// A Function first seen at second 0 with `pods` pods, all ready.
    fn new(policy: ScalingPolicy, pods: i32) -> Self {
        let start = Instant::now();
        let current = replicas(pods, pods);
        Self {
            window: Window::new(&policy),
            state: DecisionState::new(start, current),
            policy,
            start,
            second: 0,
            current,
            pods_start_at_once: true,
            backlog: None,
        }
    }

    /// One tick with `load`, and whether a request is held.
    fn tick_with(&mut self, load: f64, held: bool) -> Decision {
        self.second += 1;
        let now = self.start + secs(self.second);
        self.window.record(now, load);
        self.window.set_held(held);
        self.window.set_backlog(self.backlog);
        let decision = decide(
            &self.policy,
            &self.window,
            &mut self.state,
            now,
            self.current,
        );
        self.current.desired = decision.desired;
        if self.pods_start_at_once {
            self.current.ready = decision.desired;
        }
        decision
    }

    fn tick(&mut self, load: f64) -> Decision {
        self.tick_with(load, false)
    }

    /// `ticks` ticks at a steady load; the decisions in order.
    fn run(&mut self, ticks: u64, load: f64) -> Vec<Decision> {
        (0..ticks).map(|_| self.tick(load)).collect()
    }
}

fn desired(decisions: &[Decision]) -> Vec<i32> {
    decisions.iter().map(|d| d.desired).collect()
}

#[test]
fn single_decisions_follow_the_rules() {
    check(vec![
        Case::new("load at target keeps the count", replicas(4, 4), Some(40.0))
            .expect(4, Reason::Stable),
        Case::new(
            "a fraction of a pod's load needs a whole pod",
            replicas(1, 1),
            Some(0.5),
        )
        .expect(1, Reason::Stable),
        Case::new("rps is scaled the same way", replicas(3, 3), Some(600.0))
            .policy(|p| {
                p.metric = Metric::Rps;
                p.target = 200.0;
            })
            .expect(3, Reason::Stable),
        Case::new(
            "one pod's load on ten pods halves them at most",
            replicas(10, 10),
            Some(10.0),
        )
        .expect(5, Reason::Stable),
        Case::new("scale-up rate limits growth", replicas(2, 2), Some(100.0))
            .policy(|p| p.max_scale_up_rate = 2.0)
            .expect(4, Reason::Panic),
        Case::new("maxReplicas caps", replicas(4, 4), Some(1000.0))
            .policy(|p| p.max_replicas = 5)
            .expect(5, Reason::AtMax),
        Case::new("minReplicas lifts", replicas(1, 1), Some(5.0))
            .policy(|p| p.min_replicas = 3)
            .expect(3, Reason::AtMin),
        Case::new(
            "minReplicas keeps an idle Function up",
            replicas(2, 2),
            Some(0.0),
        )
        .policy(|p| p.min_replicas = 2)
        .expect(2, Reason::AtMin),
        Case::new(
            "idle past the grace period goes to zero",
            replicas(1, 1),
            Some(0.0),
        )
        .expect(0, Reason::ScaleToZero),
        Case::new(
            "an idle Function at zero stays there",
            replicas(0, 0),
            Some(0.0),
        )
        .expect(0, Reason::ScaleToZero),
        Case::new(
            "a held request keeps an idle pod",
            replicas(1, 1),
            Some(0.0),
        )
        .held()
        .expect(1, Reason::Wake),
        Case::new(
            "a held request at zero wakes one pod",
            replicas(0, 0),
            Some(0.0),
        )
        .held()
        .expect(1, Reason::Wake),
        Case::new(
            "a held request at zero wakes initialReplicas",
            replicas(0, 0),
            Some(0.0),
        )
        .held()
        .policy(|p| p.initial_replicas = 3)
        .expect(3, Reason::Wake),
        Case::new(
            "initialReplicas 0 still wakes one pod",
            replicas(0, 0),
            Some(0.0),
        )
        .held()
        .policy(|p| p.initial_replicas = 0)
        .expect(1, Reason::Wake),
        Case::new(
            "a burst at zero wakes for the burst",
            replicas(0, 0),
            Some(500.0),
        )
        .held()
        .expect(50, Reason::Wake),
        Case::new(
            "pods already starting are not cancelled",
            replicas(5, 0),
            Some(1.0),
        )
        .held()
        .expect(5, Reason::Wake),
        Case::new("missing stats hold the current scale", replicas(3, 3), None)
            .expect(3, Reason::NoData),
        Case::new("missing stats never scale to zero", replicas(1, 1), None)
            .expect(1, Reason::NoData),
        Case::new(
            "missing stats still wake for a held request",
            replicas(0, 0),
            None,
        )
        .held()
        .expect(1, Reason::Wake),
        Case::new(
            "missing stats still respect the bounds",
            replicas(3, 3),
            None,
        )
        .policy(|p| p.max_replicas = 2)
        .expect(2, Reason::AtMax),
    ]);
}

#[test]
fn container_concurrency_10_aims_for_7_in_flight_per_pod() {
    let policy = policy_of(ScalingSpec {
        container_concurrency: 10,
        max_replicas: 100,
        ..ScalingSpec::default()
    });
    assert_eq!(policy.target, 7.0);
    check(vec![
        Case::new("14 in flight fill 2 pods", replicas(2, 2), Some(14.0))
            .policy(|p| *p = policy.clone())
            .expect(2, Reason::Stable),
        Case::new("15 in flight need a third pod", replicas(2, 2), Some(15.0))
            .policy(|p| *p = policy.clone())
            .expect(3, Reason::Stable),
    ]);
}

#[test]
fn cpu_metric_only_moves_between_zero_and_one() {
    let cpu = |p: &mut ScalingPolicy| {
        *p = policy_of(ScalingSpec {
            metric: Metric::Cpu,
            max_replicas: 100,
            ..ScalingSpec::default()
        });
    };
    check(vec![
        Case::new(
            "heavy load leaves the HPA's count alone",
            replicas(4, 4),
            Some(1000.0),
        )
        .policy(cpu)
        .expect(4, Reason::Stable),
        Case::new(
            "light load leaves the HPA's count alone",
            replicas(6, 6),
            Some(1.0),
        )
        .policy(cpu)
        .expect(6, Reason::Stable),
        Case::new("one pod with traffic stays", replicas(1, 1), Some(5.0))
            .policy(cpu)
            .expect(1, Reason::Stable),
        Case::new("a held request wakes one pod", replicas(0, 0), Some(0.0))
            .policy(cpu)
            .held()
            .expect(1, Reason::Wake),
        Case::new(
            "any traffic at zero wakes one pod",
            replicas(0, 0),
            Some(5.0),
        )
        .policy(cpu)
        .expect(1, Reason::Wake),
        Case::new(
            "idle past the grace period goes to zero",
            replicas(3, 3),
            Some(0.0),
        )
        .policy(cpu)
        .expect(0, Reason::ScaleToZero),
        Case::new("idle at zero stays there", replicas(0, 0), Some(0.0))
            .policy(cpu)
            .expect(0, Reason::ScaleToZero),
        Case::new("minReplicas still applies", replicas(0, 0), Some(0.0))
            .policy(|p| {
                cpu(p);
                p.min_replicas = 1;
            })
            .expect(1, Reason::AtMin),
    ]);
}

#[test]
fn steady_load_at_target_keeps_the_pod_count() {
    let mut sim = Sim::new(policy(), 4);
    let decisions = sim.run(300, 40.0);
    assert!(
        decisions.iter().all(|d| d.desired == 4),
        "{:?}",
        desired(&decisions)
    );
    let last = decisions.last().expect("decisions");
    assert_eq!(last.reason, Reason::Stable);
    assert!(!last.panicking);
}

#[test]
fn doubling_load_doubles_the_pods_over_the_stable_window() {
    let mut policy = policy();
    // A doubling is exactly the default 200% panic threshold; this is the stable path.
    policy.panic_threshold = 3.0;
    let mut sim = Sim::new(policy, 4);
    sim.run(60, 40.0);

    let decisions = sim.run(60, 80.0);
    let counts = desired(&decisions);
    assert_eq!(
        counts[0], 5,
        "the first tick moves by the share of one sample"
    );
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    assert!(counts.iter().all(|&c| c <= 8), "{counts:?}");
    assert_eq!(counts.last(), Some(&8), "{counts:?}");
    assert!(
        decisions
            .iter()
            .all(|d| d.reason == Reason::Stable && !d.panicking)
    );
}

/// Four pods at target for a stable window, then ten times the load.
fn burst() -> (Sim, Decision) {
    let mut sim = Sim::new(policy(), 4);
    sim.run(60, 40.0);
    let first = sim.tick(400.0);
    (sim, first)
}

#[test]
fn sudden_burst_panics_and_scales_up_in_one_tick() {
    let (mut sim, first) = burst();
    // The panic window (6 s) averages 100 against 4 pods × 10 × 200% = 80; the stable
    // window alone would ask for 5.
    assert_eq!(
        first,
        Decision {
            desired: 10,
            reason: Reason::Panic,
            panicking: true
        }
    );
    let decisions = sim.run(5, 400.0);
    assert_eq!(desired(&decisions), [16, 22, 28, 34, 40]);
    assert!(decisions.iter().all(|d| d.panicking));
}

#[test]
fn panic_mode_never_scales_down_until_a_stable_window_passes_without_crossing() {
    // Crossed the threshold at second 61 only: later ticks have more ready pods.
    let (mut sim, _) = burst();
    sim.run(19, 400.0);
    let calm = sim.run(40, 40.0);
    assert!(
        calm.iter()
            .all(|d| d.desired == 40 && d.reason == Reason::Panic && d.panicking),
        "{:?}",
        desired(&calm)
    );

    // Second 121: a stable window since the crossing. The stable average asks for 16;
    // the scale-down rate allows halving 40 pods to 20.
    assert_eq!(
        sim.tick(40.0),
        Decision {
            desired: 20,
            reason: Reason::Stable,
            panicking: false
        }
    );
}

/// A short stable window (6 s, panic window 1 s) makes declines quick to follow.
fn short_window_policy() -> ScalingPolicy {
    let mut policy = policy();
    policy.stable_window = secs(6);
    policy.panic_window = secs(1);
    policy
}

#[test]
fn decline_is_limited_by_the_scale_down_rate() {
    let mut policy = short_window_policy();
    policy.max_scale_down_rate = 1.25;
    let mut sim = Sim::new(policy, 10);
    sim.run(6, 100.0);

    let decisions = sim.run(8, 10.0);
    // The stable average alone asks for 9, 7, 6, 4, 3, 1: at 3 pods the rate allows
    // floor(3 / 1.25) = 2 at least.
    assert_eq!(desired(&decisions), [9, 7, 6, 4, 3, 2, 1, 1]);
    let mut before = 10;
    for decision in &decisions {
        assert!(f64::from(decision.desired) >= (f64::from(before) / 1.25).floor());
        before = decision.desired;
    }
}

#[test]
fn lower_scale_waits_for_the_scale_down_delay() {
    let mut policy = short_window_policy();
    // No rate limit, so both runs want the same counts.
    policy.max_scale_down_rate = 1000.0;
    let mut undelayed = Sim::new(policy.clone(), 10);
    policy.scale_down_delay = secs(5);
    let mut delayed = Sim::new(policy, 10);
    undelayed.run(6, 100.0);
    delayed.run(6, 100.0);

    let wanted = desired(&undelayed.run(11, 10.0));
    assert_eq!(wanted, [9, 7, 6, 4, 3, 1, 1, 1, 1, 1, 1]);
    let decisions = delayed.run(11, 10.0);
    // Each lower count applies 5 s after it was first wanted: the same counts, later.
    assert_eq!(desired(&decisions), [10, 10, 10, 10, 10, 9, 7, 6, 4, 3, 1]);
    assert!(
        decisions[..5]
            .iter()
            .all(|d| d.reason == Reason::ScaleDownDelayed)
    );
    assert_eq!(decisions[10].reason, Reason::Stable);
}

#[test]
fn scale_down_delay_also_delays_scale_to_zero() {
    let mut policy = policy();
    policy.scale_down_delay = secs(60);
    let mut sim = Sim::new(policy, 1);
    sim.run(10, 5.0);
    // Idle from second 11: the grace period ends at 40, one pod was wanted until 39.
    let decisions = sim.run(90, 0.0);
    let second = |s: usize| decisions[s - 11];
    assert_eq!(second(40).reason, Reason::ScaleDownDelayed);
    assert_eq!(
        (second(99).desired, second(99).reason),
        (1, Reason::ScaleDownDelayed)
    );
    assert_eq!(
        (second(100).desired, second(100).reason),
        (0, Reason::ScaleToZero)
    );
}

#[test]
fn idle_function_scales_to_zero_exactly_when_the_grace_period_ends() {
    let mut sim = Sim::new(policy(), 1);
    sim.run(10, 5.0);
    // Last request at second 10; the grace period is 30 s.
    let decisions = sim.run(40, 0.0);
    let second = |s: usize| decisions[s - 11];
    assert!((11..=39).all(|s| second(s).desired == 1));
    assert_eq!(second(39).desired, 1, "not one tick before");
    assert_eq!(
        (second(40).desired, second(40).reason),
        (0, Reason::ScaleToZero)
    );
    assert!((40..=50).all(|s| second(s).desired == 0));
}

#[test]
fn a_grace_period_shorter_than_the_panic_window_reaches_zero_and_stays_there() {
    let mut policy = policy();
    policy.scale_to_zero_grace_period = secs(2);
    assert!(
        policy.panic_window > secs(2),
        "the case needs a longer panic window"
    );
    let mut sim = Sim::new(policy, 1);
    sim.run(3, 5.0);
    // Last request at second 3: zero at 5, and no wake from that old request after.
    let idle = sim.run(10, 0.0);
    assert_eq!(desired(&idle), [1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(idle[1].reason, Reason::ScaleToZero);
    // A new request still wakes it.
    let wake = sim.tick(5.0);
    assert_eq!((wake.desired, wake.reason), (1, Reason::Wake));
}

#[test]
fn held_request_cancels_scale_to_zero_and_restarts_the_grace_period() {
    let mut sim = Sim::new(policy(), 1);
    sim.run(10, 5.0);
    sim.run(24, 0.0);
    // Seconds 35 to 45: a request waits in the activator (no load counted yet).
    let held: Vec<_> = (35..=45).map(|_| sim.tick_with(0.0, true)).collect();
    assert!(held.iter().all(|d| d.desired == 1), "{:?}", desired(&held));

    let decisions = sim.run(30, 0.0);
    let second = |s: usize| decisions[s - 46];
    assert_eq!(
        (second(74).desired, second(74).reason),
        (1, Reason::HoldingForGracePeriod)
    );
    assert_eq!(
        (second(75).desired, second(75).reason),
        (0, Reason::ScaleToZero)
    );
}

#[test]
fn wake_from_zero_goes_to_initial_replicas_at_once() {
    let mut policy = policy();
    policy.initial_replicas = 3;
    let mut sim = Sim::new(policy, 0);
    let idle = sim.run(100, 0.0);
    assert!(
        idle.iter()
            .all(|d| (d.desired, d.reason) == (0, Reason::ScaleToZero))
    );

    // Pods take a while to start; the request stays held meanwhile.
    sim.pods_start_at_once = false;
    let waking: Vec<_> = (0..5).map(|_| sim.tick_with(0.0, true)).collect();
    assert!(
        waking
            .iter()
            .all(|d| (d.desired, d.reason, d.panicking) == (3, Reason::Wake, false)),
        "{waking:?}"
    );
}

#[test]
fn wake_after_scale_to_zero_leaves_panic_mode_behind() {
    let (mut sim, _) = burst();
    sim.run(4, 400.0);
    // Idle from second 66: zero at 95 (grace 30 s), over the panic hold (until 121).
    let idle = sim.run(40, 0.0);
    let zero = idle.last().expect("decisions");
    assert_eq!(
        (zero.desired, zero.reason, zero.panicking),
        (0, Reason::ScaleToZero, false)
    );

    sim.pods_start_at_once = false;
    let wake = sim.tick_with(0.0, true);
    // Not the 40 pods of the burst's panic: the stable window (seconds 47 to 106) still
    // averages 2560 / 60 = 42.7 in flight, so the wake asks for 5.
    assert_eq!(
        wake,
        Decision {
            desired: 5,
            reason: Reason::Wake,
            panicking: false
        }
    );
}

#[test]
fn min_replicas_above_zero_never_reaches_zero() {
    let mut policy = policy();
    policy.min_replicas = 2;
    let mut sim = Sim::new(policy, 2);
    let decisions = sim.run(300, 0.0);
    assert!(
        decisions.iter().all(|d| d.desired == 2),
        "{:?}",
        desired(&decisions)
    );
    assert_eq!(decisions.last().map(|d| d.reason), Some(Reason::AtMin));
}

#[test]
fn max_replicas_caps_a_burst() {
    let mut policy = policy();
    policy.max_replicas = 6;
    let mut sim = Sim::new(policy, 1);
    let decisions = sim.run(30, 1000.0);
    assert!(decisions.iter().all(|d| d.desired <= 6));
    assert_eq!(
        decisions.last().map(|d| (d.desired, d.reason)),
        Some((6, Reason::AtMax))
    );
}

#[test]
fn new_function_keeps_its_initial_scale_for_a_stable_window() {
    let mut policy = policy();
    policy.initial_replicas = 3;
    // Created at its initial scale with half a pod's load.
    let mut sim = Sim::new(policy, 3);
    let decisions = sim.run(60, 5.0);
    assert!(
        decisions[..59]
            .iter()
            .all(|d| (d.desired, d.reason) == (3, Reason::Panic)),
        "{:?}",
        desired(&decisions)
    );
    assert_eq!(
        decisions[59],
        Decision {
            desired: 1,
            reason: Reason::Stable,
            panicking: false
        }
    );
}

#[test]
fn missing_stats_hold_the_scale_until_data_returns() {
    let mut sim = Sim::new(policy(), 3);
    sim.run(60, 30.0);
    // No sample for 61 s: the window is empty at the decision.
    let now = sim.start + secs(sim.second + 61);
    let decision = decide(&sim.policy, &sim.window, &mut sim.state, now, sim.current);
    assert_eq!((decision.desired, decision.reason), (3, Reason::NoData));
}

#[test]
fn reasons_have_fixed_distinct_names_and_labels() {
    let names: std::collections::BTreeSet<_> = Reason::ALL.iter().map(Reason::as_str).collect();
    let labels: std::collections::BTreeSet<_> =
        Reason::ALL.iter().map(Reason::metric_label).collect();
    assert_eq!(names.len(), Reason::ALL.len());
    assert_eq!(labels.len(), Reason::ALL.len());
    for reason in Reason::ALL {
        let name = reason.as_str();
        assert!(name.starts_with(|c: char| c.is_ascii_uppercase()), "{name}");
        assert!(name.chars().all(|c| c.is_ascii_alphabetic()), "{name}");
        let label = reason.metric_label();
        assert!(
            label.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "{label}"
        );
        assert_eq!(reason.to_string(), name);
    }
    assert_eq!(
        Reason::HoldingForGracePeriod.as_str(),
        "HoldingForGracePeriod"
    );
    assert_eq!(
        Reason::HoldingForGracePeriod.metric_label(),
        "holding_for_grace_period"
    );
}

#[test]
fn a_queue_backlog_asks_for_pods_like_load() {
    check(vec![
        Case::new(
            "a backlog at zero wakes to ceil(pending / target)",
            replicas(0, 0),
            Some(0.0),
        )
        .backlog(250, 2.5)
        .expect(3, Reason::Backlog),
        Case::new(
            "a backlog above what the load asks for raises the count",
            replicas(1, 1),
            Some(5.0),
        )
        .backlog(42, 4.2)
        .expect(5, Reason::Backlog),
        Case::new(
            "load above what the backlog asks for wins",
            replicas(4, 4),
            Some(40.0),
        )
        .backlog(100, 1.0)
        .expect(4, Reason::Stable),
        Case::new(
            "the backlog is bounded by maxReplicas",
            replicas(0, 0),
            Some(0.0),
        )
        .policy(|p| p.max_replicas = 5)
        .backlog(5000, 50.0)
        .expect(5, Reason::AtMax),
        Case::new(
            "waking on a backlog asks for at least initialReplicas",
            replicas(0, 0),
            Some(0.0),
        )
        .policy(|p| p.initial_replicas = 2)
        .backlog(1, 0.01)
        .expect(2, Reason::Backlog),
        Case::new(
            "an unreadable backlog keeps an idle Function's pods past the grace period",
            replicas(3, 3),
            Some(0.0),
        )
        .backlog_unknown()
        .expect(3, Reason::NoData),
        Case::new(
            "an unreadable backlog does not wake a Function at zero",
            replicas(0, 0),
            Some(0.0),
        )
        .backlog_unknown()
        .expect(0, Reason::ScaleToZero),
        Case::new(
            "an empty backlog lets an idle Function go to zero",
            replicas(1, 1),
            Some(0.0),
        )
        .backlog(0, 0.0)
        .expect(0, Reason::ScaleToZero),
        Case::new(
            "metric cpu: a backlog wakes from zero to the wake scale only",
            replicas(0, 0),
            Some(0.0),
        )
        .policy(|p| p.metric = Metric::Cpu)
        .backlog(900, 9.0)
        .expect(1, Reason::Backlog),
        Case::new(
            "metric cpu: a backlog leaves 1..N to the HPA",
            replicas(2, 2),
            Some(0.0),
        )
        .policy(|p| p.metric = Metric::Cpu)
        .backlog(900, 9.0)
        .expect(2, Reason::Stable),
    ]);
}

#[test]
fn a_queue_driven_function_scales_from_zero_with_its_backlog_and_back_to_zero_once_drained() {
    let mut sim = Sim::new(policy(), 0);
    sim.backlog = Some(Backlog::of_triggers([Some((450, 100))]));
    let woken = sim.tick(0.0);
    assert_eq!((woken.desired, woken.reason), (5, Reason::Backlog));

    // Draining: the backlog still holds the pods it asks for.
    sim.backlog = Some(Backlog::of_triggers([Some((150, 100))]));
    assert!(sim.run(10, 0.0).iter().all(|d| d.desired >= 2));

    // Drained: the grace period starts now, then zero.
    sim.backlog = Some(Backlog::of_triggers([Some((0, 100))]));
    let drained = sim.run(31, 0.0);
    assert!(
        drained[..29].iter().all(|d| d.desired >= 1),
        "no zero within the grace period: {:?}",
        desired(&drained)
    );
    let last = drained.last().expect("31 decisions");
    assert_eq!((last.desired, last.reason), (0, Reason::ScaleToZero));
}

#[test]
fn a_broker_outage_holds_a_queue_driven_function_until_the_backlog_is_read_again() {
    let mut sim = Sim::new(policy(), 0);
    sim.backlog = Some(Backlog::of_triggers([Some((300, 100))]));
    assert_eq!(sim.tick(0.0).desired, 3);
    sim.backlog = Some(Backlog::Unknown);
    let outage = sim.run(120, 0.0);
    assert!(
        outage.iter().all(|d| d.desired == 3),
        "held at 3 while unknown: {:?}",
        desired(&outage)
    );
    sim.backlog = Some(Backlog::of_triggers([Some((0, 100))]));
    let after = sim.run(3, 0.0);
    assert!(
        after.iter().all(|d| d.desired < 3),
        "load alone decides again: {:?}",
        desired(&after)
    );
}
