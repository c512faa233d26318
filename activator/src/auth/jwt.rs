//! JSON Web Token verification (RFC 7519, JWS compact form), by hand on ring: split the
//! token, check the header's `alg` against the allow-list (never `none` nor HMAC), find
//! the key by `kid`, verify the signature, then the registered claims (`exp`, `nbf` with
//! a small leeway, `iss`, `aud`) and the Function's required claims. No I/O: the keys
//! are given.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Map, Value};
use zeroscale_api::auth::JwtAlgorithm;

use super::jwks::KeySet;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub(crate) const LEEWAY_SECONDS: i64 = 60;

/// Longest token accepted, in bytes: far above any real one, and a bound on the work a
/// caller can ask for.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a token was not accepted. Display is what the client reads in
/// `error_description`, so it never echoes the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's algorithm is not accepted")]
    Algorithm,
    #[error("the token's key is unknown")]
    UnknownKey,
    #[error("the token's signature is invalid")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's issuer is not accepted")]
    Issuer,
    #[error("the token's audience is not accepted")]
    Audience,
}

/// A token taken apart, its signature not yet checked.
pub(crate) struct Unverified<'a> {
    pub alg: JwtAlgorithm,
    pub kid: Option<String>,
    signed: &'a [u8],
    signature: Vec<u8>,
    payload: &'a str,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

/// Splits `token` and reads its header; `allowed` is the Function's allow-list.
pub(crate) fn parse<'a>(
    token: &'a str,
    allowed: &[JwtAlgorithm],
) -> Result<Unverified<'a>, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let header: Header =
        serde_json::from_slice(&decode(header)?).map_err(|_| TokenError::Malformed)?;
    // An extension the verifier must understand: none is understood here.
    if header.crit.is_some() {
        return Err(TokenError::Malformed);
    }
    let alg = allowed
        .iter()
        .copied()
        .find(|alg| alg.name() == header.alg)
        .ok_or(TokenError::Algorithm)?;
    let signed_len = token.len() - signature.len() - 1;
    Ok(Unverified {
        alg,
        kid: header.kid,
        signed: &token.as_bytes()[..signed_len],
        signature: decode(signature)?,
        payload,
    })
}

impl Unverified<'_> {
    /// Verifies the signature with the key `keys` holds for the token's `kid` (or, with
    /// no `kid`, any key of its algorithm), then the claims; returns the claims.
    pub(crate) fn verify(
        self,
        keys: &KeySet,
        rules: &ClaimRules<'_>,
    ) -> Result<Claims, TokenError> {
        let mut candidates = keys.candidates(self.kid.as_deref(), self.alg).peekable();
        if candidates.peek().is_none() {
            return Err(TokenError::UnknownKey);
        }
        if !candidates.any(|key| key.verify(self.signed, &self.signature)) {
            return Err(TokenError::Signature);
        }
        let claims: Map<String, Value> =
            serde_json::from_slice(&decode(self.payload)?).map_err(|_| TokenError::Malformed)?;
        let claims = Claims(claims);
        rules.check(&claims)?;
        Ok(claims)
    }
}

fn decode(part: &str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed)
}

/// What every token of a Function must say, and the time to check it at.
pub(crate) struct ClaimRules<'a> {
    pub issuer: &'a str,
    /// Any audience when empty.
    pub audiences: &'a [String],
    /// Seconds since the Unix epoch.
    pub now: i64,
}

impl ClaimRules<'_> {
    fn check(&self, claims: &Claims) -> Result<(), TokenError> {
        let number = |name| match claims.0.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_f64()
                .map(|n| Some(n as i64))
                .ok_or(TokenError::Malformed),
            Some(_) => Err(TokenError::Malformed),
        };
        if let Some(exp) = number("exp")?
            && self.now > exp.saturating_add(LEEWAY_SECONDS)
        {
            return Err(TokenError::Expired);
        }
        if let Some(nbf) = number("nbf")?
            && self.now < nbf.saturating_sub(LEEWAY_SECONDS)
        {
            return Err(TokenError::NotYetValid);
        }
        if claims.0.get("iss").and_then(Value::as_str) != Some(self.issuer) {
            return Err(TokenError::Issuer);
        }
        if !self.audiences.is_empty()
            && !claims
                .strings("aud")
                .any(|aud| self.audiences.iter().any(|want| want == aud))
        {
            return Err(TokenError::Audience);
        }
        Ok(())
    }
}

/// A verified token's claims.
#[derive(Debug)]
pub(crate) struct Claims(pub Map<String, Value>);

impl Claims {
    /// The claim's string values: itself when a string, its string elements when a list.
    pub(crate) fn strings<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> {
        let values: &[Value] = match self.0.get(name) {
            Some(Value::Array(values)) => values,
            Some(value) => std::slice::from_ref(value),
            None => &[],
        };
        values.iter().filter_map(Value::as_str)
    }

    /// Whether the claim has one of `accepted` (numbers and booleans as their JSON text).
    pub(crate) fn has_one_of(&self, name: &str, accepted: &[String]) -> bool {
        let values: &[Value] = match self.0.get(name) {
            Some(Value::Array(values)) => values,
            Some(value) => std::slice::from_ref(value),
            None => &[],
        };
        values.iter().any(|value| {
            let text = match value {
                Value::String(text) => text.clone(),
                Value::Number(_) | Value::Bool(_) => value.to_string(),
                _ => return false,
            };
            accepted.contains(&text)
        })
    }

    /// The claim as a header value's text: a string as it is, a list of strings joined
    /// by commas, a number or boolean as JSON; None for anything else.
    pub(crate) fn header_text(&self, name: &str) -> Option<String> {
        match self.0.get(name)? {
            Value::String(text) => Some(text.clone()),
            value @ (Value::Number(_) | Value::Bool(_)) => Some(value.to_string()),
            Value::Array(values) => {
                let texts: Option<Vec<&str>> = values.iter().map(Value::as_str).collect();
                texts.map(|texts| texts.join(","))
            }
            _ => None,
        }
    }
}
