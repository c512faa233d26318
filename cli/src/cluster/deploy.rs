//! `zeroscale deploy`: server-side applies a Function (from flags or manifests) under
//! the field manager [`FIELD_MANAGER`], then follows its `Ready` condition until it
//! serves or fails, saying what it waits for.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use kube::Resource;
use kube::api::{Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use serde_json::{Map, Value, json};
use zeroscale_api::Function;

use super::connect::Cluster;
use super::{Error, FUNCTIONS, Format, Result, Target, write_data};

/// The field manager of everything `zeroscale deploy` applies.
pub const FIELD_MANAGER: &str = "zeroscale-cli";

/// `zeroscale deploy`'s arguments.
#[derive(clap::Args, Clone, Debug)]
#[command(after_help = "Examples:
  zeroscale deploy hello --image ghcr.io/acme/hello:1 --env GREETING=hi --min 0 --max 5
  zeroscale deploy -f function.yaml")]
pub struct Args {
    /// The Function's name (with --image).
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pub name: Option<String>,
    /// Apply the Functions in this manifest (a file, or a folder of .yaml files).
    #[arg(short, long, env = "ZEROSCALE_FILE")]
    pub file: Option<PathBuf>,
    /// The container image.
    #[arg(long, env = "ZEROSCALE_IMAGE", required_unless_present = "file")]
    pub image: Option<String>,
    /// An environment variable of the container, K=V; repeatable.
    #[arg(long = "env", short = 'e', value_name = "K=V")]
    pub env: Vec<String>,
    /// The port the container listens on.
    #[arg(long, env = "ZEROSCALE_PORT")]
    pub port: Option<i32>,
    /// Fewest replicas; 0 lets the Function scale to zero.
    #[arg(long, env = "ZEROSCALE_MIN")]
    pub min: Option<i32>,
    /// Most replicas.
    #[arg(long, env = "ZEROSCALE_MAX")]
    pub max: Option<i32>,
    /// Load per pod to aim for (concurrent requests by default).
    #[arg(long, env = "ZEROSCALE_TARGET")]
    pub target: Option<i32>,
    /// Longest a request may take, e.g. 30s.
    #[arg(long, env = "ZEROSCALE_TIMEOUT")]
    pub timeout: Option<String>,
    /// Longest to wait for the Function to be Ready.
    #[arg(long, default_value = "5m", value_parser = zeroscale_api::duration::parse, env = "ZEROSCALE_WAIT")]
    pub wait: Duration,
    /// Apply and return, without waiting for Ready.
    #[arg(long, env = "ZEROSCALE_NO_WAIT")]
    pub no_wait: bool,
    /// Output format of the deployed Function.
    #[arg(
        short,
        long,
        value_enum,
        default_value = "human",
        env = "ZEROSCALE_OUTPUT"
    )]
    pub output: Format,
    #[command(flatten)]
    pub cluster: Target,
}

impl Args {
    /// The apply body the flags describe: only the fields given, so the CLI owns only
    /// those and the defaults stay the API server's. Checked with the operator's rules.
    pub fn function(&self, namespace: &str) -> Result<Value> {
        let (Some(name), Some(image)) = (&self.name, &self.image) else {
            return Err(Error::Usage(
                "deploy needs NAME and --image, or -f FILE".into(),
            ));
        };
        let mut spec = Map::new();
        spec.insert("image".into(), json!(image));
        if !self.env.is_empty() {
            let env = self
                .env
                .iter()
                .map(|pair| match pair.split_once('=') {
                    Some((key, value)) if !key.is_empty() => {
                        Ok(json!({"name": key, "value": value}))
                    }
                    _ => Err(Error::Usage(format!("--env {pair}: expected K=V"))),
                })
                .collect::<Result<Vec<_>>>()?;
            spec.insert("env".into(), Value::Array(env));
        }
        if let Some(port) = self.port {
            spec.insert("port".into(), json!(port));
        }
        let mut scaling = Map::new();
        for (key, value) in [
            ("minReplicas", self.min),
            ("maxReplicas", self.max),
            ("target", self.target),
        ] {
            if let Some(value) = value {
                scaling.insert(key.into(), json!(value));
            }
        }
        if !scaling.is_empty() {
            spec.insert("scaling".into(), Value::Object(scaling));
        }
        if let Some(timeout) = &self.timeout {
            spec.insert("requests".into(), json!({ "timeout": timeout }));
        }
        let body = json!({
            "apiVersion": Function::api_version(&()),
            "kind": Function::kind(&()),
            "metadata": { "name": name, "namespace": namespace },
            "spec": spec,
        });
        let typed: Function = serde_json::from_value(body.clone())
            .map_err(|e| Error::Usage(format!("Function {name}: {e}")))?;
        typed
            .spec
            .validate()
            .map_err(|e| Error::Usage(format!("Function {name}: {e}")))?;
        Ok(body)
    }
}

/// The body that applies a Function read from a manifest, in the command's namespace
/// unless the manifest names one.
pub fn manifest_body(mut function: Function, namespace: &str) -> Result<Value> {
    function
        .metadata
        .namespace
        .get_or_insert_with(|| namespace.to_owned());
    function.status = None;
    serde_json::to_value(&function).map_err(|e| Error::Encode(e.to_string()))
}

/// Applies `body` (a Function), then waits for it unless `wait` is None. Progress goes
/// to `progress`, the result to `out`.
pub async fn run(
    cluster: &Cluster,
    body: Value,
    wait: Option<Duration>,
    format: Format,
    out: &mut dyn Write,
    progress: &mut dyn Write,
) -> Result<()> {
    let name = body["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let namespace = body["metadata"]["namespace"]
        .as_str()
        .unwrap_or(&cluster.namespace)
        .to_owned();
    let api: kube::Api<Function> = kube::Api::namespaced(cluster.client.clone(), &namespace);
    let applied = api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(|source| Error::api("patch", FUNCTIONS, Some(&namespace), source))?;
    let _ = writeln!(progress, "Function {name} applied in namespace {namespace}");
    let function = match wait {
        None => applied,
        Some(limit) => {
            let waiting = until_ready(&api, &name, progress);
            match tokio::time::timeout(limit, waiting).await {
                Ok(result) => result?,
                Err(_) => {
                    return Err(Error::WaitTimeout {
                        name,
                        waited: limit,
                        state: "still not Ready".into(),
                    });
                }
            }
        }
    };
    match format {
        Format::Human => {
            let url = function
                .status
                .as_ref()
                .and_then(|s| s.url.clone())
                .unwrap_or_else(|| "-".into());
            let verb = if wait.is_some() {
                "is Ready"
            } else {
                "applied"
            };
            writeln!(out, "Function {name} {verb}: {url}").map_err(Error::Output)
        }
        Format::Json | Format::Yaml => write_data(out, format, &function),
    }
}

/// What a Function's status says about its rollout.
#[derive(Debug, PartialEq)]
pub enum Progress {
    /// It serves (or sits at zero, able to wake).
    Ready,
    /// It cannot start: the reason and message.
    Failed(String, String),
    /// Still on its way; the line to show.
    Waiting(String),
}

/// Reads the rollout from the status, ignoring a status about an older generation.
pub fn progress(function: &Function) -> Progress {
    let status = function.status.clone().unwrap_or_default();
    let current = match (status.observed_generation, function.metadata.generation) {
        (Some(observed), Some(generation)) => observed >= generation,
        (_, None) => true,
        (None, Some(_)) => false,
    };
    let condition = status.ready_condition().filter(|_| current);
    match condition {
        None => Progress::Waiting("waiting for the operator to pick the Function up".into()),
        Some(c) if c.status == "True" => Progress::Ready,
        Some(c) if c.status == "False" => Progress::Failed(c.reason.clone(), c.message.clone()),
        Some(c) => Progress::Waiting(format!(
            "{}: {} ({}/{} pods ready)",
            c.reason,
            c.message,
            status.ready_replicas.unwrap_or(0),
            status.desired_replicas.unwrap_or(0)
        )),
    }
}

/// Watches the Function until it is Ready or failed, printing each new progress line.
async fn until_ready(
    api: &kube::Api<Function>,
    name: &str,
    progress_out: &mut dyn Write,
) -> Result<Function> {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(api.clone(), config)
        .default_backoff()
        .applied_objects()
        .boxed();
    let mut last = String::new();
    let mut seen = false;
    while let Some(function) = events.next().await {
        let function = match function {
            Ok(function) => function,
            // Before the Function is first seen a failure is the user's to see; later
            // ones are retried with backoff as the watch reconnects.
            Err(error) if !seen => return Err(Error::watch(FUNCTIONS, api.namespace(), error)),
            Err(_) => continue,
        };
        seen = true;
        match progress(&function) {
            Progress::Ready => return Ok(function),
            Progress::Failed(reason, message) => {
                return Err(Error::Failed {
                    name: name.to_owned(),
                    reason,
                    message,
                });
            }
            Progress::Waiting(line) if line != last => {
                let _ = writeln!(progress_out, "  {line}");
                let _ = progress_out.flush();
                last = line;
            }
            Progress::Waiting(_) => {}
        }
    }
    Err(Error::Usage(format!("the watch of Function {name} ended")))
}
