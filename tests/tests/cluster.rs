//! The operator against a real API server: install the CRD, reconcile Functions in a
//! temporary namespace, and check every child object and the status. Each is marked
//! `#[ignore]`, so that without a cluster the test runner reports it as ignored, not as
//! passed; run them with
//! `ZEROSCALE_TEST_KUBECONFIG=<kubeconfig> cargo test -p zeroscale-tests -- --ignored`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::events::Reporter;
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, ResourceExt};
use zeroscale_api::conditions::{HOSTS_CLAIMED, ROUTED};
use zeroscale_api::stats::{FunctionStats, StatsReport};
use zeroscale_api::{Function, FunctionSpec, Metric, Schedule, keys};
use zeroscale_autoscaler::StatsSource;
use zeroscale_operator::autoscaler::{self, AutoscalerConfig};
use zeroscale_operator::controller::{self, Context};
use zeroscale_operator::gateway::{GatewayConfig, HTTPRoute};
use zeroscale_operator::metrics::Metrics;
use zeroscale_operator::resources::Config;
use zeroscale_tests::{cluster_client, in_temporary_namespace, install_crd};

const WAIT: Duration = Duration::from_secs(60);

/// An image whose container does nothing: the tests need pods, not what they serve.
const PAUSE: &str = "registry.k8s.io/pause:3.10";

/// Runs the controller for `namespace` in this process until the returned sender drops.
fn start_controller(
    client: &Client,
    namespace: &str,
) -> anyhow::Result<tokio::sync::oneshot::Sender<()>> {
    start_controller_with(client, namespace, Config::test())
}

/// [`start_controller`] with the operator's `config`.
fn start_controller_with(
    client: &Client,
    namespace: &str,
    config: Config,
) -> anyhow::Result<tokio::sync::oneshot::Sender<()>> {
    let registry = prometheus::Registry::new();
    let ctx = Arc::new(Context::new(
        client.clone(),
        config,
        Metrics::register(&registry)?,
        Reporter {
            controller: "zeroscale-tests".into(),
            instance: None,
        },
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let namespace = namespace.to_owned();
    tokio::spawn(async move {
        controller::run(ctx, Some(&namespace), async move {
            let _ = stopped.await;
        })
        .await;
    });
    Ok(stop)
}

/// Waits until the Function's status describes its current generation with a Ready condition.
async fn await_status(functions: &Api<Function>, name: &str) -> anyhow::Result<Function> {
    let observed = |function: Option<&Function>| {
        function.is_some_and(|f| {
            f.status.as_ref().is_some_and(|s| {
                s.observed_generation == f.metadata.generation && s.ready_condition().is_some()
            })
        })
    };
    let function = tokio::time::timeout(WAIT, await_condition(functions.clone(), name, observed))
        .await??
        .ok_or_else(|| anyhow::anyhow!("Function {name} disappeared"))?;
    Ok(function)
}

/// Runs `body` (given a client and the namespace's name) in a temporary namespace of the
/// test cluster, with the CRD installed; without a cluster, fails saying why `test` needs one.
async fn with_cluster<F, Fut>(test: &str, prefix: &str, body: F) -> anyhow::Result<()>
where
    F: FnOnce(Client, String) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let client = cluster_client(test).await?;
    install_crd(&client, WAIT).await?;
    in_temporary_namespace(&client, prefix, body).await
}

/// The Function's Ready condition, which the test expects to be there.
fn ready_condition(function: &Function) -> Condition {
    function
        .status
        .as_ref()
        .and_then(|s| s.ready_condition())
        .cloned()
        .expect("ready condition")
}

fn function(name: &str, spec: FunctionSpec) -> Function {
    Function::new(name, spec)
}

#[tokio::test]
#[ignore = "needs a cluster: set ZEROSCALE_TEST_KUBECONFIG"]
async fn operator_builds_every_child_with_owner_references_and_status() -> anyhow::Result<()> {
    with_cluster(
        "operator_builds_every_child_with_owner_references_and_status",
        "zeroscale-children",
        |client, namespace| async move {
            let _controller = start_controller(&client, &namespace)?;
            let functions: Api<Function> = Api::namespaced(client.clone(), &namespace);
            let mut spec = FunctionSpec::with_image("registry.k8s.io/e2e-test-images/agnhost:2.53");
            spec.args = Some(vec!["netexec".into(), "--http-port=8080".into()]);
            spec.readiness_path = Some("/hostname".into());
            let created = functions
                .create(&PostParams::default(), &function("hello", spec))
                .await?;
            let uid = created.uid().ok_or_else(|| anyhow::anyhow!("no uid"))?;

            let function = await_status(&functions, "hello").await?;
            let status = function.status.clone().unwrap_or_default();
            assert_eq!(
                status.address.as_deref(),
                Some(format!("hello.{namespace}.svc.cluster.local").as_str())
            );
            assert!(status.url.is_some());
            let ready = status.ready_condition().expect("ready condition");
            assert!(
                ["Deploying", "Serving", "DeploymentFailed", "Unschedulable"]
                    .contains(&ready.reason.as_str()),
                "unexpected Ready reason {ready:?}"
            );

            let deployment = Api::<Deployment>::namespaced(client.clone(), &namespace)
                .get("hello")
                .await?;
            let service = Api::<Service>::namespaced(client.clone(), &namespace)
                .get("hello")
                .await?;
            let pods_service = Api::<Service>::namespaced(client.clone(), &namespace)
                .get("hello-pods")
                .await?;
            for owners in [
                deployment.owner_references(),
                service.owner_references(),
                pods_service.owner_references(),
            ] {
                assert_eq!(owners.len(), 1);
                assert_eq!(owners[0].uid, uid);
                assert_eq!(owners[0].controller, Some(true));
            }
            assert_eq!(deployment.spec.as_ref().and_then(|s| s.replicas), Some(1));
            let managers: Vec<_> = deployment
                .managed_fields()
                .iter()
                .filter_map(|m| m.manager.clone())
                .collect();
            assert!(
                managers.contains(&"zeroscale-operator".to_owned()),
                "{managers:?}"
            );
            assert!(
                managers.contains(&"zeroscale-autoscaler".to_owned()),
                "{managers:?}"
            );
            let service_spec = service.spec.expect("service spec");
            assert_eq!(service_spec.type_.as_deref(), Some("ExternalName"));
            assert_eq!(
                pods_service.spec.and_then(|s| s.cluster_ip).as_deref(),
                Some("None")
            );
            Ok(())
        },
    )
    .await
}

#[tokio::test]
#[ignore = "needs a cluster: set ZEROSCALE_TEST_KUBECONFIG"]
async fn replicas_set_by_the_autoscaler_survive_a_respec() -> anyhow::Result<()> {
    with_cluster(
        "replicas_set_by_the_autoscaler_survive_a_respec",
        "zeroscale-replicas",
        |client, namespace| async move {
            let _controller = start_controller(&client, &namespace)?;
            let functions: Api<Function> = Api::namespaced(client.clone(), &namespace);
            let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
            functions
                .create(
                    &PostParams::default(),
                    &function("hello", FunctionSpec::with_image(PAUSE)),
                )
                .await?;
            await_status(&functions, "hello").await?;

            // The autoscaler takes the Function to zero under its own field manager.
            deployments
                .patch(
                    "hello",
                    &PatchParams::apply("zeroscale-autoscaler").force(),
                    &Patch::Apply(serde_json::json!({
                        "apiVersion": "apps/v1", "kind": "Deployment",
                        "spec": {"replicas": 0}
                    })),
                )
                .await?;
            // A spec change makes the operator apply the Deployment again.
            functions
                .patch(
                    "hello",
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({"spec": {"port": 9090}})),
                )
                .await?;
            let function = await_status(&functions, "hello").await?;
            let deployment = deployments.get("hello").await?;
            let pod = deployment
                .spec
                .clone()
                .and_then(|s| s.template.spec)
                .expect("pod spec");
            assert_eq!(
                pod.containers[0].ports.clone().unwrap_or_default()[0].container_port,
                9090
            );
            assert_eq!(deployment.spec.and_then(|s| s.replicas), Some(0));
            let status = function.status.unwrap_or_default();
            assert_eq!(status.desired_replicas, Some(0));
            Ok(())
        },
    )
    .await
}

#[tokio::test]
#[ignore = "needs a cluster: set ZEROSCALE_TEST_KUBECONFIG"]
async fn invalid_specs_are_refused_or_reported_and_build_nothing() -> anyhow::Result<()> {
    with_cluster(
        "invalid_specs_are_refused_or_reported_and_build_nothing",
        "zeroscale-invalid",
        |client, namespace| async move {
            let _controller = start_controller(&client, &namespace)?;
            let functions: Api<Function> = Api::namespaced(client.clone(), &namespace);

            // What the schema can check, the API server refuses.
            let mut bounds = FunctionSpec::with_image(PAUSE);
            bounds.scaling.min_replicas = 5;
            bounds.scaling.max_replicas = 2;
            let refused = functions
                .create(&PostParams::default(), &function("bounds", bounds))
                .await;
            match refused {
                Err(kube::Error::Api(status)) => {
                    assert_eq!(status.code, 422);
                    assert!(status.message.contains("minReplicas"), "{}", status.message);
                }
                other => panic!("expected a 422, got {other:?}"),
            }
            let refused = functions
                .create(
                    &PostParams::default(),
                    &function("x-pods", FunctionSpec::with_image(PAUSE)),
                )
                .await;
            assert!(matches!(refused, Err(kube::Error::Api(status)) if status.code == 422));

            // What only the operator can check ends as Ready=False, InvalidSpec.
            let mut cron = FunctionSpec::with_image(PAUSE);
            cron.triggers.schedules = vec![Schedule::new("tick", "61 * * * *")];
            cron.scaling.metric = Metric::Concurrency;
            functions
                .create(&PostParams::default(), &function("cron", cron))
                .await?;
            let function = await_status(&functions, "cron").await?;
            let ready = ready_condition(&function);
            assert_eq!(ready.status, "False");
            assert_eq!(ready.reason, "InvalidSpec");
            assert!(
                ready.message.contains("spec.triggers.schedules[0].cron"),
                "{}",
                ready.message
            );
            let deployment = Api::<Deployment>::namespaced(client.clone(), &namespace)
                .get_opt("cron")
                .await?;
            assert!(
                deployment.is_none(),
                "an invalid Function must build nothing"
            );
            let service = Api::<Service>::namespaced(client.clone(), &namespace)
                .get_opt("cron")
                .await?;
            assert!(service.is_none());
            let hpa = Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), &namespace)
                .get_opt("cron")
                .await?;
            assert!(hpa.is_none());
            Ok(())
        },
    )
    .await
}

#[tokio::test]
#[ignore = "needs a cluster: set ZEROSCALE_TEST_KUBECONFIG"]
async fn a_deployment_made_by_someone_else_is_never_taken_over() -> anyhow::Result<()> {
    with_cluster(
        "a_deployment_made_by_someone_else_is_never_taken_over",
        "zeroscale-not-owned",
        |client, namespace| async move {
            let _controller = start_controller(&client, &namespace)?;
            let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
            let theirs = serde_json::json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "taken", "labels": {"app": "theirs"}},
                "spec": {
                    "replicas": 0,
                    "selector": {"matchLabels": {"app": "theirs"}},
                    "template": {
                        "metadata": {"labels": {"app": "theirs"}},
                        "spec": {"containers": [
                            {"name": "app", "image": PAUSE}
                        ]},
                    },
                },
            });
            deployments
                .patch(
                    "taken",
                    &PatchParams::apply("someone-else"),
                    &Patch::Apply(theirs),
                )
                .await?;

            let functions: Api<Function> = Api::namespaced(client.clone(), &namespace);
            functions
                .create(
                    &PostParams::default(),
                    &function("taken", FunctionSpec::with_image(PAUSE)),
                )
                .await?;
            let function = await_status(&functions, "taken").await?;
            let ready = ready_condition(&function);
            assert_eq!(ready.status, "False");
            assert_eq!(ready.reason, "NotOwned");
            assert!(
                ready.message.starts_with("Deployment taken already exists"),
                "{}",
                ready.message
            );

            let deployment = deployments.get("taken").await?;
            assert!(deployment.owner_references().is_empty());
            assert_eq!(
                deployment.labels().get("app").map(String::as_str),
                Some("theirs")
            );
            assert_eq!(deployment.spec.and_then(|s| s.replicas), Some(0));
            let managers: Vec<_> = deployment
                .metadata
                .managed_fields
                .unwrap_or_default()
                .into_iter()
                .filter_map(|m| m.manager)
                .collect();
            // The deployment controller writes status under its own manager; zeroscale none.
            assert!(
                !managers
                    .iter()
                    .any(|m| m == "zeroscale-operator" || m == "zeroscale-autoscaler"),
                "{managers:?}"
            );
            let service = Api::<Service>::namespaced(client.clone(), &namespace)
                .get_opt("taken")
                .await?;
            assert!(service.is_none(), "nothing else is built");
            Ok(())
        },
    )
    .await
}

/// Waits until the Function's `HostsClaimed` condition has `reason`; returns the Function.
async fn await_host_claims(
    functions: &Api<Function>,
    name: &str,
    reason: &'static str,
) -> anyhow::Result<Function> {
    let claimed = move |function: Option<&Function>| {
        function
            .and_then(|f| f.status.as_ref())
            .and_then(|s| s.condition(HOSTS_CLAIMED))
            .is_some_and(|c| c.reason == reason)
    };
    tokio::time::timeout(WAIT, await_condition(functions.clone(), name, claimed))
        .await
        .map_err(|_| anyhow::anyhow!("{name}: HostsClaimed never became {reason}"))??
        .ok_or_else(|| anyhow::anyhow!("Function {name} disappeared"))
}

#[tokio::test]
#[ignore = "needs a cluster: set ZEROSCALE_TEST_KUBECONFIG"]
async fn a_host_two_functions_claim_goes_to_one_and_the_other_is_told_until_it_is_free()
-> anyhow::Result<()> {
    with_cluster(
        "a_host_two_functions_claim_goes_to_one_and_the_other_is_told_until_it_is_free",
        "zeroscale-hosts",
        |client, namespace| async move {
            let _controller = start_controller(&client, &namespace)?;
            let functions: Api<Function> = Api::namespaced(client.clone(), &namespace);
            let host = format!("shared.{namespace}.example.com");
            let claiming = |name: &str| {
                let mut spec = FunctionSpec::with_image(PAUSE);
                spec.scaling.initial_replicas = Some(0);
                spec.routing.hosts = vec![host.clone()];
                function(name, spec)
            };
            functions
                .create(&PostParams::default(), &claiming("second"))
                .await?;
            await_host_claims(&functions, "second", "AllHostsClaimed").await?;

            // `first` sorts lower, so it keeps the host; `second` is told without waiting
            // for its own resync.
            functions
                .create(&PostParams::default(), &claiming("first"))
                .await?;
            let second = await_host_claims(&functions, "second", "HostConflict").await?;
            let status = second.status.unwrap_or_default();
            let claims = status.condition(HOSTS_CLAIMED).expect("awaited");
            assert_eq!(claims.status, "False");
            assert!(
                claims
                    .message
                    .contains(&format!("{namespace}/first keeps it")),
                "{}",
                claims.message
            );
            let ready = status.ready_condition().expect("ready condition");
            assert_ne!(
                ready.status, "False",
                "it still serves on its own addresses: {ready:?}"
            );
            await_host_claims(&functions, "first", "AllHostsClaimed").await?;

            functions.delete("first", &DeleteParams::default()).await?;
            await_host_claims(&functions, "second", "AllHostsClaimed").await?;
            Ok(())
        },
    )
    .await
}

/// One activator that sees no requests, until `holding` is set: then it holds one
/// request for Function `idle`, as when a request arrives at zero.
struct FakeActivator {
    namespace: String,
    holding: Arc<AtomicBool>,
}

impl StatsSource for FakeActivator {
    async fn scrape(&self) -> zeroscale_autoscaler::Result<Vec<StatsReport>> {
        let held = self.holding.load(Ordering::SeqCst);
        Ok(vec![StatsReport {
            instance: "fake-activator".into(),
            uptime_seconds: 1.0,
            functions: vec![FunctionStats {
                namespace: self.namespace.clone(),
                name: "idle".into(),
                requests_total: u64::from(held),
                concurrency_seconds_total: 0.0,
                in_flight: 0,
                queued: u64::from(held),
                ..FunctionStats::default()
            }],
        }])
    }
}

#[tokio::test]
#[ignore = "needs a cluster: set ZEROSCALE_TEST_KUBECONFIG"]
async fn a_public_function_gets_an_httproute_under_the_named_gateway_until_it_is_cluster_local()
-> anyhow::Result<()> {
    with_cluster(
        "a_public_function_gets_an_httproute_under_the_named_gateway_until_it_is_cluster_local",
        "zeroscale-route",
        |client, namespace| async move {
            let routes: Api<HTTPRoute> = Api::namespaced(client.clone(), &namespace);
            if let Err(kube::Error::Api(status)) = routes.list(&Default::default()).await
                && status.is_not_found()
            {
                eprintln!(
                    "the Gateway API (gateway.networking.k8s.io/v1 HTTPRoute) is not installed \
                     in this cluster: nothing to check"
                );
                return Ok(());
            }
            let config = Config {
                public_domain: Some("fn.example.com".into()),
                gateway: Some(
                    GatewayConfig::parse(
                        "zeroscale-test-gateways/none",
                        "zeroscale-activator-public.zeroscale-system:80",
                    )
                    .map_err(anyhow::Error::msg)?,
                ),
                ..Config::test()
            };
            let _controller = start_controller_with(&client, &namespace, config)?;
            let functions: Api<Function> = Api::namespaced(client.clone(), &namespace);
            functions
                .create(
                    &PostParams::default(),
                    &function("shop", FunctionSpec::with_image(PAUSE)),
                )
                .await?;

            let route = tokio::time::timeout(
                WAIT,
                await_condition(routes.clone(), "shop", conditions::is_created()),
            )
            .await??
            .ok_or_else(|| anyhow::anyhow!("no HTTPRoute"))?;
            assert_eq!(
                route.spec.hostnames,
                vec![format!("shop.{namespace}.fn.example.com")]
            );
            assert_eq!(route.owner_references()[0].kind, "Function");
            // No Gateway of that name exists: the route waits, and the Function says so.
            let routed = |function: Option<&Function>| {
                function.is_some_and(|f| {
                    f.status.as_ref().is_some_and(|s| {
                        s.conditions
                            .iter()
                            .any(|c| c.type_ == ROUTED && c.status != "True")
                    })
                })
            };
            tokio::time::timeout(WAIT, await_condition(functions.clone(), "shop", routed))
                .await??;

            let uid = route.uid().unwrap_or_default();
            let local = serde_json::json!({"spec": {"routing": {"visibility": "cluster-local"}}});
            functions
                .patch("shop", &PatchParams::default(), &Patch::Merge(&local))
                .await?;
            tokio::time::timeout(
                WAIT,
                await_condition(routes.clone(), "shop", conditions::is_deleted(&uid)),
            )
            .await??;
            Ok(())
        },
    )
    .await
}

#[tokio::test]
#[ignore = "needs a cluster: set ZEROSCALE_TEST_KUBECONFIG"]
async fn idle_function_scales_to_zero_and_a_wake_request_brings_it_back() -> anyhow::Result<()> {
    with_cluster(
        "idle_function_scales_to_zero_and_a_wake_request_brings_it_back",
        "zeroscale-zero",
        |client, namespace| async move {
            let registry = prometheus::Registry::new();
            let ctx = Arc::new(Context::new(
                client.clone(),
                Config::test(),
                Metrics::register(&registry)?,
                Reporter {
                    controller: "zeroscale-tests".into(),
                    instance: None,
                },
            ));
            let holding = Arc::new(AtomicBool::new(false));
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let until_stopped = move || {
                let mut stopped = stopped.clone();
                async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                }
            };
            {
                let (ctx, namespace, until_stopped) =
                    (ctx.clone(), namespace.clone(), until_stopped.clone());
                tokio::spawn(async move {
                    controller::run(ctx, Some(&namespace), until_stopped()).await;
                });
            }
            {
                let config = AutoscalerConfig {
                    tick: Duration::from_millis(200),
                    activator_service: "zeroscale-activator.zeroscale-system".into(),
                    activator_admin_port: 9090,
                    scrape_timeout: Duration::from_millis(500),
                    namespaces: vec![namespace.clone()],
                };
                let ctx = autoscaler::Context::new(
                    client.clone(),
                    Config::test().scaling,
                    zeroscale_autoscaler::Metrics::register(&registry)?,
                    Reporter {
                        controller: "zeroscale-tests".into(),
                        instance: None,
                    },
                    Arc::clone(ctx.watched()),
                );
                let until_stopped = until_stopped.clone();
                let stats = FakeActivator {
                    namespace: namespace.clone(),
                    holding: Arc::clone(&holding),
                };
                tokio::spawn(async move {
                    let usage = zeroscale_autoscaler::Usage::new(jiff::Timestamp::now(), None);
                    autoscaler::run(
                        ctx,
                        config,
                        stats,
                        zeroscale_autoscaler::NoBacklog,
                        usage,
                        until_stopped(),
                    )
                    .await;
                });
            }

            let functions: Api<Function> = Api::namespaced(client.clone(), &namespace);
            let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
            let mut spec = FunctionSpec::with_image(PAUSE);
            spec.scaling.scale_to_zero_grace_period = Some("1s".into());
            functions
                .create(&PostParams::default(), &function("idle", spec))
                .await?;

            let at = |replicas: i32| {
                move |deployment: Option<&Deployment>| {
                    deployment.and_then(|d| d.spec.as_ref()?.replicas) == Some(replicas)
                }
            };
            // Created at its initial scale (it may already be on its way to zero).
            tokio::time::timeout(
                WAIT,
                await_condition(deployments.clone(), "idle", conditions::is_created()),
            )
            .await??;
            // The replicas are applied first, the Function's status after them: wait for both.
            let last_scale = |reason: &'static str| {
                move |function: Option<&Function>| {
                    function
                        .and_then(|f| f.status.as_ref())
                        .is_some_and(|status| {
                            status.last_scale_time.is_some()
                                && status.last_scale_reason.as_deref() == Some(reason)
                        })
                }
            };
            tokio::time::timeout(WAIT, await_condition(deployments.clone(), "idle", at(0)))
                .await??;
            let function = tokio::time::timeout(
                WAIT,
                await_condition(functions.clone(), "idle", last_scale("ScaleToZero: 1 -> 0")),
            )
            .await??
            .ok_or_else(|| anyhow::anyhow!("the Function is gone"))?;
            // Cleared before the replicas were applied.
            assert!(!function.annotations().contains_key(keys::WAKE_REQUESTED_AT));

            // What an activator does when a request finds no pod: hold it, and ask.
            holding.store(true, Ordering::SeqCst);
            functions
                .patch(
                    "idle",
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({"metadata": {"annotations": {
                        keys::WAKE_REQUESTED_AT: "2026-11-24T10:00:00Z"
                    }}})),
                )
                .await?;
            tokio::time::timeout(WAIT, await_condition(deployments.clone(), "idle", at(1)))
                .await??;
            // The reconcile of the annotation or the next tick's held request, whichever
            // comes first, wakes it; both record the same reason.
            tokio::time::timeout(
                WAIT,
                await_condition(functions.clone(), "idle", last_scale("Wake: 0 -> 1")),
            )
            .await??;
            let _ = stop.send(true);
            Ok(())
        },
    )
    .await
}

/// Without a cluster every cluster test must show as ignored, never as passed: every
/// test here but this one is marked `#[ignore]`.
#[test]
fn every_cluster_test_is_reported_as_ignored_unless_asked_for() {
    let list = |ignored: bool| -> Vec<String> {
        let mut command = std::process::Command::new(std::env::current_exe().expect("exe"));
        command.args(["--list", "--format", "terse"]);
        if ignored {
            command.arg("--ignored");
        }
        let output = command.output().expect("the test binary lists its tests");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.strip_suffix(": test"))
            .map(str::to_owned)
            .collect()
    };
    let ignored = list(true);
    let run_without_a_cluster: Vec<String> = list(false)
        .into_iter()
        .filter(|test| !ignored.contains(test))
        .collect();
    assert_eq!(
        run_without_a_cluster,
        ["every_cluster_test_is_reported_as_ignored_unless_asked_for"]
    );
    assert!(!ignored.is_empty());
}
