//! `zeroscale logs`: the output of every pod of a Function, each line prefixed by its
//! pod as `zeroscale dev` prefixes replicas; with `-f`, following pods as the Function
//! scales.

use std::collections::HashSet;
use std::io::Write;
use std::time::Duration;

use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, LogParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use tokio::sync::mpsc;
use zeroscale_api::keys;

use super::connect::Cluster;
use super::{Error, Result, Target};

/// `zeroscale logs`'s arguments.
#[derive(clap::Args, Clone, Debug)]
#[command(after_help = "Examples:
  zeroscale logs hello --tail 20
  zeroscale logs hello -f --since 10m")]
pub struct Args {
    /// The Function whose pods to read.
    pub name: String,
    /// Keep following, including pods that start later, until Ctrl-C.
    #[arg(short, long, env = "ZEROSCALE_FOLLOW")]
    pub follow: bool,
    /// Only lines newer than this, e.g. 10m.
    #[arg(long, value_parser = zeroscale_api::duration::parse, env = "ZEROSCALE_SINCE")]
    pub since: Option<Duration>,
    /// Only the last N lines of each pod.
    #[arg(long, env = "ZEROSCALE_TAIL")]
    pub tail: Option<i64>,
    #[command(flatten)]
    pub target: Target,
}

impl Args {
    fn params(&self, follow: bool) -> LogParams {
        LogParams {
            follow,
            since_seconds: self
                .since
                .map(|since| i64::try_from(since.as_secs()).unwrap_or(i64::MAX)),
            tail_lines: self.tail,
            ..LogParams::default()
        }
    }
}

/// Prints the logs of the Function's pods (each pod's lines together), or follows them.
pub async fn run(cluster: &Cluster, args: &Args, out: &mut dyn Write) -> Result<()> {
    cluster.function(&args.name).await?;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let selector = format!("{}={}", keys::FUNCTION_LABEL, args.name);
    if args.follow {
        return follow(cluster, pods, &selector, args, out).await;
    }
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| Error::api("list", "pods", Some(&cluster.namespace), source))?;
    if list.items.is_empty() {
        writeln!(out, "Function {} has no pods (scaled to zero?)", args.name)
            .map_err(Error::Output)?;
    }
    for pod in &list.items {
        let name = pod.name_any();
        let text = pods
            .logs(&name, &args.params(false))
            .await
            .map_err(|source| Error::api("get", "pods/log", Some(&cluster.namespace), source))?;
        for line in text.lines() {
            writeln!(out, "{name} | {line}").map_err(Error::Output)?;
        }
    }
    Ok(())
}

/// Streams the logs of every running pod of the Function, starting a stream for each
/// pod as it starts running, until interrupted.
async fn follow(
    cluster: &Cluster,
    pods: Api<Pod>,
    selector: &str,
    args: &Args,
    out: &mut dyn Write,
) -> Result<()> {
    let (lines_tx, mut lines) = mpsc::unbounded_channel::<String>();
    let mut streaming = HashSet::new();
    let mut events = watcher(pods.clone(), watcher::Config::default().labels(selector))
        .default_backoff()
        .applied_objects()
        .boxed();
    let namespace = cluster.namespace.clone();
    loop {
        tokio::select! {
            event = events.try_next() => {
                let pod = match event {
                    Ok(Some(pod)) => pod,
                    Ok(None) => return Ok(()),
                    // The first failure is the user's to see (Forbidden); later ones
                    // are retried with backoff as the watch reconnects.
                    Err(error) if streaming.is_empty() => {
                        return Err(Error::watch("pods", Some(&namespace), error));
                    }
                    Err(_) => continue,
                };
                let name = pod.name_any();
                if !has_started(&pod) || !streaming.insert(name.clone()) {
                    continue;
                }
                let pods = pods.clone();
                let sender = lines_tx.clone();
                let params = args.params(true);
                tokio::spawn(async move {
                    match pods.log_stream(&name, &params).await {
                        Ok(stream) => {
                            let mut stream = stream.lines();
                            while let Ok(Some(line)) = stream.try_next().await {
                                if sender.send(format!("{name} | {line}")).is_err() {
                                    return;
                                }
                            }
                        }
                        Err(error) => {
                            let _ = sender.send(format!("{name} | (cannot read its logs: {error})"));
                        }
                    }
                });
            }
            Some(line) = lines.recv() => {
                writeln!(out, "{line}").map_err(Error::Output)?;
                out.flush().map_err(Error::Output)?;
            }
        }
    }
}

/// Whether the pod's container has started, so it has logs to stream.
fn has_started(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .is_some_and(|statuses| {
            statuses.iter().any(|s| {
                s.state
                    .as_ref()
                    .is_some_and(|state| state.running.is_some() || state.terminated.is_some())
            })
        })
}
