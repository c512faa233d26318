//! The zeroscale operator: reconciles each `Function` into the objects that run it
//! (Deployment, Services, HorizontalPodAutoscaler), reports its status, and holds the
//! leader Lease so that only one replica acts at a time. Its admin server is
//! `zeroscale-admin`.

pub mod autoscaler;
pub mod crd;
mod error;
pub mod leader;
pub mod lease;

pub use error::{Error, Result};
pub mod controller;
#[cfg(test)]
mod fixtures;
pub mod metrics;
pub mod resources;
pub mod status;
