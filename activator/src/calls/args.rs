//! The activator's flags for asynchronous calls, and starting them from the flags:
//! connecting to NATS and running this replica's dispatcher.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use zeroscale_queue::calls::CallStore;
use zeroscale_queue::connect::{NatsOptions, connect};
use zeroscale_queue::dispatch::Dispatcher;

use super::AsyncCalls;
use super::address::{AddressPolicy, Cidr};
use super::dispatch::{self, Loopback};
use crate::functions::Functions;

/// Flags of asynchronous calls and queue triggers.
#[derive(clap::Args, Debug, Clone)]
pub struct CallArgs {
    /// NATS server with JetStream that stores asynchronous calls, e.g.
    /// nats://nats.zeroscale-system:4222. Without it, `Prefer: respond-async` requests
    /// are answered 501.
    #[arg(long, env = "ZEROSCALE_NATS_URL")]
    pub nats_url: Option<String>,
    /// NATS credentials file (JWT and NKey seed), e.g. mounted from a Secret.
    #[arg(long, env = "ZEROSCALE_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// NATS user (with ZEROSCALE_NATS_PASSWORD).
    #[arg(long, env = "ZEROSCALE_NATS_USER")]
    pub nats_user: Option<String>,
    /// NATS password; from the environment only, so it stays out of the process list.
    #[arg(skip = std::env::var("ZEROSCALE_NATS_PASSWORD").ok())]
    pub nats_password: Option<String>,
    /// NATS token; from the environment only.
    #[arg(skip = std::env::var("ZEROSCALE_NATS_TOKEN").ok())]
    pub nats_token: Option<String>,
    /// Address ranges callbacks (X-Callback-Url) may not go to, comma-separated: give
    /// the cluster's pod and service ranges. Loopback and link-local are always refused.
    #[arg(long, env = "ZEROSCALE_CALLBACK_DENY_CIDR", value_delimiter = ',')]
    pub callback_deny_cidr: Vec<Cidr>,
    /// Address ranges callbacks may go to even when refused otherwise, comma-separated.
    #[arg(long, env = "ZEROSCALE_CALLBACK_ALLOW_CIDR", value_delimiter = ',')]
    pub callback_allow_cidr: Vec<Cidr>,
}

impl CallArgs {
    /// Connects to NATS (in the background: the broker may come up later) and runs
    /// this replica's dispatcher, delivering through `listen`, until `shutdown`.
    /// Disabled without `--nats-url`.
    pub async fn start(
        &self,
        listen: SocketAddr,
        functions: Arc<Functions>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<AsyncCalls, zeroscale_queue::Error> {
        let Some(url) = &self.nats_url else {
            tracing::info!("asynchronous calls disabled: no --nats-url");
            return Ok(AsyncCalls::default());
        };
        let client = connect(&NatsOptions {
            url: url.clone(),
            credentials_file: self.nats_creds.clone(),
            user: self.nats_user.clone(),
            password: self.nats_password.clone(),
            token: self.nats_token.clone(),
            name: "zeroscale-activator".into(),
        })
        .await?;
        let store = CallStore::new(client);
        let loopback = Loopback::new(
            listen,
            Arc::clone(&functions),
            AddressPolicy {
                allow: self.callback_allow_cidr.clone(),
                deny: self.callback_deny_cidr.clone(),
            },
        );
        let dispatcher = Dispatcher::new(store.clone(), Arc::new(loopback));
        tokio::spawn(dispatch::run(functions, dispatcher, shutdown));
        tracing::info!(url, "asynchronous calls stored in NATS JetStream");
        Ok(AsyncCalls::new(store))
    }
}
