//! The errors of this crate.

/// A NATS client error of any kind.
pub type NatsError = async_nats::Error;

/// What failed while talking to NATS or a test `nats-server`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to NATS at {url}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("cannot read NATS credentials file {path}")]
    ReadCredentials {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not connected to NATS")]
    NotConnected,
    #[error("cannot create JetStream stream {name}")]
    CreateStream {
        name: String,
        #[source]
        source: NatsError,
    },
    #[error("cannot create JetStream key-value bucket {name}")]
    CreateBucket {
        name: String,
        #[source]
        source: NatsError,
    },
    #[error("cannot create JetStream consumer {name}")]
    CreateConsumer {
        name: String,
        #[source]
        source: NatsError,
    },
    #[error("cannot fetch messages of consumer {name}")]
    Fetch {
        name: String,
        #[source]
        source: NatsError,
    },
    #[error("JetStream did not store the message")]
    Publish(#[source] NatsError),
    #[error("cannot acknowledge a message")]
    Ack(#[source] NatsError),
    #[error("cannot read a call's state")]
    ReadState(#[source] NatsError),
    #[error("cannot write a call's state")]
    WriteState(#[source] NatsError),
    #[error("a call's state is not valid JSON")]
    Encode(#[source] serde_json::Error),
    #[error("a concurrent call with the same Idempotency-Key is not stored yet; retry")]
    IdempotencyRace,
    #[error("the system random number generator failed")]
    Random,
    #[error("cannot start nats-server")]
    StartServer(#[source] std::io::Error),
    #[error("reading the backlog of JetStream consumer {consumer} on stream {stream}")]
    ConsumerInfo {
        stream: String,
        consumer: String,
        #[source]
        source: NatsError,
    },
    #[error(
        "reading the backlog of JetStream consumer {consumer} on stream {stream}: no answer within {timeout:?}"
    )]
    ConsumerInfoTimeout {
        stream: String,
        consumer: String,
        timeout: std::time::Duration,
    },
    #[error("nats-server did not accept connections on {address} within {waited:?}")]
    ServerNotReady {
        address: std::net::SocketAddr,
        waited: std::time::Duration,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
