//! Gateway API: with `--gateway-parent`, an `HTTPRoute` per public Function, so that a
//! Gateway (Envoy Gateway, Istio, Contour, ...) in front of the cluster sends the
//! Function's public and own hosts, under its path prefix, to the activator's public
//! Service. The route lives in the Function's namespace, owned by the Function; the
//! activator Service is in the release namespace, so the chart adds the ReferenceGrant
//! that lets routes of the listed namespaces point at it.
//!
//! The route's status, as the Gateway's controller writes it, is reflected on the
//! Function as the `Routed` condition. [`http_route`] and [`record_route`] are pure;
//! the controller applies and reads.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};
use serde::{Deserialize, Serialize};
use zeroscale_api::conditions::ROUTED;
use zeroscale_api::{Function, FunctionStatus, Visibility};

use crate::resources::{self, Config};

/// The part of a Gateway API `HTTPRoute` (gateway.networking.k8s.io/v1) zeroscale writes
/// and reads; server-side apply leaves every other field to its owners.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "HTTPRoute",
    plural = "httproutes",
    namespaced,
    status = "HttpRouteStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    /// The Gateway the route attaches to.
    pub parent_refs: Vec<ParentRef>,
    /// The hosts the route matches.
    pub hostnames: Vec<String>,
    /// One rule: the path prefix, to the activator.
    pub rules: Vec<RouteRule>,
}

/// A Gateway, by namespace and name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    /// A listener of the Gateway, by name; any listener when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

/// A route rule: requests matching [`RouteRule::matches`] go to the backends.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteRule {
    pub matches: Vec<RouteMatch>,
    pub backend_refs: Vec<BackendRef>,
}

/// A request match: a path prefix.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RouteMatch {
    pub path: PathMatch,
}

/// `PathPrefix` and its value.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct PathMatch {
    #[serde(rename = "type")]
    pub type_: String,
    pub value: String,
}

/// A Service backend.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct BackendRef {
    pub name: String,
    pub namespace: String,
    pub port: u16,
}

/// What Gateway controllers report about a route.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct HttpRouteStatus {
    #[serde(default)]
    pub parents: Vec<RouteParentStatus>,
}

/// One parent's view of the route.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    pub parent_ref: ParentRef,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// Where routes attach and where they send requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayConfig {
    /// The parent Gateway (`--gateway-parent namespace/name[/listener]`).
    pub parent: ParentRef,
    /// The activator's public Service: name, namespace and port.
    pub backend: (String, String, u16),
}

impl GatewayConfig {
    /// Parses `namespace/name` or `namespace/name/listener` (the `--gateway-parent`
    /// flag) with the public Service `backend` as `name.namespace:port`.
    pub fn parse(parent: &str, backend: &str) -> Result<Self, String> {
        let mut parts = parent.split('/');
        let parent = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(namespace), Some(name), listener, None)
                if !namespace.is_empty() && !name.is_empty() =>
            {
                ParentRef {
                    namespace: Some(namespace.to_owned()),
                    name: name.to_owned(),
                    section_name: listener.filter(|l| !l.is_empty()).map(str::to_owned),
                }
            }
            _ => {
                return Err(format!(
                    "the Gateway `{parent}` is not `namespace/name` or `namespace/name/listener`"
                ));
            }
        };
        let invalid = || format!("the backend `{backend}` is not `service.namespace:port`");
        let (service, port) = backend.rsplit_once(':').ok_or_else(invalid)?;
        let (name, namespace) = service.split_once('.').ok_or_else(invalid)?;
        let port = port.parse().map_err(|_| invalid())?;
        if name.is_empty() || namespace.is_empty() || namespace.contains('.') {
            return Err(invalid());
        }
        Ok(Self {
            parent,
            backend: (name.to_owned(), namespace.to_owned(), port),
        })
    }
}

/// The route `function` needs: None when it is cluster-local or has no host a Gateway
/// could match (no public domain and no own hosts).
pub fn http_route(
    function: &Function,
    config: &Config,
    gateway: &GatewayConfig,
) -> Option<HTTPRoute> {
    if function.spec.routing.visibility != Visibility::Public {
        return None;
    }
    let name = function.name_any();
    let namespace = function.namespace()?;
    let mut hostnames: Vec<String> = config
        .public_domain
        .iter()
        .map(|domain| format!("{name}.{namespace}.{domain}"))
        .chain(function.spec.routing.hosts.iter().cloned())
        .collect();
    hostnames.dedup();
    if hostnames.is_empty() {
        return None;
    }
    let (service, service_namespace, port) = gateway.backend.clone();
    let path = function
        .spec
        .routing
        .path_prefix
        .clone()
        .unwrap_or_else(|| "/".to_owned());
    let mut route = HTTPRoute::new(
        &name,
        HttpRouteSpec {
            parent_refs: vec![gateway.parent.clone()],
            hostnames,
            rules: vec![RouteRule {
                matches: vec![RouteMatch {
                    path: PathMatch {
                        type_: "PathPrefix".to_owned(),
                        value: path,
                    },
                }],
                backend_refs: vec![BackendRef {
                    name: service,
                    namespace: service_namespace,
                    port,
                }],
            }],
        },
    );
    route.metadata = ObjectMeta {
        name: Some(name),
        namespace: Some(namespace),
        labels: Some(resources::labels(function)),
        owner_references: function.controller_owner_ref(&()).map(|owner| vec![owner]),
        ..ObjectMeta::default()
    };
    Some(route)
}

/// What the reconcile did about a Function's route.
#[derive(Clone, Debug)]
pub enum Route {
    /// It needs none, and has none.
    None,
    /// Applied; as the API server returned it, with the Gateway's status.
    Applied(Box<HTTPRoute>),
    /// An HTTPRoute of its name exists that zeroscale does not manage.
    NotOwned,
}

/// Sets the `Routed` condition from `route` (none when the Function needs no route).
pub fn record_route(
    status: &mut FunctionStatus,
    function: &Function,
    route: &Route,
    gateway: &GatewayConfig,
    now: Time,
) {
    let generation = function.metadata.generation;
    let route = match route {
        Route::None => {
            status.conditions.retain(|c| c.type_ != ROUTED);
            return;
        }
        Route::NotOwned => {
            let message = format!(
                "HTTPRoute {} already exists and is not managed by this Function: delete or \
                 rename it, or rename the Function",
                function.name_any()
            );
            status.set_condition(ROUTED, "False", "NotOwned", message, generation, now);
            return;
        }
        Route::Applied(route) => route,
    };
    let parent = route.status.as_ref().and_then(|status| {
        status
            .parents
            .iter()
            .find(|p| p.parent_ref.name == gateway.parent.name)
    });
    let gateway_name = match &gateway.parent.namespace {
        Some(namespace) => format!("{namespace}/{}", gateway.parent.name),
        None => gateway.parent.name.clone(),
    };
    let Some(parent) = parent else {
        let message = format!(
            "HTTPRoute {} waits for Gateway {gateway_name} to accept it",
            route.name_any()
        );
        status.set_condition(ROUTED, "Unknown", "Pending", message, generation, now);
        return;
    };
    let failed = ["Accepted", "ResolvedRefs"].iter().find_map(|type_| {
        parent
            .conditions
            .iter()
            .find(|c| c.type_ == *type_ && c.status != "True")
    });
    match failed {
        Some(condition) => {
            let message = format!(
                "Gateway {gateway_name}: {} is {} ({}): {}",
                condition.type_, condition.status, condition.reason, condition.message
            );
            status.set_condition(ROUTED, "False", &condition.reason, message, generation, now);
        }
        None => {
            let message = format!("Gateway {gateway_name} routes the Function's hosts to it");
            status.set_condition(ROUTED, "True", "Accepted", message, generation, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::FunctionExt;

    /// Function `cart` in namespace `shop`.
    fn shop_cart() -> Function {
        let mut function = Function::test("cart");
        function.metadata.namespace = Some("shop".into());
        function
    }

    fn gateway() -> GatewayConfig {
        GatewayConfig::parse(
            "edge/public",
            "zeroscale-activator-public.zeroscale-system:80",
        )
        .expect("valid")
    }

    fn config() -> Config {
        Config {
            public_domain: Some("fn.example.com".into()),
            ..Config::test()
        }
    }

    fn now() -> Time {
        Time(jiff::Timestamp::UNIX_EPOCH)
    }

    #[test]
    fn the_gateway_flag_takes_a_namespace_a_name_and_an_optional_listener() {
        let with_listener =
            GatewayConfig::parse("edge/public/https", "act-public.zs:8443").expect("valid");
        assert_eq!(with_listener.parent.section_name.as_deref(), Some("https"));
        assert_eq!(
            with_listener.backend,
            ("act-public".to_owned(), "zs".to_owned(), 8443)
        );
        for bad in ["public", "/public", "edge/", "a/b/c/d"] {
            assert!(GatewayConfig::parse(bad, "a.b:80").is_err(), "{bad}");
        }
        for bad in ["a:80", "a.b", "a.b:http", ".b:80", "a.b.c:80"] {
            assert!(GatewayConfig::parse("edge/public", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_public_function_gets_a_route_for_its_hosts_and_prefix_to_the_activator() {
        let mut function = shop_cart();
        function.spec.routing.hosts = vec!["cart.example.org".into()];
        function.spec.routing.path_prefix = Some("/api".into());
        let route = http_route(&function, &config(), &gateway()).expect("a route");
        let value = serde_json::to_value(&route).expect("serializes");
        assert_eq!(
            value,
            serde_json::json!({
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "HTTPRoute",
                "metadata": value["metadata"].clone(),
                "spec": {
                    "parentRefs": [{"namespace": "edge", "name": "public"}],
                    "hostnames": ["cart.shop.fn.example.com", "cart.example.org"],
                    "rules": [{
                        "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
                        "backendRefs": [{
                            "name": "zeroscale-activator-public",
                            "namespace": "zeroscale-system",
                            "port": 80
                        }]
                    }]
                }
            })
        );
        assert_eq!(route.metadata.name.as_deref(), Some("cart"));
        assert_eq!(route.metadata.namespace.as_deref(), Some("shop"));
        let owner = &route.metadata.owner_references.as_ref().expect("owned")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("Function", "cart")
        );
        assert_eq!(owner.controller, Some(true));
    }

    #[test]
    fn cluster_local_functions_and_functions_without_a_host_get_no_route() {
        let mut local = shop_cart();
        local.spec.routing.visibility = Visibility::ClusterLocal;
        assert!(http_route(&local, &config(), &gateway()).is_none());
        let public = shop_cart();
        assert!(http_route(&public, &Config::test(), &gateway()).is_none());
    }

    fn route_with(conditions: Option<Vec<(&str, &str, &str)>>) -> HTTPRoute {
        let function = shop_cart();
        let mut route = http_route(&function, &config(), &gateway()).expect("a route");
        route.status = conditions.map(|conditions| HttpRouteStatus {
            parents: vec![RouteParentStatus {
                parent_ref: gateway().parent,
                conditions: conditions
                    .into_iter()
                    .map(|(type_, status, reason)| Condition {
                        type_: type_.into(),
                        status: status.into(),
                        reason: reason.into(),
                        message: format!("{type_} says {reason}"),
                        last_transition_time: now(),
                        observed_generation: Some(1),
                    })
                    .collect(),
            }],
        });
        route
    }

    fn routed(route: Option<&HTTPRoute>) -> Option<(String, String)> {
        let function = shop_cart();
        let mut status = FunctionStatus::default();
        let route = route.map_or(Route::None, |route| Route::Applied(Box::new(route.clone())));
        record_route(&mut status, &function, &route, &gateway(), now());
        status
            .conditions
            .iter()
            .find(|c| c.type_ == ROUTED)
            .map(|c| (c.status.clone(), c.reason.clone()))
    }

    #[test]
    fn the_routes_status_is_reflected_on_the_function() {
        let pair = |status: &str, reason: &str| Some((status.to_owned(), reason.to_owned()));
        assert_eq!(routed(Some(&route_with(None))), pair("Unknown", "Pending"));
        let accepted = vec![
            ("Accepted", "True", "Accepted"),
            ("ResolvedRefs", "True", "ResolvedRefs"),
        ];
        assert_eq!(
            routed(Some(&route_with(Some(accepted)))),
            pair("True", "Accepted")
        );
        let refused = vec![
            ("Accepted", "True", "Accepted"),
            ("ResolvedRefs", "False", "RefNotPermitted"),
        ];
        assert_eq!(
            routed(Some(&route_with(Some(refused)))),
            pair("False", "RefNotPermitted")
        );
        let not_allowed = vec![("Accepted", "False", "NotAllowedByListeners")];
        assert_eq!(
            routed(Some(&route_with(Some(not_allowed)))),
            pair("False", "NotAllowedByListeners")
        );
        assert_eq!(routed(None), None);

        let mut status = FunctionStatus::default();
        record_route(
            &mut status,
            &shop_cart(),
            &Route::NotOwned,
            &gateway(),
            now(),
        );
        assert_eq!(status.conditions[0].reason, "NotOwned");
        assert_eq!(status.conditions[0].status, "False");
    }
}
