//! Pure builders of the objects a Function owns: its Deployment, its two Services and,
//! for `metric: cpu`, its HorizontalPodAutoscaler. Deterministic functions of the
//! Function and the operator's [`Config`], tested with plain values.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, HTTPGetAction, PodSpec, PodTemplateSpec, Probe, Service,
    ServicePort, ServiceSpec, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use zeroscale_api::validate::InvalidSpec;
use zeroscale_api::{Function, Metric, Protocol, ScalingDefaults, Visibility, keys, names};

use crate::gateway::GatewayConfig;

/// Settings of the operator that shape every Function's objects.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Activator Service as `<name>.<namespace>`; each Function's Service points there.
    pub activator_service: String,
    /// Domain under which public Functions are reachable as `<fn>.<ns>.<domain>`.
    pub public_domain: Option<String>,
    /// The cluster's DNS domain.
    pub cluster_domain: String,
    /// Scaling settings for what Functions leave unset.
    pub scaling: ScalingDefaults,
    /// The Gateway public Functions get an HTTPRoute under; none when unset.
    pub gateway: Option<GatewayConfig>,
}

impl Config {
    /// The DNS name Function Services resolve to (the activator Service).
    pub fn activator_host(&self) -> String {
        format!("{}.svc.{}", self.activator_service, self.cluster_domain)
    }

    /// The namespace of the activator Service, where the activator runs and reads the
    /// API key digests the operator writes.
    pub fn activator_namespace(&self) -> &str {
        self.activator_service
            .split_once('.')
            .map_or("default", |(_, namespace)| namespace)
    }

    /// A configuration for tests: activator in `zeroscale-system`, no public domain.
    pub fn test() -> Self {
        Self {
            activator_service: "zeroscale-activator.zeroscale-system".into(),
            public_domain: None,
            cluster_domain: "cluster.local".into(),
            scaling: ScalingDefaults::default(),
            gateway: None,
        }
    }
}

/// Name of the function's container in its pods.
pub(crate) const CONTAINER_NAME: &str = "function";

/// Port of the Function's Service (callers use `http://<fn>.<ns>` on port 80).
pub(crate) const SERVICE_PORT: i32 = 80;

/// Seconds a Deployment may take to make progress before it counts as failed.
const PROGRESS_DEADLINE_SECONDS: i32 = 180;

/// Labels on every object of a Function, and on its pods.
pub(crate) fn labels(function: &Function) -> BTreeMap<String, String> {
    BTreeMap::from([
        (keys::FUNCTION_LABEL.to_owned(), function.name_any()),
        ("app.kubernetes.io/name".to_owned(), function.name_any()),
        (
            "app.kubernetes.io/component".to_owned(),
            "function".to_owned(),
        ),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            keys::MANAGED_BY.to_owned(),
        ),
    ])
}

/// The label selector of a Function's pods (immutable once the Deployment exists).
pub(crate) fn selector(function: &Function) -> BTreeMap<String, String> {
    BTreeMap::from([(keys::FUNCTION_LABEL.to_owned(), function.name_any())])
}

fn metadata(function: &Function, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: function.namespace(),
        labels: Some(labels(function)),
        owner_references: function.controller_owner_ref(&()).map(|owner| vec![owner]),
        ..Default::default()
    }
}

fn port_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Http1 => "http",
        Protocol::H2c => "h2c",
    }
}

/// The Deployment running the Function's container. `replicas` is left out: the
/// autoscaler owns it (see [`crate::replicas`]).
pub fn deployment(function: &Function) -> Result<Deployment, InvalidSpec> {
    let spec = &function.spec;
    let mut env = Vec::with_capacity(spec.env.len() + 1);
    if !spec.env.iter().any(|var| var.name == "PORT") {
        env.push(EnvVar {
            name: "PORT".into(),
            value: Some(spec.port.to_string()),
            ..Default::default()
        });
    }
    env.extend(spec.env.iter().cloned());

    // The kubelet probes over HTTP/1.1, which an h2c-only server may refuse: such
    // containers are probed by TCP connect (the activator probes them over h2c).
    let readiness_action = match (&spec.readiness_path, spec.protocol) {
        (Some(path), Protocol::Http1) => Probe {
            http_get: Some(HTTPGetAction {
                path: Some(path.clone()),
                port: IntOrString::Int(spec.port),
                ..Default::default()
            }),
            ..Default::default()
        },
        _ => Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(spec.port),
                ..Default::default()
            }),
            ..Default::default()
        },
    };
    let readiness_probe = Probe {
        period_seconds: Some(1),
        timeout_seconds: Some(1),
        failure_threshold: Some(3),
        success_threshold: Some(1),
        ..readiness_action
    };

    let container = Container {
        name: CONTAINER_NAME.into(),
        image: Some(spec.image.clone()),
        command: spec.command.clone(),
        args: spec.args.clone(),
        env: Some(env),
        env_from: (!spec.env_from.is_empty()).then(|| spec.env_from.clone()),
        ports: Some(vec![ContainerPort {
            name: Some(port_name(spec.protocol).into()),
            container_port: spec.port,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        resources: spec.resources.clone(),
        readiness_probe: Some(readiness_probe),
        security_context: spec.security_context.clone(),
        volume_mounts: (!spec.volume_mounts.is_empty()).then(|| spec.volume_mounts.clone()),
        ..Default::default()
    };

    let volumes = function.spec.typed_volumes()?;
    let pod_spec = PodSpec {
        containers: vec![container],
        service_account_name: spec.service_account_name.clone(),
        image_pull_secrets: (!spec.image_pull_secrets.is_empty())
            .then(|| spec.image_pull_secrets.clone()),
        volumes: (!volumes.is_empty()).then_some(volumes),
        node_selector: (!spec.node_selector.is_empty()).then(|| spec.node_selector.clone()),
        tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
        security_context: spec.pod_security_context.clone(),
        termination_grace_period_seconds: Some(spec.termination_grace_period_seconds),
        // Service links put every Service of the namespace into the environment: slow
        // and surprising in namespaces with many Functions.
        enable_service_links: Some(false),
        ..Default::default()
    };

    Ok(Deployment {
        metadata: metadata(function, names::deployment(&function.name_any())),
        spec: Some(DeploymentSpec {
            selector: LabelSelector {
                match_labels: Some(selector(function)),
                ..Default::default()
            },
            // Keep capacity during rollouts: new pods come up before old ones go.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::String("25%".into())),
                }),
            }),
            progress_deadline_seconds: Some(PROGRESS_DEADLINE_SECONDS),
            revision_history_limit: Some(3),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(function)),
                    ..Default::default()
                }),
                spec: Some(pod_spec),
            },
            ..Default::default()
        }),
        status: None,
    })
}

/// Service `<fn>`: the Function's stable address, a DNS alias (ExternalName) of the
/// activator Service, which routes by Host.
pub(crate) fn service(function: &Function, config: &Config) -> Service {
    Service {
        metadata: metadata(function, names::service(&function.name_any())),
        spec: Some(ServiceSpec {
            type_: Some("ExternalName".into()),
            external_name: Some(config.activator_host()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: SERVICE_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

/// Service `<fn>-pods`: headless, selecting the Function's pods; its EndpointSlices tell
/// the activator which pods exist and which are ready. The port's appProtocol says
/// whether the pods speak h2c.
pub(crate) fn pods_service(function: &Function) -> Service {
    let spec = &function.spec;
    Service {
        metadata: metadata(function, names::pods_service(&function.name_any())),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector(function)),
            ports: Some(vec![ServicePort {
                name: Some(port_name(spec.protocol).into()),
                port: spec.port,
                target_port: Some(IntOrString::Int(spec.port)),
                protocol: Some("TCP".into()),
                app_protocol: Some(
                    match spec.protocol {
                        Protocol::Http1 => "http",
                        Protocol::H2c => "kubernetes.io/h2c",
                    }
                    .into(),
                ),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

/// The HorizontalPodAutoscaler of a `metric: cpu` Function (None for other metrics). It
/// scales 1..max; the operator takes the Function between 0 and 1.
pub(crate) fn hpa(function: &Function, config: &Config) -> Option<HorizontalPodAutoscaler> {
    let scaling = &function.spec.scaling;
    if scaling.metric != Metric::Cpu {
        return None;
    }
    let name = function.name_any();
    Some(HorizontalPodAutoscaler {
        metadata: metadata(function, names::hpa(&name)),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: names::deployment(&name),
            },
            min_replicas: Some(scaling.min_replicas.max(1)),
            max_replicas: scaling.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(scaling.effective_target(&config.scaling)),
                        ..Default::default()
                    },
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    })
}

/// In-cluster DNS name of the Function.
pub(crate) fn address(function: &Function, config: &Config) -> String {
    names::cluster_address(
        &function.name_any(),
        &function.namespace().unwrap_or_default(),
        &config.cluster_domain,
    )
}

/// Where callers reach the Function: its public URL when it is public and a public domain
/// is configured, otherwise its in-cluster URL.
pub(crate) fn url(function: &Function, config: &Config) -> String {
    match (&config.public_domain, function.spec.routing.visibility) {
        (Some(domain), Visibility::Public) => format!(
            "http://{}",
            names::public_host(
                &function.name_any(),
                &function.namespace().unwrap_or_default(),
                domain
            )
        ),
        _ => format!("http://{}", address(function, config)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::FunctionExt;

    #[test]
    fn deployment_runs_the_image_with_port_env_probe_and_no_replicas() {
        let function = Function::test("hello").readiness_path("/ready");
        let deployment = deployment(&function).expect("valid");
        let spec = deployment.spec.expect("spec");
        assert_eq!(spec.replicas, None, "the autoscaler owns replicas");
        assert_eq!(
            spec.selector.match_labels,
            Some(BTreeMap::from([(
                keys::FUNCTION_LABEL.into(),
                "hello".into()
            )]))
        );
        let pod = spec.template.spec.expect("pod spec");
        let container = &pod.containers[0];
        assert_eq!(container.image.as_deref(), Some("example.com/hello:1"));
        let env = container.env.as_ref().expect("env");
        assert_eq!(env[0].name, "PORT");
        assert_eq!(env[0].value.as_deref(), Some("8080"));
        let probe = container.readiness_probe.as_ref().expect("probe");
        let http = probe.http_get.as_ref().expect("http probe");
        assert_eq!(http.path.as_deref(), Some("/ready"));
        assert_eq!(http.port, IntOrString::Int(8080));
        assert_eq!(pod.enable_service_links, Some(false));
        let template_labels = spec
            .template
            .metadata
            .and_then(|m| m.labels)
            .expect("labels");
        assert_eq!(
            template_labels
                .get(keys::FUNCTION_LABEL)
                .map(String::as_str),
            Some("hello")
        );
    }

    #[test]
    fn every_child_is_owned_by_its_function() {
        let function = Function::test("hello");
        let owners = [
            deployment(&function)
                .expect("valid")
                .metadata
                .owner_references,
            service(&function, &Config::test())
                .metadata
                .owner_references,
            pods_service(&function).metadata.owner_references,
        ];
        for owner in owners {
            let owner = &owner.expect("owner references")[0];
            assert_eq!(owner.kind, "Function");
            assert_eq!(owner.name, "hello");
            assert_eq!(owner.uid, "uid-hello");
            assert_eq!(owner.controller, Some(true));
        }
    }

    #[test]
    fn user_port_variable_is_kept_and_not_duplicated() {
        let mut function = Function::test("hello");
        function.spec.env.push(EnvVar {
            name: "PORT".into(),
            value: Some("9000".into()),
            ..Default::default()
        });
        let deployment = deployment(&function).expect("valid");
        let pod = deployment.spec.and_then(|s| s.template.spec).expect("pod");
        let env = pod.containers[0].env.clone().expect("env");
        assert_eq!(env.len(), 1);
        assert_eq!(env[0].value.as_deref(), Some("9000"));
    }

    #[test]
    fn h2c_functions_get_tcp_probes_and_an_h2c_app_protocol() {
        let mut function = Function::test("grpc").readiness_path("/ready");
        function.spec.protocol = Protocol::H2c;
        let deployment = deployment(&function).expect("valid");
        let pod = deployment.spec.and_then(|s| s.template.spec).expect("pod");
        let probe = pod.containers[0].readiness_probe.clone().expect("probe");
        assert!(probe.http_get.is_none());
        assert!(probe.tcp_socket.is_some());
        let port = pods_service(&function)
            .spec
            .and_then(|s| s.ports)
            .expect("ports")[0]
            .clone();
        assert_eq!(port.app_protocol.as_deref(), Some("kubernetes.io/h2c"));
    }

    #[test]
    fn volumes_reach_the_pod_typed() {
        let mut function = Function::test("hello");
        function.spec.volumes = vec![serde_json::json!({"name": "scratch", "emptyDir": {}})];
        let deployment = deployment(&function).expect("valid");
        let pod = deployment.spec.and_then(|s| s.template.spec).expect("pod");
        let volumes = pod.volumes.expect("volumes");
        assert_eq!(volumes[0].name, "scratch");
        assert!(volumes[0].empty_dir.is_some());
    }

    #[test]
    fn service_is_an_alias_of_the_activator() {
        let service = service(&Function::test("hello"), &Config::test());
        let spec = service.spec.expect("spec");
        assert_eq!(spec.type_.as_deref(), Some("ExternalName"));
        assert_eq!(
            spec.external_name.as_deref(),
            Some("zeroscale-activator.zeroscale-system.svc.cluster.local")
        );
        assert_eq!(spec.selector, None);
    }

    #[test]
    fn pods_service_is_headless_and_selects_the_pods() {
        let service = pods_service(&Function::test("hello"));
        assert_eq!(service.metadata.name.as_deref(), Some("hello-pods"));
        let spec = service.spec.expect("spec");
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.selector, Some(selector(&Function::test("hello"))));
        assert_eq!(spec.ports.expect("ports")[0].port, 8080);
    }

    #[test]
    fn hpa_only_for_cpu_metric_and_never_below_one() {
        assert!(hpa(&Function::test("hello"), &Config::test()).is_none());
        let mut function = Function::test("hello");
        function.spec.scaling.metric = Metric::Cpu;
        function.spec.scaling.max_replicas = 7;
        let hpa = hpa(&function, &Config::test()).expect("cpu functions get an HPA");
        let spec = hpa.spec.expect("spec");
        assert_eq!(spec.min_replicas, Some(1));
        assert_eq!(spec.max_replicas, 7);
        assert_eq!(spec.scale_target_ref.name, "hello");
        let metric = spec.metrics.expect("metrics")[0].clone();
        assert_eq!(
            metric
                .resource
                .expect("resource")
                .target
                .average_utilization,
            Some(80)
        );
    }

    #[test]
    fn url_is_public_only_for_public_functions_with_a_domain() {
        let function = Function::test("hello");
        assert_eq!(
            url(&function, &Config::test()),
            "http://hello.default.svc.cluster.local"
        );
        let config = Config {
            public_domain: Some("fn.example.com".into()),
            ..Config::test()
        };
        assert_eq!(
            url(&function, &config),
            "http://hello.default.fn.example.com"
        );
        let mut private = function.clone();
        private.spec.routing.visibility = Visibility::ClusterLocal;
        assert_eq!(
            url(&private, &config),
            "http://hello.default.svc.cluster.local"
        );
    }
}
