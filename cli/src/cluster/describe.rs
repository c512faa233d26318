//! `zeroscale describe`: one Function in a page: its spec in a few lines, conditions,
//! scaling decisions and other recent Events, and the activators' live figures.

use std::io::Write;
use std::time::Duration;

use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::ListParams;

use super::connect::Cluster;
use super::dev::DevEndpoint;
use super::render::{self, EventLine, LiveFigures};
use super::{DevTarget, Error, Format, Result, Target, activator, write_data};

/// How many of the latest Events `describe` shows.
const RECENT_EVENTS: usize = 10;

/// Time between the two stats samples live rates are computed from.
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(1);

/// `zeroscale describe`'s arguments.
#[derive(clap::Args, Clone, Debug)]
#[command(after_help = "Examples:
  zeroscale describe hello -n team
  zeroscale describe hello -o yaml
  zeroscale describe hello --dev")]
pub struct Args {
    /// The Function to describe.
    pub name: String,
    #[command(flatten)]
    pub target: Target,
    /// Output format (json and yaml print the Function itself).
    #[arg(
        short,
        long,
        value_enum,
        default_value = "human",
        env = "ZEROSCALE_OUTPUT"
    )]
    pub output: Format,
    #[command(flatten)]
    pub dev: DevTarget,
}

/// Describes Function `name` of the cluster.
pub async fn run(cluster: &Cluster, name: &str, format: Format, out: &mut dyn Write) -> Result<()> {
    let function = cluster.function(name).await?;
    if format != Format::Human {
        return write_data(out, format, &function);
    }
    let events = events(cluster, name).await?;
    let live = activator::live(cluster, &cluster.namespace, name, SAMPLE_PERIOD)
        .await
        .map_err(|error| error.to_string());
    let text = render::describe(&function, &events, &live, jiff::Timestamp::now());
    out.write_all(text.as_bytes()).map_err(Error::Output)
}

/// Describes Function `namespace/name` of a running `zeroscale dev`.
pub async fn run_dev(
    dev: &DevEndpoint,
    namespace: &str,
    name: &str,
    format: Format,
    out: &mut dyn Write,
) -> Result<()> {
    let function = dev.function(namespace, name).await?;
    if format != Format::Human {
        return write_data(out, format, &function);
    }
    let live = dev_live(dev, namespace, name)
        .await
        .map_err(|e| e.to_string());
    let text = render::describe(&function, &[], &live, jiff::Timestamp::now());
    out.write_all(text.as_bytes()).map_err(Error::Output)
}

async fn dev_live(dev: &DevEndpoint, namespace: &str, name: &str) -> Result<LiveFigures> {
    let before = dev.stats().await?;
    let metrics = dev.metrics().await?;
    tokio::time::sleep(SAMPLE_PERIOD).await;
    let after = dev.stats().await?;
    Ok(activator::figures(
        &[before],
        &[after],
        &[metrics],
        namespace,
        name,
    ))
}

/// The latest Events about the Function, oldest first.
async fn events(cluster: &Cluster, name: &str) -> Result<Vec<EventLine>> {
    let api: Api<Event> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let selector = format!("involvedObject.kind=Function,involvedObject.name={name}");
    let list = api
        .list(&ListParams::default().fields(&selector))
        .await
        .map_err(|source| Error::api("list", "events", Some(&cluster.namespace), source))?;
    let mut lines: Vec<EventLine> = list.items.iter().map(event_line).collect();
    lines.sort_by_key(|line| line.time);
    let skip = lines.len().saturating_sub(RECENT_EVENTS);
    Ok(lines.split_off(skip))
}

/// An Event as `describe` shows it; core/v1 and events.k8s.io/v1 Events both land in
/// the core list, with the time in whichever field the writer set.
pub fn event_line(event: &Event) -> EventLine {
    let time = event
        .series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0))
        .or_else(|| event.last_timestamp.as_ref().map(|t| t.0))
        .or_else(|| event.event_time.as_ref().map(|t| t.0))
        .or_else(|| event.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let count = event
        .series
        .as_ref()
        .and_then(|s| s.count)
        .or(event.count)
        .unwrap_or(1);
    EventLine {
        time,
        type_: event.type_.clone().unwrap_or_else(|| "Normal".into()),
        reason: event.reason.clone().unwrap_or_default(),
        message: event.message.clone().unwrap_or_default(),
        count,
    }
}
