//! A Function as `zeroscale dev` runs it: the command of each replica (from the
//! `zeroscale.dev/local-command` annotation, else the container command when it exists
//! on this machine), its readiness check and scaling policy, or the reason it cannot run.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use zeroscale_api::conditions::Reason;
use zeroscale_api::routing::FunctionKey;
use zeroscale_api::{Function, ScalingDefaults, Visibility, keys};
use zeroscale_operator::autoscaler::ScalingPolicy;

use super::replica::{Launch, ReplicaConfig};

/// One Function loaded from a manifest.
#[derive(Debug, Clone)]
pub struct LocalFunction {
    pub key: FunctionKey,
    /// How output names it: `hello` in the default namespace, else `team/hello`.
    pub label: String,
    /// The manifest file it came from.
    pub source: PathBuf,
    /// The resource as the activator routes it: public, since locally there is no
    /// outside to hide a cluster-local Function from.
    pub routed: Function,
    /// How to run it, or why it cannot run.
    pub plan: Result<Plan, (Reason, String)>,
    /// How to call it, one line each, printed once it can serve.
    pub urls: Vec<String>,
}

/// Everything needed to run and scale a valid Function.
#[derive(Debug, Clone)]
pub struct Plan {
    pub replica: ReplicaConfig,
    pub policy: ScalingPolicy,
}

impl LocalFunction {
    /// Prepares `function` (namespace set) from the manifest at `source`, for callers
    /// reaching `zeroscale dev` at `address`.
    pub fn new(
        function: Function,
        source: &Path,
        setpriv: Option<&Path>,
        address: SocketAddr,
    ) -> Self {
        let namespace = function.metadata.namespace.clone().unwrap_or_default();
        let name = function.metadata.name.clone().unwrap_or_default();
        let label = match namespace.as_str() {
            "default" => name.clone(),
            _ => format!("{namespace}/{name}"),
        };
        let dir = source
            .parent()
            .filter(|dir| !dir.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned();
        let plan = plan(&function, &dir, setpriv);
        let mut routed = function;
        routed.spec.routing.visibility = Visibility::Public;
        let key = FunctionKey::new(&namespace, &name);
        let urls = urls(&key, &routed, address);
        Self {
            key,
            label,
            source: source.to_owned(),
            routed,
            plan,
            urls,
        }
    }

    /// Why the Function cannot run as its manifest stands, if it cannot.
    pub fn plan_failure(&self) -> Option<&str> {
        self.plan.as_ref().err().map(|(_, reason)| reason.as_str())
    }

    /// Whether `other` runs differently: a changed spec or local command.
    pub fn differs_from(&self, other: &LocalFunction) -> bool {
        let annotation = |f: &LocalFunction| {
            f.routed
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(keys::LOCAL_COMMAND).cloned())
        };
        self.routed.spec != other.routed.spec || annotation(self) != annotation(other)
    }
}

/// How to call a Function: its local-domain URL and the curl with a Host header, under
/// its path prefix, plus its own hosts.
fn urls(key: &FunctionKey, function: &Function, address: SocketAddr) -> Vec<String> {
    let FunctionKey { namespace, name } = key;
    let routing = &function.spec.routing;
    let path = routing.path_prefix.as_deref().unwrap_or("/");
    let port = address.port();
    let domain = super::LOCAL_DOMAIN;
    let mut urls = vec![format!(
        "{name}.{namespace}: http://{name}.{namespace}.{domain}:{port}{path}   or   curl -H 'Host: {name}.{namespace}' http://{address}{path}"
    )];
    urls.extend(
        routing.hosts.iter().map(|host| {
            format!("{name}.{namespace}: curl -H 'Host: {host}' http://{address}{path}")
        }),
    );
    urls
}

fn plan(function: &Function, dir: &Path, setpriv: Option<&Path>) -> Result<Plan, (Reason, String)> {
    let spec = &function.spec;
    let durations = spec
        .validate()
        .map_err(|invalid| (Reason::InvalidSpec, invalid.to_string()))?;
    let launch = launch(function, dir).map_err(|reason| (Reason::DeploymentFailed, reason))?;
    Ok(Plan {
        replica: ReplicaConfig {
            launch: Arc::new(launch),
            readiness_path: spec.readiness_path.clone(),
            protocol: spec.protocol.into(),
            grace: Duration::from_secs(
                u64::try_from(spec.termination_grace_period_seconds).unwrap_or(0),
            ),
            setpriv: setpriv.map(Path::to_owned),
        },
        policy: ScalingPolicy::from_spec(&spec.scaling, &durations, &ScalingDefaults::default()),
    })
}

/// The command of each replica, resolved against `dir`.
fn launch(function: &Function, dir: &Path) -> Result<Launch, String> {
    let spec = &function.spec;
    let annotation = function
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(keys::LOCAL_COMMAND));
    let (words, origin) = match annotation {
        Some(text) => (
            shlex::split(text)
                .filter(|words| !words.is_empty())
                .ok_or_else(|| {
                    format!(
                        "annotation {}: empty or unbalanced quotes: {text}",
                        keys::LOCAL_COMMAND
                    )
                })?,
            "the annotation",
        ),
        None if spec.command.as_ref().is_some_and(|c| !c.is_empty()) => (
            spec.command
                .iter()
                .chain(&spec.args)
                .flatten()
                .cloned()
                .collect(),
            "spec.command",
        ),
        None => {
            return Err(format!(
                "no command to run locally: add the annotation {} (for example \"python3 -u server.py\")",
                keys::LOCAL_COMMAND
            ));
        }
    };
    let (program, args) = words.split_first().ok_or("empty command")?;
    let program = resolve(program, dir).ok_or_else(|| {
        format!(
            "command {program} (from {origin}) not found on this machine{}",
            match annotation {
                Some(_) => String::new(),
                None => format!(
                    "; add the annotation {} to run it locally",
                    keys::LOCAL_COMMAND
                ),
            }
        )
    })?;
    let env = spec
        .env
        .iter()
        .filter_map(|var| Some((var.name.clone(), var.value.clone()?)))
        .collect();
    Ok(Launch {
        program,
        args: args.to_vec(),
        dir: dir.to_owned(),
        env,
    })
}

/// A program path as a shell would find it: with a slash, relative to `dir`; without,
/// on `PATH`. None when no such file exists.
pub(super) fn resolve(program: &str, dir: &Path) -> Option<PathBuf> {
    if program.contains('/') {
        let path = dir.join(program);
        return path.is_file().then_some(path);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|entry| entry.join(program))
        .find(|path| path.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroscale_api::FunctionSpec;

    fn function(annotation: Option<&str>, command: &[&str]) -> Function {
        let mut spec = FunctionSpec::with_image("x");
        if !command.is_empty() {
            spec.command = Some(command.iter().map(|s| s.to_string()).collect());
        }
        let mut function = Function::new("hello", spec);
        function.metadata.namespace = Some("default".into());
        if let Some(text) = annotation {
            function.metadata.annotations = Some(
                [(keys::LOCAL_COMMAND.to_owned(), text.to_owned())]
                    .into_iter()
                    .collect(),
            );
        }
        function
    }

    #[test]
    fn annotation_is_split_like_a_shell_and_found_on_path() {
        let launch = launch(
            &function(Some("sh -c 'echo hi there'"), &[]),
            Path::new("/tmp"),
        )
        .expect("sh exists");
        assert!(launch.program.ends_with("sh"));
        assert_eq!(launch.args, ["-c", "echo hi there"]);
        assert_eq!(launch.dir, Path::new("/tmp"));
    }

    #[test]
    fn relative_program_paths_are_relative_to_the_manifest() {
        let dir = std::env::temp_dir();
        let error = launch(&function(Some("./missing-server"), &[]), &dir).expect_err("missing");
        assert!(error.contains("./missing-server"), "{error}");
    }

    #[test]
    fn a_container_command_missing_here_says_how_to_run_locally() {
        let error = launch(&function(None, &["/app/server"]), Path::new("."))
            .expect_err("no /app/server here");
        assert!(error.contains(keys::LOCAL_COMMAND), "{error}");
    }

    #[test]
    fn no_command_at_all_is_a_reason_not_a_crash() {
        let address = SocketAddr::from(([127, 0, 0, 1], 8080));
        let local = LocalFunction::new(function(None, &[]), Path::new("fn.yaml"), None, address);
        let (reason, message) = local.plan.expect_err("nothing to run");
        assert_eq!(reason, Reason::DeploymentFailed);
        assert!(message.contains("no command to run locally"), "{message}");
        assert_eq!(local.label, "hello");
    }
}
