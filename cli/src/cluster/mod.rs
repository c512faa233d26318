//! The commands that speak in Functions to a cluster (through the API server of the
//! current kubeconfig context) or to a running `zeroscale dev`: deploy, list, describe,
//! invoke, logs, delete and usage. Each command is a function of a [`kube::Client`] (or a
//! [`dev::DevEndpoint`]) and a writer, so tests drive it against a mocked API server and
//! read what it printed.

pub mod activator;
pub mod connect;
pub mod delete;
pub mod deploy;
pub mod describe;
pub mod dev;
mod error;
mod http;
pub mod invoke;
pub mod list;
pub mod logs;
pub mod render;
pub mod usage;

use std::io::Write;
use std::path::Path;

use zeroscale_api::Function;

pub use error::{Error, Result};

/// The Function CRD's plural and group, as errors name the resource.
pub(crate) const FUNCTIONS: &str = "functions.zeroscale.dev";

/// How a command prints what it found.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// Text for people.
    #[default]
    Human,
    /// JSON, for scripts.
    Json,
    /// YAML, for scripts.
    Yaml,
}

/// Which cluster and namespace a command talks to.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Target {
    /// The kubeconfig context to use (default: the current context).
    #[arg(long, env = "ZEROSCALE_CONTEXT")]
    pub context: Option<String>,
    /// The Function's namespace (default: the context's namespace, else `default`).
    #[arg(short, long, env = "ZEROSCALE_NAMESPACE")]
    pub namespace: Option<String>,
}

/// Where `list`, `describe` and `invoke` look: the cluster, or a running `zeroscale dev`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct DevTarget {
    /// Talk to a running `zeroscale dev` instead of a cluster: its URL, or with no value
    /// the one found in the state file `zeroscale dev` writes.
    #[arg(long, env = "ZEROSCALE_DEV", num_args = 0..=1, default_missing_value = "", value_name = "URL")]
    pub dev: Option<String>,
}

/// Writes `value` as JSON or YAML (for [`Format::Json`] and [`Format::Yaml`]).
pub(crate) fn write_data<T: serde::Serialize>(
    out: &mut dyn Write,
    format: Format,
    value: &T,
) -> Result<()> {
    let text = match format {
        Format::Yaml => serde_saphyr::to_string(value).map_err(|e| Error::Encode(e.to_string()))?,
        Format::Json | Format::Human => {
            let mut text =
                serde_json::to_string_pretty(value).map_err(|e| Error::Encode(e.to_string()))?;
            text.push('\n');
            text
        }
    };
    out.write_all(text.as_bytes()).map_err(Error::Output)
}

/// The commands that act on Functions in a cluster (or a running `zeroscale dev`).
#[derive(clap::Subcommand, Clone, Debug)]
pub enum Command {
    /// Deploy a Function (from flags or a manifest) and wait until it is Ready.
    Deploy(deploy::Args),
    /// List Functions: URL, Ready, replicas, last scale, age.
    List(list::Args),
    /// Show one Function: spec, conditions, Events, scaling decisions, live load.
    Describe(describe::Args),
    /// Call a Function through the activator and print its answer.
    Invoke(invoke::Args),
    /// Print the logs of every pod of a Function.
    Logs(logs::Args),
    /// Delete a Function.
    Delete(delete::Args),
    /// Usage and cost per Function: invocations, execution, cold starts, replica- and
    /// resource-seconds, the saving from scale to zero.
    Usage(usage::Args),
}

/// Loads the Functions of a manifest path (file or folder) for `deploy -f`.
pub type Load<'a> = &'a dyn Fn(&Path) -> Result<Vec<Function>>;

/// Runs `command`, printing on stdout (results) and stderr (progress).
pub async fn run(command: Command, load: Load<'_>) -> Result<()> {
    let stdout = &mut std::io::stdout();
    let stderr = &mut std::io::stderr();
    match command {
        Command::Deploy(args) => {
            let cluster = connect::connect(&args.cluster).await?;
            let bodies = match &args.file {
                Some(path) => load(path)?
                    .into_iter()
                    .map(|function| deploy::manifest_body(function, &cluster.namespace))
                    .collect::<Result<Vec<_>>>()?,
                None => vec![args.function(&cluster.namespace)?],
            };
            let wait = (!args.no_wait).then_some(args.wait);
            for body in bodies {
                deploy::run(&cluster, body, wait, args.output, stdout, stderr).await?;
            }
            Ok(())
        }
        Command::List(args) => match &args.dev.dev {
            Some(url) => {
                let functions = dev::DevEndpoint::resolve(url)?.functions().await?;
                list::print(&functions, true, args.output, stdout)
            }
            None => {
                let cluster = connect::connect(&args.target).await?;
                if args.watch {
                    list::watch(&cluster, args.all_namespaces, args.output, stdout).await
                } else {
                    list::run(&cluster, args.all_namespaces, args.output, stdout).await
                }
            }
        },
        Command::Describe(args) => match &args.dev.dev {
            Some(url) => {
                let endpoint = dev::DevEndpoint::resolve(url)?;
                let namespace = dev_namespace(&args.target);
                describe::run_dev(&endpoint, &namespace, &args.name, args.output, stdout).await
            }
            None => {
                let cluster = connect::connect(&args.target).await?;
                describe::run(&cluster, &args.name, args.output, stdout).await
            }
        },
        Command::Invoke(args) => match &args.dev.dev {
            Some(url) => {
                let endpoint = dev::DevEndpoint::resolve(url)?;
                let namespace = dev_namespace(&args.target);
                invoke::run_dev(&endpoint, &namespace, &args, stdout, stderr).await
            }
            None => {
                let cluster = connect::connect(&args.target).await?;
                invoke::run(&cluster, &args, stdout, stderr).await
            }
        },
        Command::Logs(args) => {
            let cluster = connect::connect(&args.target).await?;
            logs::run(&cluster, &args, stdout).await
        }
        Command::Delete(args) => {
            let cluster = connect::connect(&args.target).await?;
            delete::run(&cluster, &args.name, stdout).await
        }
        Command::Usage(args) => {
            // A running `zeroscale dev` (its state file exists) answers without --dev.
            let dev = args
                .dev
                .dev
                .clone()
                .or_else(|| dev::state_path().exists().then(String::new));
            let (report, namespace) = match &dev {
                Some(url) => {
                    let endpoint = dev::DevEndpoint::resolve(url)?;
                    let since = args.since_query();
                    let report = endpoint.usage(since.as_deref()).await?;
                    (report, dev_namespace(&args.target))
                }
                None => {
                    let cluster = connect::connect(&args.target).await?;
                    let report = usage::from_cluster(&cluster, &args).await?;
                    (report, cluster.namespace)
                }
            };
            let namespace = (!args.all_namespaces).then_some(namespace.as_str());
            let report = usage::select(report, namespace, args.name.as_deref());
            usage::print(&report, args.all_namespaces, args.output, stdout)
        }
    }
}

/// The namespace of a Function of `zeroscale dev`: `-n`, else `default`.
fn dev_namespace(target: &Target) -> String {
    target.namespace.clone().unwrap_or_else(|| "default".into())
}
