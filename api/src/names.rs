//! Names of the objects derived from a Function, in one place so the operator that
//! creates them and the activator that watches them always agree.

/// Longest Function name: Services are DNS-1035 labels (63 characters) and the pods
/// Service appends [`PODS_SERVICE_SUFFIX`].
pub const MAX_FUNCTION_NAME_LEN: usize = 63 - PODS_SERVICE_SUFFIX.len();

/// Suffix of the headless Service that selects a Function's pods.
pub const PODS_SERVICE_SUFFIX: &str = "-pods";

/// The Deployment that runs the Function's pods.
pub fn deployment(function: &str) -> String {
    function.to_owned()
}

/// The Service callers use: `<function>.<namespace>`, routed to the activator.
pub fn service(function: &str) -> String {
    function.to_owned()
}

/// The headless Service selecting the Function's pods; the activator watches its
/// EndpointSlices.
pub fn pods_service(function: &str) -> String {
    format!("{function}{PODS_SERVICE_SUFFIX}")
}

/// The HorizontalPodAutoscaler of a Function whose metric is `cpu`.
pub fn hpa(function: &str) -> String {
    function.to_owned()
}

/// The in-cluster DNS name of the Function's Service.
pub fn cluster_address(function: &str, namespace: &str, cluster_domain: &str) -> String {
    format!("{function}.{namespace}.svc.{cluster_domain}")
}

/// The public host of a Function under the activator's public domain.
pub fn public_host(function: &str, namespace: &str, public_domain: &str) -> String {
    format!("{function}.{namespace}.{public_domain}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_service_name_of_longest_function_name_is_a_valid_label() {
        let name = "a".repeat(MAX_FUNCTION_NAME_LEN);
        assert_eq!(pods_service(&name).len(), 63);
    }

    #[test]
    fn addresses_follow_service_dns() {
        assert_eq!(
            cluster_address("hello", "team", "cluster.local"),
            "hello.team.svc.cluster.local"
        );
        assert_eq!(
            public_host("hello", "team", "fn.example.com"),
            "hello.team.fn.example.com"
        );
    }
}
