//! `zeroscale list`: the Functions of a namespace (or every namespace), once or as they
//! change.

use std::collections::BTreeMap;
use std::io::Write;

use futures::StreamExt;
use kube::api::ListParams;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use zeroscale_api::Function;

use super::connect::Cluster;
use super::{DevTarget, Error, FUNCTIONS, Format, Result, Target, render, write_data};

/// `zeroscale list`'s arguments.
#[derive(clap::Args, Clone, Debug)]
#[command(after_help = "Examples:
  zeroscale list                  Functions of the current namespace
  zeroscale list -A -o json       every namespace, as JSON
  zeroscale list -w               keep watching, reprint on every change
  zeroscale list --dev            the Functions of a running `zeroscale dev`")]
pub struct Args {
    #[command(flatten)]
    pub target: Target,
    /// Functions of every namespace.
    #[arg(short = 'A', long, env = "ZEROSCALE_ALL_NAMESPACES")]
    pub all_namespaces: bool,
    /// Keep watching: print again on every change, until Ctrl-C.
    #[arg(short, long, env = "ZEROSCALE_WATCH")]
    pub watch: bool,
    /// Output format.
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

/// The Functions API `list` reads, one namespace or all of them, and that namespace
/// (none for all) for error messages.
fn scope(cluster: &Cluster, all_namespaces: bool) -> (Api<Function>, Option<&str>) {
    if all_namespaces {
        (Api::all(cluster.client.clone()), None)
    } else {
        (cluster.functions(), Some(cluster.namespace.as_str()))
    }
}

/// Lists the Functions once and prints them.
pub async fn run(
    cluster: &Cluster,
    all_namespaces: bool,
    format: Format,
    out: &mut dyn Write,
) -> Result<()> {
    let (api, namespace) = scope(cluster, all_namespaces);
    let functions = api
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::api("list", FUNCTIONS, namespace, source))?
        .items;
    print(&functions, all_namespaces, format, out)
}

/// Prints the Functions, then again on every change, until the watch ends.
pub async fn watch(
    cluster: &Cluster,
    all_namespaces: bool,
    format: Format,
    out: &mut dyn Write,
) -> Result<()> {
    let (api, namespace) = scope(cluster, all_namespaces);
    let mut known = BTreeMap::new();
    let mut initial = BTreeMap::new();
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut started = false;
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            // Before the first listing a failure is the user's to see (no CRD,
            // Forbidden); later ones are retried with backoff as the watch reconnects.
            Err(error) if !started => return Err(Error::watch(FUNCTIONS, namespace, error)),
            Err(_) => continue,
        };
        let changed = match event {
            watcher::Event::Init => {
                initial.clear();
                None
            }
            watcher::Event::InitApply(function) => {
                initial.insert(key(&function), function);
                None
            }
            watcher::Event::InitDone => {
                started = true;
                known = std::mem::take(&mut initial);
                Some(known.values().cloned().collect::<Vec<_>>())
            }
            watcher::Event::Apply(function) => {
                known.insert(key(&function), function.clone());
                Some(vec![function])
            }
            watcher::Event::Delete(function) => {
                known.remove(&key(&function));
                Some(vec![])
            }
        };
        let Some(changed) = changed else { continue };
        match format {
            Format::Human => {
                let all: Vec<Function> = known.values().cloned().collect();
                print(&all, all_namespaces, format, out)?;
                writeln!(out).map_err(Error::Output)?;
            }
            Format::Json | Format::Yaml => {
                for function in &changed {
                    write_data(out, format, function)?;
                }
            }
        }
        out.flush().map_err(Error::Output)?;
    }
    Ok(())
}

fn key(function: &Function) -> (String, String) {
    (
        function.namespace().unwrap_or_default(),
        function.name_any(),
    )
}

/// Prints `functions` as a table, or as a JSON/YAML list.
pub fn print(
    functions: &[Function],
    all_namespaces: bool,
    format: Format,
    out: &mut dyn Write,
) -> Result<()> {
    match format {
        Format::Human if functions.is_empty() => {
            writeln!(out, "No Functions found.").map_err(Error::Output)
        }
        Format::Human => out
            .write_all(render::list(functions, all_namespaces, jiff::Timestamp::now()).as_bytes())
            .map_err(Error::Output),
        Format::Json | Format::Yaml => write_data(out, format, &functions),
    }
}
