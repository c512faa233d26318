//! The request target as routing reads it: exactly one Host, and for an HTTP/1.x
//! absolute-form target (`GET http://echo.team/ HTTP/1.1`, RFC 9112 section 3.2.2) the
//! URI's authority in place of whatever Host said. (An HTTP/2 request without Host is
//! routed by its `:authority`, as before.)

use http::header::{self, HeaderValue};
use http::{Request, Version};

use crate::errors::ActivatorError;

/// Refuses a request with two Host headers, and makes the Host header the URI's
/// authority (without user info) when an HTTP/1.x target is in absolute form.
pub(crate) fn take_authority<B>(request: &mut Request<B>) -> Result<(), ActivatorError> {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    if hosts.next().is_some() && hosts.next().is_some() {
        return Err(ActivatorError::DuplicateHost);
    }
    if request.version() > Version::HTTP_11 {
        return Ok(());
    }
    let Some(authority) = request.uri().authority() else {
        return Ok(());
    };
    let authority = authority
        .as_str()
        .rsplit_once('@')
        .map_or(authority.as_str(), |(_, host)| host);
    if request
        .headers()
        .get(header::HOST)
        .is_some_and(|host| host.as_bytes() == authority.as_bytes())
    {
        return Ok(());
    }
    if let Ok(host) = HeaderValue::from_str(authority) {
        request.headers_mut().insert(header::HOST, host);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: &str, hosts: &[&str]) -> Request<()> {
        let mut builder = Request::get(target);
        for host in hosts {
            builder = builder.header(header::HOST, *host);
        }
        builder.body(()).expect("request")
    }

    #[test]
    fn two_host_headers_are_refused() {
        let mut twice = request("/", &["echo.team", "evil.team"]);
        assert!(matches!(
            take_authority(&mut twice),
            Err(ActivatorError::DuplicateHost)
        ));
    }

    #[test]
    fn an_absolute_form_target_names_the_host_whatever_host_says() {
        let mut absolute = request("http://user@echo.team:8080/path", &["evil.team"]);
        take_authority(&mut absolute).expect("one host");
        assert_eq!(absolute.headers()[header::HOST], "echo.team:8080");
        assert_eq!(absolute.headers().get_all(header::HOST).iter().count(), 1);

        let mut origin = request("/path", &["echo.team"]);
        take_authority(&mut origin).expect("one host");
        assert_eq!(origin.headers()[header::HOST], "echo.team");
    }
}
