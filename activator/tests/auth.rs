//! `spec.auth` and request hygiene end to end, in process: API keys and JWTs (keys served
//! by a JWKS server on 127.0.0.1:0) through the real activator, refused requests that
//! never wake a Function at zero, forged claim and forwarding headers replaced, and
//! Host rules (duplicates refused, absolute-form targets routed by their authority).

#[allow(dead_code)]
mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{FunctionFixture, Harness, Options, bounded, read_head};
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use zeroscale_activator::auth::{digest, to_hex};
use zeroscale_api::Function;
use zeroscale_api::auth::{ApiKeysAuth, AuthSpec, JwtAuth, SecretRef};
use zeroscale_api::gateway::{ClientKey, PerClientRateLimit, RateLimit};
use zeroscale_api::routing::FunctionKey;

const ISSUER: &str = "https://issuer.test";

fn key(name: &str) -> FunctionKey {
    FunctionKey::new(common::NAMESPACE, name)
}

fn with_api_keys(mut function: Function) -> Function {
    function.spec.auth = Some(AuthSpec {
        api_keys: Some(ApiKeysAuth {
            secret_ref: SecretRef {
                name: "echo-keys".into(),
            },
            header: None,
        }),
        jwt: None,
    });
    function
}

fn with_jwt(mut function: Function, jwks_url: String) -> Function {
    function.spec.auth = Some(AuthSpec {
        api_keys: None,
        jwt: Some(JwtAuth {
            issuer: ISSUER.into(),
            audiences: vec!["echo".into()],
            algorithms: vec![],
            jwks_url: Some(jwks_url),
            jwks: None,
            required_claims: Default::default(),
            forward_claims: [("sub".to_owned(), "x-user".to_owned())].into(),
        }),
    });
    function
}

/// An Ed25519 signing key with its JWK id.
struct Signer {
    kid: &'static str,
    key: Ed25519KeyPair,
}

impl Signer {
    fn new(kid: &'static str) -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("key");
        Self {
            kid,
            key: Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key"),
        }
    }

    fn jwk(&self) -> Value {
        json!({"kty": "OKP", "crv": "Ed25519", "kid": self.kid,
               "x": URL_SAFE_NO_PAD.encode(self.key.public_key().as_ref())})
    }

    fn token(&self, sub: &str) -> String {
        let b64 = |value: Value| URL_SAFE_NO_PAD.encode(value.to_string());
        let exp = jiff::Timestamp::now().as_second() + 300;
        let signed = format!(
            "{}.{}",
            b64(json!({"alg": "EdDSA", "kid": self.kid})),
            b64(json!({"iss": ISSUER, "aud": "echo", "sub": sub, "exp": exp}))
        );
        let signature = URL_SAFE_NO_PAD.encode(self.key.sign(signed.as_bytes()));
        format!("{signed}.{signature}")
    }
}

/// A JWKS server on 127.0.0.1:0 serving whatever document it is given, counting fetches.
struct JwksServer {
    url: String,
    document: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(keys: &[&Signer]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("address");
        let server = Self {
            url: format!("http://{addr}/jwks.json"),
            document: Arc::new(Mutex::new(String::new())),
            fetches: Arc::new(AtomicUsize::new(0)),
        };
        server.publish(keys);
        let (document, fetches) = (Arc::clone(&server.document), Arc::clone(&server.fetches));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (document, fetches) = (Arc::clone(&document), Arc::clone(&fetches));
                let service = hyper::service::service_fn(move |_: Request<Incoming>| {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    let body = document.lock().expect("document").clone();
                    async move {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header(header::CACHE_CONTROL, "max-age=300")
                                .body(Full::new(Bytes::from(body)))
                                .expect("response"),
                        )
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        server
    }

    fn publish(&self, keys: &[&Signer]) {
        let keys: Vec<Value> = keys.iter().map(|signer| signer.jwk()).collect();
        *self.document.lock().expect("document") = json!({ "keys": keys }).to_string();
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn api_keys_are_accepted_and_refused_requests_never_wake_the_function() {
    bounded(async {
        let mut h = Harness::start().await;
        h.apply(&with_api_keys(Function::test("echo")));
        h.functions
            .auth()
            .set_api_keys(&key("echo"), vec![digest(b"s3cret")]);

        let missing = h.get("echo.team", "/").await;
        assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            missing.header("www-authenticate"),
            "Bearer realm=\"zeroscale\""
        );
        let wrong = h
            .send(
                h.request("echo.team", "/")
                    .header(header::AUTHORIZATION, "Bearer guess")
                    .body(Full::default())
                    .expect("request"),
            )
            .await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
        assert!(
            wrong
                .header("www-authenticate")
                .contains("error=\"invalid_token\"")
        );
        assert!(
            h.pending_wakes().is_empty(),
            "a refused request woke the Function"
        );
        assert_eq!(
            h.stats("echo").requests_total,
            0,
            "refused requests are not load"
        );

        let mut pod = h.warm(with_api_keys(Function::test("echo"))).await;
        let accepted = h
            .send(
                h.request("echo.team", "/")
                    .header(header::AUTHORIZATION, "Bearer s3cret")
                    .body(Full::default())
                    .expect("request"),
            )
            .await;
        assert_eq!(accepted.status, StatusCode::OK);
        assert_eq!(pod.arrival().await.path, "/");
        assert_eq!(to_hex(&digest(b"s3cret")).len(), 64);
    })
    .await;
}

#[tokio::test]
async fn jwts_are_checked_against_the_jwks_server_and_a_rotated_key_is_picked_up() {
    bounded(async {
        let first = Signer::new("first");
        let jwks = JwksServer::start(&[&first]).await;
        let h = Harness::start_with(Options {
            jwks_min_refresh: Duration::ZERO,
            ..Options::default()
        })
        .await;
        let mut pod = h
            .warm(with_jwt(Function::test("echo"), jwks.url.clone()))
            .await;
        let call = |token: String| {
            h.send(
                h.request("echo.team", "/")
                    .header(header::AUTHORIZATION, format!("Bearer {token}"))
                    .header("x-user", "forged")
                    .body(Full::default())
                    .expect("request"),
            )
        };

        assert_eq!(call(first.token("alice")).await.status, StatusCode::OK);
        assert_eq!(pod.arrival().await.headers["x-user"], "alice");
        assert_eq!(call(first.token("bob")).await.status, StatusCode::OK);
        assert_eq!(pod.arrival().await.headers["x-user"], "bob");
        assert_eq!(jwks.fetches(), 1, "the keys are cached");

        let second = Signer::new("second");
        let early = call(second.token("carol")).await;
        assert_eq!(early.status, StatusCode::UNAUTHORIZED);
        assert!(early.header("www-authenticate").contains("invalid_token"));

        jwks.publish(&[&first, &second]);
        assert_eq!(call(second.token("carol")).await.status, StatusCode::OK);
        let seen = pod.arrival().await;
        assert_eq!(seen.headers["x-user"], "carol");
        assert_eq!(seen.headers.get_all("x-user").iter().count(), 1);

        let forged_only = h
            .send(
                h.request("echo.team", "/")
                    .header("x-user", "forged")
                    .body(Full::default())
                    .expect("request"),
            )
            .await;
        assert_eq!(forged_only.status, StatusCode::UNAUTHORIZED);
    })
    .await;
}

#[tokio::test]
async fn a_callers_forwarding_headers_are_replaced_by_the_connections() {
    bounded(async {
        let h = Harness::start().await;
        let mut pod = h.warm(Function::test("echo")).await;
        let reply = h
            .send(
                h.request("echo.team", "/")
                    .header("x-forwarded-for", "203.0.113.7")
                    .header("x-forwarded-host", "evil.com")
                    .header("x-forwarded-proto", "https")
                    .header(header::FORWARDED, "for=203.0.113.7;host=evil.com")
                    .body(Full::default())
                    .expect("request"),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        let seen = pod.arrival().await;
        assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
        assert_eq!(seen.headers["x-forwarded-host"], "echo.team");
        assert_eq!(seen.headers["x-forwarded-proto"], "http");
        assert!(!seen.headers.contains_key(header::FORWARDED));
    })
    .await;
}

#[tokio::test]
async fn two_hosts_are_refused_and_an_absolute_target_is_routed_by_its_authority() {
    bounded(async {
        let h = Harness::start().await;
        let mut pod = h.warm(Function::test("echo")).await;

        let mut stream = TcpStream::connect(h.cluster).await.expect("connect");
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: echo.team\r\nHost: other.team\r\nConnection: close\r\n\r\n")
            .await
            .expect("request");
        let head = read_head(&mut stream).await;
        assert!(head.starts_with("http/1.1 400"), "{head}");
        assert!(head.contains("x-zeroscale-error: duplicate_host"), "{head}");

        let mut stream = TcpStream::connect(h.cluster).await.expect("connect");
        stream
            .write_all(b"GET http://echo.team/abs HTTP/1.1\r\nHost: other.team\r\nConnection: close\r\n\r\n")
            .await
            .expect("request");
        let head = read_head(&mut stream).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        let seen = pod.arrival().await;
        assert_eq!(seen.path, "/abs");
        assert_eq!(seen.headers[header::HOST], "echo.team");
    })
    .await;
}

#[tokio::test]
async fn a_per_caller_rate_limit_by_subject_counts_each_verified_subject_on_its_own() {
    bounded(async {
        let signer = Signer::new("only");
        let jwks = JwksServer::start(&[&signer]).await;
        let h = Harness::start().await;
        let mut function = with_jwt(Function::test("echo"), jwks.url.clone());
        function.spec.requests.rate_limit = Some(RateLimit {
            requests_per_second: None,
            burst: None,
            per_client: Some(PerClientRateLimit {
                by: ClientKey::Subject,
                header: None,
                requests_per_second: 0.001,
                burst: Some(1),
            }),
        });
        let _pod = h.warm(function).await;
        let call = |token: String| {
            h.send(
                h.request("echo.team", "/")
                    .header(header::AUTHORIZATION, format!("Bearer {token}"))
                    .body(Full::default())
                    .expect("request"),
            )
        };

        // One request per subject: a second token of the same subject is over its
        // limit, another subject from the same address is not.
        assert_eq!(call(signer.token("alice")).await.status, StatusCode::OK);
        let again = call(signer.token("alice")).await;
        assert_eq!(again.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(!again.header("retry-after").is_empty());
        assert_eq!(call(signer.token("bob")).await.status, StatusCode::OK);
    })
    .await;
}
