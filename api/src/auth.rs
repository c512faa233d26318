//! `spec.auth`: who may call a Function. API keys from a Secret, or JSON Web Tokens
//! checked against an issuer's keys; both are checked by the activator before a request
//! is held or forwarded, so a refused request never wakes a Function at zero.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validate::InvalidSpec;

/// How callers authenticate. With both `apiKeys` and `jwt`, either one admits a request.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// Callers present one of the keys in a Secret of the Function's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys: Option<ApiKeysAuth>,

    /// Callers present a JSON Web Token signed by the issuer's keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtAuth>,
}

impl AuthSpec {
    /// Whether the spec asks for any check.
    pub fn is_empty(&self) -> bool {
        self.api_keys.is_none() && self.jwt.is_none()
    }
}

/// API keys: every value in the Secret is one key (the data keys name them, e.g. the
/// caller). The operator copies SHA-256 digests of the keys to the activator; the keys
/// themselves never leave the Secret.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeysAuth {
    /// The Secret, in the Function's namespace, that holds the keys.
    pub secret_ref: SecretRef,

    /// The request header that carries the key, as it is. When unset, callers send
    /// `Authorization: Bearer <key>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9-]+$"), length(max = 128))]
    pub header: Option<String>,
}

/// A Secret in the Function's namespace.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// JSON Web Tokens (RFC 7519) sent as `Authorization: Bearer <token>`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JwtAuth {
    /// The `iss` every token must carry.
    #[schemars(length(min = 1))]
    pub issuer: String,

    /// Accepted `aud` values: a token must name at least one. Any audience when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,

    /// Signature algorithms accepted; all three when empty. `none` and HMAC never are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub algorithms: Vec<JwtAlgorithm>,

    /// Where the issuer publishes its keys (a JWKS document), fetched and cached by the
    /// activator, refreshed when a token names an unknown key. One of `jwksUrl` and
    /// `jwks` is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"))]
    pub jwks_url: Option<String>,

    /// The issuer's keys inline, as a JWKS JSON document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,

    /// Claims a token must carry, each with the values accepted (the claim, or one
    /// element of it when it is a list, must equal one of them); 403 otherwise.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub required_claims: BTreeMap<String, Vec<String>>,

    /// Claims passed to the Function as request headers (claim name -> header name).
    /// A header of those names that the caller sent is always removed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(inner(regex(pattern = r"^[A-Za-z0-9-]+$")))]
    pub forward_claims: BTreeMap<String, String>,
}

/// A JWT signature algorithm.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JwtAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// Ed25519.
    EdDSA,
}

impl JwtAlgorithm {
    /// Every algorithm, the default allow-list.
    pub const ALL: [Self; 3] = [Self::RS256, Self::ES256, Self::EdDSA];

    /// The `alg` header value.
    pub fn name(self) -> &'static str {
        match self {
            Self::RS256 => "RS256",
            Self::ES256 => "ES256",
            Self::EdDSA => "EdDSA",
        }
    }
}

impl JwtAuth {
    /// The accepted algorithms: as listed, or all when the list is empty.
    pub fn effective_algorithms(&self) -> Vec<JwtAlgorithm> {
        if self.algorithms.is_empty() {
            JwtAlgorithm::ALL.to_vec()
        } else {
            self.algorithms.clone()
        }
    }
}

/// The Secret, in zeroscale's own namespace, where the operator writes the digests of a
/// Function's API keys for the activator: `apikeys.<namespace>.<name>` (a Function's
/// name and namespace hold no dots, so no two Functions share one).
pub fn digests_secret_name(namespace: &str, name: &str) -> String {
    format!("apikeys.{namespace}.{name}")
}

/// The data key of that Secret: one lowercase hex SHA-256 digest per line, one line per
/// API key (the key's bytes with surrounding whitespace trimmed).
pub const DIGESTS_KEY: &str = "sha256";

/// Labels of that Secret naming its Function, and the label that selects every such
/// Secret.
pub const FUNCTION_NAMESPACE_LABEL: &str = "zeroscale.dev/function-namespace";
pub const FUNCTION_NAME_LABEL: &str = crate::keys::FUNCTION_LABEL;
pub const DIGESTS_LABEL: &str = "zeroscale.dev/api-key-digests";

/// Header names a Function may not have claims forwarded into: the activator's own and
/// those about the connection or the message framing.
const RESERVED_HEADERS: [&str; 9] = [
    "host",
    "connection",
    "content-length",
    "transfer-encoding",
    "upgrade",
    "te",
    "authorization",
    "cookie",
    "x-forwarded-for",
];

impl AuthSpec {
    /// Checks what the schema cannot: one key source for JWT, inline keys that parse as
    /// JSON, forwarded-claim headers that are free to use.
    pub fn validate(&self) -> Result<(), InvalidSpec> {
        if let Some(jwt) = &self.jwt {
            match (&jwt.jwks_url, &jwt.jwks) {
                (None, None) | (Some(_), Some(_)) => {
                    return Err(InvalidSpec {
                        field: "spec.auth.jwt".into(),
                        reason: "set exactly one of jwksUrl and jwks".into(),
                    });
                }
                (None, Some(jwks)) => {
                    if serde_json::from_str::<serde_json::Value>(jwks).is_err() {
                        return Err(InvalidSpec {
                            field: "spec.auth.jwt.jwks".into(),
                            reason: "is not a JSON document".into(),
                        });
                    }
                }
                (Some(_), None) => {}
            }
            for header in jwt.forward_claims.values() {
                let lower = header.to_ascii_lowercase();
                if RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with("x-zeroscale-") {
                    return Err(InvalidSpec {
                        field: "spec.auth.jwt.forwardClaims".into(),
                        reason: format!("{header} cannot carry a claim"),
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt() -> JwtAuth {
        JwtAuth {
            issuer: "https://issuer.example".into(),
            audiences: vec![],
            algorithms: vec![],
            jwks_url: Some("https://issuer.example/jwks".into()),
            jwks: None,
            required_claims: BTreeMap::new(),
            forward_claims: BTreeMap::new(),
        }
    }

    #[test]
    fn jwt_needs_exactly_one_key_source() {
        let mut spec = AuthSpec {
            api_keys: None,
            jwt: Some(jwt()),
        };
        assert!(spec.validate().is_ok());
        if let Some(jwt) = &mut spec.jwt {
            jwt.jwks = Some("{\"keys\":[]}".into());
        }
        assert_eq!(
            spec.validate().map_err(|e| e.field),
            Err("spec.auth.jwt".to_owned())
        );
        if let Some(jwt) = &mut spec.jwt {
            jwt.jwks_url = None;
        }
        assert!(spec.validate().is_ok());
    }

    #[test]
    fn claims_cannot_be_forwarded_into_reserved_headers() {
        let mut jwt = jwt();
        jwt.forward_claims
            .insert("sub".into(), "Authorization".into());
        let spec = AuthSpec {
            api_keys: None,
            jwt: Some(jwt),
        };
        assert_eq!(
            spec.validate().map_err(|e| e.field),
            Err("spec.auth.jwt.forwardClaims".to_owned())
        );
    }

    #[test]
    fn empty_algorithm_list_means_all_three() {
        assert_eq!(jwt().effective_algorithms(), JwtAlgorithm::ALL);
    }
}
