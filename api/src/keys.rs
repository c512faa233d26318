//! Label and annotation keys zeroscale reads and writes.

/// Label on every object derived from a Function (and on its pods): the Function's name.
pub const FUNCTION_LABEL: &str = "zeroscale.dev/function";

/// Annotation the activator sets on a Function (RFC 3339 time) to ask for capacity while
/// the Function is at zero; the operator reacts to it on the next watch event.
pub const WAKE_REQUESTED_AT: &str = "zeroscale.dev/wake-requested-at";

/// `app.kubernetes.io/managed-by` value on every object zeroscale creates.
pub const MANAGED_BY: &str = "zeroscale";

/// Annotation naming the command `zeroscale dev` runs for each replica of a Function,
/// split like a shell would (quotes, no expansion); relative paths are resolved against
/// the manifest's folder. Clusters ignore it, so a manifest stays valid for both.
pub const LOCAL_COMMAND: &str = "zeroscale.dev/local-command";
