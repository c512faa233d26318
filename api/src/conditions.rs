//! The conditions of a Function. `Ready` says whether it can serve; the activator reads
//! it too: `False` means the Function cannot start, so held requests fail fast.
//! `HostsClaimed` says whether every host in `spec.routing.hosts` routes to it; a claim
//! another Function wins leaves `Ready` alone, since the Function still answers on its
//! own addresses.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::function::FunctionStatus;

/// Type of the condition that says whether a Function can serve.
pub const READY: &str = "Ready";

/// Type of the condition that says whether every own host routes to the Function; set
/// only when it has own hosts.
pub const HOSTS_CLAIMED: &str = "HostsClaimed";

/// `HostsClaimed=True`: every own host and path prefix routes to the Function.
pub const ALL_HOSTS_CLAIMED: &str = "AllHostsClaimed";

/// `HostsClaimed=False`: another Function keeps at least one of the claims; the message
/// says which and why.
pub const HOST_CONFLICT: &str = "HostConflict";

/// Type of the condition that says whether the Gateway named by the operator's
/// `--gateway-parent` accepted the Function's HTTPRoute; set only for Functions with one.
pub const ROUTED: &str = "Routed";

/// Why a Function is, or is not, ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Pods are ready and serving.
    Serving,
    /// No pods run; the next request wakes the Function.
    ScaledToZero,
    /// Pods are starting.
    Deploying,
    /// Pods cannot be placed on a node yet.
    Unschedulable,
    /// The spec cannot be turned into a workload; the message names the field.
    InvalidSpec,
    /// Pods cannot start (image pull error, crash loop, progress deadline exceeded).
    DeploymentFailed,
    /// An object the Function needs (its Deployment, Services or HPA) already exists and
    /// zeroscale does not manage it; it is left untouched and nothing is built.
    NotOwned,
    /// The Function has queue triggers but the operator has no NATS server to read them
    /// from; the message says how to give it one, and nothing is built.
    NatsNotConfigured,
}

impl Reason {
    /// The reason as written in the condition (CamelCase, as Kubernetes reasons are).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Serving => "Serving",
            Reason::ScaledToZero => "ScaledToZero",
            Reason::Deploying => "Deploying",
            Reason::Unschedulable => "Unschedulable",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::DeploymentFailed => "DeploymentFailed",
            Reason::NotOwned => "NotOwned",
            Reason::NatsNotConfigured => "NatsNotConfigured",
        }
    }

    /// The condition status this reason goes with.
    pub fn status(self) -> &'static str {
        match self {
            Reason::Serving | Reason::ScaledToZero => "True",
            Reason::Deploying | Reason::Unschedulable => "Unknown",
            Reason::InvalidSpec
            | Reason::DeploymentFailed
            | Reason::NotOwned
            | Reason::NatsNotConfigured => "False",
        }
    }
}

impl FunctionStatus {
    /// The `Ready` condition, if set.
    pub fn ready_condition(&self) -> Option<&Condition> {
        self.condition(READY)
    }

    /// The condition of `type_`, if set.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// Sets `Ready` to what `reason` implies.
    pub fn set_ready(
        &mut self,
        reason: Reason,
        message: String,
        generation: Option<i64>,
        now: Time,
    ) {
        self.set_condition(
            READY,
            reason.status(),
            reason.as_str(),
            message,
            generation,
            now,
        );
    }

    /// Sets the condition of `type_`, replacing any before it. The transition time moves
    /// only when the status changes, as the API conventions require.
    pub fn set_condition(
        &mut self,
        type_: &str,
        status: &str,
        reason: &str,
        message: String,
        generation: Option<i64>,
        now: Time,
    ) {
        let last_transition_time = match self.condition(type_) {
            Some(previous) if previous.status == status => previous.last_transition_time.clone(),
            _ => now,
        };
        let condition = Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message,
            observed_generation: generation,
            last_transition_time,
        };
        self.conditions.retain(|c| c.type_ != type_);
        self.conditions.push(condition);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(seconds: i64) -> Time {
        Time(jiff::Timestamp::from_second(seconds).expect("valid timestamp"))
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut status = FunctionStatus::default();
        status.set_ready(Reason::Deploying, "starting".into(), Some(1), time(10));
        status.set_ready(Reason::Unschedulable, "no node".into(), Some(1), time(20));
        let ready = status.ready_condition().expect("ready condition");
        assert_eq!(ready.reason, "Unschedulable");
        assert_eq!(ready.last_transition_time, time(10));

        status.set_ready(Reason::Serving, String::new(), Some(2), time(30));
        let ready = status.ready_condition().expect("ready condition");
        assert_eq!(ready.status, "True");
        assert_eq!(ready.last_transition_time, time(30));
        assert_eq!(ready.observed_generation, Some(2));
        assert_eq!(status.conditions.len(), 1);
    }
}
