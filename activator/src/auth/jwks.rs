//! An issuer's signing keys: a JWKS document (RFC 7517) parsed into keys ring can verify
//! with, and [`RemoteJwks`], the document at a URL fetched and cached. The cache follows
//! `Cache-Control: max-age` within bounds, refreshes early when a token names a key it
//! does not know (at most once per minimum interval, so unknown `kid`s cannot make it
//! hammer the issuer), and keeps its last good keys when a fetch fails. Documents and key
//! counts are bounded; a fetch has a timeout.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::Deserialize;
use tokio::time::Instant;
use zeroscale_admin::process::ErrorChain;
use zeroscale_api::auth::JwtAlgorithm;

/// Most keys kept from one document; the rest are ignored.
const MAX_KEYS: usize = 32;
/// Largest JWKS document read.
const MAX_DOCUMENT_BYTES: usize = 64 * 1024;
/// Longest a fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long keys are kept when the issuer sends no `max-age`.
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(600);
/// Bounds on the issuer's `max-age`.
const MAX_AGE_RANGE: (Duration, Duration) =
    (Duration::from_secs(30), Duration::from_secs(24 * 3600));

/// Why a JWKS document could not be had.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JwksError {
    #[error("the JWKS document is not valid JSON with a keys list")]
    Parse(#[source] serde_json::Error),
    #[error("invalid JWKS URL")]
    Url(#[source] http::uri::InvalidUri),
    #[error("no HTTPS client (loading the system's root certificates failed)")]
    NoClient,
    #[error("fetching the JWKS document failed")]
    Fetch(#[source] hyper_util::client::legacy::Error),
    #[error("reading the JWKS document failed")]
    Read(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the JWKS server answered {0}")]
    Status(StatusCode),
    #[error("fetching the JWKS document took longer than {0:?}")]
    Timeout(Duration),
}

/// One public key.
#[derive(Debug)]
pub(crate) struct Key {
    kid: Option<String>,
    alg: JwtAlgorithm,
    material: Material,
}

#[derive(Debug)]
enum Material {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// An uncompressed P-256 point, `04 || x || y`.
    P256(Vec<u8>),
    Ed25519(Vec<u8>),
}

impl Key {
    /// Whether `signature` is this key's over `message`.
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match &self.material {
            Material::Rsa { n, e } => RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, signature)
                .is_ok(),
            Material::P256(point) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, signature)
                    .is_ok()
            }
            Material::Ed25519(x) => UnparsedPublicKey::new(&signature::ED25519, x)
                .verify(message, signature)
                .is_ok(),
        }
    }
}

/// The keys of one JWKS document that can verify tokens of the supported algorithms.
#[derive(Debug, Default)]
pub(crate) struct KeySet {
    keys: Vec<Key>,
}

#[derive(Deserialize)]
struct Document {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

impl KeySet {
    /// Parses a JWKS document, skipping keys it cannot use (other types, curves or
    /// algorithms, encryption keys, malformed ones) and keeping at most [`MAX_KEYS`].
    pub(crate) fn parse(document: &[u8]) -> Result<Self, JwksError> {
        let document: Document = serde_json::from_slice(document).map_err(JwksError::Parse)?;
        let keys = document
            .keys
            .into_iter()
            .filter_map(|jwk| serde_json::from_value::<Jwk>(jwk).ok())
            .filter_map(Jwk::into_key)
            .take(MAX_KEYS)
            .collect();
        Ok(Self { keys })
    }

    /// The keys that may have signed a token with `kid` and `alg`: the key of that id,
    /// or every key of the algorithm when the token names none.
    pub(crate) fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: JwtAlgorithm,
    ) -> impl Iterator<Item = &'a Key> {
        self.keys
            .iter()
            .filter(move |key| key.alg == alg && (kid.is_none() || key.kid.as_deref() == kid))
    }

    /// Whether a token with `kid` and `alg` would find a key here.
    pub(crate) fn knows(&self, kid: Option<&str>, alg: JwtAlgorithm) -> bool {
        self.candidates(kid, alg).next().is_some()
    }
}

impl Jwk {
    fn into_key(self) -> Option<Key> {
        if self.use_.as_deref().is_some_and(|use_| use_ != "sig") {
            return None;
        }
        let bytes = |part: &Option<String>| URL_SAFE_NO_PAD.decode(part.as_deref()?).ok();
        let (alg, material) = match (self.kty.as_str(), self.crv.as_deref()) {
            ("RSA", _) => (
                JwtAlgorithm::RS256,
                Material::Rsa {
                    n: bytes(&self.n)?,
                    e: bytes(&self.e)?,
                },
            ),
            ("EC", Some("P-256")) => {
                let (x, y) = (bytes(&self.x)?, bytes(&self.y)?);
                if x.len() != 32 || y.len() != 32 {
                    return None;
                }
                let mut point = Vec::with_capacity(65);
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                (JwtAlgorithm::ES256, Material::P256(point))
            }
            ("OKP", Some("Ed25519")) => (JwtAlgorithm::EdDSA, Material::Ed25519(bytes(&self.x)?)),
            _ => return None,
        };
        if self.alg.as_deref().is_some_and(|named| named != alg.name()) {
            return None;
        }
        Some(Key {
            kid: self.kid,
            alg,
            material,
        })
    }
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// The HTTP(S) client every JWKS fetch of the process shares, built on first use:
/// loading the system's root certificates costs milliseconds that Functions without JWKS
/// URLs should not pay.
fn client() -> Option<&'static HttpsClient> {
    static CLIENT: OnceLock<Option<HttpsClient>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let connector = match hyper_rustls::HttpsConnectorBuilder::new().with_native_roots() {
                Ok(builder) => builder.https_or_http().enable_http1().build(),
                Err(error) => {
                    tracing::warn!(error = %ErrorChain(&error), "no root certificates for JWKS fetches");
                    return None;
                }
            };
            Some(Client::builder(TokioExecutor::new()).build(connector))
        })
        .as_ref()
}

/// The keys at a JWKS URL, fetched on first need and cached.
#[derive(Debug)]
pub(crate) struct RemoteJwks {
    url: String,
    min_refresh: Duration,
    cached: ArcSwap<Cached>,
    /// Held while fetching, so that concurrent requests wait for one fetch.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct Cached {
    keys: Arc<KeySet>,
    /// When the last fetch ended, successful or not; None before the first.
    fetched: Option<Instant>,
    /// Until when the keys may be used without fetching again.
    fresh_until: Option<Instant>,
    /// Whether the last fetch failed (to log a failure when it starts and ends).
    failing: bool,
}

impl RemoteJwks {
    /// Keys at `url`, fetched again for an unknown key at most once per `min_refresh`.
    pub(crate) fn new(url: String, min_refresh: Duration) -> Self {
        Self {
            url,
            min_refresh,
            cached: ArcSwap::from_pointee(Cached::default()),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// The keys to verify a token with `kid` and `alg`: the cached ones when they are
    /// fresh and know the key, else fetched again when allowed.
    pub(crate) async fn keys(&self, kid: Option<&str>, alg: JwtAlgorithm) -> Arc<KeySet> {
        let cached = self.cached.load();
        if !self.should_fetch(&cached, kid, alg, Instant::now()) {
            return Arc::clone(&cached.keys);
        }
        drop(cached);
        let _fetching = self.fetching.lock().await;
        // Another request may have fetched while this one waited.
        let cached = self.cached.load_full();
        if !self.should_fetch(&cached, kid, alg, Instant::now()) {
            return Arc::clone(&cached.keys);
        }
        let fetched = tokio::time::timeout(FETCH_TIMEOUT, self.fetch()).await;
        let now = Instant::now();
        let next = match fetched.unwrap_or(Err(JwksError::Timeout(FETCH_TIMEOUT))) {
            Ok((keys, max_age)) => {
                if cached.failing {
                    tracing::info!(url = %self.url, "fetching JWKS works again");
                }
                Cached {
                    keys: Arc::new(keys),
                    fetched: Some(now),
                    fresh_until: Some(now + max_age),
                    failing: false,
                }
            }
            Err(error) => {
                if !cached.failing {
                    tracing::warn!(url = %self.url, error = %ErrorChain(&error), "fetching JWKS failed; keeping the last keys");
                }
                Cached {
                    keys: Arc::clone(&cached.keys),
                    fetched: Some(now),
                    fresh_until: cached.fresh_until,
                    failing: true,
                }
            }
        };
        let keys = Arc::clone(&next.keys);
        self.cached.store(Arc::new(next));
        keys
    }

    /// Whether to fetch: never within `min_refresh` of the last fetch; else when the keys
    /// are stale or do not know the token's key.
    fn should_fetch(
        &self,
        cached: &Cached,
        kid: Option<&str>,
        alg: JwtAlgorithm,
        now: Instant,
    ) -> bool {
        let Some(fetched) = cached.fetched else {
            return true;
        };
        if now.saturating_duration_since(fetched) < self.min_refresh {
            return false;
        }
        let stale = cached.fresh_until.is_none_or(|until| now >= until);
        stale || !cached.keys.knows(kid, alg)
    }

    async fn fetch(&self) -> Result<(KeySet, Duration), JwksError> {
        let client = client().ok_or(JwksError::NoClient)?;
        let uri: Uri = self.url.parse().map_err(JwksError::Url)?;
        let mut request = Request::new(Empty::new());
        *request.uri_mut() = uri;
        request.headers_mut().insert(
            header::ACCEPT,
            http::HeaderValue::from_static("application/json"),
        );
        let response = client.request(request).await.map_err(JwksError::Fetch)?;
        if response.status() != StatusCode::OK {
            return Err(JwksError::Status(response.status()));
        }
        let max_age = max_age(response.headers());
        let body = Limited::new(response.into_body(), MAX_DOCUMENT_BYTES)
            .collect()
            .await
            .map_err(JwksError::Read)?
            .to_bytes();
        Ok((KeySet::parse(&body)?, max_age))
    }
}

/// How long a response may be cached: its `Cache-Control: max-age` within
/// [`MAX_AGE_RANGE`], or [`DEFAULT_MAX_AGE`].
fn max_age(headers: &http::HeaderMap) -> Duration {
    let (shortest, longest) = MAX_AGE_RANGE;
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .find_map(|directive| {
            let (name, seconds) = directive.trim().split_once('=')?;
            name.eq_ignore_ascii_case("max-age")
                .then(|| seconds.trim().parse::<u64>().ok())
                .flatten()
        })
        .map_or(DEFAULT_MAX_AGE, |seconds| {
            Duration::from_secs(seconds).clamp(shortest, longest)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read_and_bounded() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(max_age(&headers), DEFAULT_MAX_AGE);
        headers.insert(
            header::CACHE_CONTROL,
            "public, max-age=120".parse().expect("value"),
        );
        assert_eq!(max_age(&headers), Duration::from_secs(120));
        headers.insert(header::CACHE_CONTROL, "max-age=1".parse().expect("value"));
        assert_eq!(max_age(&headers), MAX_AGE_RANGE.0);
        headers.insert(
            header::CACHE_CONTROL,
            "max-age=99999999".parse().expect("value"),
        );
        assert_eq!(max_age(&headers), MAX_AGE_RANGE.1);
    }

    #[test]
    fn unusable_keys_are_skipped_and_the_count_is_bounded() {
        let mut keys = vec![
            serde_json::json!({"kty": "oct", "k": "c2VjcmV0"}),
            serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": "AAAA", "use": "enc"}),
            serde_json::json!({"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"}),
        ];
        for n in 0..100 {
            keys.push(serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": n.to_string(), "x": "AAAA"}));
        }
        let document = serde_json::to_vec(&serde_json::json!({ "keys": keys })).expect("json");
        let set = KeySet::parse(&document).expect("parsed");
        assert_eq!(set.keys.len(), MAX_KEYS);
        assert!(set.knows(Some("0"), JwtAlgorithm::EdDSA));
        assert!(!set.knows(Some("0"), JwtAlgorithm::ES256));
    }

    #[tokio::test(start_paused = true)]
    async fn an_unknown_key_refreshes_only_after_the_minimum_interval() {
        let jwks = RemoteJwks::new("http://127.0.0.1:1/jwks".into(), Duration::from_secs(10));
        let now = Instant::now();
        assert!(jwks.should_fetch(&Cached::default(), None, JwtAlgorithm::EdDSA, now));
        let cached = Cached {
            keys: Arc::new(KeySet::default()),
            fetched: Some(now),
            fresh_until: Some(now + Duration::from_secs(600)),
            failing: false,
        };
        let unknown = Some("new");
        assert!(!jwks.should_fetch(
            &cached,
            unknown,
            JwtAlgorithm::EdDSA,
            now + Duration::from_secs(9)
        ));
        assert!(jwks.should_fetch(
            &cached,
            unknown,
            JwtAlgorithm::EdDSA,
            now + Duration::from_secs(10)
        ));
        assert!(jwks.should_fetch(
            &cached,
            None,
            JwtAlgorithm::EdDSA,
            now + Duration::from_secs(600)
        ));
    }
}
