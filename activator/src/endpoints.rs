//! A Function's pods as the activator sees them, converted from the EndpointSlices of its
//! headless `<fn>-pods` Service. Pure: a watcher elsewhere feeds slices in and swaps the
//! resulting [`EndpointSet`] snapshot; nothing here does I/O.
//!
//! Rules, in the order they apply:
//! - Only slices whose `kubernetes.io/service-name` label names a pods Service count
//!   ([`function_of_slice`]); the caller groups them by namespace and Function.
//! - Slices with an address type other than `IPv4`/`IPv6` (in practice the deprecated
//!   `FQDN`) are skipped: there is nothing to dial.
//! - Each slice's port is the TCP port named `http` or `h2c`, else its only TCP port; a
//!   slice with no such port (none, several unnamed, or one with no number) yields no
//!   endpoints. The protocol is h2c when the port's appProtocol is `kubernetes.io/h2c`
//!   or it is named `h2c`, else HTTP/1.1.
//! - Only an endpoint's first address is used: the EndpointSlice controller writes
//!   exactly one, and the API defines no meaning for the others.
//! - State: terminating (nil = false) wins over everything, even `serving`, so a pod
//!   being shut down never gets a new request; otherwise an endpoint is ready when both
//!   `ready` (nil = true) and `serving` (nil = same as ready) hold, and not ready (a
//!   candidate for active probing) when either is false.
//! - An address listed in two slices (the controller moves endpoints between slices
//!   while rebalancing, and the two writes are not atomic) keeps its most advanced state:
//!   Terminating, then Ready, then NotReady (why: `EndpointState::merge`).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use zeroscale_api::names::PODS_SERVICE_SUFFIX;

/// The label the EndpointSlice controller sets to the name of the slice's Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The appProtocol Kubernetes defines for HTTP/2 with prior knowledge over cleartext.
const H2C_APP_PROTOCOL: &str = "kubernetes.io/h2c";

/// How the activator speaks to a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PodProtocol {
    /// HTTP/1.1 (the pods Service port is named `http`).
    Http1,
    /// HTTP/2 with prior knowledge over cleartext (appProtocol `kubernetes.io/h2c`).
    H2c,
}

impl From<zeroscale_api::Protocol> for PodProtocol {
    fn from(protocol: zeroscale_api::Protocol) -> Self {
        match protocol {
            zeroscale_api::Protocol::Http1 => Self::Http1,
            zeroscale_api::Protocol::H2c => Self::H2c,
        }
    }
}

/// Whether a pod may take requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndpointState {
    /// Ready and serving: eligible for new requests.
    Ready,
    /// Starting (or failing readiness): a candidate for active probing while requests
    /// wait, never picked otherwise.
    NotReady,
    /// Being shut down: never gets new requests, even while it still serves old ones.
    Terminating,
}

impl EndpointState {
    /// The state of an endpoint from its conditions, following the API's defaults: nil
    /// `ready` means ready, nil `serving` means the same as `ready`, nil `terminating`
    /// means not terminating.
    fn from_conditions(endpoint: &Endpoint) -> Self {
        let conditions = endpoint.conditions.as_ref();
        let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
        let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
        let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
        if terminating {
            Self::Terminating
        } else if ready && serving {
            Self::Ready
        } else {
            Self::NotReady
        }
    }

    /// The state of an address listed twice, in two slices, one of which is stale.
    ///
    /// Terminating wins: a pod never stops terminating, so a copy saying so is the newer
    /// one, and sending a request to a pod on its way out is the failure to avoid.
    /// Between Ready and NotReady, Ready wins: the usual transition is a starting pod
    /// turning ready, and believing the stale NotReady copy would delay exactly the cold
    /// start the activator exists to shorten. If the pod did turn unready, the slices
    /// agree again within one controller sync and the forwarder's upstream error
    /// handling covers the gap.
    fn merge(self, other: Self) -> Self {
        let precedence = |state: Self| match state {
            Self::NotReady => 0,
            Self::Ready => 1,
            Self::Terminating => 2,
        };
        if precedence(other) > precedence(self) {
            other
        } else {
            self
        }
    }
}

/// One pod address of a Function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodEndpoint {
    /// The pod's IP and the Function's container port.
    pub addr: SocketAddr,
    /// The Pod's name from the endpoint's `targetRef`, for logs.
    pub pod: Option<String>,
    /// Whether the pod may take requests.
    pub state: EndpointState,
    /// How to speak to it.
    pub protocol: PodProtocol,
}

/// The Function an EndpointSlice belongs to: its `kubernetes.io/service-name` label with
/// the pods Service suffix removed. None for slices of any other Service, including the
/// Function's own caller-facing Service. The namespace is the slice's own.
pub(crate) fn function_of_slice(slice: &EndpointSlice) -> Option<&str> {
    slice
        .metadata
        .labels
        .as_ref()?
        .get(SERVICE_NAME_LABEL)?
        .strip_suffix(PODS_SERVICE_SUFFIX)
        .filter(|function| !function.is_empty())
}

/// All pod endpoints of one Function, merged from its EndpointSlices and sorted by
/// address, each address once (see the module docs for every rule).
///
/// A slice without a usable port (no ports, several of which none is named `http` or
/// `h2c`, or a port without a number) contributes no endpoints: there is nothing the
/// activator could dial. FQDN slices and addresses that do not parse as the slice's
/// address family are skipped too.
pub(crate) fn pod_endpoints<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> Vec<PodEndpoint> {
    let mut merged = BTreeMap::new();
    for slice in slices {
        let Some((port, protocol)) = slice.ports.as_deref().and_then(pick_port) else {
            continue;
        };
        for endpoint in &slice.endpoints {
            let Some(ip) = endpoint
                .addresses
                .first()
                .and_then(|address| parse_ip(&slice.address_type, address))
            else {
                continue;
            };
            insert_merged(
                &mut merged,
                PodEndpoint {
                    addr: SocketAddr::new(ip, port),
                    pod: pod_name(endpoint),
                    state: EndpointState::from_conditions(endpoint),
                    protocol,
                },
            );
        }
    }
    merged.into_values().collect()
}

/// Adds an endpoint, merging it with an earlier copy of the same address.
fn insert_merged(merged: &mut BTreeMap<SocketAddr, PodEndpoint>, endpoint: PodEndpoint) {
    match merged.get_mut(&endpoint.addr) {
        None => {
            merged.insert(endpoint.addr, endpoint);
        }
        Some(existing) => {
            let state = existing.state.merge(endpoint.state);
            // The winning copy's details describe the pod as it is now.
            if state != existing.state {
                let fallback_pod = existing.pod.take();
                *existing = endpoint;
                existing.pod = existing.pod.take().or(fallback_pod);
            } else if existing.pod.is_none() {
                existing.pod = endpoint.pod;
            }
        }
    }
}

/// The slice's port and protocol: the TCP port named `http` or `h2c`, else the only TCP
/// port; None when there is no such port or it has no valid number.
fn pick_port(ports: &[EndpointPort]) -> Option<(u16, PodProtocol)> {
    let is_tcp = |port: &&EndpointPort| port.protocol.as_deref().is_none_or(|p| p == "TCP");
    let named = |port: &&EndpointPort| matches!(port.name.as_deref(), Some("http" | "h2c"));
    let port = match ports.iter().filter(is_tcp).find(named) {
        Some(port) => port,
        None => {
            let mut tcp = ports.iter().filter(is_tcp);
            match (tcp.next(), tcp.next()) {
                (Some(only), None) => only,
                _ => return None,
            }
        }
    };
    let number = u16::try_from(port.port?).ok().filter(|&n| n != 0)?;
    let h2c = port.app_protocol.as_deref() == Some(H2C_APP_PROTOCOL)
        || port.name.as_deref() == Some("h2c");
    Some((
        number,
        if h2c {
            PodProtocol::H2c
        } else {
            PodProtocol::Http1
        },
    ))
}

/// An address of the slice's address family; None for FQDN (or unknown) slices and
/// addresses that do not parse.
fn parse_ip(address_type: &str, address: &str) -> Option<IpAddr> {
    match address_type {
        "IPv4" => address.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
        "IPv6" => address.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        _ => None,
    }
}

/// The Pod's name from `targetRef`, when it refers to a Pod.
fn pod_name(endpoint: &Endpoint) -> Option<String> {
    let target = endpoint.target_ref.as_ref()?;
    if target.kind.as_deref().is_some_and(|kind| kind != "Pod") {
        return None;
    }
    target.name.clone()
}

/// An immutable snapshot of one Function's pod endpoints, laid out for the hot path:
/// one vector ordered Ready, then NotReady, then Terminating, each group by address, so
/// every accessor is a borrowed sub-slice.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointSet {
    endpoints: Vec<PodEndpoint>,
    /// `endpoints[..ready_end]` are Ready.
    ready_end: usize,
    /// `endpoints[ready_end..starting_end]` are NotReady, the rest Terminating.
    starting_end: usize,
}

impl EndpointSet {
    /// A snapshot of `endpoints`, usually [`pod_endpoints`]'s result. An address listed
    /// twice is merged by the same rule as across slices.
    pub fn new(endpoints: Vec<PodEndpoint>) -> Self {
        let mut merged = BTreeMap::new();
        for endpoint in endpoints {
            insert_merged(&mut merged, endpoint);
        }
        let mut endpoints: Vec<PodEndpoint> = merged.into_values().collect();
        // Stable: each group stays sorted by address.
        endpoints.sort_by_key(|endpoint| match endpoint.state {
            EndpointState::Ready => 0,
            EndpointState::NotReady => 1,
            EndpointState::Terminating => 2,
        });
        let ready_end = endpoints
            .iter()
            .take_while(|e| e.state == EndpointState::Ready)
            .count();
        let starting_end = ready_end
            + endpoints[ready_end..]
                .iter()
                .take_while(|e| e.state == EndpointState::NotReady)
                .count();
        Self {
            endpoints,
            ready_end,
            starting_end,
        }
    }

    /// The endpoints that may take new requests, sorted by address.
    pub fn ready(&self) -> &[PodEndpoint] {
        &self.endpoints[..self.ready_end]
    }

    /// The endpoints of pods that are not ready yet: candidates for active probing while
    /// requests wait.
    pub fn starting(&self) -> impl Iterator<Item = &PodEndpoint> {
        self.endpoints[self.ready_end..self.starting_end].iter()
    }

    /// The endpoints of pods being shut down.
    pub fn terminating(&self) -> impl Iterator<Item = &PodEndpoint> {
        self.endpoints[self.starting_end..].iter()
    }

    /// Every endpoint: Ready, then NotReady, then Terminating.
    pub fn iter(&self) -> impl Iterator<Item = &PodEndpoint> {
        self.endpoints.iter()
    }

    /// Whether the Function has no pod endpoints at all, in any state. Use
    /// `ready().is_empty()` to ask whether it can take a request now.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::discovery::v1::EndpointConditions;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    /// A slice of `hello-pods` with one `http` port 8080 and no endpoints.
    fn slice(address_type: &str) -> EndpointSlice {
        EndpointSlice {
            address_type: address_type.into(),
            endpoints: Vec::new(),
            metadata: ObjectMeta {
                name: Some("hello-pods-abcde".into()),
                namespace: Some("default".into()),
                labels: Some(BTreeMap::from([(
                    SERVICE_NAME_LABEL.to_owned(),
                    "hello-pods".to_owned(),
                )])),
                ..Default::default()
            },
            ports: Some(vec![port(Some("http"), 8080, Some("http"))]),
        }
    }

    fn port(name: Option<&str>, number: i32, app_protocol: Option<&str>) -> EndpointPort {
        EndpointPort {
            name: name.map(Into::into),
            port: Some(number),
            protocol: Some("TCP".into()),
            app_protocol: app_protocol.map(Into::into),
        }
    }

    /// An endpoint of pod `pod` at `address` with the given conditions.
    fn endpoint(
        address: &str,
        pod: &str,
        ready: Option<bool>,
        serving: Option<bool>,
        terminating: Option<bool>,
    ) -> Endpoint {
        Endpoint {
            addresses: vec![address.into()],
            conditions: Some(EndpointConditions {
                ready,
                serving,
                terminating,
            }),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: Some(pod.into()),
                namespace: Some("default".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn ready(address: &str, pod: &str) -> Endpoint {
        endpoint(address, pod, Some(true), Some(true), Some(false))
    }

    fn starting(address: &str, pod: &str) -> Endpoint {
        endpoint(address, pod, Some(false), Some(false), Some(false))
    }

    fn terminating(address: &str, pod: &str) -> Endpoint {
        endpoint(address, pod, Some(false), Some(true), Some(true))
    }

    fn with(mut slice: EndpointSlice, endpoints: Vec<Endpoint>) -> EndpointSlice {
        slice.endpoints = endpoints;
        slice
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    fn pod_endpoint(address: &str, state: EndpointState) -> PodEndpoint {
        PodEndpoint {
            addr: addr(address),
            pod: None,
            state,
            protocol: PodProtocol::Http1,
        }
    }

    #[test]
    fn nil_conditions_mean_ready() {
        let mut without_conditions = ready("10.0.0.1", "a");
        without_conditions.conditions = None;
        let all_nil = endpoint("10.0.0.2", "b", None, None, None);
        let slice = with(slice("IPv4"), vec![without_conditions, all_nil]);

        let endpoints = pod_endpoints([&slice]);

        assert_eq!(
            endpoints,
            vec![
                PodEndpoint {
                    addr: addr("10.0.0.1:8080"),
                    pod: Some("a".into()),
                    state: EndpointState::Ready,
                    protocol: PodProtocol::Http1,
                },
                PodEndpoint {
                    addr: addr("10.0.0.2:8080"),
                    pod: Some("b".into()),
                    state: EndpointState::Ready,
                    protocol: PodProtocol::Http1,
                },
            ]
        );
    }

    #[test]
    fn not_ready_pod_is_a_probing_candidate() {
        let slice = with(
            slice("IPv4"),
            vec![ready("10.0.0.1", "a"), starting("10.0.0.2", "b")],
        );

        let set = EndpointSet::new(pod_endpoints([&slice]));

        let ready: Vec<_> = set.ready().iter().map(|e| e.addr).collect();
        let starting: Vec<_> = set.starting().map(|e| e.addr).collect();
        assert_eq!(ready, vec![addr("10.0.0.1:8080")]);
        assert_eq!(starting, vec![addr("10.0.0.2:8080")]);
    }

    #[test]
    fn ready_but_not_serving_pod_is_not_ready() {
        // What publishNotReadyAddresses produces: ready is forced true, serving is not.
        let slice = with(
            slice("IPv4"),
            vec![endpoint("10.0.0.1", "a", Some(true), Some(false), None)],
        );

        let endpoints = pod_endpoints([&slice]);

        assert_eq!(endpoints[0].state, EndpointState::NotReady);
    }

    #[test]
    fn terminating_pod_is_never_ready_even_when_serving() {
        let still_serving = endpoint("10.0.0.1", "a", Some(true), Some(true), Some(true));
        let slice = with(slice("IPv4"), vec![still_serving]);

        let set = EndpointSet::new(pod_endpoints([&slice]));

        assert!(set.ready().is_empty());
        assert_eq!(set.starting().count(), 0);
        let terminating: Vec<_> = set.terminating().map(|e| e.addr).collect();
        assert_eq!(terminating, vec![addr("10.0.0.1:8080")]);
        assert!(!set.is_empty());
    }

    #[test]
    fn two_slices_merge_sorted_by_address() {
        let first = with(
            slice("IPv4"),
            vec![ready("10.0.0.9", "c"), ready("10.0.0.1", "a")],
        );
        let second = with(slice("IPv4"), vec![starting("10.0.0.5", "b")]);

        let endpoints = pod_endpoints([&first, &second]);

        let addrs: Vec<_> = endpoints.iter().map(|e| e.addr).collect();
        assert_eq!(
            addrs,
            vec![
                addr("10.0.0.1:8080"),
                addr("10.0.0.5:8080"),
                addr("10.0.0.9:8080"),
            ]
        );
    }

    #[test]
    fn duplicate_address_across_slices_keeps_terminating_then_ready() {
        let old = with(
            slice("IPv4"),
            vec![starting("10.0.0.1", "a"), ready("10.0.0.2", "b")],
        );
        let new = with(
            slice("IPv4"),
            vec![ready("10.0.0.1", "a"), terminating("10.0.0.2", "b")],
        );

        // The order slices arrive in does not matter.
        for slices in [[&old, &new], [&new, &old]] {
            let endpoints = pod_endpoints(slices);
            let states: Vec<_> = endpoints.iter().map(|e| (e.addr, e.state)).collect();
            assert_eq!(
                states,
                vec![
                    (addr("10.0.0.1:8080"), EndpointState::Ready),
                    (addr("10.0.0.2:8080"), EndpointState::Terminating),
                ]
            );
        }
    }

    #[test]
    fn duplicate_address_keeps_a_pod_name_from_either_copy() {
        let mut anonymous = ready("10.0.0.1", "a");
        anonymous.target_ref = None;
        let named = starting("10.0.0.1", "a");
        let first = with(slice("IPv4"), vec![anonymous]);
        let second = with(slice("IPv4"), vec![named]);

        let endpoints = pod_endpoints([&first, &second]);

        assert_eq!(endpoints.len(), 1);
        assert_eq!(endpoints[0].state, EndpointState::Ready);
        assert_eq!(endpoints[0].pod.as_deref(), Some("a"));
    }

    #[test]
    fn h2c_is_detected_from_app_protocol() {
        let mut slice = with(slice("IPv4"), vec![ready("10.0.0.1", "a")]);
        slice.ports = Some(vec![port(Some("grpc"), 9090, Some(H2C_APP_PROTOCOL))]);

        let endpoints = pod_endpoints([&slice]);

        assert_eq!(endpoints[0].protocol, PodProtocol::H2c);
        assert_eq!(endpoints[0].addr, addr("10.0.0.1:9090"));
    }

    #[test]
    fn h2c_is_detected_from_port_name() {
        let mut slice = with(slice("IPv4"), vec![ready("10.0.0.1", "a")]);
        slice.ports = Some(vec![port(Some("h2c"), 9090, None)]);

        let endpoints = pod_endpoints([&slice]);

        assert_eq!(endpoints[0].protocol, PodProtocol::H2c);
    }

    #[test]
    fn named_port_is_preferred_over_others() {
        let mut slice = with(slice("IPv4"), vec![ready("10.0.0.1", "a")]);
        slice.ports = Some(vec![
            port(Some("metrics"), 9100, None),
            port(Some("http"), 8080, Some("http")),
        ]);

        let endpoints = pod_endpoints([&slice]);

        assert_eq!(endpoints[0].addr, addr("10.0.0.1:8080"));
        assert_eq!(endpoints[0].protocol, PodProtocol::Http1);
    }

    #[test]
    fn only_unnamed_port_is_used() {
        let mut slice = with(slice("IPv4"), vec![ready("10.0.0.1", "a")]);
        slice.ports = Some(vec![port(None, 3000, None)]);

        let endpoints = pod_endpoints([&slice]);

        assert_eq!(endpoints[0].addr, addr("10.0.0.1:3000"));
        assert_eq!(endpoints[0].protocol, PodProtocol::Http1);
    }

    #[test]
    fn slice_without_a_usable_port_yields_no_endpoints() {
        let no_ports = {
            let mut s = with(slice("IPv4"), vec![ready("10.0.0.1", "a")]);
            s.ports = None;
            s
        };
        let empty_ports = {
            let mut s = with(slice("IPv4"), vec![ready("10.0.0.2", "b")]);
            s.ports = Some(Vec::new());
            s
        };
        let ambiguous = {
            let mut s = with(slice("IPv4"), vec![ready("10.0.0.3", "c")]);
            s.ports = Some(vec![port(Some("a"), 1, None), port(Some("b"), 2, None)]);
            s
        };
        let all_ports = {
            let mut s = with(slice("IPv4"), vec![ready("10.0.0.4", "d")]);
            s.ports = Some(vec![EndpointPort {
                name: Some("http".into()),
                ..Default::default()
            }]);
            s
        };

        let endpoints = pod_endpoints([&no_ports, &empty_ports, &ambiguous, &all_ports]);

        assert_eq!(endpoints, Vec::new());
    }

    #[test]
    fn function_of_slice_reads_the_pods_service_label() {
        assert_eq!(function_of_slice(&slice("IPv4")), Some("hello"));
    }

    #[test]
    fn slice_of_another_service_is_ignored_by_function_of_slice() {
        let mut other = slice("IPv4");
        other.metadata.labels = Some(BTreeMap::from([(
            SERVICE_NAME_LABEL.to_owned(),
            "hello".to_owned(),
        )]));
        let mut bare_suffix = slice("IPv4");
        bare_suffix.metadata.labels = Some(BTreeMap::from([(
            SERVICE_NAME_LABEL.to_owned(),
            PODS_SERVICE_SUFFIX.to_owned(),
        )]));
        let mut unlabelled = slice("IPv4");
        unlabelled.metadata.labels = None;

        assert_eq!(function_of_slice(&other), None);
        assert_eq!(function_of_slice(&bare_suffix), None);
        assert_eq!(function_of_slice(&unlabelled), None);
    }

    #[test]
    fn fqdn_slices_are_skipped() {
        let fqdn = with(slice("FQDN"), vec![ready("pod-a.example.com", "a")]);
        let ipv4 = with(slice("IPv4"), vec![ready("10.0.0.1", "b")]);

        let endpoints = pod_endpoints([&fqdn, &ipv4]);

        let pods: Vec<_> = endpoints.iter().map(|e| e.pod.as_deref()).collect();
        assert_eq!(pods, vec![Some("b")]);
    }

    #[test]
    fn address_of_the_wrong_family_is_skipped() {
        let slice = with(slice("IPv4"), vec![ready("fd00::1", "a")]);

        assert_eq!(pod_endpoints([&slice]), Vec::new());
    }

    #[test]
    fn ipv6_addresses_become_v6_socket_addresses() {
        let slice = with(slice("IPv6"), vec![ready("fd00::a", "a")]);

        let endpoints = pod_endpoints([&slice]);

        assert_eq!(endpoints[0].addr, addr("[fd00::a]:8080"));
        assert!(matches!(endpoints[0].addr, SocketAddr::V6(_)));
    }

    #[test]
    fn endpoint_set_merges_duplicates_passed_to_new() {
        let set = EndpointSet::new(vec![
            pod_endpoint("10.0.0.1:8080", EndpointState::Ready),
            pod_endpoint("10.0.0.1:8080", EndpointState::Terminating),
        ]);

        assert!(set.ready().is_empty());
        assert_eq!(set.iter().count(), 1);
    }

    #[test]
    fn empty_set_has_nothing_ready() {
        let set = EndpointSet::default();

        assert!(set.is_empty());
        assert!(set.ready().is_empty());
        assert_eq!(set.starting().count(), 0);
        assert_eq!(set, EndpointSet::new(Vec::new()));
    }
}
