//! The zeroscale operator: reconciles each `Function` into the objects that run it
//! (Deployment, Services, HorizontalPodAutoscaler, and the digests of its API keys for
//! the activator: [`api_keys`]) and reports its status
//! ([`controller`]), scales Functions through the autoscaler of `zeroscale-autoscaler`
//! ([`autoscaler`]), with one writer of replicas for both ([`replicas`]), fires schedule
//! triggers through the scheduler of `zeroscale-triggers` ([`schedule`]), and holds the
//! leader Lease so that only one replica acts at a time. Its admin server is
//! `zeroscale-admin`.

mod api_keys;
pub mod autoscaler;
mod backlog;
pub mod console;
pub mod controller;
pub mod crd;
mod error;
#[cfg(test)]
mod fixtures;
pub mod gateway;
pub mod leader;
pub mod lease;
pub mod metrics;
pub mod replicas;
pub mod resources;
pub mod schedule;
mod status;
pub mod watched;

pub use error::{Error, Result};
