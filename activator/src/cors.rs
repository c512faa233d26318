//! CORS (`spec.routing.cors`): the activator answers preflight requests itself, so a
//! browser's `OPTIONS` never reaches or wakes a Function at zero, and adds the CORS
//! headers to every other answer to an allowed origin. The policy is compiled once per
//! spec: header values are built then, and a request only matches its `Origin`.

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use zeroscale_api::gateway::Cors;

use crate::body::ResponseBody;
use crate::errors::ERROR_HEADER;

/// Request headers a browser may send cross-origin without asking (the Fetch standard's
/// CORS-safelisted request headers).
const SAFELISTED: [&str; 4] = [
    "accept",
    "accept-language",
    "content-language",
    "content-type",
];

/// `Vary` of a preflight answer: it depends on all three request headers.
const PREFLIGHT_VARY: HeaderValue = HeaderValue::from_static(
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
);

/// One entry of `allowOrigins`.
#[derive(Debug, PartialEq, Eq)]
enum OriginRule {
    Any,
    Exact(String),
    /// `https://*.example.com`: `https://` and `.example.com`, with at least one label
    /// between them.
    Subdomains {
        scheme: String,
        suffix: String,
    },
}

impl OriginRule {
    fn parse(text: &str) -> Self {
        if text == "*" {
            return Self::Any;
        }
        let lower = text.to_ascii_lowercase();
        match lower.split_once("://*.") {
            Some((scheme, domain)) => Self::Subdomains {
                scheme: format!("{scheme}://"),
                suffix: format!(".{domain}"),
            },
            None => Self::Exact(lower),
        }
    }

    fn matches(&self, origin: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(exact) => origin.eq_ignore_ascii_case(exact),
            Self::Subdomains { scheme, suffix } => {
                let origin = origin.to_ascii_lowercase();
                origin
                    .strip_prefix(scheme.as_str())
                    .and_then(|rest| rest.strip_suffix(suffix.as_str()))
                    .is_some_and(|label| {
                        !label.is_empty()
                            && label
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
                    })
            }
        }
    }
}

/// A Function's CORS policy, ready to apply.
#[derive(Debug)]
pub(crate) struct CorsPolicy {
    origins: Vec<OriginRule>,
    methods: Vec<Method>,
    allow_methods: HeaderValue,
    /// Lower-case; `*` allows any.
    headers: Vec<String>,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
}

fn join(names: &[String]) -> Option<HeaderValue> {
    (!names.is_empty())
        .then(|| HeaderValue::try_from(names.join(", ")).ok())
        .flatten()
}

impl CorsPolicy {
    pub(crate) fn new(spec: &Cors) -> Self {
        let methods: Vec<String> = if spec.allow_methods.is_empty() {
            vec!["GET".into(), "HEAD".into(), "POST".into()]
        } else {
            spec.allow_methods.clone()
        };
        Self {
            origins: spec
                .allow_origins
                .iter()
                .map(|o| OriginRule::parse(o))
                .collect(),
            allow_methods: join(&methods).unwrap_or(HeaderValue::from_static("GET, HEAD, POST")),
            methods: methods
                .iter()
                .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                .collect(),
            headers: spec
                .allow_headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            allow_headers: join(&spec.allow_headers),
            expose_headers: join(&spec.expose_headers),
            credentials: spec.allow_credentials,
            max_age: spec
                .max_age
                .as_deref()
                .and_then(|age| zeroscale_api::duration::parse(age).ok())
                .map(|age: Duration| HeaderValue::from(age.as_secs())),
        }
    }

    /// Whether a request is a CORS preflight: `OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`.
    pub(crate) fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
        method == Method::OPTIONS
            && headers.contains_key(header::ORIGIN)
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    fn allows_origin(&self, origin: &HeaderValue) -> bool {
        origin
            .to_str()
            .is_ok_and(|origin| self.origins.iter().any(|rule| rule.matches(origin)))
    }

    /// The `Access-Control-Allow-Origin` for an allowed origin: `*` when any origin may
    /// call without credentials, else the origin itself.
    fn allow_origin(&self, origin: &HeaderValue) -> HeaderValue {
        if !self.credentials && self.origins.contains(&OriginRule::Any) {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }

    /// The activator's answer to a preflight: 204 with the policy when the origin,
    /// method and headers are allowed, else 403 without it.
    pub(crate) fn preflight<G>(&self, request: &HeaderMap) -> Response<ResponseBody<G>> {
        let origin = request.get(header::ORIGIN);
        let method = request
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok());
        let requested: Vec<String> = request
            .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        let any_header = self.headers.iter().any(|h| h == "*");
        let headers_allowed = requested
            .iter()
            .all(|h| any_header || SAFELISTED.contains(&h.as_str()) || self.headers.contains(h));
        let allowed = origin.is_some_and(|o| self.allows_origin(o))
            && method.is_some_and(|m| self.methods.contains(&m))
            && headers_allowed;

        let mut response = if allowed {
            Response::new(ResponseBody::full(""))
        } else {
            let mut refused = Response::new(ResponseBody::full(
                "this cross-origin request is not allowed by the Function's CORS policy\n",
            ));
            refused
                .headers_mut()
                .insert(ERROR_HEADER, HeaderValue::from_static("cors_refused"));
            refused
        };
        *response.status_mut() = if allowed {
            StatusCode::NO_CONTENT
        } else {
            StatusCode::FORBIDDEN
        };
        let headers = response.headers_mut();
        headers.insert(header::VARY, PREFLIGHT_VARY);
        if let (true, Some(origin)) = (allowed, origin) {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                self.allow_origin(origin),
            );
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                self.allow_methods.clone(),
            );
            let allow_headers = if any_header && !requested.is_empty() {
                HeaderValue::try_from(requested.join(", ")).ok()
            } else {
                self.allow_headers.clone()
            };
            if let Some(allow_headers) = allow_headers {
                headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allow_headers);
            }
            if self.credentials {
                headers.insert(
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
            if let Some(max_age) = &self.max_age {
                headers.insert(header::ACCESS_CONTROL_MAX_AGE, max_age.clone());
            }
        }
        response
    }

    /// Adds the CORS headers to an answer to a request from `origin` (if allowed);
    /// `Vary: Origin` always, since the answer depends on it. Headers the pod set are
    /// replaced: the Function's policy is the activator's to enforce.
    pub(crate) fn decorate(&self, origin: Option<&HeaderValue>, response: &mut HeaderMap) {
        response.append(header::VARY, HeaderValue::from_static("Origin"));
        let Some(origin) = origin.filter(|origin| self.allows_origin(origin)) else {
            response.remove(header::ACCESS_CONTROL_ALLOW_ORIGIN);
            response.remove(header::ACCESS_CONTROL_ALLOW_CREDENTIALS);
            return;
        };
        response.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            self.allow_origin(origin),
        );
        if self.credentials {
            response.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(expose) = &self.expose_headers {
            response.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(origins: &[&str]) -> CorsPolicy {
        CorsPolicy::new(&Cors {
            allow_origins: origins.iter().map(|o| (*o).to_owned()).collect(),
            allow_methods: vec!["GET".into(), "PUT".into()],
            allow_headers: vec!["X-Token".into()],
            expose_headers: vec!["X-Request-Id".into()],
            allow_credentials: true,
            max_age: Some("10m".into()),
        })
    }

    fn preflight(origin: &str, method: &str, headers: Option<&str>) -> HeaderMap {
        let mut request = HeaderMap::new();
        request.insert(
            header::ORIGIN,
            HeaderValue::try_from(origin).expect("value"),
        );
        request.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::try_from(method).expect("value"),
        );
        if let Some(headers) = headers {
            request.insert(
                header::ACCESS_CONTROL_REQUEST_HEADERS,
                HeaderValue::try_from(headers).expect("value"),
            );
        }
        request
    }

    #[test]
    fn origins_match_exactly_or_as_subdomains_of_a_wildcard() {
        let policy = policy(&["https://app.example.com", "https://*.example.org"]);
        let allows = |origin: &'static str| policy.allows_origin(&HeaderValue::from_static(origin));
        assert!(allows("https://app.example.com"));
        assert!(allows("HTTPS://APP.EXAMPLE.COM"));
        assert!(!allows("http://app.example.com"));
        assert!(!allows("https://app.example.com:8443"));
        assert!(allows("https://a.example.org"));
        assert!(allows("https://a.b.example.org"));
        assert!(!allows("https://example.org"), "the wildcard needs a label");
        assert!(!allows("https://evilexample.org"));
        assert!(!allows("https://a.example.org.evil.com"));
        assert!(!allows("null"));
    }

    #[test]
    fn an_allowed_preflight_gets_the_policy_and_a_refused_one_does_not() {
        let policy = policy(&["https://app.example.com"]);
        let answer = policy.preflight::<()>(&preflight(
            "https://app.example.com",
            "PUT",
            Some("x-token, content-type"),
        ));
        assert_eq!(answer.status(), StatusCode::NO_CONTENT);
        let headers = answer.headers();
        assert_eq!(
            headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example.com"
        );
        assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_METHODS], "GET, PUT");
        assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_HEADERS], "X-Token");
        assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(headers[header::ACCESS_CONTROL_MAX_AGE], "600");
        assert!(
            headers[header::VARY]
                .to_str()
                .expect("vary")
                .contains("Origin")
        );

        for refused in [
            preflight("https://other.example.com", "PUT", None),
            preflight("https://app.example.com", "DELETE", None),
            preflight("https://app.example.com", "GET", Some("x-secret")),
        ] {
            let answer = policy.preflight::<()>(&refused);
            assert_eq!(answer.status(), StatusCode::FORBIDDEN);
            assert!(
                !answer
                    .headers()
                    .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            );
        }
    }

    #[test]
    fn actual_answers_get_the_origin_and_exposed_headers_and_vary() {
        let policy = policy(&["https://app.example.com"]);
        let mut response = HeaderMap::new();
        response.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        policy.decorate(
            Some(&HeaderValue::from_static("https://app.example.com")),
            &mut response,
        );
        assert_eq!(
            response[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example.com"
        );
        assert_eq!(
            response[header::ACCESS_CONTROL_EXPOSE_HEADERS],
            "X-Request-Id"
        );
        assert_eq!(response[header::VARY], "Origin");

        let mut other = HeaderMap::new();
        other.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        policy.decorate(
            Some(&HeaderValue::from_static("https://evil.example")),
            &mut other,
        );
        assert!(!other.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        assert_eq!(other[header::VARY], "Origin");
    }

    #[test]
    fn any_origin_without_credentials_is_answered_with_a_star() {
        let policy = CorsPolicy::new(&Cors {
            allow_origins: vec!["*".into()],
            ..Cors::default()
        });
        let answer = policy.preflight::<()>(&preflight("https://x.test", "POST", None));
        assert_eq!(answer.status(), StatusCode::NO_CONTENT);
        assert_eq!(answer.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    }
}
