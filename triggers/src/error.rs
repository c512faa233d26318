//! The schedule triggers' error type: what a [`ScheduleStore`](crate::ScheduleStore)
//! reports when it cannot read or write a Function's trigger records.

use zeroscale_api::routing::FunctionKey;

/// A failure behind the scheduler's store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the schedule records of Function {function} changed since they were read")]
    Conflict { function: FunctionKey },

    #[error("writing the schedule records of Function {function}")]
    Write {
        function: FunctionKey,
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error("Function {function} is gone")]
    FunctionGone { function: FunctionKey },
}

/// Results of the scheduler's store.
pub type Result<T, E = Error> = std::result::Result<T, E>;
