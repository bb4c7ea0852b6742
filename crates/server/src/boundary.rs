//! Keeping web pages from driving the API through the user's browser.
//!
//! A browser lets any page send requests to `127.0.0.1`: a cross-origin
//! `POST` with a "simple" content type (`text/plain`) needs no preflight,
//! and a page can rebind its own name to `127.0.0.1` (DNS rebinding) to
//! read the answers. So every request is checked here, in one place,
//! before authentication:
//! - a request carrying an `Origin` must come from the server's own origin:
//!   the origin's host and port are the `Host` the request is addressed to
//!   (browsers send `Origin` on every cross-origin request but plain
//!   navigations and embeds, which cannot send a body or read the answer);
//! - without a token (the loopback no-auth mode), the `Host` must be the
//!   address the server listens on or a loopback name (`localhost`,
//!   `127.0.0.1`, `[::1]`) with its port: a rebound name never is.
//!
//! With a token the `Host` is not checked: a page cannot learn the token,
//! and the server may be reached by any name a proxy gives it.
//!
//! Written by hand: the checks are a few comparisons of two headers, which
//! no maintained crate offers as an axum layer.

use crate::error::ApiError;
use axum::extract::{Request, State};
use axum::http::uri::Authority;
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::sync::Arc;

/// The port a `Host` without one means (the API is served over plain HTTP).
const DEFAULT_PORT: u16 = 80;

/// Which `Host` names a request may be addressed to.
#[derive(Clone, Debug, Default)]
pub struct Boundary {
    /// `None`: any (a token guards the server, or a unix socket's mode does).
    hosts: Option<Arc<[(String, u16)]>>,
}

impl Boundary {
    /// Any `Host`; only the `Origin` is checked.
    pub fn any_host() -> Boundary {
        Boundary { hosts: None }
    }

    /// Only the address `addr` itself and the loopback names, with its port.
    pub fn loopback(addr: SocketAddr) -> Boundary {
        let port = addr.port();
        let listened = match addr {
            SocketAddr::V4(v4) => v4.ip().to_string(),
            SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
        };
        let mut hosts: Vec<(String, u16)> = ["localhost", "127.0.0.1", "[::1]"]
            .into_iter()
            .map(|name| (name.to_string(), port))
            .collect();
        if !hosts.iter().any(|(name, _)| *name == listened) {
            hosts.push((listened, port));
        }
        Boundary {
            hosts: Some(hosts.into()),
        }
    }

    /// Why a request with these headers is refused, if it is.
    fn refusal(&self, headers: &HeaderMap, uri_authority: Option<&Authority>) -> Option<ApiError> {
        let host = headers
            .get(header::HOST)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
            .or_else(|| uri_authority.map(ToString::to_string));
        if let Some(hosts) = &self.hosts {
            let allowed = host
                .as_deref()
                .and_then(host_and_port)
                .is_some_and(|(name, port)| hosts.iter().any(|h| h.0 == name && h.1 == port));
            if !allowed {
                let names: Vec<String> = hosts
                    .iter()
                    .map(|(name, port)| format!("{name}:{port}"))
                    .collect();
                let shown = host.map_or("no Host header".to_string(), |host| {
                    format!("Host `{}`", host.escape_debug())
                });
                return Some(ApiError::new(
                    "host_not_allowed",
                    format!(
                        "{shown} is not this server's address: without a token it answers \
                         only requests addressed to {}",
                        names.join(", ")
                    ),
                ));
            }
        }
        let origin = headers.get(header::ORIGIN)?;
        let origin = String::from_utf8_lossy(origin.as_bytes());
        let own = host.as_deref().is_some_and(|host| {
            origin_authority(&origin).is_some_and(|authority| authority.eq_ignore_ascii_case(host))
        });
        (!own).then(|| {
            ApiError::new(
                "origin_not_allowed",
                format!(
                    "Origin `{}` is not this server's own ({}): requests from other origins \
                     (web pages) are refused",
                    origin.escape_debug(),
                    host.map_or("no Host header".to_string(), |host| format!(
                        "http://{}",
                        host.escape_debug()
                    )),
                ),
            )
        })
    }
}

/// The lowercased name and the port of a `Host` value.
fn host_and_port(host: &str) -> Option<(String, u16)> {
    let authority: Authority = host.parse().ok()?;
    // A `Host` is a name and a port, never user information.
    if authority.as_str().contains('@') {
        return None;
    }
    let port = match authority.port() {
        Some(port) => port.as_u16(),
        None => DEFAULT_PORT,
    };
    Some((authority.host().to_ascii_lowercase(), port))
}

/// The `host[:port]` of a serialised origin (`scheme://host[:port]`, as
/// browsers send it: no path, no user information); `None` for anything
/// else, `null` included.
fn origin_authority(origin: &str) -> Option<&str> {
    let (scheme, authority) = origin.split_once("://")?;
    let well_formed = !scheme.is_empty()
        && !authority.is_empty()
        && !authority.contains(['/', '?', '#', '@'])
        && authority.parse::<Authority>().is_ok();
    well_formed.then_some(authority)
}

/// Refuses a request whose `Host` or `Origin` the boundary does not allow,
/// before anything else is done.
pub(crate) async fn check(State(boundary): State<Boundary>, req: Request, next: Next) -> Response {
    match boundary.refusal(req.headers(), req.uri().authority()) {
        Some(refusal) => refusal.into_response(),
        None => next.run(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(host: Option<&'static str>, origin: Option<&'static str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(host) = host {
            headers.insert(header::HOST, HeaderValue::from_static(host));
        }
        if let Some(origin) = origin {
            headers.insert(header::ORIGIN, HeaderValue::from_static(origin));
        }
        headers
    }

    fn code(
        boundary: &Boundary,
        host: Option<&'static str>,
        origin: Option<&'static str>,
    ) -> Option<String> {
        boundary
            .refusal(&headers(host, origin), None)
            .map(|err| err.code.to_string())
    }

    #[test]
    fn without_a_token_only_loopback_names_with_the_port_are_hosts() {
        let boundary = Boundary::loopback("127.0.0.1:7433".parse().unwrap());
        for host in [
            "127.0.0.1:7433",
            "localhost:7433",
            "LocalHost:7433",
            "[::1]:7433",
        ] {
            assert_eq!(code(&boundary, Some(host), None), None, "{host}");
        }
        for host in [
            "evil.example:7433",
            "127.0.0.1:7434",
            "localhost",
            "127.0.0.1",
            "user@127.0.0.1:7433",
            "localhost.:7433",
            "127.0.0.1.nip.io:7433",
        ] {
            assert_eq!(
                code(&boundary, Some(host), None).as_deref(),
                Some("host_not_allowed"),
                "{host}"
            );
        }
        assert_eq!(
            code(&boundary, None, None).as_deref(),
            Some("host_not_allowed")
        );
    }

    #[test]
    fn the_listen_address_itself_is_a_host_and_port_80_may_go_unsaid() {
        let boundary = Boundary::loopback("127.0.0.2:80".parse().unwrap());
        assert_eq!(code(&boundary, Some("127.0.0.2"), None), None);
        assert_eq!(code(&boundary, Some("localhost:80"), None), None);
        let v6 = Boundary::loopback("[::1]:9000".parse().unwrap());
        assert_eq!(code(&v6, Some("[::1]:9000"), None), None);
    }

    #[test]
    fn only_the_servers_own_origin_is_accepted() {
        for boundary in [
            Boundary::loopback("127.0.0.1:7433".parse().unwrap()),
            Boundary::any_host(),
        ] {
            let host = Some("127.0.0.1:7433");
            assert_eq!(code(&boundary, host, Some("http://127.0.0.1:7433")), None);
            for origin in [
                "http://evil.example",
                "http://localhost:7433",
                "http://127.0.0.1:7434",
                "null",
                "http://127.0.0.1:7433/path",
                "http://user@127.0.0.1:7433",
                "127.0.0.1:7433",
            ] {
                assert_eq!(
                    code(&boundary, host, Some(origin)).as_deref(),
                    Some("origin_not_allowed"),
                    "{origin}"
                );
            }
        }
        // With a token a proxy may give the server any name; the origin
        // still has to be that name.
        let any = Boundary::any_host();
        assert_eq!(
            code(&any, Some("berth.example"), Some("https://berth.example")),
            None
        );
        assert_eq!(
            code(&any, Some("berth.example"), Some("https://evil.example")).as_deref(),
            Some("origin_not_allowed")
        );
    }
}
