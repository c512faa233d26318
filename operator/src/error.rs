//! The operator's error type: one variant per operation that can fail, with the object
//! it was about.

/// Everything that can go wrong in the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("serializing the CRD to YAML")]
    SerializeCrd {
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error("reading {kind} {name}")]
    Get {
        kind: String,
        name: String,
        source: kube::Error,
    },

    #[error("applying {kind} {name}")]
    Apply {
        kind: String,
        name: String,
        source: kube::Error,
    },

    #[error("deleting {kind} {name}")]
    Delete {
        kind: String,
        name: String,
        source: kube::Error,
    },

    #[error("listing pods of Function {name}")]
    ListPods { name: String, source: kube::Error },

    #[error("patching status of Function {name}")]
    PatchStatus { name: String, source: kube::Error },

    #[error("removing the wake request of Function {name}")]
    ClearWake { name: String, source: kube::Error },

    #[error("Function has no namespace")]
    MissingNamespace,

    #[error("{action} Lease {name}")]
    Lease {
        action: &'static str,
        name: String,
        source: kube::Error,
    },
}

impl Error {
    /// The Kubernetes API error behind this error, if the API server answered.
    fn api_status(&self) -> Option<&kube::core::Status> {
        match self {
            Error::Get { source, .. }
            | Error::Apply { source, .. }
            | Error::Delete { source, .. }
            | Error::ListPods { source, .. }
            | Error::PatchStatus { source, .. }
            | Error::ClearWake { source, .. }
            | Error::Lease { source, .. } => match source {
                kube::Error::Api(status) => Some(status),
                _ => None,
            },
            Error::SerializeCrd { .. } | Error::MissingNamespace => None,
        }
    }

    /// Whether retrying soon may succeed: the API server was unreachable, busy, timed
    /// out or saw a conflicting write. Client errors (forbidden, invalid, not found)
    /// need a change first.
    pub fn is_transient(&self) -> bool {
        match self.api_status() {
            Some(status) => matches!(status.code, 409 | 429) || status.code >= 500,
            None => !matches!(self, Error::MissingNamespace | Error::SerializeCrd { .. }),
        }
    }

    /// Whether the API server rejected an object as invalid (422) or undecodable (400,
    /// e.g. a malformed quantity): the user's input, since the operator's own objects are
    /// valid by construction.
    pub(crate) fn is_invalid(&self) -> bool {
        self.api_status()
            .is_some_and(|status| matches!(status.code, 400 | 422))
    }

    /// The API server's message, or this error's own when there is none.
    pub(crate) fn api_message(&self) -> String {
        match self.api_status() {
            Some(status) => status.message.clone(),
            None => self.to_string(),
        }
    }

    /// A bounded label naming the operation that failed, for metrics.
    pub(crate) fn metric_label(&self) -> &'static str {
        match self {
            Error::SerializeCrd { .. } => "serialize_crd",
            Error::Get { .. } => "get",
            Error::Apply { .. } => "apply",
            Error::Delete { .. } => "delete",
            Error::ListPods { .. } => "list_pods",
            Error::PatchStatus { .. } => "patch_status",
            Error::MissingNamespace => "missing_namespace",
            Error::Lease { .. } => "lease",
            Error::ClearWake { .. } => "clear_wake",
        }
    }
}

/// Results of the operator's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
