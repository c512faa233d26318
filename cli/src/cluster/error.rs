//! What the cluster commands report as failures, in the user's terms: which kubeconfig,
//! which verb on which resource, which Function and which names come close.

use kube::core::Status;

/// Everything a cluster or `--dev` command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no cluster configured: no kubeconfig found (set KUBECONFIG or create ~/.kube/config), and not running in a pod; to use a running `zeroscale dev`, pass --dev"
    )]
    NoKubeconfig,
    #[error("reading the kubeconfig{}: {source}", context.as_ref().map(|c| format!(" (context {c})")).unwrap_or_default())]
    Kubeconfig {
        context: Option<String>,
        source: kube::config::KubeconfigError,
    },
    #[error("connecting to the cluster: {0}")]
    Connect(#[source] kube::Error),
    #[error(
        "the Function resource (functions.zeroscale.dev) is not installed in this cluster; install zeroscale with `helm install zeroscale charts/zeroscale --namespace zeroscale-system --create-namespace`, or only the CRD with `kubectl apply -f crds/function.yaml`"
    )]
    CrdMissing,
    #[error(
        "forbidden: you may not {verb} {resource}{} ({message}); ask your cluster admin for that permission",
        in_namespace(namespace)
    )]
    Forbidden {
        verb: &'static str,
        resource: &'static str,
        namespace: Option<String>,
        message: String,
    },
    #[error(
        "Function {name} not found in namespace {namespace}{}",
        near_names(near)
    )]
    NotFound {
        name: String,
        namespace: String,
        near: Vec<String>,
    },
    #[error("{verb} {resource}{}: {source}", in_namespace(namespace))]
    Api {
        verb: &'static str,
        resource: &'static str,
        namespace: Option<String>,
        source: kube::Error,
    },
    #[error("watching {resource}: {source}")]
    Watch {
        resource: &'static str,
        source: kube::runtime::watcher::Error,
    },
    #[error("Function {name} failed: {reason}: {message}")]
    Failed {
        name: String,
        reason: String,
        message: String,
    },
    #[error("Function {name} is not Ready after {waited:?}: {state}")]
    WaitTimeout {
        name: String,
        waited: std::time::Duration,
        state: String,
    },
    #[error("{0}")]
    Usage(String),
    #[error("no activator pod is ready for Function {0}: is zeroscale installed and running?")]
    NoActivator(String),
    #[error("port-forward to activator pod {pod}: {reason}")]
    PortForward { pod: String, reason: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("calling {url}: {source}")]
    Http { url: String, source: hyper::Error },
    #[error("{url} answered {status}: {body}")]
    HttpStatus {
        url: String,
        status: http::StatusCode,
        body: String,
    },
    #[error("{url} answered something unreadable: {reason}")]
    HttpBody { url: String, reason: String },
    #[error(
        "no running `zeroscale dev` found (no state file at {0}); start one, or pass --dev URL"
    )]
    NoDev(std::path::PathBuf),
    #[error("{path}: {reason}")]
    Manifest {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("encoding the output: {0}")]
    Encode(String),
    #[error("writing the output: {0}")]
    Output(#[source] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn in_namespace(namespace: &Option<String>) -> String {
    namespace
        .as_ref()
        .map(|n| format!(" in namespace {n}"))
        .unwrap_or_default()
}

fn near_names(near: &[String]) -> String {
    match near {
        [] => String::new(),
        names => format!("; did you mean {}?", names.join(", ")),
    }
}

impl Error {
    /// Names a failed API call in the user's terms: Forbidden says which verb on which
    /// resource, a 404 on the Function resource itself means its CRD is missing.
    pub fn api(
        verb: &'static str,
        resource: &'static str,
        namespace: Option<&str>,
        source: kube::Error,
    ) -> Self {
        let namespace = namespace.map(str::to_owned);
        match &source {
            kube::Error::Api(status) if status.code == 403 => Error::Forbidden {
                verb,
                resource,
                namespace,
                message: status.message.clone(),
            },
            kube::Error::Api(status) if resource == super::FUNCTIONS && is_missing_kind(status) => {
                Error::CrdMissing
            }
            _ => Error::Api {
                verb,
                resource,
                namespace,
                source,
            },
        }
    }

    /// Names a failed watch: a failure to list or start watching is the API call's
    /// (Forbidden, no CRD); anything else is the watch's.
    pub fn watch(
        resource: &'static str,
        namespace: Option<&str>,
        error: kube::runtime::watcher::Error,
    ) -> Self {
        use kube::runtime::watcher::Error as WatchError;
        match error {
            WatchError::InitialListFailed(source) | WatchError::WatchStartFailed(source) => {
                Error::api("watch", resource, namespace, source)
            }
            source => Error::Watch { resource, source },
        }
    }

    /// Whether this is the API server's answer for an object that does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Api { source: kube::Error::Api(status), .. } if status.code == 404)
    }
}

/// A 404 that names no object: the resource itself is unknown to the API server.
fn is_missing_kind(status: &Status) -> bool {
    status.code == 404
        && status
            .details
            .as_ref()
            .is_none_or(|details| details.name.is_empty())
}
