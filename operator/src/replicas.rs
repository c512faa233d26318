//! The one writer of Function Deployments' `spec.replicas`. Replicas belong to the
//! autoscaler's field manager: the reconciler creates a Deployment at its initial scale
//! and hands replicas over here (`ReplicaWriter::hand_over`), wakes a Function an activator
//! asked for (`ReplicaWriter::wake`), and the autoscaler loop applies its decisions
//! (`ReplicaWriter::scale`). Every write that changes the scale records it on the Function
//! (`lastScaleTime`, `lastScaleReason`) and as an Event.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use zeroscale_admin::process::ErrorChain;
use zeroscale_api::{Function, keys};
use zeroscale_autoscaler::{Decision, ScalingPolicy};

use crate::{Error, Result};

/// Field manager that owns `spec.replicas` of Function Deployments: the autoscaler's.
/// The reconciler's applies leave replicas out, so they never reset the pod count:
/// server-side apply removes a field when its only owner stops sending it.
pub const AUTOSCALER_FIELD_MANAGER: &str = "zeroscale-autoscaler";

/// Writes replicas, and records each scale, under the autoscaler's field manager.
#[derive(Clone)]
pub(crate) struct ReplicaWriter {
    client: Client,
    recorder: Recorder,
}

impl ReplicaWriter {
    pub(crate) fn new(client: Client, reporter: Reporter) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
        }
    }

    /// Applies `replicas` to the Deployment of `function` under the autoscaler's field
    /// manager, which so takes the field over from the reconciler (see [`to_hand_over`]).
    pub(crate) async fn hand_over(&self, function: &Function, replicas: i32) -> Result<Deployment> {
        self.apply(function, replicas).await
    }

    /// Wakes `function` to its wake scale (`policy`'s) when its Deployment is at zero
    /// and an activator asked for capacity; returns the Deployment as applied then.
    pub(crate) async fn wake(
        &self,
        function: &Function,
        policy: &ScalingPolicy,
        deployment: &Deployment,
    ) -> Result<Option<Deployment>> {
        let Some(replicas) = wake_replicas(function, policy, deployment) else {
            return Ok(None);
        };
        let deployment = self.apply(function, replicas).await?;
        tracing::info!(function = %function.name_any(), replicas, "woken by an activator");
        self.record(function, 0, replicas, "Wake").await?;
        Ok(Some(deployment))
    }

    /// Applies an autoscaler decision taking `function` from `from` replicas.
    pub(crate) async fn scale(
        &self,
        function: &Function,
        from: i32,
        decision: Decision,
    ) -> Result<()> {
        if decision.desired == 0 {
            // From now on, the annotation's presence at zero means a new wake request.
            self.clear_wake_request(function).await?;
        }
        self.apply(function, decision.desired).await?;
        let reason = decision.reason.as_str();
        tracing::info!(function = %format!("{}/{}", namespace(function), function.name_any()), from, to = decision.desired, reason, "scaled");
        self.record(function, from, decision.desired, reason).await
    }

    /// Applies `spec.replicas` alone under the autoscaler's field manager.
    async fn apply(&self, function: &Function, replicas: i32) -> Result<Deployment> {
        let name = function.name_any();
        let deployments: Api<Deployment> =
            Api::namespaced(self.client.clone(), &namespace(function));
        let body = serde_json::json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {"replicas": replicas},
        });
        deployments
            .patch(
                &name,
                &PatchParams::apply(AUTOSCALER_FIELD_MANAGER).force(),
                &Patch::Apply(body),
            )
            .await
            .map_err(|source| Error::Apply {
                kind: "Deployment".into(),
                name,
                source,
            })
    }

    /// Removes the activators' wake annotation from a Function.
    async fn clear_wake_request(&self, function: &Function) -> Result<()> {
        let name = function.name_any();
        let functions: Api<Function> = Api::namespaced(self.client.clone(), &namespace(function));
        let patch =
            serde_json::json!({"metadata": {"annotations": {keys::WAKE_REQUESTED_AT: null}}});
        functions
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(drop)
            .map_err(|source| Error::ClearWake { name, source })
    }

    /// Records a scale on the Function: `lastScaleTime` and `lastScaleReason` (owned by
    /// the autoscaler's field manager) and an Event. A failure to publish the Event is
    /// logged, not returned.
    async fn record(&self, function: &Function, from: i32, to: i32, reason: &str) -> Result<()> {
        let status = serde_json::json!({
            "lastScaleTime": Time(jiff::Timestamp::now()),
            "lastScaleReason": format!("{reason}: {from} -> {to}"),
        });
        apply_status(&self.client, function, AUTOSCALER_FIELD_MANAGER, status).await?;
        let event = Event {
            type_: EventType::Normal,
            reason: match (from, to) {
                (_, 0) => "ScaledToZero".into(),
                (0, _) => "ScaledFromZero".into(),
                _ => "Scaled".into(),
            },
            note: Some(format!(
                "{}: {from} -> {to} ({reason})",
                function.name_any()
            )),
            action: "Scale".into(),
            secondary: None,
        };
        publish(&self.recorder, function, &event, "the scale event").await;
        Ok(())
    }
}

/// Server-side applies `status` (the fields `field_manager` owns) to the Function's
/// status subresource. The reconciler writes its conditions through this too.
pub(crate) async fn apply_status(
    client: &Client,
    function: &Function,
    field_manager: &str,
    status: impl serde::Serialize,
) -> Result<()> {
    let name = function.name_any();
    let functions: Api<Function> = Api::namespaced(client.clone(), &namespace(function));
    let body = serde_json::json!({
        "apiVersion": Function::api_version(&()),
        "kind": Function::kind(&()),
        "status": status,
    });
    functions
        .patch_status(
            &name,
            &PatchParams::apply(field_manager).force(),
            &Patch::Apply(body),
        )
        .await
        .map(drop)
        .map_err(|source| Error::PatchStatus { name, source })
}

/// Publishes `event` about the Function; a failure to publish `what` is logged, not
/// returned, since an Event is news, not state.
pub(crate) async fn publish(recorder: &Recorder, function: &Function, event: &Event, what: &str) {
    if let Err(error) = recorder.publish(event, &function.object_ref(&())).await {
        tracing::warn!(error = %ErrorChain(&error), "publishing {what} failed");
    }
}

fn namespace(function: &Function) -> String {
    function.namespace().unwrap_or_default()
}

/// The replica count to hand to the autoscaler, when its field manager does not own
/// `spec.replicas` yet: the initial scale for a new Deployment, the current one for a
/// Deployment whose handover was interrupted. The reconciler creates the Deployment with
/// it, then hands it over with [`ReplicaWriter::hand_over`].
pub(crate) fn to_hand_over(existing: Option<&Deployment>, function: &Function) -> Option<i32> {
    let Some(existing) = existing else {
        return Some(initial_replicas(function));
    };
    let owned = existing.managed_fields().iter().any(|entry| {
        entry.manager.as_deref() == Some(AUTOSCALER_FIELD_MANAGER)
            && entry
                .fields_v1
                .as_ref()
                .is_some_and(|fields| fields.0.pointer("/f:spec/f:replicas").is_some())
    });
    if owned {
        return None;
    }
    Some(
        existing
            .spec
            .as_ref()
            .and_then(|spec| spec.replicas)
            .unwrap_or_else(|| initial_replicas(function)),
    )
}

/// Pods a Function's Deployment is created with; afterwards only the autoscaler sets them.
fn initial_replicas(function: &Function) -> i32 {
    function.spec.scaling.effective_initial_replicas()
}

/// The replicas to wake a Function to: when its Deployment is at zero and an activator
/// has asked for capacity (the annotation is removed whenever the autoscaler scales to
/// zero, so its presence at zero is always a fresh request), the wake scale the
/// autoscaler's decision uses too.
fn wake_replicas(
    function: &Function,
    policy: &ScalingPolicy,
    deployment: &Deployment,
) -> Option<i32> {
    let at_zero = deployment.spec.as_ref()?.replicas == Some(0);
    let requested = function.annotations().contains_key(keys::WAKE_REQUESTED_AT);
    (at_zero && requested).then(|| policy.wake_scale())
}

#[cfg(test)]
mod tests {
    use super::*;

    use k8s_openapi::api::apps::v1::DeploymentSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
    use kube::api::ObjectMeta;
    use zeroscale_api::ScalingDefaults;

    use crate::controller::FIELD_MANAGER;
    use crate::fixtures::FunctionExt;

    fn deployment(replicas: i32, managers: &[(&str, serde_json::Value)]) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                managed_fields: Some(
                    managers
                        .iter()
                        .map(|(manager, fields)| ManagedFieldsEntry {
                            manager: Some((*manager).to_owned()),
                            operation: Some("Apply".into()),
                            fields_type: Some("FieldsV1".into()),
                            fields_v1: Some(FieldsV1(fields.clone())),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn function(initial: Option<i32>) -> Function {
        let mut function = Function::new(
            "hello",
            zeroscale_api::FunctionSpec::with_image("example.com/hello:1"),
        );
        function.spec.scaling.initial_replicas = initial;
        function
    }

    fn policy(function: &Function) -> ScalingPolicy {
        let durations = function.spec.validate().expect("valid spec");
        ScalingPolicy::from_spec(
            &function.spec.scaling,
            &durations,
            &ScalingDefaults::default(),
        )
    }

    #[test]
    fn initial_replicas_default_to_one_or_min() {
        let mut function = Function::test("hello");
        assert_eq!(initial_replicas(&function), 1);
        function.spec.scaling.min_replicas = 3;
        assert_eq!(initial_replicas(&function), 3);
        function.spec.scaling.initial_replicas = Some(0);
        assert_eq!(initial_replicas(&function), 0);
    }

    #[test]
    fn new_deployment_hands_over_its_initial_replicas() {
        assert_eq!(to_hand_over(None, &function(None)), Some(1));
        assert_eq!(to_hand_over(None, &function(Some(0))), Some(0));
    }

    #[test]
    fn replicas_owned_by_the_autoscaler_are_left_alone() {
        let existing = deployment(
            4,
            &[(
                AUTOSCALER_FIELD_MANAGER,
                serde_json::json!({"f:spec": {"f:replicas": {}}}),
            )],
        );
        assert_eq!(to_hand_over(Some(&existing), &function(None)), None);
    }

    #[test]
    fn interrupted_handover_keeps_the_current_replicas() {
        let existing = deployment(
            3,
            &[(
                FIELD_MANAGER,
                serde_json::json!({"f:spec": {"f:replicas": {}, "f:template": {}}}),
            )],
        );
        assert_eq!(to_hand_over(Some(&existing), &function(None)), Some(3));
    }

    #[test]
    fn wake_annotation_on_a_function_at_zero_wakes_it_to_its_initial_scale() {
        let mut function = function(Some(3));
        function.metadata.annotations = Some(std::collections::BTreeMap::from([(
            keys::WAKE_REQUESTED_AT.to_owned(),
            "2026-11-24T09:00:00Z".to_owned(),
        )]));
        let wake = |function: &Function, deployment: &Deployment| {
            wake_replicas(function, &policy(function), deployment)
        };
        assert_eq!(wake(&function, &deployment(0, &[])), Some(3));
        assert_eq!(wake(&function, &deployment(1, &[])), None, "already up");
        function.spec.scaling.initial_replicas = Some(0);
        assert_eq!(
            wake(&function, &deployment(0, &[])),
            Some(1),
            "at least one pod"
        );
        function.metadata.annotations = None;
        assert_eq!(wake(&function, &deployment(0, &[])), None, "nobody asked");
    }
}
