//! The decision: desired replicas from a policy, a load window, the state kept between
//! ticks and the current replicas, at a given instant. The rules and their order are
//! listed in the [module docs](super).

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use tokio::time::Instant;
use zeroscale_api::Metric;

use super::backlog::Backlog;
use super::policy::ScalingPolicy;
use super::window::{Load, Window};

/// The replicas a Function's Deployment has now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replicas {
    /// `spec.replicas`: what was last asked for.
    pub desired: i32,
    /// Pods ready to take requests.
    pub ready: i32,
}

/// What the autoscaler wants for one Function after one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Replicas to set; equal to the current ones when nothing should change.
    pub desired: i32,
    /// The rule that decided `desired`.
    pub reason: Reason,
    /// Whether the Function is in panic mode after this tick.
    pub panicking: bool,
}

/// The rule that decided a [`Decision`]; the last rule that changed the value wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Load averaged over the stable window.
    Stable,
    /// Panic mode: load over the panic window, and no scale-down.
    Panic,
    /// Requests arrived or wait while no pod is ready (or the Function is at zero), or a
    /// request is held: at least one pod, at least the wake scale when waking.
    Wake,
    /// No load, but a request was seen within the scale-to-zero grace period: one pod
    /// kept.
    HoldingForGracePeriod,
    /// No request for the whole grace period and none held: zero pods.
    ScaleToZero,
    /// A lower count waits until it has been wanted for scaleDownDelay.
    ScaleDownDelayed,
    /// Raised to minReplicas.
    AtMin,
    /// Capped at maxReplicas.
    AtMax,
    /// No recent stats, or a queue backlog that could not be read: the current scale
    /// is kept.
    NoData,
    /// Messages wait in the Function's queue triggers.
    Backlog,
}

impl Reason {
    /// Every reason, for registering metric label values up front.
    pub const ALL: [Reason; 10] = [
        Reason::Stable,
        Reason::Panic,
        Reason::Wake,
        Reason::HoldingForGracePeriod,
        Reason::ScaleToZero,
        Reason::ScaleDownDelayed,
        Reason::AtMin,
        Reason::AtMax,
        Reason::NoData,
        Reason::Backlog,
    ];

    /// The reason in CamelCase, as Kubernetes Events and conditions spell reasons.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::Stable => "Stable",
            Reason::Panic => "Panic",
            Reason::Wake => "Wake",
            Reason::HoldingForGracePeriod => "HoldingForGracePeriod",
            Reason::ScaleToZero => "ScaleToZero",
            Reason::ScaleDownDelayed => "ScaleDownDelayed",
            Reason::AtMin => "AtMin",
            Reason::AtMax => "AtMax",
            Reason::NoData => "NoData",
            Reason::Backlog => "Backlog",
        }
    }

    /// The fixed metric label value of the reason.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Reason::Stable => "stable",
            Reason::Panic => "panic",
            Reason::Wake => "wake",
            Reason::HoldingForGracePeriod => "holding_for_grace_period",
            Reason::ScaleToZero => "scale_to_zero",
            Reason::ScaleDownDelayed => "scale_down_delayed",
            Reason::AtMin => "at_min",
            Reason::AtMax => "at_max",
            Reason::NoData => "no_data",
            Reason::Backlog => "backlog",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Panic mode: since when the threshold was last crossed, and the most pods asked for
/// meanwhile (what the Function is held at).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Panic {
    last_crossed: Instant,
    max_desired: i32,
}

/// What one Function's decisions remember from one tick to the next. One per Function,
/// kept by the loop for as long as it scales that Function.
#[derive(Debug, Clone)]
pub struct DecisionState {
    panic: Option<Panic>,
    /// Latest request, held request or start of observation; `None` when the Function
    /// has been idle for as long as this state knows (it was found at zero).
    last_active: Option<Instant>,
    /// When the decisions last went to zero; requests seen before then are what the
    /// Function was idle after, so they do not wake it again.
    at_zero_since: Option<Instant>,
    delay: DelayWindow,
}

impl DecisionState {
    /// The state of a Function first seen at `now` with `current` replicas.
    ///
    /// It counts `now` as activity when the Function runs pods, so nothing scales to
    /// zero before a whole grace period has been watched, and a Function found at zero
    /// stays there until a request comes. Above one pod it starts in panic mode at the
    /// current scale: the window is empty, and a few samples must not scale it down
    /// before a whole stable window has been seen.
    pub fn new(now: Instant, current: Replicas) -> Self {
        let desired = current.desired.max(0);
        let mut delay = DelayWindow::default();
        delay.record(now, desired);
        Self {
            panic: (desired > 1).then_some(Panic {
                last_crossed: now,
                max_desired: desired,
            }),
            last_active: (desired > 0).then_some(now),
            at_zero_since: (desired == 0).then_some(now),
            delay,
        }
    }

    /// Whether the Function is in panic mode.
    pub fn panicking(&self) -> bool {
        self.panic.is_some()
    }

    fn note_activity(&mut self, window: &Window, now: Instant) {
        // Waiting messages keep the Function busy like a held request.
        let waiting = window.held() || window.backlog().is_some_and(|b| b.pending());
        let latest = if waiting {
            Some(now)
        } else {
            window.last_request()
        };
        if let Some(latest) = latest
            && self.last_active.is_none_or(|last| last < latest)
        {
            self.last_active = Some(latest);
        }
    }

    /// How long the Function has been idle at `now`; `None` means for as long as known.
    fn idle_for(&self, now: Instant) -> Option<Duration> {
        self.last_active
            .map(|last| now.saturating_duration_since(last))
    }
}

/// The largest pod count wanted during the last scale-down delay: a monotonic queue of
/// `(at, desired)` with strictly decreasing `desired` from front to back, so the front
/// is the maximum and memory stays small however long the delay.
#[derive(Debug, Clone, Default)]
struct DelayWindow {
    entries: VecDeque<(Instant, i32)>,
}

impl DelayWindow {
    fn record(&mut self, at: Instant, desired: i32) {
        // An entry no larger than a newer one can never be the maximum again.
        while self.entries.back().is_some_and(|&(_, d)| d <= desired) {
            self.entries.pop_back();
        }
        self.entries.push_back((at, desired));
    }

    /// The largest desired recorded within `[now - delay, now]`.
    fn max(&mut self, now: Instant, delay: Duration) -> Option<i32> {
        if let Some(start) = now.checked_sub(delay) {
            while self.entries.front().is_some_and(|&(at, _)| at < start) {
                self.entries.pop_front();
            }
        }
        self.entries.front().map(|&(_, desired)| desired)
    }

    fn clear(&mut self) {
        self.entries.clear();
    }
}

/// A desired count and the rule that set it, as the rules pass it along.
#[derive(Debug, Clone, Copy)]
struct Step {
    desired: i32,
    reason: Reason,
}

/// Decides how many pods one Function should run at `now`.
///
/// `window` holds the load up to `now` (the loop records this tick's sample first);
/// `state` is this Function's [`DecisionState`], updated in place; `current` is what the
/// Deployment has. The rules and their order are in the [module docs](super).
pub fn decide(
    policy: &ScalingPolicy,
    window: &Window,
    state: &mut DecisionState,
    now: Instant,
    current: Replicas,
) -> Decision {
    let current = Replicas {
        desired: current.desired.max(0),
        ready: current.ready.max(0),
    };
    state.note_activity(window, now);

    let load = window.load(now);
    let mut step = match (load, policy.metric) {
        (None, _) => Step {
            desired: current.desired,
            reason: Reason::NoData,
        },
        (Some(_), Metric::Cpu) => {
            // The HPA owns 1..N; panic mode has no meaning here.
            state.panic = None;
            Step {
                desired: current.desired,
                reason: Reason::Stable,
            }
        }
        (Some(load), Metric::Concurrency | Metric::Rps) => {
            scale_on_load(policy, state, now, current, load)
        }
    };

    // Demand: a request is held, or one arrived within the panic window (and after the
    // Function went to zero: with a grace period shorter than the panic window, the last
    // request before the idle time must not wake it again).
    let demand = window.held()
        || window.last_request().is_some_and(|at| {
            now.saturating_duration_since(at) < policy.panic_window
                && state.at_zero_since.is_none_or(|zero| at > zero)
        });
    let waking = demand && (current.ready == 0 || current.desired == 0);
    if waking {
        // Pods already starting are not cancelled while nothing is ready.
        step = Step {
            desired: step.desired.max(policy.wake_scale()).max(current.desired),
            reason: Reason::Wake,
        };
    } else if window.held() && step.desired < 1 {
        step = Step {
            desired: 1,
            reason: Reason::Wake,
        };
    } else if step.reason != Reason::NoData {
        // Missing stats say nothing about idleness, so only a decision on data may
        // reach zero.
        if may_scale_to_zero(policy, window, state, now) {
            step = Step {
                desired: 0,
                reason: Reason::ScaleToZero,
            };
        } else if step.desired < 1 && policy.min_replicas == 0 {
            // With minReplicas above zero the bounds lift it, reported as AtMin.
            step = Step {
                desired: 1,
                reason: Reason::HoldingForGracePeriod,
            };
        }
    }

    if let Some(backlog) = window.backlog() {
        step = on_backlog(policy, backlog, current, step);
    }

    if policy.scale_down_delay.is_zero() {
        state.delay.clear();
    } else {
        state.delay.record(now, step.desired);
        if let Some(delayed) = state.delay.max(now, policy.scale_down_delay)
            && delayed > step.desired
        {
            step = Step {
                desired: delayed,
                reason: Reason::ScaleDownDelayed,
            };
        }
    }

    // Bounds last; minReplicas wins should a spec ever have min above max.
    if step.desired > policy.max_replicas {
        step = Step {
            desired: policy.max_replicas,
            reason: Reason::AtMax,
        };
    }
    if step.desired < policy.min_replicas {
        step = Step {
            desired: policy.min_replicas,
            reason: Reason::AtMin,
        };
    }

    if step.desired == 0 {
        // A wake must not be held at the scale of a burst from before the idle time.
        state.panic = None;
        state.at_zero_since.get_or_insert(now);
    } else {
        state.at_zero_since = None;
    }
    Decision {
        desired: step.desired,
        reason: step.reason,
        panicking: state.panicking(),
    }
}

/// Raises `step` to what the queue backlog asks for: ceil(replicas) pods while messages
/// wait (the wake scale from zero; for `metric: cpu`, whose 1..N the HPA owns, only
/// the wake), and the current scale when the backlog could not be read.
fn on_backlog(policy: &ScalingPolicy, backlog: Backlog, current: Replicas, step: Step) -> Step {
    let wanted = match backlog {
        Backlog::Unknown => {
            return if step.desired < current.desired {
                Step {
                    desired: current.desired,
                    reason: Reason::NoData,
                }
            } else {
                step
            };
        }
        Backlog::Pending { messages: 0, .. } => return step,
        Backlog::Pending { replicas: pods, .. } => {
            let mut wanted = replicas(pods.ceil()).max(1);
            if current.desired == 0 {
                wanted = wanted.max(policy.wake_scale());
            }
            if policy.metric == Metric::Cpu {
                wanted = wanted.min(current.desired.max(policy.wake_scale()));
            }
            wanted
        }
    };
    // Waiting messages count as activity, so a pod "held for the grace period" is in
    // fact kept for the backlog.
    if wanted > step.desired
        || (wanted == step.desired && step.reason == Reason::HoldingForGracePeriod)
    {
        Step {
            desired: wanted,
            reason: Reason::Backlog,
        }
    } else {
        step
    }
}

/// Stable and panic mode, each clamped to the scale rates. May return 0 (no load);
/// the caller decides whether zero is allowed.
fn scale_on_load(
    policy: &ScalingPolicy,
    state: &mut DecisionState,
    now: Instant,
    current: Replicas,
    load: Load,
) -> Step {
    // Rates count at least one ready pod, so a Function with none can still grow.
    let ready = f64::from(current.ready.max(1));
    let most = (ready * policy.max_scale_up_rate).ceil();
    let fewest = (ready / policy.max_scale_down_rate).floor();
    let within_rates = |pods: f64| replicas(pods.max(fewest).min(most));
    let stable = within_rates((load.stable / policy.target).ceil());
    let burst = within_rates((load.panic / policy.target).ceil());

    // Precondition: ready pods. With none, any load would cross a threshold of zero;
    // starting from zero is the wake rule's job.
    let over_threshold = current.ready > 0
        && load.panic / policy.target >= f64::from(current.ready) * policy.panic_threshold;
    if over_threshold {
        let max_desired = state
            .panic
            .map_or(current.desired, |panic| panic.max_desired);
        state.panic = Some(Panic {
            last_crossed: now,
            max_desired,
        });
    } else if state.panic.is_some_and(|panic| {
        now.saturating_duration_since(panic.last_crossed) >= policy.stable_window
    }) {
        // The burst has had a whole stable window to show in the stable average.
        state.panic = None;
    }

    match &mut state.panic {
        Some(panic) => {
            panic.max_desired = panic.max_desired.max(stable).max(burst);
            Step {
                desired: panic.max_desired,
                reason: Reason::Panic,
            }
        }
        None => Step {
            desired: stable,
            reason: Reason::Stable,
        },
    }
}

/// Whether the Function may go to zero: minReplicas is 0, nothing is held, and no
/// request was seen for the whole grace period (and not at `now`, so a zero grace period
/// still waits for one quiet tick).
fn may_scale_to_zero(
    policy: &ScalingPolicy,
    window: &Window,
    state: &DecisionState,
    now: Instant,
) -> bool {
    policy.min_replicas == 0
        && !window.held()
        && state
            .idle_for(now)
            .is_none_or(|idle| idle >= policy.scale_to_zero_grace_period && !idle.is_zero())
}

/// A pod count as replicas; the float is already whole, and `as` saturates.
fn replicas(pods: f64) -> i32 {
    pods as i32
}
