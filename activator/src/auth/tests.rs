//! Token and key checks with fixed keys: Ed25519 and P-256 made with ring at test time,
//! RSA from the checked-in fixture.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RSA_PKCS1_SHA256,
    RsaKeyPair,
};
use serde_json::{Value, json};
use zeroscale_api::auth::{ApiKeysAuth, AuthSpec, JwtAuth, SecretRef};

use super::*;

const RSA_PKCS8: &[u8] = include_bytes!("../../tests/fixtures/rsa-2048.pk8");
const RSA_JWK: &str = include_str!("../../tests/fixtures/rsa-2048.jwk.json");
const ISSUER: &str = "https://issuer.test";

enum Signer {
    Ed(Ed25519KeyPair),
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

impl Signer {
    fn ed25519() -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("key");
        Self::Ed(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key"))
    }

    fn p256() -> Self {
        let rng = SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
        Self::Ec(
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                .expect("key"),
        )
    }

    fn rsa() -> Self {
        Self::Rsa(RsaKeyPair::from_pkcs8(RSA_PKCS8).expect("fixture key"))
    }

    fn alg(&self) -> &'static str {
        match self {
            Self::Ed(_) => "EdDSA",
            Self::Ec(_) => "ES256",
            Self::Rsa(_) => "RS256",
        }
    }

    fn jwk(&self, kid: &str) -> Value {
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        match self {
            Self::Ed(key) => {
                json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(key.public_key().as_ref())})
            }
            Self::Ec(key) => {
                let point = key.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b64(&point[1..33]), "y": b64(&point[33..])})
            }
            Self::Rsa(_) => {
                let mut jwk: Value = serde_json::from_str(RSA_JWK).expect("fixture jwk");
                jwk["kid"] = json!(kid);
                jwk
            }
        }
    }

    fn sign_with(&self, header: &Value, claims: &Value) -> String {
        let b64 = |value: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).expect("json"));
        let signed = format!("{}.{}", b64(header), b64(claims));
        let rng = SystemRandom::new();
        let signature = match self {
            Self::Ed(key) => key.sign(signed.as_bytes()).as_ref().to_vec(),
            Self::Ec(key) => key
                .sign(&rng, signed.as_bytes())
                .expect("sign")
                .as_ref()
                .to_vec(),
            Self::Rsa(key) => {
                let mut signature = vec![0; key.public().modulus_len()];
                key.sign(&RSA_PKCS1_SHA256, &rng, signed.as_bytes(), &mut signature)
                    .expect("sign");
                signature
            }
        };
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    fn sign(&self, kid: &str, claims: &Value) -> String {
        self.sign_with(
            &json!({"alg": self.alg(), "kid": kid, "typ": "JWT"}),
            claims,
        )
    }
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn claims() -> Value {
    json!({"iss": ISSUER, "aud": ["api", "other"], "sub": "alice", "exp": now() + 300, "groups": ["dev", "ops"]})
}

fn jwt_spec(jwks: &Value) -> JwtAuth {
    JwtAuth {
        issuer: ISSUER.into(),
        audiences: vec!["api".into()],
        algorithms: vec![],
        jwks_url: None,
        jwks: Some(json!({ "keys": jwks }).to_string()),
        required_claims: [("groups".to_owned(), vec!["ops".to_owned()])].into(),
        forward_claims: [("sub".to_owned(), "x-user".to_owned())].into(),
    }
}

fn policy(spec: AuthSpec) -> (Gate, Arc<Policy>) {
    let gate = Gate::default();
    let policy = gate
        .policy(&FunctionKey::new("team", "echo"), Some(&spec))
        .expect("a policy");
    (gate, policy)
}

fn jwt_policy(signers: &[(&Signer, &str)]) -> Arc<Policy> {
    let keys: Vec<Value> = signers
        .iter()
        .map(|(signer, kid)| signer.jwk(kid))
        .collect();
    policy(AuthSpec {
        api_keys: None,
        jwt: Some(jwt_spec(&json!(keys))),
    })
    .1
}

fn bearer(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("value"),
    );
    headers
}

#[tokio::test]
async fn tokens_of_each_algorithm_are_accepted_and_forward_their_claims() {
    for signer in [Signer::ed25519(), Signer::p256(), Signer::rsa()] {
        let policy = jwt_policy(&[(&signer, "k1")]);
        let mut headers = bearer(&signer.sign("k1", &claims()));
        headers.insert("x-user", "forged".parse().expect("value"));
        assert_eq!(
            policy.check(&mut headers).await,
            Ok(Verified {
                subject: Some("alice".into())
            }),
            "{}",
            signer.alg()
        );
        assert_eq!(headers["x-user"], "alice");
    }
}

#[tokio::test]
async fn a_token_seen_again_is_admitted_from_the_cache_with_the_same_claims() {
    let signer = Signer::p256();
    let policy = jwt_policy(&[(&signer, "k1")]);
    let token = signer.sign("k1", &claims());
    for attempt in ["verified", "cached"] {
        let mut headers = bearer(&token);
        headers.insert("x-user", "forged".parse().expect("value"));
        assert_eq!(
            policy.check(&mut headers).await,
            Ok(Verified {
                subject: Some("alice".into())
            }),
            "{attempt}"
        );
        assert_eq!(headers["x-user"], "alice", "{attempt}");
    }
    // Only the very token is in the cache: one changed signature byte is checked.
    let (signed, signature) = token.rsplit_once('.').expect("three parts");
    let mut forged = signature.as_bytes().to_vec();
    forged[0] = if forged[0] == b'A' { b'B' } else { b'A' };
    let forged = format!("{signed}.{}", String::from_utf8(forged).expect("ascii"));
    assert!(policy.check(&mut bearer(&forged)).await.is_err());
}

#[tokio::test]
async fn a_token_fails_on_each_registered_claim() {
    let signer = Signer::ed25519();
    let policy = jwt_policy(&[(&signer, "k1")]);
    let cases = [
        ("exp", json!(now() - 120), TokenError::Expired),
        ("nbf", json!(now() + 120), TokenError::NotYetValid),
        ("iss", json!("https://elsewhere"), TokenError::Issuer),
        ("aud", json!("other"), TokenError::Audience),
    ];
    for (claim, value, expected) in cases {
        let mut claims = claims();
        claims[claim] = value;
        let mut headers = bearer(&signer.sign("k1", &claims));
        assert_eq!(
            policy.check(&mut headers).await,
            Err(AuthError::InvalidToken(expected)),
            "{claim}"
        );
    }
    // Within the leeway.
    let mut claims = claims();
    claims["exp"] = json!(now() - 10);
    assert_eq!(
        policy.check(&mut bearer(&signer.sign("k1", &claims))).await,
        Ok(Verified {
            subject: Some("alice".into())
        })
    );
}

#[tokio::test]
async fn none_hmac_and_unlisted_algorithms_are_refused() {
    let signer = Signer::ed25519();
    let policy = jwt_policy(&[(&signer, "k1")]);
    for alg in ["none", "HS256", "RS512"] {
        let token = signer.sign_with(&json!({"alg": alg, "kid": "k1"}), &claims());
        assert_eq!(
            policy.check(&mut bearer(&token)).await,
            Err(AuthError::InvalidToken(TokenError::Algorithm)),
            "{alg}"
        );
    }
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(claims().to_string())
    );
    assert!(policy.check(&mut bearer(&unsigned)).await.is_err());
}

#[tokio::test]
async fn a_forged_signature_or_unknown_key_is_refused() {
    let signer = Signer::ed25519();
    let other = Signer::ed25519();
    let policy = jwt_policy(&[(&signer, "k1")]);
    assert_eq!(
        policy
            .check(&mut bearer(&other.sign("k1", &claims())))
            .await,
        Err(AuthError::InvalidToken(TokenError::Signature))
    );
    assert_eq!(
        policy
            .check(&mut bearer(&signer.sign("k2", &claims())))
            .await,
        Err(AuthError::InvalidToken(TokenError::UnknownKey))
    );
    // A payload changed after signing.
    let token = signer.sign("k1", &claims());
    let mut parts: Vec<&str> = token.split('.').collect();
    let mut changed = claims();
    changed["sub"] = json!("mallory");
    let payload = URL_SAFE_NO_PAD.encode(changed.to_string());
    parts[1] = &payload;
    assert_eq!(
        policy.check(&mut bearer(&parts.join("."))).await,
        Err(AuthError::InvalidToken(TokenError::Signature))
    );
    assert_eq!(
        policy.check(&mut bearer("not.a-token")).await,
        Err(AuthError::InvalidToken(TokenError::Malformed))
    );
}

#[tokio::test]
async fn a_missing_required_claim_is_forbidden_and_forged_claim_headers_still_go() {
    let signer = Signer::p256();
    let policy = jwt_policy(&[(&signer, "k1")]);
    let mut claims = claims();
    claims["groups"] = json!(["dev"]);
    let mut headers = bearer(&signer.sign("k1", &claims));
    headers.insert("x-user", "forged".parse().expect("value"));
    assert_eq!(policy.check(&mut headers).await, Err(AuthError::Forbidden));
    assert!(!headers.contains_key("x-user"));
    let mut headers = HeaderMap::new();
    assert_eq!(policy.check(&mut headers).await, Err(AuthError::Missing));
}

#[tokio::test]
async fn api_keys_are_read_from_bearer_or_their_own_header() {
    let key = FunctionKey::new("team", "echo");
    let spec = |header: Option<&str>| AuthSpec {
        api_keys: Some(ApiKeysAuth {
            secret_ref: SecretRef {
                name: "keys".into(),
            },
            header: header.map(str::to_owned),
        }),
        jwt: None,
    };
    let (gate, bearer_policy) = policy(spec(None));
    let header_policy = gate
        .policy(&key, Some(&spec(Some("X-Api-Key"))))
        .expect("policy");
    assert_eq!(
        bearer_policy.check(&mut bearer("s3cret")).await,
        Err(AuthError::InvalidKey),
        "no digests yet"
    );
    gate.set_api_keys(&key, vec![keys::digest(b"s3cret")]);
    assert_eq!(
        bearer_policy.check(&mut bearer("s3cret")).await,
        Ok(Verified::default())
    );
    assert_eq!(
        bearer_policy.check(&mut bearer("wrong")).await,
        Err(AuthError::InvalidKey)
    );
    assert_eq!(
        bearer_policy.check(&mut HeaderMap::new()).await,
        Err(AuthError::Missing)
    );

    let mut headers = HeaderMap::new();
    headers.insert("x-api-key", "s3cret".parse().expect("value"));
    assert_eq!(
        header_policy.check(&mut headers).await,
        Ok(Verified::default())
    );
    assert_eq!(
        header_policy.check(&mut bearer("s3cret")).await,
        Err(AuthError::Missing)
    );

    gate.remove_api_keys(&key);
    assert_eq!(
        bearer_policy.check(&mut bearer("s3cret")).await,
        Err(AuthError::InvalidKey)
    );
}

#[test]
fn challenges_follow_rfc_6750() {
    assert_eq!(AuthError::Missing.challenge(), "Bearer realm=\"zeroscale\"");
    assert_eq!(
        AuthError::InvalidToken(TokenError::Expired).challenge(),
        "Bearer realm=\"zeroscale\", error=\"invalid_token\", error_description=\"the token has expired\""
    );
    assert_eq!(
        AuthError::Forbidden.challenge(),
        "Bearer realm=\"zeroscale\", error=\"insufficient_scope\""
    );
    assert_eq!(AuthError::Forbidden.status(), StatusCode::FORBIDDEN);
}

#[test]
fn a_function_without_auth_has_no_policy() {
    let gate = Gate::default();
    let key = FunctionKey::new("team", "echo");
    assert!(gate.policy(&key, None).is_none());
    assert!(gate.policy(&key, Some(&AuthSpec::default())).is_none());
}
