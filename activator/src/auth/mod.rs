//! Authentication, the step between route and count: a Function with `spec.auth` admits
//! a request only with one of its API keys or a valid JSON Web Token, and a refused
//! request is answered before anything is counted, held or woken. A Function without
//! `spec.auth` pays one `Option` check.
//!
//! [`Gate`] holds what outlives one Function's settings: the API key digests the
//! control path delivers (from the operator's Secret, or `zeroscale dev`) and the JWKS
//! caches, one per URL however many Functions share it. [`Policy`] is one Function's
//! `spec.auth` made ready for requests. The parts: `keys` (digests, constant-time
//! comparison), `jwt` (token verification) and `jwks` (key sets and their cache).
//!
//! Keys and tokens are never logged; the error a client reads never echoes them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use zeroscale_api::auth::{AuthSpec, JwtAlgorithm};
use zeroscale_api::routing::FunctionKey;

use cache::VerifiedTokens;
use jwks::{KeySet, RemoteJwks};
pub use jwt::TokenError;
use jwt::{ClaimRules, Claims};
pub use keys::{Digest, digest, parse_digests, to_hex};

mod cache;
mod jwks;
mod jwt;
mod keys;
#[cfg(test)]
mod tests;

/// Shortest time between two fetches of one JWKS URL for tokens naming unknown keys.
pub const DEFAULT_JWKS_MIN_REFRESH: Duration = Duration::from_secs(10);

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No key or token came with the request (401, no error code: RFC 6750, 3.1).
    #[error("this Function requires authentication")]
    Missing,
    /// The API key is not one of the Function's (401, `invalid_token`).
    #[error("the API key is not accepted")]
    InvalidKey,
    /// The token is not accepted (401, `invalid_token`).
    #[error(transparent)]
    InvalidToken(#[from] TokenError),
    /// The token is valid, but a claim the Function requires is missing or has another
    /// value (403, `insufficient_scope`).
    #[error("the token lacks a claim this Function requires")]
    Forbidden,
}

impl AuthError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::Missing | Self::InvalidKey | Self::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
        }
    }

    pub(crate) fn metric_label(&self) -> &'static str {
        match self {
            Self::Missing => "unauthenticated",
            Self::InvalidKey => "invalid_api_key",
            Self::InvalidToken(_) => "invalid_token",
            Self::Forbidden => "forbidden",
        }
    }

    /// The `WWW-Authenticate` challenge (RFC 6750, section 3).
    pub(crate) fn challenge(&self) -> HeaderValue {
        match self {
            Self::Missing => HeaderValue::from_static("Bearer realm=\"zeroscale\""),
            Self::InvalidKey | Self::InvalidToken(_) => HeaderValue::from_str(&format!(
                "Bearer realm=\"zeroscale\", error=\"invalid_token\", error_description=\"{self}\""
            ))
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer error=\"invalid_token\"")),
            Self::Forbidden => {
                HeaderValue::from_static("Bearer realm=\"zeroscale\", error=\"insufficient_scope\"")
            }
        }
    }
}

type DigestSlot = Arc<ArcSwap<Vec<Digest>>>;

/// Authentication state shared by every Function: API key digests by Function and JWKS
/// caches by URL.
#[derive(Debug)]
pub struct Gate {
    jwks_min_refresh: Duration,
    remotes: Mutex<HashMap<String, Arc<RemoteJwks>>>,
    digests: Mutex<HashMap<FunctionKey, DigestSlot>>,
}

impl Default for Gate {
    fn default() -> Self {
        Self::new(DEFAULT_JWKS_MIN_REFRESH)
    }
}

impl Gate {
    /// A gate that fetches a JWKS URL again for an unknown key at most once per
    /// `jwks_min_refresh`.
    pub fn new(jwks_min_refresh: Duration) -> Self {
        Self {
            jwks_min_refresh,
            remotes: Mutex::new(HashMap::new()),
            digests: Mutex::new(HashMap::new()),
        }
    }

    /// Replaces the digests of a Function's API keys.
    pub fn set_api_keys(&self, function: &FunctionKey, digests: Vec<Digest>) {
        self.digest_slot(function).store(Arc::new(digests));
    }

    /// Forgets a Function's API keys: none is accepted until they are set again.
    pub fn remove_api_keys(&self, function: &FunctionKey) {
        if let Some(slot) = lock(&self.digests).get(function) {
            slot.store(Arc::new(Vec::new()));
        }
    }

    #[cfg(test)]
    pub(crate) fn api_keys(&self, function: &FunctionKey) -> Vec<Digest> {
        self.digest_slot(function).load().to_vec()
    }

    fn digest_slot(&self, function: &FunctionKey) -> DigestSlot {
        Arc::clone(lock(&self.digests).entry(function.clone()).or_default())
    }

    fn remote(&self, url: &str) -> Arc<RemoteJwks> {
        let mut remotes = lock(&self.remotes);
        Arc::clone(
            remotes.entry(url.to_owned()).or_insert_with(|| {
                Arc::new(RemoteJwks::new(url.to_owned(), self.jwks_min_refresh))
            }),
        )
    }

    /// The policy of a Function's `spec.auth`; None when it asks for nothing.
    pub(crate) fn policy(
        &self,
        function: &FunctionKey,
        spec: Option<&AuthSpec>,
    ) -> Option<Arc<Policy>> {
        let spec = spec.filter(|spec| !spec.is_empty())?;
        let api_keys = spec.api_keys.as_ref().map(|api_keys| {
            let header = api_keys
                .header
                .as_deref()
                .and_then(|name| HeaderName::try_from(name).ok());
            ApiKeys {
                bearer: header.is_none(),
                header: header.unwrap_or(header::AUTHORIZATION),
                digests: self.digest_slot(function),
            }
        });
        let jwt = spec.jwt.as_ref().map(|jwt| {
            let keys = match (&jwt.jwks_url, &jwt.jwks) {
                (Some(url), _) => Keys::Remote(self.remote(url)),
                (None, Some(inline)) => Keys::Inline(Arc::new(
                    KeySet::parse(inline.as_bytes()).unwrap_or_else(|error| {
                        tracing::warn!(function = %function, error = %zeroscale_admin::process::ErrorChain(&error), "spec.auth.jwt.jwks has no usable keys");
                        KeySet::default()
                    }),
                )),
                (None, None) => Keys::Inline(Arc::new(KeySet::default())),
            };
            Jwt {
                issuer: jwt.issuer.clone(),
                audiences: jwt.audiences.clone(),
                algorithms: jwt.effective_algorithms(),
                keys,
                required: jwt
                    .required_claims
                    .iter()
                    .map(|(claim, values)| (claim.clone(), values.clone()))
                    .collect(),
                forward: jwt
                    .forward_claims
                    .iter()
                    .filter_map(|(claim, name)| Some((claim.clone(), HeaderName::try_from(name).ok()?)))
                    .collect(),
                verified: VerifiedTokens::new(),
            }
        });
        Some(Arc::new(Policy { api_keys, jwt }))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One Function's `spec.auth`, ready for requests.
#[derive(Debug)]
pub(crate) struct Policy {
    api_keys: Option<ApiKeys>,
    jwt: Option<Jwt>,
}

#[derive(Debug)]
struct ApiKeys {
    header: HeaderName,
    /// The key follows `Bearer ` in the header (the `Authorization` default).
    bearer: bool,
    digests: DigestSlot,
}

#[derive(Debug)]
struct Jwt {
    issuer: String,
    audiences: Vec<String>,
    algorithms: Vec<JwtAlgorithm>,
    keys: Keys,
    required: Vec<(String, Vec<String>)>,
    forward: Vec<(String, HeaderName)>,
    verified: VerifiedTokens,
}

#[derive(Debug)]
enum Keys {
    Inline(Arc<KeySet>),
    Remote(Arc<RemoteJwks>),
}

/// Who an admitted request was verified as: the `sub` claim of its token (None when an
/// API key admitted it). Per-caller rate limits by subject read it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Verified {
    pub subject: Option<String>,
}

impl Policy {
    /// Admits or refuses a request by its headers. Headers that carry forwarded claims
    /// are removed first, whatever the outcome, and set from the token when one admits
    /// the request.
    pub(crate) async fn check(&self, headers: &mut HeaderMap) -> Result<Verified, AuthError> {
        if let Some(jwt) = &self.jwt {
            for (_, name) in &jwt.forward {
                headers.remove(name);
            }
        }
        let mut presented = false;
        if let Some(api_keys) = &self.api_keys
            && let Some(key) = credential(headers, &api_keys.header, api_keys.bearer)
        {
            presented = true;
            if keys::is_known(key, &api_keys.digests.load()) {
                return Ok(Verified::default());
            }
        }
        if let Some(jwt) = &self.jwt
            && let Some(token) = credential(headers, &header::AUTHORIZATION, true)
        {
            let token = std::str::from_utf8(token).map_err(|_| TokenError::Malformed)?;
            let claims = jwt.verify(token).await?;
            jwt.forward(&claims, headers);
            let subject = claims.0.get("sub").and_then(|sub| sub.as_str());
            return Ok(Verified {
                subject: subject.map(str::to_owned),
            });
        }
        Err(if presented {
            AuthError::InvalidKey
        } else {
            AuthError::Missing
        })
    }
}

impl Jwt {
    /// The claims of `token` when it admits the request: from the tokens verified lately
    /// when it is one of them, else by verifying it (and then keeping it).
    async fn verify(&self, token: &str) -> Result<Arc<Claims>, AuthError> {
        let now = jiff::Timestamp::now().as_second();
        let key = VerifiedTokens::key(token);
        if let Some(claims) = key.as_ref().and_then(|key| self.verified.get(key, now)) {
            return Ok(claims);
        }
        let unverified = jwt::parse(token, &self.algorithms)?;
        let keys = match &self.keys {
            Keys::Inline(keys) => Arc::clone(keys),
            Keys::Remote(remote) => remote.keys(unverified.kid.as_deref(), unverified.alg).await,
        };
        let rules = ClaimRules {
            issuer: &self.issuer,
            audiences: &self.audiences,
            now,
        };
        let claims = unverified.verify(&keys, &rules)?;
        let satisfied = self
            .required
            .iter()
            .all(|(claim, accepted)| claims.has_one_of(claim, accepted));
        if !satisfied {
            return Err(AuthError::Forbidden);
        }
        let claims = Arc::new(claims);
        if let Some(key) = key {
            self.verified.insert(key, Arc::clone(&claims), now);
        }
        Ok(claims)
    }

    fn forward(&self, claims: &Claims, headers: &mut HeaderMap) {
        for (claim, name) in &self.forward {
            if let Some(value) = claims
                .header_text(claim)
                .and_then(|text| HeaderValue::try_from(text).ok())
            {
                headers.insert(name.clone(), value);
            }
        }
    }
}

/// The credential in `name`: after `Bearer ` when `bearer`, else the whole value.
fn credential<'a>(headers: &'a HeaderMap, name: &HeaderName, bearer: bool) -> Option<&'a [u8]> {
    let value = headers.get(name)?.as_bytes();
    if !bearer {
        return Some(value).filter(|value| !value.is_empty());
    }
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
        .filter(|token| !token.is_empty())
}
