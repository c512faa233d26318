//! Pure header rules for both directions: which headers are about one connection
//! (hop-by-hop) and go, what makes a request an upgrade that is passed on, and the
//! `X-Forwarded-*` headers a request gains. No I/O: each rule is a function of a header
//! map.

use std::io::Write as _;
use std::net::IpAddr;

use http::Version;
use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub(super) const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
pub(super) const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

const HOP_BY_HOP_COUNT: usize = 6;

/// Headers about one connection rather than the message, removed on every hop besides
/// those `Connection` lists: the ones RFC 9110 (section 7.6.1) names, and, as most
/// proxies do, `Trailer` and the proxy credentials and challenges, which are meant for a
/// proxy and not for the Function. `TE` and `Upgrade` are handled apart: `TE: trailers`
/// and the `Upgrade` of an upgrade request carry on.
const HOP_BY_HOP: [HeaderName; HOP_BY_HOP_COUNT] = [
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Which way a message goes: requests keep `TE: trailers`, responses lose every `TE`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Message {
    Request,
    Response,
}

/// Removes hop-by-hop headers. `upgrade` keeps `Upgrade` and leaves `Connection:
/// upgrade` as the only connection option.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap, message: Message, upgrade: bool) {
    // One pass over the names finds which of these the message has (most have none, or
    // only `Connection`), so only those are looked up and removed: each removal hashes
    // its name, present or not.
    let (mut connection, mut te, mut upgrade_header) = (false, false, false);
    let mut present = [false; HOP_BY_HOP_COUNT];
    for name in headers.keys() {
        if name == header::CONNECTION {
            connection = true;
        } else if name == header::TE {
            te = true;
        } else if name == header::UPGRADE {
            upgrade_header = true;
        } else if let Some(index) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            present[index] = true;
        }
    }
    let te_trailers = te
        && message == Message::Request
        && headers
            .get_all(header::TE)
            .iter()
            .any(|te| has_token(te, "trailers"));
    if connection {
        remove_connection_options(headers, upgrade);
    }
    for (name, present) in HOP_BY_HOP.iter().zip(present) {
        if present {
            headers.remove(name);
        }
    }
    if te {
        headers.remove(header::TE);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if upgrade_header {
        headers.remove(header::UPGRADE);
    }
}

/// Removes `Connection` and the headers it names.
fn remove_connection_options(headers: &mut HeaderMap, keep_upgrade: bool) {
    let mut values = headers.get_all(header::CONNECTION).iter();
    let Some(first) = values.next().cloned() else {
        return;
    };
    // Rarely more than one line; cloning a value only bumps a reference count.
    let rest: Vec<HeaderValue> = values.cloned().collect();
    headers.remove(header::CONNECTION);
    for value in std::iter::once(&first).chain(&rest) {
        for name in tokens(value) {
            if !(keep_upgrade && name.eq_ignore_ascii_case("upgrade")) {
                headers.remove(name);
            }
        }
    }
}

/// An HTTP/1.1 request with `Connection: upgrade` and an `Upgrade` to pass on. An
/// upgrade to h2c is for the activator's own connection, which does not offer it.
pub(super) fn is_upgrade_request(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|value| has_token(value, "upgrade"))
        && headers
            .get(header::UPGRADE)
            .is_some_and(|protocols| !has_token(protocols, "h2c"))
}

/// The comma-separated tokens of a header value, parameters cut off.
fn tokens(value: &HeaderValue) -> impl Iterator<Item = &str> {
    value
        .to_str()
        .unwrap_or_default()
        .split(',')
        .map(|token| token.split(';').next().unwrap_or_default().trim())
        .filter(|token| !token.is_empty())
}

fn has_token(value: &HeaderValue, token: &str) -> bool {
    tokens(value).any(|t| t.eq_ignore_ascii_case(token))
}

/// Joins the `Cookie` lines an HTTP/2 client may split a cookie list into: HTTP/1.1
/// allows one line (RFC 9113, section 8.2.3).
pub(super) fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let mut joined = Vec::new();
    for cookie in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(cookie.as_bytes());
    }
    if let Ok(joined) = HeaderValue::try_from(joined) {
        headers.insert(header::COOKIE, joined);
    }
}

/// Appends the client's IP to `X-Forwarded-For`, joining earlier lines into one.
fn append_forwarded_for(headers: &mut HeaderMap, client: IpAddr) {
    let mut value = Vec::with_capacity(64);
    // One lookup for both reading the earlier lines and replacing them.
    let entry = headers.entry(X_FORWARDED_FOR);
    if let Entry::Occupied(earlier) = &entry {
        for earlier in earlier.iter() {
            value.extend_from_slice(earlier.as_bytes());
            value.extend_from_slice(b", ");
        }
    }
    // An IPv4 client of a dual-stack listener shows as ::ffff:a.b.c.d; say a.b.c.d.
    // Writing to a Vec cannot fail.
    let _ = write!(value, "{}", client.to_canonical());
    let Ok(value) = HeaderValue::try_from(value) else {
        return;
    };
    match entry {
        Entry::Occupied(mut earlier) => {
            earlier.insert(value);
        }
        Entry::Vacant(vacant) => {
            vacant.insert(value);
        }
    }
}

/// Removes what a caller may claim about where a request came from (`Forwarded`,
/// `X-Forwarded-*`, `X-Real-IP`), for a connection not from a trusted proxy: the
/// activator then writes the `X-Forwarded-*` headers from the connection itself.
pub(crate) fn strip_forwarded(headers: &mut HeaderMap) {
    for name in [
        header::FORWARDED,
        X_FORWARDED_FOR,
        X_FORWARDED_PROTO,
        X_FORWARDED_HOST,
        X_FORWARDED_PORT,
        X_FORWARDED_PREFIX,
        X_REAL_IP,
    ] {
        headers.remove(name);
    }
}

/// Adds what the pod should know about the client: its IP appended to (or set as)
/// `X-Forwarded-For`; `X-Forwarded-Proto` (`scheme`) and `X-Forwarded-Host` (the Host)
/// only when absent, since a proxy in front of the activator, such as an ingress ending
/// TLS, knows the client's scheme and host better.
pub(super) fn add_forwarded(headers: &mut HeaderMap, client: IpAddr, scheme: &str) {
    append_forwarded_for(headers, client);
    let host = headers.get(header::HOST).cloned();
    // `entry` looks each name up once for both the check and the insert.
    if let Entry::Vacant(vacant) = headers.entry(X_FORWARDED_PROTO) {
        let proto = match scheme {
            "http" => Some(HeaderValue::from_static("http")),
            "https" => Some(HeaderValue::from_static("https")),
            other => HeaderValue::from_str(other).ok(),
        };
        if let Some(proto) = proto {
            vacant.insert(proto);
        }
    }
    if let Some(host) = host
        && let Entry::Vacant(vacant) = headers.entry(X_FORWARDED_HOST)
    {
        vacant.insert(host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::tests::values;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn upgrade_keeps_only_connection_upgrade() {
        let mut request = headers(&[
            ("connection", "keep-alive, Upgrade, x-secret"),
            ("upgrade", "websocket"),
            ("x-secret", "1"),
        ]);
        assert!(is_upgrade_request(Version::HTTP_11, &request));
        strip_hop_by_hop(&mut request, Message::Request, true);
        assert_eq!(values(&request, "connection"), ["upgrade"]);
        assert_eq!(values(&request, "upgrade"), ["websocket"]);
        assert!(!request.contains_key("x-secret"));
    }

    #[test]
    fn only_http11_websocket_style_upgrades_are_passed_on() {
        let websocket = headers(&[("connection", "upgrade"), ("upgrade", "websocket")]);
        assert!(!is_upgrade_request(Version::HTTP_10, &websocket));
        let h2c = headers(&[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
        ]);
        assert!(!is_upgrade_request(Version::HTTP_11, &h2c));
        let no_connection = headers(&[("upgrade", "websocket")]);
        assert!(!is_upgrade_request(Version::HTTP_11, &no_connection));
    }

    #[test]
    fn split_cookies_are_joined_into_one_line() {
        let mut request = headers(&[("cookie", "a=1"), ("cookie", "b=2; c=3")]);
        join_cookies(&mut request);
        assert_eq!(values(&request, "cookie"), ["a=1; b=2; c=3"]);
    }

    #[test]
    fn te_is_dropped_from_responses() {
        let mut response = headers(&[("te", "trailers")]);
        strip_hop_by_hop(&mut response, Message::Response, false);
        assert!(!response.contains_key("te"));
    }

    #[test]
    fn request_keeps_only_te_trailers_and_loses_what_connection_names() {
        let mut request = headers(&[
            ("connection", "x-secret, keep-alive"),
            ("connection", "x-other"),
            ("x-secret", "1"),
            ("x-other", "2"),
            ("keep-alive", "timeout=5"),
            ("te", "gzip, trailers;q=1"),
            ("upgrade", "websocket"),
            ("x-kept", "end to end"),
        ]);
        strip_hop_by_hop(&mut request, Message::Request, false);
        for name in ["connection", "x-secret", "x-other", "keep-alive", "upgrade"] {
            assert!(!request.contains_key(name), "{name} was kept");
        }
        assert_eq!(values(&request, "te"), ["trailers"]);
        assert_eq!(values(&request, "x-kept"), ["end to end"]);
    }

    #[test]
    fn an_untrusted_callers_forwarding_headers_are_replaced_by_the_connections() {
        let mut request = headers(&[
            ("host", "echo.default"),
            ("x-forwarded-for", "203.0.113.1"),
            ("x-forwarded-host", "evil.com"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-port", "443"),
            ("forwarded", "for=203.0.113.1;host=evil.com"),
            ("x-real-ip", "203.0.113.1"),
        ]);
        strip_forwarded(&mut request);
        add_forwarded(&mut request, "192.0.2.9".parse().expect("address"), "http");
        assert_eq!(values(&request, "x-forwarded-for"), ["192.0.2.9"]);
        assert_eq!(values(&request, "x-forwarded-host"), ["echo.default"]);
        assert_eq!(values(&request, "x-forwarded-proto"), ["http"]);
        for name in ["x-forwarded-port", "forwarded", "x-real-ip"] {
            assert!(!request.contains_key(name), "{name} was kept");
        }
    }

    #[test]
    fn forwarded_for_names_a_mapped_ipv4_client_as_ipv4() {
        let mut request = HeaderMap::new();
        let mapped: IpAddr = "::ffff:192.0.2.9".parse().expect("address");
        append_forwarded_for(&mut request, mapped);
        assert_eq!(values(&request, "x-forwarded-for"), ["192.0.2.9"]);
    }

    #[test]
    fn forwarded_headers_are_set_from_the_client_when_absent() {
        let mut request = headers(&[("host", "echo.default")]);
        let client: IpAddr = "192.0.2.9".parse().expect("address");
        add_forwarded(&mut request, client, "https");
        assert_eq!(values(&request, "x-forwarded-for"), ["192.0.2.9"]);
        assert_eq!(values(&request, "x-forwarded-proto"), ["https"]);
        assert_eq!(values(&request, "x-forwarded-host"), ["echo.default"]);
    }

    #[test]
    fn a_front_proxys_forwarded_headers_are_kept_and_the_client_appended() {
        let mut request = headers(&[
            ("host", "echo.default"),
            ("x-forwarded-for", "203.0.113.1"),
            ("x-forwarded-for", "198.51.100.2"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "echo.example.com"),
        ]);
        let client: IpAddr = "192.0.2.9".parse().expect("address");
        add_forwarded(&mut request, client, "http");
        assert_eq!(
            values(&request, "x-forwarded-for"),
            ["203.0.113.1, 198.51.100.2, 192.0.2.9"]
        );
        assert_eq!(values(&request, "x-forwarded-proto"), ["https"]);
        assert_eq!(values(&request, "x-forwarded-host"), ["echo.example.com"]);
    }
}
