//! Durable calls and queue triggers on NATS JetStream: the names of the streams,
//! consumers and buckets zeroscale uses, connecting to the broker, storing calls and
//! their state ([`calls`]) and delivering them and queue messages ([`dispatch`]). With the
//! `test-support` feature, [`harness`] starts a real `nats-server` for tests.

pub mod calls;
pub mod connect;
pub mod dispatch;
pub mod error;
#[cfg(any(test, feature = "test-support"))]
pub mod harness;
pub mod names;

pub use error::{Error, Result};
