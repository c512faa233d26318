//! Upgrades (WebSocket): when the pod answers an upgrade request with 101 Switching
//! Protocols, a spawned task copies bytes both ways between the client's and the pod's
//! connections until either side closes, holding the exchange's guard meanwhile.

use http::{Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::debug;
use zeroscale_admin::process::ErrorChain;

use crate::errors::ActivatorError;

/// Both sides of an upgrade the pod accepted.
pub(super) struct Tunnel {
    client: OnUpgrade,
    pod: OnUpgrade,
}

impl Tunnel {
    /// The tunnel `response` opens: one when the pod switched protocols for a client that
    /// asked to (`client` is its side of the upgrade), none for any other answer. A pod
    /// that switches protocols unasked fails the exchange.
    pub(super) fn accepted(
        response: &mut Response<Incoming>,
        client: Option<OnUpgrade>,
    ) -> Result<Option<Self>, ActivatorError> {
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Ok(None);
        }
        match client {
            Some(client) => Ok(Some(Self {
                client,
                pod: hyper::upgrade::on(response),
            })),
            None => Err(ActivatorError::Upstream(
                "the pod switched protocols without being asked to".into(),
            )),
        }
    }

    /// Copies bytes both ways, in a task of its own, once both sides switched; `guard` is
    /// dropped when the tunnel closes.
    pub(super) fn spawn<G: Send + 'static>(self, guard: G) {
        tokio::spawn(run(self.client, self.pod, guard));
    }
}

async fn run<G>(client: OnUpgrade, pod: OnUpgrade, guard: G) {
    let _guard = guard;
    let (client, pod) = match tokio::try_join!(client, pod) {
        Ok(upgraded) => upgraded,
        Err(error) => {
            debug!(error = %ErrorChain(&error), "upgrade did not complete");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut pod = TokioIo::new(pod);
    match tokio::io::copy_bidirectional(&mut client, &mut pod).await {
        Ok((to_pod, to_client)) => debug!(to_pod, to_client, "tunnel closed"),
        Err(error) => debug!(error = %ErrorChain(&error), "tunnel failed"),
    }
}
