//! Which [`ActivatorError`] a failed exchange with a pod is: whether any byte of the
//! request reached the pod (only then is the failure final), and whether the request
//! body, rather than the pod, broke the exchange.

use std::error::Error as _;

use crate::body::RequestBodyError;
use crate::errors::{ActivatorError, BoxError};

/// Which failures left the request unsent: a failed connect, or hyper giving the
/// request back because the connection closed before it was written.
pub(super) fn classify(error: hyper_util::client::legacy::Error) -> ActivatorError {
    let never_started = error.is_connect()
        || error
            .source()
            .and_then(|source| source.downcast_ref::<hyper::Error>())
            .is_some_and(hyper::Error::is_canceled);
    if never_started {
        return ActivatorError::UpstreamConnect(error.into());
    }
    classify_chain(error.into())
}

/// A failure after the request went out: the request body's own error when that is
/// what broke the exchange, else the pod's.
pub(super) fn classify_chain(error: BoxError) -> ActivatorError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&*error);
    let mut body_error = None;
    while let Some(cause) = source {
        if let Some(cause) = cause.downcast_ref::<RequestBodyError>() {
            body_error = Some(match cause {
                RequestBodyError::TooLarge { limit } => Some(*limit),
                RequestBodyError::Client(_) => None,
            });
            break;
        }
        source = cause.source();
    }
    match body_error {
        Some(Some(limit)) => ActivatorError::BodyTooLarge { limit },
        Some(None) => ActivatorError::RequestBody(error),
        None => ActivatorError::Upstream(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that wraps another, as hyper wraps a body's error.
    #[derive(Debug, thiserror::Error)]
    #[error("sending the request failed")]
    struct Wrapping(#[source] RequestBodyError);

    #[test]
    fn a_body_over_the_limit_found_in_the_chain_is_body_too_large() {
        let error = Wrapping(RequestBodyError::TooLarge { limit: 8 });
        let classified = classify_chain(error.into());
        assert!(
            matches!(classified, ActivatorError::BodyTooLarge { limit: 8 }),
            "{classified:?}"
        );
    }

    #[test]
    fn a_failure_without_a_body_error_is_the_pods() {
        let classified = classify_chain("connection reset by peer".into());
        assert!(
            matches!(classified, ActivatorError::Upstream(_)),
            "{classified:?}"
        );
    }
}
