//! The CLI's error type: what went wrong and with which file.

use std::path::PathBuf;

/// Everything `zeroscale` reports as a failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: not valid YAML: {reason}")]
    Yaml {
        path: PathBuf,
        line: usize,
        column: usize,
        reason: String,
    },
    #[error("{path}: document {document} is not a valid Function: {reason}")]
    Function {
        path: PathBuf,
        document: usize,
        reason: String,
    },
    #[error("binding {address}: {source}")]
    Bind {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("listening for SIGTERM and SIGINT: {0}")]
    Signal(std::io::Error),
    #[error("{0}")]
    State(#[from] zeroscale_cli::cluster::Error),
    #[error("setting up metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("starting asynchronous calls: {0}")]
    Calls(#[from] zeroscale_queue::Error),
    #[error("--otlp-endpoint: {0}")]
    OtlpEndpoint(http::Error),
    #[error("starting the access log writer: {0}")]
    AccessLog(std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
