//! Messages waiting in a Function's queue triggers, as demand: a backlog asks for
//! replicas the way load does, so a queue-driven Function scales 0 -> N -> 0 with no
//! separate scaler. Where the counts come from (NATS JetStream consumers) is the
//! [`BacklogSource`]'s business; the decision only sees a [`Backlog`] per Function.

use std::collections::HashMap;

use zeroscale_api::routing::FunctionKey;

/// What one Function's queue triggers hold at one tick.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Backlog {
    /// Every trigger was read: `messages` wait in all, asking for `replicas` pods (the
    /// sum over triggers of pending / target, not yet rounded up).
    Pending { messages: u64, replicas: f64 },
    /// Some trigger could not be read (the broker is down, say). No signal, never "no
    /// messages": the Function keeps at least its current scale.
    Unknown,
}

impl Backlog {
    /// The backlog of a Function's triggers, each read as `Some((pending, target))`
    /// (`target` messages per replica, at least 1) or `None` when it could not be read.
    pub fn of_triggers(triggers: impl IntoIterator<Item = Option<(u64, i32)>>) -> Self {
        let mut messages = 0_u64;
        let mut replicas = 0.0;
        for trigger in triggers {
            let Some((pending, target)) = trigger else {
                return Backlog::Unknown;
            };
            messages = messages.saturating_add(pending);
            replicas += pending as f64 / f64::from(target.max(1));
        }
        Backlog::Pending { messages, replicas }
    }

    /// Whether messages wait.
    pub(crate) fn pending(&self) -> bool {
        matches!(self, Backlog::Pending { messages, .. } if *messages > 0)
    }
}

/// Where the loop gets the backlog of the Functions' queue triggers, once per tick.
pub trait BacklogSource: Send + Sync {
    /// The backlog of each of `functions` that has queue triggers; Functions without any
    /// are left out (the decision then goes by load alone). A trigger that cannot be
    /// read makes its Function's backlog [`Backlog::Unknown`].
    fn backlog(
        &self,
        functions: &[FunctionKey],
    ) -> impl Future<Output = HashMap<FunctionKey, Backlog>> + Send;
}

/// No queue triggers to read: every Function goes by load alone.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoBacklog;

impl BacklogSource for NoBacklog {
    async fn backlog(&self, _functions: &[FunctionKey]) -> HashMap<FunctionKey, Backlog> {
        HashMap::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triggers_add_up_in_replicas_of_their_own_target() {
        assert_eq!(
            Backlog::of_triggers([Some((25, 10)), Some((5, 1))]),
            Backlog::Pending {
                messages: 30,
                replicas: 7.5
            }
        );
        assert_eq!(
            Backlog::of_triggers([]),
            Backlog::Pending {
                messages: 0,
                replicas: 0.0
            }
        );
    }

    #[test]
    fn one_unreadable_trigger_makes_the_whole_backlog_unknown_not_empty() {
        let backlog = Backlog::of_triggers([Some((0, 10)), None]);
        assert_eq!(backlog, Backlog::Unknown);
        assert!(!backlog.pending());
    }
}
