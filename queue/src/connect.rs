//! Connecting to NATS with the credentials the operator mounted from a Secret: a
//! `.creds` file, a user and password, or a token.

use std::path::PathBuf;
use std::time::Duration;

use crate::{Error, Result};

/// Where NATS is and how to log in to it.
#[derive(Clone, Debug, Default)]
pub struct NatsOptions {
    /// E.g. `nats://nats.zeroscale-system:4222`.
    pub url: String,
    /// A NATS `.creds` file (JWT and NKey seed).
    pub credentials_file: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// Name the connection shows in the server's monitoring.
    pub name: String,
}

/// Longest a request to the broker (a publish acknowledgement, a key-value read) may
/// take before it counts as unreachable.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects. The client keeps reconnecting in the background when the broker goes away
/// (and when it is not up yet at start), so a caller checks
/// [`async_nats::Client::connection_state`] rather than reconnecting itself.
pub async fn connect(options: &NatsOptions) -> Result<async_nats::Client> {
    let mut connect = match &options.credentials_file {
        Some(path) => async_nats::ConnectOptions::with_credentials_file(path.clone())
            .await
            .map_err(|source| Error::ReadCredentials {
                path: path.clone(),
                source,
            })?,
        None => async_nats::ConnectOptions::new(),
    };
    if let (Some(user), Some(password)) = (&options.user, &options.password) {
        connect = connect.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &options.token {
        connect = connect.token(token.clone());
    }
    connect
        .name(&options.name)
        .request_timeout(Some(REQUEST_TIMEOUT))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connect(options.url.as_str())
        .await
        .map_err(|source| Error::Connect {
            url: options.url.clone(),
            source,
        })
}
