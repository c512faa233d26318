//! Waking a Function at zero: the activator only says "this Function needs capacity";
//! how that reaches the control plane is behind [`Wake`], so the same proxy runs with
//! the Kubernetes implementation or a local process runtime.

use zeroscale_api::routing::FunctionKey;

/// Asks the control plane for capacity. Called on the slow path only (a request found no
/// ready pod); implementations must not block and may coalesce repeated calls.
pub trait Wake: Send + Sync + 'static {
    fn wake(&self, function: &FunctionKey);
}
