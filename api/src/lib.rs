//! Types shared by the zeroscale operator, activator and CLI: the `Function` custom
//! resource, the labels and annotations zeroscale puts on objects, the names of the
//! objects it derives from a Function, the routing rules (which Function answers a Host
//! and path, and whose claim on a host wins), and duration parsing for spec fields.
//!
//! This crate has no client and no runtime so that every component can read Functions
//! without depending on the operator.

pub mod auth;
pub mod calls;
pub mod conditions;
pub mod duration;
pub mod function;
pub mod gateway;
pub mod keys;
pub mod names;
pub mod routing;
pub mod stats;
pub mod usage;
pub mod validate;

pub use calls::{AsyncSpec, QueueTrigger, RetrySpec};
pub use function::{
    ActiveTick, ConcurrencyPolicy, Function, FunctionSpec, FunctionStatus, Metric, Protocol,
    RequestsSpec, RoutingSpec, ScalingDefaults, ScalingSpec, Schedule, ScheduleStatus, TickResult,
    TriggersSpec, Visibility, crd,
};
