//! The zeroscale activator: every request to a Function passes through it. The pipeline,
//! one module per step: route (Host and path to a Function, by the rules in
//! `zeroscale_api::routing`) -> gateway (CORS preflights answered, rate limits, trace
//! context; see `gateway`) -> count (stats for the autoscaler) -> wait for capacity
//! (bounded queue with a deadline while the Function is at zero or its pods are full) ->
//! pick a pod (least loaded, per-pod concurrency) -> forward (pooled client, streaming
//! bodies). Between route and count, a Function with `spec.auth` admits or refuses the
//! request (`auth`), before anything can wake it.
pub mod access;
pub mod auth;
pub mod body;
pub mod calls;
pub(crate) mod capacity;
pub mod cluster;
pub mod connections;
pub(crate) mod cors;
pub mod endpoints;
pub(crate) mod errors;
pub mod forward;
pub mod functions;
pub mod gateway;
pub mod key_digests;
pub mod metrics;
pub mod otlp;
pub mod probe;
pub mod proxies;
pub(crate) mod ratelimit;
pub mod server;
pub(crate) mod target;
pub(crate) mod trace;
pub(crate) mod usage;
pub mod wake;
