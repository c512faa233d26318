//! The autoscaler's error type: what a [`StatsSource`](crate::StatsSource) or a
//! [`Runtime`](crate::Runtime) reports when it cannot read the load or apply replicas.

use std::time::Duration;

use zeroscale_api::routing::FunctionKey;

/// A failure behind the autoscaler's two interfaces.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no activator replica is ready")]
    NoActivator,

    #[error("reading the stats at {uri}")]
    Scrape {
        uri: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error("reading the stats at {uri}: status {status}")]
    ScrapeStatus { uri: String, status: u16 },

    #[error("reading the stats at {uri}: no answer within {timeout:?}")]
    ScrapeTimeout { uri: String, timeout: Duration },

    #[error("scaling Function {function}")]
    Scale {
        function: FunctionKey,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Results of the autoscaler's interfaces.
pub type Result<T, E = Error> = std::result::Result<T, E>;
