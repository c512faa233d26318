//! The zeroscale autoscaler, without Kubernetes: how many pods a Function should run,
//! from the load the activators saw, and the loop ([`drive`]) that applies it through a
//! [`Runtime`]. The operator drives it over Deployments, `zeroscale dev` over local
//! processes; neither is linked here.
//!
//! The decision core (`decide`, advanced for every Function by [`Fleet`]) is pure and synchronous: no client, no
//! clock, no loop. Time is passed in (`now`), so tests drive it with a fake clock and
//! the loop that scrapes the activators and applies replicas stays a thin shell around
//! it.
//!
//! The behaviour follows Knative's KPA. Each tick the loop records one window sample
//! (the summed load of all activators), then calls `decide`, which applies these
//! rules in order (defaults in brackets):
//!
//! 1. **No data**: no sample within the stable window keeps the current scale
//!    ([`Reason::NoData`]); it never scales to zero on missing stats.
//! 2. **Stable**: desired = ceil(stable-window average / target) [window 60 s,
//!    target 100 in flight, 200 rps, or 70% of containerConcurrency].
//! 3. **Rates**: desired stays within floor(ready / maxScaleDownRate) \[2\] and
//!    ceil(ready × maxScaleUpRate) \[1000\], counting at least one ready pod.
//! 4. **Panic**: when panic-window average / target >= ready × panicThreshold [200%]
//!    (ready > 0), the larger of the panic and stable estimates is used and the scale
//!    never goes down until a whole stable window passes without crossing the threshold
//!    again [panic window 10% of the stable window, at least 1 s]. A new
//!    decision state above one pod starts in panic mode, so an operator restart (or a
//!    new Function at its initial scale) does not scale down on a history it lacks.
//! 5. **Wake**: load or a held request while no pod is ready, or while scaled to zero,
//!    asks for at least max(1, initialReplicas), never less than the load needs nor the
//!    pods already starting; a held request always means at least one pod.
//! 6. **Scale to zero**: with minReplicas 0 \[0\], no request for the whole
//!    scaleToZeroGracePeriod [30 s] and nothing held, desired is 0 (over the panic hold
//!    and the scale-down rate: idle has no load to protect); otherwise a Function the
//!    load would put at zero keeps one pod ([`Reason::HoldingForGracePeriod`]).
//! 7. **Backlog**: messages waiting in the Function's queue triggers ask for at least
//!    ceil(sum of pending / target over its triggers) pods, at least the wake scale from
//!    zero, and count as activity, so the grace period to zero starts once they are
//!    drained ([`Reason::Backlog`]). A backlog that cannot be read keeps at least the
//!    current scale: an unreachable broker is no signal, never an empty queue. For
//!    `metric: cpu` it only wakes from zero.
//! 8. **Scale-down delay**: desired is the largest value the rules above chose during
//!    the last scaleDownDelay [0 s, off], so a lower scale (zero included) applies only
//!    once it has been wanted that long.
//! 9. **Bounds**: minReplicas and maxReplicas \[10\] apply last ([`Reason::AtMin`],
//!    [`Reason::AtMax`]).
//!
//! `metric: cpu` Functions are scaled 1..N by their HorizontalPodAutoscaler; for them the
//! core only moves between 0 and the wake scale (rules 1, 5, 6, 7, 8, 9) and otherwise
//! returns the current scale unchanged, so the loop must write only when the decision
//! differs from what it read, and never fight the HPA.

mod backlog;
mod decide;
mod drive;
mod error;
mod fleet;
mod meter;
mod metrics;
mod policy;
mod usage;
mod window;

pub use backlog::{Backlog, BacklogSource, NoBacklog};
pub use decide::{Decision, Reason, Replicas};
pub use drive::{Runtime, StatsSource, drive};
pub use error::{Error, Result};
pub use fleet::{Fleet, Target};
pub use meter::Observed;
pub use metrics::Metrics;
pub use policy::ScalingPolicy;
pub use usage::{Reserved, Usage};

use decide::{DecisionState, decide};
use meter::LoadMeter;
use window::Window;

#[cfg(test)]
mod tests;
