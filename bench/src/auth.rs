//! The warm Function behind `spec.auth`: one copy with an API key and one with a JWT,
//! served by the same pods, so the warm path can show what each check costs. The key
//! and the token are fixed (an Ed25519 key from a fixed seed), so the `serve-activator`
//! process and the bench driving wrk agree without talking.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use zeroscale_activator::auth::{Gate, digest};
use zeroscale_api::Function;
use zeroscale_api::auth::{ApiKeysAuth, AuthSpec, JwtAuth, SecretRef};
use zeroscale_api::routing::FunctionKey;

/// The warm Function's copy that takes an API key.
pub const API_KEY_FUNCTION: &str = "hello-key";
/// The warm Function's copy that takes a JWT.
pub const JWT_FUNCTION: &str = "hello-jwt";

const API_KEY: &str = "bench-0123456789abcdef0123456789abcdef";
const ISSUER: &str = "https://bench.zeroscale.dev";
const SEED: [u8; 32] = [7; 32];

fn key_pair() -> anyhow::Result<Ed25519KeyPair> {
    Ed25519KeyPair::from_seed_unchecked(&SEED)
        .map_err(|error| anyhow::anyhow!("bench signing key: {error}"))
}

/// `function` asking for the bench's API key; its digest delivered to `gate`.
pub fn with_api_key(mut function: Function, gate: &Gate) -> Function {
    function.spec.auth = Some(AuthSpec {
        api_keys: Some(ApiKeysAuth {
            secret_ref: SecretRef {
                name: "bench-keys".into(),
            },
            header: None,
        }),
        jwt: None,
    });
    if let (Some(namespace), Some(name)) = (&function.metadata.namespace, &function.metadata.name) {
        gate.set_api_keys(
            &FunctionKey::new(namespace, name),
            vec![digest(API_KEY.as_bytes())],
        );
    }
    function
}

/// `function` asking for a JWT of the bench's key (inline JWKS), forwarding `sub`.
pub fn with_jwt(mut function: Function) -> anyhow::Result<Function> {
    let x = URL_SAFE_NO_PAD.encode(key_pair()?.public_key().as_ref());
    function.spec.auth = Some(AuthSpec {
        api_keys: None,
        jwt: Some(JwtAuth {
            issuer: ISSUER.into(),
            audiences: vec!["bench".into()],
            algorithms: vec![],
            jwks_url: None,
            jwks: Some(format!(
                r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","kid":"bench","x":"{x}"}}]}}"#
            )),
            required_claims: Default::default(),
            forward_claims: [("sub".to_owned(), "x-user".to_owned())].into(),
        }),
    });
    Ok(function)
}

/// The request header that carries the API key.
pub fn api_key_header() -> String {
    format!("Authorization: Bearer {API_KEY}")
}

/// The request header that carries a token valid for an hour.
pub fn jwt_header() -> anyhow::Result<String> {
    let exp = jiff::Timestamp::now().as_second() + 3600;
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"EdDSA","kid":"bench"}"#),
        URL_SAFE_NO_PAD.encode(format!(
            r#"{{"iss":"{ISSUER}","aud":"bench","sub":"bench-user","exp":{exp}}}"#
        ))
    );
    let signature = URL_SAFE_NO_PAD.encode(key_pair()?.sign(signed.as_bytes()));
    Ok(format!("Authorization: Bearer {signed}.{signature}"))
}
