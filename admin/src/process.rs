//! Process plumbing the binaries share: logging setup, how an error is logged, the
//! termination signal, and the periodic loop that runs until shutdown.

use std::time::Duration;

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Installs the global `tracing` subscriber, writing to stderr; the level comes from
/// `RUST_LOG`, else `default_filter` (such as `info`).
pub fn init_tracing(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Listens for SIGTERM and SIGINT from this call on, and returns a future that
/// resolves on the first of them.
///
/// Call it before binding any listener: until the handlers are installed, a SIGTERM
/// kills the process at once and drops the requests it has accepted.
pub fn termination_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {},
            _ = interrupt.recv() => {},
        }
    })
}

/// Runs `step` every `period` until `shutdown` resolves: the first step at once, a late
/// step delays the next instead of bursting, and a step in progress finishes before
/// shutdown is looked at again.
pub async fn every(
    period: Duration,
    shutdown: impl Future<Output = ()>,
    mut step: impl AsyncFnMut(),
) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = ticks.tick() => step().await,
        }
    }
}

/// Displays an error with its whole cause chain, `outer: cause: root cause`, for log
/// fields: `tracing::warn!(error = %ErrorChain(&error), "...")`. A bare `%error` prints
/// only the outermost message, which hides why an operation failed (a 404, a refused
/// connection).
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::ErrorChain;

    #[derive(Debug, thiserror::Error)]
    #[error("creating Lease zeroscale-operator")]
    struct Outer {
        source: std::io::Error,
    }

    #[tokio::test(start_paused = true)]
    async fn every_steps_each_period_until_shutdown() {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut stop = Some(stop);
        let mut steps = 0;
        let looping = super::every(
            Duration::from_secs(1),
            async { stopped.await.unwrap_or(()) },
            async || {
                steps += 1;
                if steps == 3
                    && let Some(stop) = stop.take()
                {
                    let _ = stop.send(());
                }
            },
        );
        tokio::time::timeout(Duration::from_secs(10), looping)
            .await
            .expect("the loop ends when shutdown resolves");
        assert_eq!(steps, 3);
    }

    #[test]
    fn error_chain_names_every_cause() {
        let error = Outer {
            source: std::io::Error::other("404 namespaces \"zeroscale-system\" not found"),
        };
        assert_eq!(
            ErrorChain(&error).to_string(),
            "creating Lease zeroscale-operator: 404 namespaces \"zeroscale-system\" not found"
        );
    }
}
