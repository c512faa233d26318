//! The start-up backlog: when the operator starts or takes the lead, every Function is
//! reconciled once. Those a previous operator left up to date (their status observed
//! their current generation) wait for one of a few permits, one batch after another;
//! new and changed Functions, and every later reconcile, go at once. So a Function
//! created while thousands are being checked is handled in well under a second, and
//! the backlog holds only a few reconciles' worth of objects in memory at a time.

use tokio::sync::{Semaphore, SemaphorePermit};
use zeroscale_api::Function;

/// Reconciles of the start-up backlog that run at once: enough to keep the API server
/// busy, few enough that a new Function's requests do not queue behind theirs.
pub(crate) const BACKLOG_PERMITS: usize = 8;

/// Paces the reconciles of Functions that were up to date when this process started.
pub(crate) struct Backlog {
    permits: Semaphore,
}

impl Backlog {
    pub(crate) fn new(permits: usize) -> Self {
        Self {
            permits: Semaphore::new(permits),
        }
    }

    /// Waits for a permit when `function` is part of the start-up backlog (see
    /// [`in_backlog`]); returns at once otherwise. The permit is held until dropped.
    pub(crate) async fn admit(
        &self,
        function: &Function,
        first_in_process: bool,
    ) -> Option<SemaphorePermit<'_>> {
        if !in_backlog(function, first_in_process) {
            return None;
        }
        // The semaphore is never closed, so acquiring fails never; were it closed, the
        // reconcile would merely run unpaced.
        self.permits.acquire().await.ok()
    }
}

/// Whether `function` waits its turn in the start-up backlog: this process has not
/// reconciled it yet, and its status says a reconcile saw its current generation. A
/// Function without status (new) or with a newer generation (changed) goes first.
pub(crate) fn in_backlog(function: &Function, first_in_process: bool) -> bool {
    let observed = function
        .status
        .as_ref()
        .and_then(|status| status.observed_generation);
    first_in_process && observed.is_some() && observed == function.metadata.generation
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use zeroscale_api::{FunctionSpec, FunctionStatus};

    fn function(generation: i64, observed: Option<i64>) -> Function {
        let mut function = Function::new("hello", FunctionSpec::with_image("example.com/a:1"));
        function.metadata.generation = Some(generation);
        function.status = observed.map(|observed| FunctionStatus {
            observed_generation: Some(observed),
            ..FunctionStatus::default()
        });
        function
    }

    #[test]
    fn only_up_to_date_functions_not_yet_reconciled_here_are_backlog() {
        assert!(in_backlog(&function(3, Some(3)), true));
        assert!(
            !in_backlog(&function(3, Some(3)), false),
            "reconciled before"
        );
        assert!(!in_backlog(&function(4, Some(3)), true), "changed");
        assert!(!in_backlog(&function(1, None), true), "new");
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_function_is_admitted_while_the_backlog_holds_every_permit() {
        let backlog = Backlog::new(1);
        let held = backlog
            .admit(&function(1, Some(1)), true)
            .await
            .expect("a backlog permit");
        let waiting = tokio::time::timeout(
            Duration::from_millis(50),
            backlog.admit(&function(1, Some(1)), true),
        )
        .await;
        assert!(waiting.is_err(), "the second backlog reconcile waits");
        let new = tokio::time::timeout(
            Duration::from_secs(5),
            backlog.admit(&function(1, None), true),
        )
        .await
        .expect("a new Function does not wait");
        assert!(new.is_none());
        drop(held);
        assert!(backlog.admit(&function(1, Some(1)), true).await.is_some());
    }
}
