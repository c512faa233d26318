//! Schedule triggers (`spec.triggers.schedules`), without Kubernetes: the leading
//! replica sends each due tick as an HTTP call through the activator, with CloudEvents
//! headers. The operator runs the [`Scheduler`] over Function statuses (its
//! `KubeStore`), `zeroscale dev` and the bench over a [`MemoryStore`]; neither the kube
//! client nor the operator is linked here.
//!
//! Delivery: a tick is recorded as started in the Function's status *before* its call,
//! with a write conditioned on the version read, so of two replicas that both see it
//! due only one can record it and call; it is recorded as done after the call. A
//! replica that finds a tick started but not done once its sender's claim expired
//! sends it again with the same `ce-id`. So every due tick is delivered at least once,
//! twice only when a replica dies between sending and recording, and never by two live
//! replicas.
//!
//! `plan` decides (pure, time passed in), [`ScheduleStore`] reads and conditionally
//! writes the records, [`Invoker`] sends the call, [`Scheduler`] is the loop.

mod error;
mod invoke;
mod plan;
mod run;
mod store;

pub use error::{Error, Result};
pub use invoke::{Call, HttpInvoker, Invoker};
pub use plan::Attempt;
pub use run::{Clock, ScaledClock, ScheduleMetrics, Scheduler, SystemClock};
pub use store::{MemoryStore, Notice, ScheduleStore, Versioned, key_of};

#[cfg(test)]
mod tests;
