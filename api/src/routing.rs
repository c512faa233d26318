//! Route: which Function a request is for, from its Host and path.
//!
//! A [`RoutingTable`] is an immutable snapshot built from every Function each time the
//! set of Functions changes, and read on every request. [`RoutingTable::lookup`] takes
//! no lock and does not allocate when it finds a route.
//!
//! # The hosts a Function answers on
//!
//! For Function `<fn>` in namespace `<ns>`:
//!
//! - its *derived* hosts: `<fn>.<ns>`, `<fn>.<ns>.svc`, `<fn>.<ns>.svc.<cluster-domain>`,
//!   and `<fn>.<ns>.<public-domain>` when the Function is public and a public domain is
//!   set;
//! - the bare `<fn>` (a caller in the same namespace using the short Service name), when
//!   exactly one Function in the table has that name; when several do, the lookup fails
//!   with [`RouteError::AmbiguousShortName`];
//! - its own `spec.routing.hosts`.
//!
//! That is the table for callers inside the cluster ([`RoutingTable::build`]). Callers
//! from outside come in on a listener of their own, whose table
//! ([`RoutingTable::build_public`]) holds only public Functions, by their public-domain
//! host and own hosts: a table cannot tell an in-cluster caller from an outside one, so
//! visibility is enforced by which listener a request arrives on.
//!
//! # Who wins when claims collide
//!
//! Names zeroscale derives from a Function belong to that Function alone:
//!
//! - another Function's own host equal to a derived host (including the public-domain
//!   host of a cluster-local Function, which is reserved though not routed) or to a
//!   bare Function name is ignored, so no Function can take over another's address
//!   with `routing.hosts`, nor squat it before that Function exists;
//! - own hosts may be shared, each Function taking a different path prefix; two claims
//!   on the same host and prefix are won by the lower [`FunctionKey`] (namespace, then
//!   name).
//!
//! Every ignored claim is listed in [`RoutingTable::conflicts`]: the activator logs them, and
//! the operator reports each on its Function as `HostsClaimed=False`.
//!
//! # Paths
//!
//! Among the routes of a host the longest matching path prefix wins, matched on segment
//! boundaries (`/api` matches `/api` and `/api/x`, not `/apix`); a route without prefix
//! is the host's fallback. The caller passes the path alone (`uri.path()`), without the
//! query string, as it arrived: no percent-decoding or dot-segment removal, so a request
//! only ever reaches the Function owning the literal prefix it names.
//!
//! There is no default route: a Host that matches nothing is an error, never forwarded
//! to whatever it names.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use crate::{Function, Visibility};

/// Longest DNS name, in bytes, without the trailing dot.
const MAX_HOST_LEN: usize = 253;

/// Identifies a Function: its namespace and name. Ordered by namespace, then name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FunctionKey {
    pub namespace: String,
    pub name: String,
}

impl FunctionKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for FunctionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The DNS domains derived hosts are formed under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Domains {
    /// The cluster's DNS domain, e.g. `cluster.local`.
    pub cluster_domain: String,
    /// The domain public Functions are reachable under, e.g. `fn.example.com`; none
    /// when Functions are not exposed outside the cluster.
    pub public_domain: Option<String>,
}

impl Default for Domains {
    fn default() -> Self {
        Self {
            cluster_domain: "cluster.local".to_owned(),
            public_domain: None,
        }
    }
}

/// What the routing table needs to know of one Function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteSpec {
    pub key: FunctionKey,
    /// The Function's own hosts (`spec.routing.hosts`).
    pub hosts: Vec<String>,
    /// `spec.routing.pathPrefix`; `None` answers on every path.
    pub path_prefix: Option<String>,
    pub visibility: Visibility,
}

impl RouteSpec {
    /// The routing part of a Function; `None` when it has no namespace or name (never
    /// the case for a Function read from the API server).
    pub fn from_function(function: &Function) -> Option<Self> {
        let namespace = function
            .metadata
            .namespace
            .as_deref()
            .filter(|s| !s.is_empty())?;
        let name = function
            .metadata
            .name
            .as_deref()
            .filter(|s| !s.is_empty())?;
        let routing = &function.spec.routing;
        Some(Self {
            key: FunctionKey::new(namespace, name),
            hosts: routing.hosts.clone(),
            path_prefix: routing.path_prefix.clone(),
            visibility: routing.visibility,
        })
    }
}

/// Why a request matches no Function. Each Display is a plain sentence fit for the
/// body of the 404 answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No Function answers on the request's Host.
    #[error(
        "no Function answers on this host; call a Function at <name>.<namespace> or at one of the hosts in its spec.routing.hosts"
    )]
    UnknownHost,
    /// The Host is a bare Function name that several namespaces use.
    #[error(
        "several Functions are named {name}; call {name}.<namespace> to say which one you mean"
    )]
    AmbiguousShortName { name: Arc<str> },
    /// Functions answer on the Host, but none on the request's path.
    #[error("no Function at {host} serves this path")]
    NoRouteForPath { host: Arc<str> },
}

impl RouteError {
    /// A fixed label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::UnknownHost => "unknown_host",
            Self::AmbiguousShortName { .. } => "ambiguous_short_name",
            Self::NoRouteForPath { .. } => "no_route_for_path",
        }
    }
}

/// A claim on a host and path prefix that the table ignored, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The host as normalised (lowercase, no trailing dot).
    pub host: String,
    /// The path prefix as normalised (no trailing `/`); `None` for every path.
    pub path_prefix: Option<String>,
    /// The Function whose claim is ignored.
    pub ignored: FunctionKey,
    pub reason: ConflictReason,
}

/// Why a claim was ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConflictReason {
    /// `kept`, a lower key, claims the same host and path prefix.
    SameHostAndPrefix { kept: FunctionKey },
    /// The host is one zeroscale derives for `owner`.
    DerivedHostOf { owner: FunctionKey },
    /// The host is the bare name of another Function, reserved for its callers in
    /// its namespace.
    FunctionName,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            host,
            path_prefix,
            ignored,
            reason,
        } = self;
        let prefix = path_prefix.as_deref().unwrap_or("");
        match reason {
            ConflictReason::SameHostAndPrefix { kept } => write!(
                f,
                "{ignored} and {kept} both claim {host}{prefix}; {kept} keeps it (lower namespace/name)"
            ),
            ConflictReason::DerivedHostOf { owner } => write!(
                f,
                "{ignored} claims host {host}, which is an address of {owner}; the claim is ignored"
            ),
            ConflictReason::FunctionName => write!(
                f,
                "{ignored} claims host {host}, which is the short name of another Function; the claim is ignored"
            ),
        }
    }
}

/// Which Function serves each host and path. Immutable: build a new one when the
/// Functions change and swap it in.
#[derive(Clone, Debug)]
pub struct RoutingTable<T> {
    targets: Vec<T>,
    hosts: HashMap<Arc<str>, HostRoutes>,
    short_names: HashMap<Arc<str>, ShortName>,
    conflicts: Vec<Conflict>,
}

/// The routes of one host.
#[derive(Clone, Debug)]
struct HostRoutes {
    /// The host as looked up, for [`RouteError::NoRouteForPath`].
    host: Arc<str>,
    /// Prefixes and the index of their target, longest first.
    prefixed: Vec<(Box<str>, usize)>,
    fallback: Option<usize>,
}

#[derive(Clone, Debug)]
enum ShortName {
    Unique(HostRoutes),
    Ambiguous(Arc<str>),
}

/// Where a claim comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// A derived host the Function answers on.
    Routed,
    /// The public-domain host of a cluster-local Function: kept from others, not routed.
    Reserved,
}

/// Which callers a table serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exposure {
    /// Callers inside the cluster (the listener behind the Functions' Services): every
    /// Function, by every name.
    Cluster,
    /// Callers from outside (the listener behind an Ingress or load balancer): public
    /// Functions by their public-domain host and own hosts; nothing else, so a client
    /// cannot reach a cluster-local Function by sending its in-cluster name.
    Public,
}

impl<T: Clone> RoutingTable<T> {
    /// Builds the table for in-cluster callers from every Function and the target each
    /// resolves to. The result does not depend on the order of `routes`; when one key is
    /// given twice, the last one counts.
    pub fn build(routes: impl IntoIterator<Item = (RouteSpec, T)>, domains: &Domains) -> Self {
        Self::build_for(routes, domains, Exposure::Cluster)
    }

    /// Builds the table for callers outside the cluster: only public Functions, only by
    /// their public-domain host and their own hosts (in-cluster names stay reserved, so
    /// no own host can take them either).
    pub fn build_public(
        routes: impl IntoIterator<Item = (RouteSpec, T)>,
        domains: &Domains,
    ) -> Self {
        Self::build_for(routes, domains, Exposure::Public)
    }

    fn build_for(
        routes: impl IntoIterator<Item = (RouteSpec, T)>,
        domains: &Domains,
        exposure: Exposure,
    ) -> Self {
        let by_key: BTreeMap<FunctionKey, (RouteSpec, T)> = routes
            .into_iter()
            .map(|(spec, target)| (spec.key.clone(), (spec, target)))
            .collect();
        let cluster_domain = normalize_domain(&domains.cluster_domain);
        let public_domain = domains.public_domain.as_deref().and_then(normalize_domain);

        // Derived hosts belong to one Function. They cannot collide across Functions
        // (names and namespaces have no dots) unless the domains are odd; the lower key
        // keeps them then, as `by_key` is in key order.
        let mut conflicts = Vec::new();
        let mut derived: BTreeMap<String, (FunctionKey, Claim)> = BTreeMap::new();
        let mut names: BTreeMap<String, Vec<&FunctionKey>> = BTreeMap::new();
        for (key, (spec, _)) in &by_key {
            let prefix = normalize_prefix(spec.path_prefix.as_deref());
            for (host, claim) in derived_hosts(spec, cluster_domain, public_domain, exposure) {
                match derived.get(&host) {
                    None => {
                        derived.insert(host, (key.clone(), claim));
                    }
                    Some((owner, _)) if owner == key => {}
                    Some((owner, _)) => conflicts.push(Conflict {
                        host,
                        path_prefix: prefix.clone(),
                        ignored: key.clone(),
                        reason: ConflictReason::DerivedHostOf {
                            owner: owner.clone(),
                        },
                    }),
                }
            }
            names
                .entry(key.name.to_ascii_lowercase())
                .or_default()
                .push(key);
        }

        // Claims per host and prefix; each set is in key order, so the first one wins.
        let mut claims: BTreeMap<(String, Option<String>), BTreeSet<usize>> = BTreeMap::new();
        let mut targets = Vec::with_capacity(by_key.len());
        for (index, (key, (spec, target))) in by_key.iter().enumerate() {
            targets.push(target.clone());
            let prefix = normalize_prefix(spec.path_prefix.as_deref());
            for (host, claim) in derived_hosts(spec, cluster_domain, public_domain, exposure) {
                let owned = derived.get(&host).is_some_and(|(owner, _)| owner == key);
                if owned && claim == Claim::Routed {
                    claims
                        .entry((host, prefix.clone()))
                        .or_default()
                        .insert(index);
                }
            }
            let own_hosts = match (exposure, spec.visibility) {
                (Exposure::Public, Visibility::ClusterLocal) => &[][..],
                _ => &spec.hosts[..],
            };
            for host in own_hosts {
                let Some(host) = normalize_own_host(host) else {
                    // Empty or longer than any DNS name: no request can name it, and the
                    // CRD schema already refuses it.
                    continue;
                };
                let reason = match (derived.get(&host), names.get(host.as_str())) {
                    (Some((owner, _)), _) if owner != key => Some(ConflictReason::DerivedHostOf {
                        owner: owner.clone(),
                    }),
                    (_, Some(named)) if named.iter().any(|named| *named != key) => {
                        Some(ConflictReason::FunctionName)
                    }
                    _ => None,
                };
                match reason {
                    Some(reason) => conflicts.push(Conflict {
                        host,
                        path_prefix: prefix.clone(),
                        ignored: key.clone(),
                        reason,
                    }),
                    None => {
                        claims
                            .entry((host, prefix.clone()))
                            .or_default()
                            .insert(index);
                    }
                }
            }
        }

        let keys: Vec<&FunctionKey> = by_key.keys().collect();
        let mut hosts: HashMap<Arc<str>, HostRoutes> = HashMap::new();
        for ((host, prefix), claimants) in claims {
            let mut claimants = claimants.into_iter();
            let Some(winner) = claimants.next() else {
                continue;
            };
            for loser in claimants {
                conflicts.push(Conflict {
                    host: host.clone(),
                    path_prefix: prefix.clone(),
                    ignored: keys[loser].clone(),
                    reason: ConflictReason::SameHostAndPrefix {
                        kept: keys[winner].clone(),
                    },
                });
            }
            let host: Arc<str> = host.into();
            let routes = hosts.entry(host.clone()).or_insert_with(|| HostRoutes {
                host,
                prefixed: Vec::new(),
                fallback: None,
            });
            match prefix {
                Some(prefix) => routes.prefixed.push((prefix.into_boxed_str(), winner)),
                None => routes.fallback = Some(winner),
            }
        }
        for routes in hosts.values_mut() {
            // Longest first, so the first match is the longest. Two different prefixes
            // of one length never both match a path.
            routes
                .prefixed
                .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        }

        // A bare name routes as `<fn>.<ns>` does when one Function has it.
        let mut short_names = HashMap::new();
        for (name, named) in names {
            if exposure == Exposure::Public || name.contains('.') {
                continue;
            }
            let name: Arc<str> = name.into();
            let entry = match named.as_slice() {
                [key] => {
                    let base = format!("{}.{}", key.name, key.namespace).to_ascii_lowercase();
                    let Some(routes) = hosts.get(base.as_str()) else {
                        continue;
                    };
                    ShortName::Unique(HostRoutes {
                        host: name.clone(),
                        ..routes.clone()
                    })
                }
                _ => ShortName::Ambiguous(name.clone()),
            };
            short_names.insert(name, entry);
        }

        conflicts.sort_by(|a, b| {
            (&a.host, &a.path_prefix, &a.ignored).cmp(&(&b.host, &b.path_prefix, &b.ignored))
        });
        Self {
            targets,
            hosts,
            short_names,
            conflicts,
        }
    }
}

impl<T> RoutingTable<T> {
    /// A table that routes nothing.
    pub fn empty() -> Self {
        Self {
            targets: Vec::new(),
            hosts: HashMap::new(),
            short_names: HashMap::new(),
            conflicts: Vec::new(),
        }
    }

    /// The target serving `host` (a Host header or URI authority, with or without
    /// port) and `path` (the request path alone, without query string).
    pub fn lookup(&self, host: &str, path: &str) -> Result<&T, RouteError> {
        let mut buffer = [0; MAX_HOST_LEN];
        let host = normalize_host(host, &mut buffer).ok_or(RouteError::UnknownHost)?;
        let routes = match self.hosts.get(host) {
            Some(routes) => routes,
            None => match self.short_names.get(host) {
                Some(ShortName::Unique(routes)) => routes,
                Some(ShortName::Ambiguous(name)) => {
                    return Err(RouteError::AmbiguousShortName { name: name.clone() });
                }
                None => return Err(RouteError::UnknownHost),
            },
        };
        let index = routes
            .prefixed
            .iter()
            .find(|(prefix, _)| prefix_matches(path, prefix))
            .map(|(_, index)| *index)
            .or(routes.fallback)
            .ok_or_else(|| RouteError::NoRouteForPath {
                host: routes.host.clone(),
            })?;
        self.targets.get(index).ok_or(RouteError::UnknownHost)
    }

    /// Claims the table ignored, sorted by host, prefix and Function, for the caller to
    /// log.
    pub fn conflicts(&self) -> &[Conflict] {
        &self.conflicts
    }
}

impl<T> Default for RoutingTable<T> {
    fn default() -> Self {
        Self::empty()
    }
}

/// The derived hosts of a Function, and whether each is routed or only reserved.
fn derived_hosts(
    spec: &RouteSpec,
    cluster_domain: Option<&str>,
    public_domain: Option<&str>,
    exposure: Exposure,
) -> Vec<(String, Claim)> {
    let FunctionKey { namespace, name } = &spec.key;
    let base = format!("{name}.{namespace}").to_ascii_lowercase();
    let in_cluster = match exposure {
        Exposure::Cluster => Claim::Routed,
        Exposure::Public => Claim::Reserved,
    };
    let mut hosts = vec![
        (format!("{base}.svc"), in_cluster),
        (base.clone(), in_cluster),
    ];
    if let Some(domain) = cluster_domain {
        hosts.push((format!("{base}.svc.{domain}"), in_cluster));
    }
    if let Some(domain) = public_domain {
        let claim = match spec.visibility {
            Visibility::Public => Claim::Routed,
            Visibility::ClusterLocal => Claim::Reserved,
        };
        hosts.push((format!("{base}.{domain}"), claim));
    }
    hosts
}

/// A configured domain in lowercase without dots at either end; `None` when empty.
fn normalize_domain(domain: &str) -> Option<&str> {
    let domain = domain.trim_matches('.');
    (!domain.is_empty()).then_some(domain)
}

/// An own host as lookups see it: lowercase, without trailing dot; `None` when no
/// request can name it.
pub fn normalize_own_host(host: &str) -> Option<String> {
    let host = host.strip_suffix('.').unwrap_or(host);
    (!host.is_empty() && host.len() <= MAX_HOST_LEN).then(|| host.to_ascii_lowercase())
}

/// A path prefix with one leading `/` and no trailing `/`; `None` for `/` and empty,
/// which match every path.
fn normalize_prefix(prefix: Option<&str>) -> Option<String> {
    let prefix = prefix?.trim_end_matches('/');
    let prefix = prefix.strip_prefix('/').unwrap_or(prefix);
    (!prefix.is_empty()).then(|| format!("/{prefix}"))
}

/// Whether `path` is `prefix` or lies below it. `prefix` has no trailing `/`.
// `#[inline]` here and on `normalize_host`: both run on every request, in the activator's
// crate, and release builds have no LTO to inline across crates.
#[inline]
fn prefix_matches(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The host of a Host header as the table keys it: without port or trailing dot, in
/// lowercase (copied into `buffer` only when it has uppercase letters). `None` when it
/// cannot name a Function: empty, too long, an IP-literal (`[::1]`) or a malformed port.
#[inline]
fn normalize_host<'a>(host: &'a str, buffer: &'a mut [u8; MAX_HOST_LEN]) -> Option<&'a str> {
    if host.starts_with('[') {
        return None;
    }
    let host = match host.split_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        Some(_) => return None,
        None => host,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > MAX_HOST_LEN {
        return None;
    }
    if !host.bytes().any(|b| b.is_ascii_uppercase()) {
        return Some(host);
    }
    let lower = &mut buffer[..host.len()];
    lower.copy_from_slice(host.as_bytes());
    lower.make_ascii_lowercase();
    // Lowercasing ASCII letters keeps UTF-8 valid, so this always succeeds.
    std::str::from_utf8(lower).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    impl RouteSpec {
        /// A public Function with no own hosts or prefix; `key` is `namespace/name`.
        fn test(key: &str) -> Self {
            let (namespace, name) = key.split_once('/').unwrap_or(("default", key));
            Self {
                key: FunctionKey::new(namespace, name),
                hosts: Vec::new(),
                path_prefix: None,
                visibility: Visibility::Public,
            }
        }

        fn host(mut self, host: &str) -> Self {
            self.hosts.push(host.to_owned());
            self
        }

        fn prefix(mut self, prefix: &str) -> Self {
            self.path_prefix = Some(prefix.to_owned());
            self
        }

        fn cluster_local(mut self) -> Self {
            self.visibility = Visibility::ClusterLocal;
            self
        }
    }

    fn domains(public: Option<&str>) -> Domains {
        Domains {
            cluster_domain: "cluster.local".to_owned(),
            public_domain: public.map(str::to_owned),
        }
    }

    /// A table whose targets are the Functions' keys.
    fn table(routes: Vec<RouteSpec>, domains: &Domains) -> RoutingTable<FunctionKey> {
        RoutingTable::build(
            routes.into_iter().map(|spec| {
                let key = spec.key.clone();
                (spec, key)
            }),
            domains,
        )
    }

    /// The key a request resolves to, or the metric label of the error.
    fn resolve(table: &RoutingTable<FunctionKey>, host: &str, path: &str) -> String {
        match table.lookup(host, path) {
            Ok(key) => key.to_string(),
            Err(error) => error.metric_label().to_owned(),
        }
    }

    fn check(table: &RoutingTable<FunctionKey>, cases: &[(&str, &str, &str)]) {
        for (host, path, expected) in cases {
            assert_eq!(
                resolve(table, host, path),
                *expected,
                "host {host:?} path {path:?}"
            );
        }
    }

    #[test]
    fn a_function_answers_on_each_derived_host() {
        let table = table(
            vec![RouteSpec::test("team/hello")],
            &domains(Some("fn.example.com")),
        );
        check(
            &table,
            &[
                ("hello.team", "/", "team/hello"),
                ("hello.team.svc", "/", "team/hello"),
                ("hello.team.svc.cluster.local", "/", "team/hello"),
                ("hello.team.fn.example.com", "/", "team/hello"),
                ("hello", "/", "team/hello"),
                ("hello.other", "/", "unknown_host"),
                ("hello.team.svc.cluster", "/", "unknown_host"),
                ("team", "/", "unknown_host"),
            ],
        );
        assert!(table.conflicts().is_empty());
    }

    #[test]
    fn port_case_and_trailing_dot_are_ignored() {
        let table = table(vec![RouteSpec::test("team/hello")], &domains(None));
        check(
            &table,
            &[
                ("hello.team:8080", "/", "team/hello"),
                ("HELLO.Team", "/", "team/hello"),
                ("Hello.Team.SVC.Cluster.Local.:80", "/", "team/hello"),
                ("hello.team.", "/", "team/hello"),
                ("hello.team:", "/", "team/hello"),
                ("hello.team..", "/", "unknown_host"),
                ("hello.team:http", "/", "unknown_host"),
                ("hello.team:80:80", "/", "unknown_host"),
            ],
        );
    }

    #[test]
    fn cluster_local_function_is_reachable_in_cluster_but_not_through_public_domain() {
        let table = table(
            vec![RouteSpec::test("team/private").cluster_local()],
            &domains(Some("fn.example.com")),
        );
        check(
            &table,
            &[
                ("private.team", "/", "team/private"),
                ("private.team.svc", "/", "team/private"),
                ("private.team.svc.cluster.local", "/", "team/private"),
                ("private", "/", "team/private"),
                ("private.team.fn.example.com", "/", "unknown_host"),
            ],
        );
    }

    #[test]
    fn without_public_domain_only_cluster_hosts_exist() {
        let table = table(vec![RouteSpec::test("team/hello")], &domains(None));
        check(
            &table,
            &[
                ("hello.team.svc.cluster.local", "/", "team/hello"),
                ("hello.team.fn.example.com", "/", "unknown_host"),
            ],
        );
        let blank = self::table(vec![RouteSpec::test("team/hello")], &domains(Some("")));
        check(
            &blank,
            &[
                ("hello.team", "/", "team/hello"),
                ("hello.team.", "/", "team/hello"),
            ],
        );
    }

    #[test]
    fn own_hosts_route_whatever_the_visibility() {
        let table = table(
            vec![
                RouteSpec::test("team/public").host("api.example.com"),
                RouteSpec::test("team/private")
                    .cluster_local()
                    .host("Internal.Example.com."),
            ],
            &domains(Some("fn.example.com")),
        );
        check(
            &table,
            &[
                ("api.example.com", "/", "team/public"),
                ("API.example.com:443", "/x", "team/public"),
                ("internal.example.com", "/", "team/private"),
                ("internal.example.com.", "/", "team/private"),
                ("example.com", "/", "unknown_host"),
            ],
        );
    }

    #[test]
    fn longest_path_prefix_wins_on_segment_boundaries() {
        let table = table(
            vec![
                RouteSpec::test("shop/api")
                    .host("shop.example.com")
                    .prefix("/api"),
                RouteSpec::test("shop/admin")
                    .host("shop.example.com")
                    .prefix("/api/admin/"),
                RouteSpec::test("shop/images")
                    .host("shop.example.com")
                    .prefix("/img"),
            ],
            &domains(None),
        );
        check(
            &table,
            &[
                ("shop.example.com", "/api", "shop/api"),
                ("shop.example.com", "/api/", "shop/api"),
                ("shop.example.com", "/api/users", "shop/api"),
                ("shop.example.com", "/api/admin", "shop/admin"),
                ("shop.example.com", "/api/admin/users", "shop/admin"),
                ("shop.example.com", "/api/administrators", "shop/api"),
                ("shop.example.com", "/img/a.png", "shop/images"),
                ("shop.example.com", "/apix", "no_route_for_path"),
                ("shop.example.com", "/", "no_route_for_path"),
                ("shop.example.com", "", "no_route_for_path"),
                ("shop.example.com", "/API", "no_route_for_path"),
            ],
        );
    }

    #[test]
    fn a_prefixed_function_answers_only_under_its_prefix_on_its_derived_hosts() {
        let table = table(
            vec![RouteSpec::test("team/api").prefix("/v1")],
            &domains(None),
        );
        check(
            &table,
            &[
                ("api.team", "/v1/users", "team/api"),
                ("api", "/v1", "team/api"),
                ("api.team", "/v2", "no_route_for_path"),
                ("api", "/v2", "no_route_for_path"),
            ],
        );
        assert_eq!(
            table.lookup("api", "/v2").map_err(|e| e.to_string()),
            Err("no Function at api serves this path".to_owned())
        );
    }

    #[test]
    fn route_without_prefix_is_the_fallback_of_its_host() {
        let table = table(
            vec![
                RouteSpec::test("shop/web").host("shop.example.com"),
                RouteSpec::test("shop/api")
                    .host("shop.example.com")
                    .prefix("/api"),
                RouteSpec::test("shop/root")
                    .host("root.example.com")
                    .prefix("/"),
            ],
            &domains(None),
        );
        check(
            &table,
            &[
                ("shop.example.com", "/api/x", "shop/api"),
                ("shop.example.com", "/apix", "shop/web"),
                ("shop.example.com", "/", "shop/web"),
                ("shop.example.com", "", "shop/web"),
                ("root.example.com", "/anything", "shop/root"),
            ],
        );
    }

    #[test]
    fn bare_name_resolves_only_when_one_function_has_it() {
        let table = table(
            vec![
                RouteSpec::test("team/unique"),
                RouteSpec::test("team/hello"),
                RouteSpec::test("prod/hello"),
            ],
            &domains(None),
        );
        check(
            &table,
            &[
                ("unique", "/", "team/unique"),
                ("UNIQUE:8080", "/", "team/unique"),
                ("hello", "/", "ambiguous_short_name"),
                ("hello.team", "/", "team/hello"),
                ("hello.prod", "/", "prod/hello"),
            ],
        );
        let error = table.lookup("Hello:80", "/").err();
        assert_eq!(
            error.as_ref().map(ToString::to_string).as_deref(),
            Some(
                "several Functions are named hello; call hello.<namespace> to say which one you mean"
            )
        );
    }

    #[test]
    fn unknown_host_is_an_error_never_a_default_route() {
        let table = table(
            vec![RouteSpec::test("team/hello").host("hello.example.com")],
            &domains(Some("fn.example.com")),
        );
        check(
            &table,
            &[
                ("example.com", "/", "unknown_host"),
                ("10.0.0.1", "/", "unknown_host"),
                ("10.0.0.1:8080", "/", "unknown_host"),
                ("hello.team.evil.com", "/", "unknown_host"),
                ("localhost", "/", "unknown_host"),
            ],
        );
        assert_eq!(
            RoutingTable::<FunctionKey>::empty().lookup("hello.team", "/"),
            Err(RouteError::UnknownHost)
        );
    }

    #[test]
    fn ipv6_literals_and_empty_or_odd_hosts_match_nothing() {
        let table = table(vec![RouteSpec::test("team/hello")], &domains(None));
        let long = "a".repeat(300);
        check(
            &table,
            &[
                ("[::1]:80", "/", "unknown_host"),
                ("[::1]", "/", "unknown_host"),
                ("[", "/", "unknown_host"),
                ("::1", "/", "unknown_host"),
                ("", "/", "unknown_host"),
                (".", "/", "unknown_host"),
                (":80", "/", "unknown_host"),
                ("héllo.team", "/", "unknown_host"),
                ("HÉLLO.team", "/", "unknown_host"),
                (&long, "/", "unknown_host"),
            ],
        );
    }

    #[test]
    fn same_host_and_prefix_goes_to_lower_key_whatever_the_order() {
        let routes = vec![
            RouteSpec::test("b/api").host("api.example.com"),
            RouteSpec::test("a/api").host("api.example.com"),
            RouteSpec::test("a/zeta")
                .host("api.example.com")
                .prefix("/v1"),
            RouteSpec::test("a/alpha")
                .host("api.example.com")
                .prefix("/v1/"),
        ];
        let mut reversed = routes.clone();
        reversed.reverse();
        for routes in [routes, reversed] {
            let table = table(routes, &domains(None));
            check(
                &table,
                &[
                    ("api.example.com", "/", "a/api"),
                    ("api.example.com", "/v1/x", "a/alpha"),
                ],
            );
            let conflicts: Vec<String> =
                table.conflicts().iter().map(ToString::to_string).collect();
            assert_eq!(
                conflicts,
                [
                    "b/api and a/api both claim api.example.com; a/api keeps it (lower namespace/name)",
                    "a/zeta and a/alpha both claim api.example.com/v1; a/alpha keeps it (lower namespace/name)",
                ]
            );
        }
    }

    #[test]
    fn own_hosts_cannot_take_another_functions_address() {
        let table = table(
            vec![
                RouteSpec::test("team/hello"),
                RouteSpec::test("team/private").cluster_local(),
                RouteSpec::test("evil/thief")
                    .host("hello.team")
                    .host("HELLO.team.svc.cluster.local")
                    .host("private.team.fn.example.com")
                    .host("hello")
                    .prefix("/admin"),
            ],
            &domains(Some("fn.example.com")),
        );
        check(
            &table,
            &[
                ("hello.team", "/admin", "team/hello"),
                ("hello.team.svc.cluster.local", "/admin", "team/hello"),
                ("hello", "/admin", "team/hello"),
                ("private.team.fn.example.com", "/admin", "unknown_host"),
            ],
        );
        let conflicts: Vec<(&str, &ConflictReason)> = table
            .conflicts()
            .iter()
            .map(|c| (c.host.as_str(), &c.reason))
            .collect();
        let owner = |key: &str| ConflictReason::DerivedHostOf {
            owner: RouteSpec::test(key).key,
        };
        assert_eq!(
            conflicts,
            [
                ("hello", &ConflictReason::FunctionName),
                ("hello.team", &owner("team/hello")),
                ("hello.team.svc.cluster.local", &owner("team/hello")),
                ("private.team.fn.example.com", &owner("team/private")),
            ]
        );
        assert!(
            table
                .conflicts()
                .iter()
                .all(|c| c.ignored == RouteSpec::test("evil/thief").key)
        );
    }

    #[test]
    fn a_function_may_list_its_own_addresses_among_its_hosts() {
        let table = table(
            vec![
                RouteSpec::test("team/hello")
                    .host("hello.team")
                    .host("hello")
                    .host("hello.example.com")
                    .host("hello.example.com"),
            ],
            &domains(None),
        );
        check(
            &table,
            &[
                ("hello", "/", "team/hello"),
                ("hello.team", "/", "team/hello"),
                ("hello.example.com", "/", "team/hello"),
            ],
        );
        assert!(table.conflicts().is_empty());
    }

    #[test]
    fn errors_have_fixed_metric_labels_and_plain_messages() {
        let cases = [
            (RouteError::UnknownHost, "unknown_host"),
            (
                RouteError::AmbiguousShortName {
                    name: "hello".into(),
                },
                "ambiguous_short_name",
            ),
            (
                RouteError::NoRouteForPath {
                    host: "hello.team".into(),
                },
                "no_route_for_path",
            ),
        ];
        for (error, label) in cases {
            assert_eq!(error.metric_label(), label);
            assert!(!error.to_string().is_empty());
        }
    }

    #[test]
    fn lookup_of_a_lowercase_host_borrows_it_without_copying() {
        let mut buffer = [0; MAX_HOST_LEN];
        let host = "hello.team:8080";
        let normalized = normalize_host(host, &mut buffer).map(str::as_ptr);
        assert_eq!(normalized, Some(host.as_ptr()));
    }

    #[test]
    fn route_spec_comes_from_function_metadata_and_routing() {
        let mut function = Function::new("hello", crate::FunctionSpec::with_image("img"));
        assert_eq!(RouteSpec::from_function(&function), None);
        function.metadata.namespace = Some("team".to_owned());
        function.spec.routing.hosts = vec!["hello.example.com".to_owned()];
        function.spec.routing.path_prefix = Some("/api".to_owned());
        function.spec.routing.visibility = Visibility::ClusterLocal;
        assert_eq!(
            RouteSpec::from_function(&function),
            Some(RouteSpec {
                key: FunctionKey::new("team", "hello"),
                hosts: vec!["hello.example.com".to_owned()],
                path_prefix: Some("/api".to_owned()),
                visibility: Visibility::ClusterLocal,
            })
        );
        assert_eq!(FunctionKey::new("team", "hello").to_string(), "team/hello");
    }

    #[test]
    fn public_table_routes_only_public_functions_by_public_and_own_hosts() {
        let domains = Domains {
            cluster_domain: "cluster.local".into(),
            public_domain: Some("fn.example.com".into()),
        };
        let public = RouteSpec {
            key: FunctionKey::new("team", "shop"),
            hosts: vec!["shop.example.org".into()],
            path_prefix: None,
            visibility: Visibility::Public,
        };
        let private = RouteSpec {
            key: FunctionKey::new("team", "ledger"),
            hosts: vec!["ledger.example.org".into()],
            path_prefix: None,
            visibility: Visibility::ClusterLocal,
        };
        let squatter = RouteSpec {
            key: FunctionKey::new("other", "squat"),
            hosts: vec!["ledger.team".into()],
            path_prefix: None,
            visibility: Visibility::Public,
        };
        let table = RoutingTable::build_public(
            [(public, "shop"), (private, "ledger"), (squatter, "squat")],
            &domains,
        );
        assert_eq!(table.lookup("shop.team.fn.example.com", "/"), Ok(&"shop"));
        assert_eq!(table.lookup("shop.example.org", "/"), Ok(&"shop"));
        for in_cluster in [
            "shop.team",
            "shop.team.svc.cluster.local",
            "shop",
            "ledger.team",
            "ledger.team.fn.example.com",
            "ledger.example.org",
        ] {
            assert_eq!(
                table.lookup(in_cluster, "/"),
                Err(RouteError::UnknownHost),
                "{in_cluster} must not be reachable from outside"
            );
        }
    }
}
