//! Schedule triggers (`spec.triggers.schedules`): the leading replica sends each due
//! tick as an HTTP call through the activator, with CloudEvents headers.
//!
//! Delivery: a tick is recorded as started in the Function's status *before* its call,
//! with a write conditioned on the version read, so of two replicas that both see it
//! due only one can record it and call; it is recorded as done after the call. A
//! replica that finds a tick started but not done once its sender's claim expired
//! sends it again with the same `ce-id`. So every due tick is delivered at least once,
//! twice only when a replica dies between sending and recording, and never by two live
//! replicas.
//!
//! [`plan`] decides (pure, time passed in), [`ScheduleStore`] reads and conditionally
//! writes the records, [`Invoker`] sends the call, [`Scheduler`] is the loop.

mod invoke;
mod plan;
mod run;
mod store;

pub use invoke::{Call, HttpInvoker, Invoker, Target};
pub use plan::{
    Attempt, Delivery, Firing, LATE_AFTER, Plan, Trigger, backoff, event_id, finish, plan,
};
pub use run::{Clock, ScaledClock, ScheduleMetrics, Scheduler, SystemClock, in_cluster};
pub use store::{
    KubeStore, MemoryStore, Notice, SCHEDULER_FIELD_MANAGER, ScheduleStore, Versioned, key_of,
};

#[cfg(test)]
mod tests;
