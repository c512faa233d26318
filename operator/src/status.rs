//! What a Function's status says, computed from its Deployment and pods, and from the
//! host claims the routing rules ignore: pure functions so every reason (serving, scaled
//! to zero, deploying, unschedulable, failed to start, a host conflict) is tested with
//! plain values.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use zeroscale_api::conditions::{ALL_HOSTS_CLAIMED, HOST_CONFLICT, HOSTS_CLAIMED, Reason};
use zeroscale_api::routing::Conflict;
use zeroscale_api::{Function, FunctionStatus};

use crate::resources::{self, Config};

/// Container waiting reasons that mean the pod will not start without a change by a
/// person (image, command, config), as opposed to a pod that is merely slow.
const START_FAILURES: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// The Ready reason and message for a Function whose Deployment and pods look like this.
pub fn readiness(deployment: &Deployment, pods: &[Pod]) -> (Reason, String) {
    let desired = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(0);
    let status = deployment.status.clone().unwrap_or_default();
    let ready = status.ready_replicas.unwrap_or(0);
    let conditions = status.conditions.unwrap_or_default();

    if let Some(failed) = conditions.iter().find(|c| {
        (c.type_ == "Progressing"
            && c.status == "False"
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded"))
            || (c.type_ == "ReplicaFailure" && c.status == "True")
    }) {
        return (
            Reason::DeploymentFailed,
            format!(
                "Deployment {}: {}",
                failed.reason.as_deref().unwrap_or(&failed.type_),
                failed.message.as_deref().unwrap_or("no message")
            ),
        );
    }
    if desired == 0 && ready == 0 {
        return (
            Reason::ScaledToZero,
            "scaled to zero; the next request wakes it".to_owned(),
        );
    }
    if ready > 0 {
        return (Reason::Serving, format!("{ready} of {desired} pods ready"));
    }
    if let Some(message) = pods.iter().find_map(start_failure) {
        return (Reason::DeploymentFailed, message);
    }
    if let Some(message) = pods.iter().find_map(unschedulable) {
        return (Reason::Unschedulable, message);
    }
    (Reason::Deploying, format!("0 of {desired} pods ready"))
}

/// Why a pod's function container cannot start, if it cannot.
fn start_failure(pod: &Pod) -> Option<String> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    statuses.iter().find_map(|container| {
        let waiting = container.state.as_ref()?.waiting.as_ref()?;
        let reason = waiting.reason.as_deref()?;
        START_FAILURES.contains(&reason).then(|| {
            format!(
                "pod {}: container {}: {reason}: {}",
                pod.name_any(),
                container.name,
                waiting.message.as_deref().unwrap_or("no message")
            )
        })
    })
}

/// Why a pod cannot be placed on a node, if it cannot.
fn unschedulable(pod: &Pod) -> Option<String> {
    let conditions = pod.status.as_ref()?.conditions.as_ref()?;
    conditions
        .iter()
        .find(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
        })
        .map(|c| {
            format!(
                "pod {}: {}",
                pod.name_any(),
                c.message.as_deref().unwrap_or("cannot be scheduled")
            )
        })
}

/// The status of a Function whose objects were applied: counts from the Deployment
/// (`desiredReplicas` mirrors its `spec.replicas`), addresses from the configuration, and
/// `Ready` from [`readiness`]. The previous status supplies only the Ready transition
/// time; `lastScaleTime` and `lastScaleReason` are left out because the autoscaler owns them, and writing back a
/// cached copy could undo a newer one.
pub fn observe(
    function: &Function,
    deployment: &Deployment,
    pods: &[Pod],
    config: &Config,
    now: Time,
) -> FunctionStatus {
    let mut status = function.status.clone().unwrap_or_default();
    status.last_scale_time = None;
    status.last_scale_reason = None;
    let deployment_status = deployment.status.clone().unwrap_or_default();
    status.observed_generation = function.metadata.generation;
    status.replicas = Some(deployment_status.replicas.unwrap_or(0));
    status.ready_replicas = Some(deployment_status.ready_replicas.unwrap_or(0));
    status.desired_replicas = deployment.spec.as_ref().and_then(|s| s.replicas);
    status.url = Some(resources::url(function, config));
    status.address = Some(resources::address(function, config));
    let (reason, message) = readiness(deployment, pods);
    status.set_ready(reason, message, function.metadata.generation, now);
    status
}

/// The status of a Function that built nothing: `Ready=False` with `reason` (its spec
/// cannot be used, or a name it needs is taken), everything else as it was.
pub fn refused(function: &Function, reason: Reason, message: String, now: Time) -> FunctionStatus {
    let mut status = function.status.clone().unwrap_or_default();
    status.last_scale_time = None;
    status.last_scale_reason = None;
    status.observed_generation = function.metadata.generation;
    status.set_ready(reason, message, function.metadata.generation, now);
    status
}

/// Sets `HostsClaimed` from the claims of `function` that the routing rules ignore
/// (`conflicts`, all of them its own): `False` with every conflict in the message, else
/// `True`. A Function without own hosts has no such condition.
pub fn record_host_claims(
    status: &mut FunctionStatus,
    function: &Function,
    conflicts: &[Conflict],
    now: Time,
) {
    if function.spec.routing.hosts.is_empty() {
        status.conditions.retain(|c| c.type_ != HOSTS_CLAIMED);
        return;
    }
    let generation = function.metadata.generation;
    if conflicts.is_empty() {
        let message = "every host in spec.routing.hosts routes to this Function".to_owned();
        status.set_condition(
            HOSTS_CLAIMED,
            "True",
            ALL_HOSTS_CLAIMED,
            message,
            generation,
            now,
        );
    } else {
        let listed: Vec<String> = conflicts.iter().map(ToString::to_string).collect();
        let message = format!(
            "{}. It still answers on its own addresses and its other hosts.",
            listed.join("; ")
        );
        status.set_condition(
            HOSTS_CLAIMED,
            "False",
            HOST_CONFLICT,
            message,
            generation,
            now,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::FunctionExt;
    use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentSpec, DeploymentStatus};
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateWaiting, ContainerStatus, PodCondition, PodStatus,
    };
    use kube::api::ObjectMeta;
    use zeroscale_api::routing::{ConflictReason, FunctionKey};

    fn deployment(desired: i32, ready: i32) -> Deployment {
        Deployment {
            spec: Some(DeploymentSpec {
                replicas: Some(desired),
                ..Default::default()
            }),
            status: Some(DeploymentStatus {
                replicas: Some(desired),
                ready_replicas: Some(ready),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pod_waiting(reason: &str, message: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("hello-abc".into()),
                ..Default::default()
            },
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    name: "function".into(),
                    state: Some(ContainerState {
                        waiting: Some(ContainerStateWaiting {
                            reason: Some(reason.into()),
                            message: Some(message.into()),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn now() -> Time {
        Time(jiff::Timestamp::from_second(1_800_000_000).expect("valid"))
    }

    #[test]
    fn ready_pods_mean_serving() {
        let (reason, message) = readiness(&deployment(2, 1), &[]);
        assert_eq!(reason, Reason::Serving);
        assert_eq!(message, "1 of 2 pods ready");
    }

    #[test]
    fn zero_desired_means_scaled_to_zero_and_ready() {
        let (reason, _) = readiness(&deployment(0, 0), &[]);
        assert_eq!(reason, Reason::ScaledToZero);
        assert_eq!(reason.status(), "True");
    }

    #[test]
    fn starting_pods_mean_deploying() {
        let (reason, _) = readiness(&deployment(1, 0), &[pod_waiting("ContainerCreating", "")]);
        assert_eq!(reason, Reason::Deploying);
        assert_eq!(reason.status(), "Unknown");
    }

    #[test]
    fn image_pull_failure_is_reported_with_the_pod_message() {
        let pods = [pod_waiting(
            "ImagePullBackOff",
            "Back-off pulling image \"nope:1\"",
        )];
        let (reason, message) = readiness(&deployment(1, 0), &pods);
        assert_eq!(reason, Reason::DeploymentFailed);
        assert_eq!(
            message,
            "pod hello-abc: container function: ImagePullBackOff: Back-off pulling image \"nope:1\""
        );
    }

    #[test]
    fn crash_loop_is_a_start_failure() {
        let (reason, _) = readiness(
            &deployment(1, 0),
            &[pod_waiting("CrashLoopBackOff", "back-off")],
        );
        assert_eq!(reason, Reason::DeploymentFailed);
    }

    #[test]
    fn unschedulable_pod_holds_rather_than_fails() {
        let mut pod = pod_waiting("ContainerCreating", "");
        pod.status.get_or_insert_default().conditions = Some(vec![PodCondition {
            type_: "PodScheduled".into(),
            status: "False".into(),
            reason: Some("Unschedulable".into()),
            message: Some("0/3 nodes are available: insufficient cpu".into()),
            ..Default::default()
        }]);
        let (reason, message) = readiness(&deployment(1, 0), &[pod]);
        assert_eq!(reason, Reason::Unschedulable);
        assert!(message.contains("insufficient cpu"), "{message}");
    }

    #[test]
    fn progress_deadline_exceeded_fails_even_without_pods() {
        let mut deployment = deployment(1, 0);
        deployment.status.get_or_insert_default().conditions = Some(vec![DeploymentCondition {
            type_: "Progressing".into(),
            status: "False".into(),
            reason: Some("ProgressDeadlineExceeded".into()),
            message: Some("ReplicaSet \"hello-1\" has timed out progressing.".into()),
            ..Default::default()
        }]);
        let (reason, message) = readiness(&deployment, &[]);
        assert_eq!(reason, Reason::DeploymentFailed);
        assert!(message.contains("timed out progressing"), "{message}");
    }

    #[test]
    fn observed_status_carries_counts_addresses_and_generation() {
        let mut function = Function::test("hello");
        function.metadata.generation = Some(4);
        let status = observe(&function, &deployment(3, 2), &[], &Config::test(), now());
        assert_eq!(status.observed_generation, Some(4));
        assert_eq!(status.replicas, Some(3));
        assert_eq!(status.ready_replicas, Some(2));
        assert_eq!(status.desired_replicas, Some(3));
        assert_eq!(
            status.address.as_deref(),
            Some("hello.default.svc.cluster.local")
        );
        let ready = status.ready_condition().expect("ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "Serving")
        );
        assert_eq!(ready.observed_generation, Some(4));
    }

    #[test]
    fn host_claims_are_a_condition_of_their_own_set_only_for_own_hosts() {
        let later = Time(jiff::Timestamp::from_second(2_000_000_000).expect("valid"));
        let mut function = Function::test("api");
        function.spec.routing.hosts = vec!["api.example.com".into()];
        let conflict = Conflict {
            host: "api.example.com".into(),
            path_prefix: None,
            ignored: FunctionKey::new("default", "api"),
            reason: ConflictReason::SameHostAndPrefix {
                kept: FunctionKey::new("billing", "api"),
            },
        };
        let mut status = observe(&function, &deployment(1, 1), &[], &Config::test(), now());

        record_host_claims(
            &mut status,
            &function,
            std::slice::from_ref(&conflict),
            now(),
        );
        let claims = status.condition(HOSTS_CLAIMED).expect("set").clone();
        assert_eq!(
            (claims.status.as_str(), claims.reason.as_str()),
            ("False", HOST_CONFLICT)
        );
        assert!(
            claims.message.starts_with(
                "default/api and billing/api both claim api.example.com; billing/api keeps it"
            ),
            "{}",
            claims.message
        );
        assert_eq!(claims.observed_generation, Some(1));
        let ready = status.ready_condition().expect("ready");
        assert_eq!(
            ready.status, "True",
            "the Function still serves on its own addresses"
        );

        // Still in conflict later: the transition time stays.
        record_host_claims(&mut status, &function, &[conflict], later.clone());
        assert_eq!(
            status
                .condition(HOSTS_CLAIMED)
                .expect("set")
                .last_transition_time,
            now()
        );

        record_host_claims(&mut status, &function, &[], later.clone());
        let claims = status.condition(HOSTS_CLAIMED).expect("set");
        assert_eq!(
            (claims.status.as_str(), claims.reason.as_str()),
            ("True", ALL_HOSTS_CLAIMED)
        );
        assert_eq!(claims.last_transition_time, later);

        function.spec.routing.hosts.clear();
        record_host_claims(&mut status, &function, &[], later);
        assert!(status.condition(HOSTS_CLAIMED).is_none());
        assert_eq!(status.conditions.len(), 1, "Ready stays");
    }

    #[test]
    fn observed_status_leaves_last_scale_time_to_the_autoscaler() {
        let mut function = Function::test("hello");
        function.status = Some(FunctionStatus {
            last_scale_time: Some(now()),
            ..Default::default()
        });
        let status = observe(&function, &deployment(1, 1), &[], &Config::test(), now());
        assert_eq!(status.last_scale_time, None);
        assert_eq!(
            refused(&function, Reason::InvalidSpec, "x".into(), now()).last_scale_time,
            None
        );
    }

    #[test]
    fn invalid_spec_status_is_false_with_the_message() {
        let status = refused(
            &Function::test("hello"),
            Reason::InvalidSpec,
            "spec.port: bad".into(),
            now(),
        );
        let ready = status.ready_condition().expect("ready");
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason, "InvalidSpec");
        assert_eq!(ready.message, "spec.port: bad");
    }
}
