//! The leader's side of leader election: runs the leader's work (controllers and
//! autoscaler) only while this replica holds the Lease, cancels it when the Lease is
//! lost and competes for the Lease again in the same process, so that a replica never
//! sits idle neither leading nor competing. Also where the Lease lives.

use prometheus::{IntCounter, IntGauge, Registry};
use zeroscale_admin::process::ErrorChain;

use crate::Result;
use crate::lease::LeaderElector;

/// Leadership metrics of one replica.
#[derive(Clone, Debug)]
pub struct LeaderMetrics {
    /// 1 while this replica leads, else 0.
    leader: IntGauge,
    /// Times this replica lost the Lease while leading.
    losses: IntCounter,
}

impl LeaderMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let leader = IntGauge::new(
            "zeroscale_operator_leader",
            "1 while this replica holds the leader Lease, else 0",
        )?;
        let losses = IntCounter::new(
            "zeroscale_operator_leadership_losses_total",
            "Times this replica lost the leader Lease while leading",
        )?;
        registry.register(Box::new(leader.clone()))?;
        registry.register(Box::new(losses.clone()))?;
        Ok(Self { leader, losses })
    }
}

/// Competes for the Lease through `elector` and, each time this replica acquires it,
/// runs a fresh `work()` while it leads.
///
/// When the Lease is lost the work is dropped, which cancels it wherever it is, and the
/// replica competes again. The work is expected to watch for shutdown itself, so that
/// it can finish what it is doing. Returns when the work ends (having released the
/// Lease so that another replica takes over at once), when `shutdown` resolves while
/// not leading, or with the error that retrying cannot fix (such as a forbidden Lease).
pub async fn lead<F>(
    elector: &LeaderElector,
    mut work: impl FnMut() -> F,
    metrics: &LeaderMetrics,
    shutdown: impl Future<Output = ()>,
) -> Result<()>
where
    F: Future<Output = ()>,
{
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let leadership = tokio::select! {
            leadership = elector.acquire() => leadership?,
            () = &mut shutdown => return Ok(()),
        };
        metrics.leader.set(1);
        tokio::select! {
            () = work() => {
                metrics.leader.set(0);
                if let Err(error) = leadership.release().await {
                    tracing::warn!(error = %ErrorChain(&error), "releasing the leader Lease failed; it will expire");
                }
                return Ok(());
            }
            () = leadership.lost() => {
                metrics.leader.set(0);
                metrics.losses.inc();
                tracing::warn!("stopped the controllers and the autoscaler after losing the leader Lease; competing for it again");
            }
        }
    }
}

/// Where the leader Lease lives, and why there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseNamespace {
    /// The namespace.
    pub name: String,
    /// Where the name came from, for the log: a flag, the pod, or the kubeconfig.
    pub source: &'static str,
}

/// The Lease's namespace: `flag` (`--lease-namespace`) when given, else the namespace
/// of the pod the operator runs in (`in_pod`, from its service account), else the
/// client's default, `client_default`: the current kubeconfig context's namespace,
/// `default` when the context names none.
pub fn lease_namespace(
    flag: Option<&str>,
    in_pod: Option<&str>,
    client_default: &str,
) -> LeaseNamespace {
    fn nonempty(name: Option<&str>) -> Option<&str> {
        name.map(str::trim).filter(|name| !name.is_empty())
    }
    let (name, source) = if let Some(name) = nonempty(flag) {
        (name, "--lease-namespace")
    } else if let Some(name) = nonempty(in_pod) {
        (name, "this pod's namespace")
    } else {
        (client_default, "the kubeconfig context")
    };
    LeaseNamespace {
        name: name.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_namespace_comes_from_the_flag_then_the_pod_then_the_kubeconfig() {
        let cases = [
            (
                "the flag wins over the pod",
                Some("ops"),
                Some("zeroscale-system"),
                "dev",
                ("ops", "--lease-namespace"),
            ),
            (
                "in a pod, its namespace wins over the kubeconfig",
                None,
                Some("zeroscale-system\n"),
                "dev",
                ("zeroscale-system", "this pod's namespace"),
            ),
            (
                "outside a pod, the kubeconfig context's namespace",
                None,
                None,
                "dev",
                ("dev", "the kubeconfig context"),
            ),
            (
                "an empty flag counts as none",
                Some(""),
                None,
                "default",
                ("default", "the kubeconfig context"),
            ),
        ];
        for (name, flag, in_pod, client_default, (namespace, source)) in cases {
            assert_eq!(
                lease_namespace(flag, in_pod, client_default),
                LeaseNamespace {
                    name: namespace.to_owned(),
                    source
                },
                "{name}"
            );
        }
    }
}
