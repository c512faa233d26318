//! The gateway parts of a Function spec the activator enforces before a request reaches
//! a pod: rate limits (`spec.requests.rateLimit`) and CORS (`spec.routing.cors`), with
//! their checks. Both are off when left out.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration;
use crate::validate::InvalidSpec;

/// How many requests per second the Function takes; more are refused with 429.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Requests per second for the Function as a whole, shared by all callers. No
    /// Function-wide limit when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.001, max = 1000000.0))]
    pub requests_per_second: Option<f64>,

    /// Most requests let through at once after an idle period (default: the requests
    /// per second, rounded up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub burst: Option<i32>,

    /// A limit for each caller on its own, in addition to the Function-wide one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_client: Option<PerClientRateLimit>,
}

/// A limit each caller gets on its own.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(test, x_kube(cel))]
#[x_kube(
    validation = Rule::new("has(self.header) == (self.by == 'header')").message("rateLimit.perClient.header names the header with by: header, and only then")
)]
pub struct PerClientRateLimit {
    /// What tells callers apart.
    pub by: ClientKey,

    /// With `by: header`: the request header whose value names the caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub header: Option<String>,

    /// Requests per second for each caller.
    #[schemars(range(min = 0.001, max = 1000000.0))]
    pub requests_per_second: f64,

    /// Most requests one caller may send at once after an idle period (default: the
    /// requests per second, rounded up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub burst: Option<i32>,
}

/// What tells callers apart for a per-client rate limit. A request without the chosen
/// identity counts against its client address.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum ClientKey {
    /// The API key the caller sent (`spec.auth`, else its `Authorization` header).
    ApiKey,
    /// The subject of the caller's verified token.
    Subject,
    /// The value of the request header named in `header`.
    Header,
    /// The caller's address.
    ClientAddress,
}

/// Which browser origins may call the Function, answered by the activator: preflight
/// requests never reach (or wake) the Function.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(test, x_kube(cel))]
#[x_kube(
    validation = Rule::new("!(has(self.allowCredentials) && self.allowCredentials && '*' in self.allowOrigins)").message("cors.allowOrigins cannot hold \"*\" with allowCredentials: name the origins")
)]
pub struct Cors {
    /// Origins allowed to call: exact (`https://app.example.com`), one leading wildcard
    /// label (`https://*.example.com`, any subdomain), or `*` (any origin; not with
    /// allowCredentials).
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 253)))]
    pub allow_origins: Vec<String>,

    /// Methods allowed in cross-origin requests (default GET, HEAD, POST).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(regex(pattern = r"^[A-Za-z]+$")))]
    pub allow_methods: Vec<String>,

    /// Request headers allowed in cross-origin requests beyond the CORS-safelisted ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(regex(pattern = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"))
    )]
    pub allow_headers: Vec<String>,

    /// Response headers the browser lets the calling script read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(regex(pattern = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"))
    )]
    pub expose_headers: Vec<String>,

    /// Whether the browser sends cookies and credentials along.
    #[serde(default)]
    pub allow_credentials: bool,

    /// How long a browser may cache a preflight answer, such as `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = duration::PATTERN))]
    pub max_age: Option<String>,
}

fn invalid(field: &str, reason: impl Into<String>) -> InvalidSpec {
    InvalidSpec {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

fn check_rate(field: &str, rate: f64) -> Result<(), InvalidSpec> {
    if rate.is_finite() && rate >= 0.001 {
        Ok(())
    } else {
        Err(invalid(field, format!("{rate} must be at least 0.001")))
    }
}

fn check_burst(field: &str, burst: Option<i32>) -> Result<(), InvalidSpec> {
    match burst {
        Some(burst) if burst < 1 => Err(invalid(field, format!("{burst} must be at least 1"))),
        _ => Ok(()),
    }
}

impl RateLimit {
    /// Checks the limit; a failure names the field.
    pub fn validate(&self) -> Result<(), InvalidSpec> {
        const FIELD: &str = "spec.requests.rateLimit";
        if self.requests_per_second.is_none() && self.per_client.is_none() {
            return Err(invalid(
                FIELD,
                "set requestsPerSecond, perClient or both (or leave rateLimit out)",
            ));
        }
        if let Some(rate) = self.requests_per_second {
            check_rate("spec.requests.rateLimit.requestsPerSecond", rate)?;
        }
        check_burst("spec.requests.rateLimit.burst", self.burst)?;
        if let Some(client) = &self.per_client {
            check_rate(
                "spec.requests.rateLimit.perClient.requestsPerSecond",
                client.requests_per_second,
            )?;
            check_burst("spec.requests.rateLimit.perClient.burst", client.burst)?;
            match (client.by, &client.header) {
                (ClientKey::Header, None) => {
                    return Err(invalid(
                        "spec.requests.rateLimit.perClient.header",
                        "must name a header when by is header",
                    ));
                }
                (ClientKey::Header, Some(name)) if http_token(name).is_none() => {
                    return Err(invalid(
                        "spec.requests.rateLimit.perClient.header",
                        format!("{name:?} is not a header name"),
                    ));
                }
                (ClientKey::Header, Some(_)) | (_, None) => {}
                (_, Some(_)) => {
                    return Err(invalid(
                        "spec.requests.rateLimit.perClient.header",
                        "is only used with by: header",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `name` if it is an HTTP token (a valid header or method name).
fn http_token(name: &str) -> Option<&str> {
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    (!name.is_empty() && name.chars().all(token)).then_some(name)
}

impl Cors {
    /// Checks the policy; a failure names the field.
    pub fn validate(&self) -> Result<(), InvalidSpec> {
        const ORIGINS: &str = "spec.routing.cors.allowOrigins";
        if self.allow_origins.is_empty() {
            return Err(invalid(ORIGINS, "must name at least one origin"));
        }
        for origin in &self.allow_origins {
            if origin == "*" {
                if self.allow_credentials {
                    return Err(invalid(
                        ORIGINS,
                        "\"*\" cannot be used with allowCredentials: name the origins",
                    ));
                }
                continue;
            }
            let Some((scheme, host)) = origin.split_once("://") else {
                return Err(invalid(
                    ORIGINS,
                    format!("{origin:?} is not an origin such as https://app.example.com"),
                ));
            };
            let host = host.strip_prefix("*.").unwrap_or(host);
            let host_ok = !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c));
            if !matches!(scheme, "http" | "https") || !host_ok {
                return Err(invalid(
                    ORIGINS,
                    format!(
                        "{origin:?} is not an origin such as https://app.example.com or https://*.example.com"
                    ),
                ));
            }
        }
        for (field, names) in [
            ("spec.routing.cors.allowMethods", &self.allow_methods),
            ("spec.routing.cors.allowHeaders", &self.allow_headers),
            ("spec.routing.cors.exposeHeaders", &self.expose_headers),
        ] {
            if let Some(name) = names.iter().find(|name| http_token(name).is_none()) {
                return Err(invalid(field, format!("{name:?} is not a token")));
            }
        }
        if let Some(max_age) = &self.max_age {
            duration::parse(max_age)
                .map_err(|e| invalid("spec.routing.cors.maxAge", e.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit() -> RateLimit {
        RateLimit {
            requests_per_second: Some(10.0),
            ..RateLimit::default()
        }
    }

    fn cors(origins: &[&str]) -> Cors {
        Cors {
            allow_origins: origins.iter().map(|o| (*o).to_owned()).collect(),
            ..Cors::default()
        }
    }

    #[test]
    fn rate_limit_needs_a_rate_and_a_header_name_for_by_header() {
        assert_eq!(limit().validate(), Ok(()));
        let empty = RateLimit::default().validate().expect_err("invalid");
        assert_eq!(empty.field, "spec.requests.rateLimit");

        let mut by_header = limit();
        by_header.per_client = Some(PerClientRateLimit {
            by: ClientKey::Header,
            header: None,
            requests_per_second: 1.0,
            burst: None,
        });
        let missing = by_header.validate().expect_err("invalid");
        assert_eq!(missing.field, "spec.requests.rateLimit.perClient.header");
        if let Some(client) = &mut by_header.per_client {
            client.header = Some("X-Client-Id".into());
        }
        assert_eq!(by_header.validate(), Ok(()));

        let zero = RateLimit {
            requests_per_second: Some(0.0),
            ..RateLimit::default()
        };
        assert_eq!(
            zero.validate().expect_err("invalid").field,
            "spec.requests.rateLimit.requestsPerSecond"
        );
    }

    #[test]
    fn cel_rules_tie_the_header_to_by_header_and_refuse_any_origin_with_credentials() {
        let client = |value: serde_json::Value| PerClientRateLimit::validate_cel(&value, None);
        assert!(
            client(
                serde_json::json!({"by": "header", "header": "X-Tenant", "requestsPerSecond": 1})
            )
            .is_ok()
        );
        assert!(client(serde_json::json!({"by": "header", "requestsPerSecond": 1})).is_err());
        assert!(
            client(serde_json::json!({"by": "apiKey", "header": "X", "requestsPerSecond": 1}))
                .is_err()
        );
        assert!(client(serde_json::json!({"by": "apiKey", "requestsPerSecond": 1})).is_ok());
        let cors = |value: serde_json::Value| Cors::validate_cel(&value, None);
        assert!(cors(serde_json::json!({"allowOrigins": ["*"]})).is_ok());
        assert!(
            cors(serde_json::json!({"allowOrigins": ["*"], "allowCredentials": true})).is_err()
        );
        assert!(
            cors(
                serde_json::json!({"allowOrigins": ["https://a.example"], "allowCredentials": true})
            )
            .is_ok()
        );
    }

    #[test]
    fn cors_origins_are_exact_wildcard_subdomains_or_any() {
        assert_eq!(
            cors(&["https://app.example.com", "https://*.example.com", "*"]).validate(),
            Ok(())
        );
        assert!(cors(&["app.example.com"]).validate().is_err());
        assert!(cors(&["ftp://app.example.com"]).validate().is_err());
        assert!(cors(&[]).validate().is_err());
        let mut credentials = cors(&["*"]);
        credentials.allow_credentials = true;
        assert_eq!(
            credentials.validate().expect_err("invalid").field,
            "spec.routing.cors.allowOrigins"
        );
        let mut bad_age = cors(&["*"]);
        bad_age.max_age = Some("soon".into());
        assert_eq!(
            bad_age.validate().expect_err("invalid").field,
            "spec.routing.cors.maxAge"
        );
    }
}
