//! Who may talk to the daemon. Every web page the user opens can send
//! requests to a loopback port, so the daemon trusts neither the network
//! position of a caller nor a browser's good manners (threat model in
//! `docs/api.md`):
//!
//! - **Host** (every route, the UI included): the name the request was sent
//!   to must be one this daemon serves — an IP literal, `localhost`, this
//!   machine's host name, or a name given with `--allow-host`. A DNS
//!   rebinding page reaches 127.0.0.1 under its own name and gets `421`.
//! - **Origin** (every API route): a browser request from another origin
//!   (`Origin` not this daemon, `Origin: null`, or `Sec-Fetch-Site` other
//!   than `same-origin`/`none`) gets `403`, whatever else it carries.
//! - **Token** (every API route but `GET /api/v1/health`): the bearer token,
//!   on loopback too. Never a cookie, so no browser sends it on its own.
//! - **Content type** (every API request with a method other than GET or
//!   HEAD): `application/json` (`application/octet-stream` for an
//!   attempt's log), so no HTML form can post and no cross-origin `fetch`
//!   gets past the CORS preflight, which the daemon never grants.
//!
//! This module decides; it knows nothing of jobs, datasets or runs.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::auth::Secret;
use super::error::ApiError;

/// The API route exempt from the token (liveness checks, agents' first contact).
pub(crate) const HEALTH_ROUTE: &str = "/api/v1/health";

/// The one API route whose body is not JSON: an attempt's log bytes.
pub(crate) const LOG_APPEND_ROUTE: &str = "/api/v1/jobs/{id}/attempts/{n}/log";

/// The daemon's admission rules.
#[derive(Debug, Clone)]
pub(crate) struct Guard {
    token: Secret,
    /// Host names (lower case, no port, no trailing dot) besides IP
    /// literals and `localhost`.
    names: Vec<String>,
}

/// Why a request was refused, before any handler saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The Host header is missing or names a host this daemon does not serve.
    Host(String),
    /// A browser request from another origin.
    Origin(String),
    /// No token, or the wrong one.
    Token { offered: bool },
    /// A body that is not declared as the route's content type.
    ContentType { got: String, want: &'static str },
}

impl Refusal {
    pub(crate) fn into_error(self) -> ApiError {
        match self {
            Refusal::Host(host) => ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                "bad_host",
                format!(
                    "this daemon does not serve the host name {host:?} (a DNS rebinding page, or \
                     a name it was not told about): use 127.0.0.1, localhost or this machine's \
                     name, or start the daemon with --allow-host NAME"
                ),
            ),
            Refusal::Origin(origin) => ApiError::new(
                StatusCode::FORBIDDEN,
                "cross_origin",
                format!(
                    "cross-origin request refused (from {origin}): only the daemon's own UI, \
                     the CLI and agents may call the API"
                ),
            ),
            Refusal::Token { offered: true } => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the token is wrong: use the one in the daemon's Trainyard home (daemon.token)",
            ),
            Refusal::Token { offered: false } => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this daemon requires a token and none was sent: send 'Authorization: Bearer \
                 TOKEN' (the CLI reads TRAINYARD_TOKEN or the home's daemon.token; \
                 `trainyard ui` prints a UI address that logs in)",
            ),
            Refusal::ContentType { got, want } => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("Content-Type must be {want}, not {got:?}"),
            ),
        }
    }
}

impl Guard {
    /// The rules of a daemon holding `token`, bound to `bound`, also
    /// answering to `extra` host names (a LAN name, a reverse proxy's).
    pub(crate) fn new(token: Secret, bound: SocketAddr, extra: &[String]) -> Guard {
        let mut names: Vec<String> = extra.iter().map(|n| normalize(n)).collect();
        // Agents on the LAN reach the daemon by this machine's name.
        if !bound.ip().is_loopback() {
            if let Ok(h) = rustix::system::uname().nodename().to_str() {
                names.push(normalize(h));
            }
        }
        names.retain(|n| !n.is_empty());
        names.sort();
        names.dedup();
        Guard { token, names }
    }

    /// The same rules for another listener of the daemon bound to `bound`
    /// (`--metrics-bind`): beyond loopback it also answers to this
    /// machine's name.
    pub(crate) fn rebound(&self, bound: SocketAddr) -> Guard {
        let mut g = Guard::new(self.token.clone(), bound, &self.names);
        g.names.extend(self.names.iter().cloned());
        g.names.sort();
        g.names.dedup();
        g
    }

    /// Whether the daemon answers to the Host header `host` (`name[:port]`).
    pub(crate) fn host_ok(&self, host: &str) -> bool {
        let name = host_name(host);
        if name.is_empty() {
            return false;
        }
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        bare.parse::<IpAddr>().is_ok() || name == "localhost" || self.names.contains(&name)
    }

    /// Check a request against every rule: `api` says whether it is for
    /// `/api/v1` (the UI's static files need only the Host check), `route`
    /// is its matched route pattern.
    pub(crate) fn check(
        &self,
        method: &Method,
        headers: &HeaderMap,
        api: bool,
        route: Option<&str>,
    ) -> Result<(), Refusal> {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !self.host_ok(host) {
            return Err(Refusal::Host(host.to_string()));
        }
        if !api {
            return Ok(());
        }
        if let Some(site) = headers.get("sec-fetch-site") {
            let site = site.to_str().unwrap_or("?");
            if !matches!(site, "same-origin" | "none") {
                return Err(Refusal::Origin(format!("Sec-Fetch-Site: {site}")));
            }
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("?");
            let own = |scheme: &str| {
                origin
                    .strip_prefix(scheme)
                    .is_some_and(|o| o.eq_ignore_ascii_case(host))
            };
            if !(own("http://") || own("https://")) {
                return Err(Refusal::Origin(format!("Origin: {origin}")));
            }
        }
        let exempt = *method == Method::GET && route == Some(HEALTH_ROUTE);
        if !exempt {
            let offered = bearer(headers);
            if !offered.is_some_and(|t| self.token.matches(t)) {
                return Err(Refusal::Token {
                    offered: offered.is_some(),
                });
            }
        }
        if !matches!(*method, Method::GET | Method::HEAD) {
            let want = if route == Some(LOG_APPEND_ROUTE) {
                "application/octet-stream"
            } else {
                "application/json"
            };
            let got = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let essence = got.split(';').next().unwrap_or("").trim();
            if !essence.eq_ignore_ascii_case(want) {
                return Err(Refusal::ContentType {
                    got: got.to_string(),
                    want,
                });
            }
        }
        Ok(())
    }
}

/// Lower-case host name of a Host header value, without port or trailing dot.
fn host_name(host: &str) -> String {
    let host = host.trim();
    let name = if host.starts_with('[') {
        // [v6]:port
        match host.find(']') {
            Some(end) => &host[..=end],
            None => "",
        }
    } else {
        match host.rsplit_once(':') {
            Some((n, port)) if port.bytes().all(|b| b.is_ascii_digit()) => n,
            Some(_) => "",
            None => host,
        }
    };
    normalize(name)
}

fn normalize(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

fn bearer(h: &HeaderMap) -> Option<&str> {
    h.get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Middleware over every route, the UI's files included: the Host rule.
pub(crate) async fn admit(State(g): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    admit_as(&g, false, req, next).await
}

/// Middleware over the API routes (inside `/api/v1`, so the matched route
/// is known): every rule.
pub(crate) async fn admit_api(State(g): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    admit_as(&g, true, req, next).await
}

async fn admit_as(g: &Guard, api: bool, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str());
    match g.check(req.method(), req.headers(), api, route) {
        Ok(()) => next.run(req).await,
        Err(refusal) => {
            tracing::warn!(
                method = %req.method(),
                path = req.uri().path(),
                refusal = ?refusal,
                "request refused"
            );
            refusal.into_error().into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn guard(bound: &str) -> Guard {
        Guard::new(
            Secret::new("t0k"),
            bound.parse().unwrap(),
            &["lab.example".into()],
        )
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn host_names_served() {
        let g = guard("127.0.0.1:7171");
        for ok in [
            "127.0.0.1:7171",
            "127.0.0.1",
            "localhost:7171",
            "LOCALHOST.",
            "[::1]:7171",
            "[::1]",
            "192.168.1.20:7171",
            "lab.example:443",
            "Lab.Example",
        ] {
            assert!(g.host_ok(ok), "{ok} should be served");
        }
        for bad in [
            "",
            "evil.example:7171",
            "evil.example",
            "localhost.evil.example",
            "127.0.0.1.nip.io:7171",
            "lab.example.evil:7171",
            "[::1",
            "localhost:x",
        ] {
            assert!(!g.host_ok(bad), "{bad:?} must be refused");
        }
    }

    #[test]
    fn browser_requests_from_elsewhere_are_refused_before_the_token() {
        let g = guard("127.0.0.1:7171");
        let host = ("host", "127.0.0.1:7171");
        let auth = ("authorization", "Bearer t0k");
        let json = ("content-type", "application/json");
        let post = Method::POST;
        let route = Some("/api/v1/jobs");
        assert_eq!(
            g.check(&post, &headers(&[host, auth, json]), true, route),
            Ok(())
        );
        // Same origin, as the UI sends it.
        assert_eq!(
            g.check(
                &post,
                &headers(&[
                    host,
                    auth,
                    json,
                    ("origin", "http://127.0.0.1:7171"),
                    ("sec-fetch-site", "same-origin")
                ]),
                true,
                route
            ),
            Ok(())
        );
        for (k, v) in [
            ("origin", "http://evil.example"),
            ("origin", "null"),
            ("origin", "http://127.0.0.1:8080"),
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-site", "same-site"),
        ] {
            assert!(
                matches!(
                    g.check(&post, &headers(&[host, auth, json, (k, v)]), true, route),
                    Err(Refusal::Origin(_))
                ),
                "{k}: {v}"
            );
        }
        // An HTML form's content type, with the right token even.
        assert!(matches!(
            g.check(
                &post,
                &headers(&[host, auth, ("content-type", "text/plain")]),
                true,
                route
            ),
            Err(Refusal::ContentType { .. })
        ));
        assert!(matches!(
            g.check(&post, &headers(&[host, auth]), true, route),
            Err(Refusal::ContentType { .. })
        ));
        // The log route wants bytes.
        let log = Some(LOG_APPEND_ROUTE);
        assert_eq!(
            g.check(
                &post,
                &headers(&[host, auth, ("content-type", "application/octet-stream")]),
                true,
                log
            ),
            Ok(())
        );
        // Missing and wrong tokens are told apart.
        assert_eq!(
            g.check(&post, &headers(&[host, json]), true, route),
            Err(Refusal::Token { offered: false })
        );
        assert_eq!(
            g.check(
                &post,
                &headers(&[host, json, ("authorization", "Bearer nope")]),
                true,
                route
            ),
            Err(Refusal::Token { offered: true })
        );
    }

    #[test]
    fn only_the_health_route_itself_skips_the_token() {
        let g = guard("127.0.0.1:7171");
        let h = headers(&[("host", "localhost:7171")]);
        assert_eq!(g.check(&Method::GET, &h, true, Some(HEALTH_ROUTE)), Ok(()));
        assert!(g
            .check(&Method::GET, &h, true, Some("/api/v1/runs/{id}"))
            .is_err());
        assert!(g.check(&Method::GET, &h, true, None).is_err());
        // The UI's files need the Host check only.
        assert_eq!(g.check(&Method::GET, &h, false, None), Ok(()));
        let rebound = headers(&[("host", "evil.example:7171")]);
        assert!(matches!(
            g.check(&Method::GET, &rebound, false, None),
            Err(Refusal::Host(_))
        ));
    }
}
