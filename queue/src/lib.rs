//! Durable calls and queue triggers on NATS JetStream: the names of the streams,
//! consumers and buckets zeroscale uses, connecting to the broker, storing calls and
//! their state ([`calls`]), delivering them and queue messages ([`dispatch`]), and reading
//! the queue triggers' backlog for the autoscaler ([`backlog`]). With the
//! `test-support` feature, [`harness`] starts a real `nats-server` for tests.

pub mod backlog;
pub mod calls;
pub mod connect;
pub mod dispatch;
pub mod error;
#[cfg(any(test, feature = "test-support"))]
pub mod harness;
pub mod names;

pub use error::{Error, Result};
