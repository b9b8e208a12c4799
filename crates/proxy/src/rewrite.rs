//! Stage 3, rewrite: the headers a request carries up to the app and a response carries back.
//!
//! A proxy is two HTTP connections, so headers about one connection (hop-by-hop, RFC 9110
//! §7.6.1) must not leak onto the other; the app learns who really asked through
//! `X-Forwarded-*`; and Cove's own credentials (the [`APP_COOKIE`], a bearer token) stay with
//! Cove.

use std::net::IpAddr;

use axum::body::Body;
use http::header::{AUTHORIZATION, CONNECTION, COOKIE, EXPECT, HOST, UPGRADE, USER_AGENT};
use http::request::Parts;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Uri, Version};

use crate::host::request_host;
use crate::APP_COOKIE;

/// Headers that describe one connection, never the message (RFC 9110 §7.6.1, plus the
/// non-standard `Keep-Alive` and `Proxy-Connection` that old clients still send).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// User agents of health checks and scrapers; see [`crate::Gate::activity`].
const PROBE_AGENTS: [&str; 3] = ["kube-probe/", "prometheus/", "cove-probe"];

/// What the rewrite needs to know about one exchange.
pub(crate) struct Forwarding<'a> {
    /// The upstream's authority, for the pooled client (see `Upstream::authority`); `None`
    /// for a request sent on a connection of its own, which takes the origin form.
    pub upstream: Option<Authority>,
    /// The address that connected to us, as the value of `X-Forwarded-For`.
    pub peer: &'a HeaderValue,
    /// The host the request is for, should the client have sent none (HTTP/1.0).
    pub host: &'a str,
    /// The scheme the client used, as the value of `X-Forwarded-Proto`.
    pub proto: &'a HeaderValue,
    pub strip_authorization: bool,
    /// The request is a WebSocket upgrade that must reach the app as one.
    pub websocket: bool,
    /// Set last, replacing what the client sent under these names.
    pub headers: &'a [(HeaderName, HeaderValue)],
}

/// Whether a request asks to become a WebSocket (RFC 6455 §4.1). Only HTTP/1.1 has
/// `Upgrade`; WebSockets over HTTP/2 (RFC 8441) are not supported.
pub(crate) fn is_websocket_upgrade(parts: &Parts) -> bool {
    parts.version == Version::HTTP_11
        && connection_tokens(&parts.headers).any(|token| token.eq_ignore_ascii_case("upgrade"))
        && parts
            .headers
            .get_all(UPGRADE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|protocol| protocol.trim().eq_ignore_ascii_case("websocket"))
}

/// Whether a request counts as user activity: anything but a health check or a scrape.
pub(crate) fn is_user_activity(headers: &HeaderMap) -> bool {
    let Some(agent) = headers.get(USER_AGENT).and_then(|value| value.to_str().ok()) else {
        return true;
    };
    let agent = agent.trim_start().as_bytes();
    !PROBE_AGENTS
        .iter()
        .any(|probe| agent.get(..probe.len()).is_some_and(|start| start.eq_ignore_ascii_case(probe.as_bytes())))
}

/// Turns the client's request into the one sent to the app: always HTTP/1.1, to
/// `http://<upstream>` with an origin-form target, and the headers of [`upstream_headers`].
pub(crate) fn upstream_request(
    parts: Parts,
    body: Body,
    forwarding: &Forwarding<'_>,
) -> Result<Request<Body>, http::Error> {
    let mut headers = HeaderMap::with_capacity(parts.headers.len() + 4);
    upstream_headers(&parts, forwarding, |name, value| {
        headers.append(name.clone(), value.clone());
    })?;
    let target = match parts.uri.path_and_query() {
        Some(target) => target.clone(),
        None => PathAndQuery::from_static("/"),
    };
    let uri = match &forwarding.upstream {
        Some(authority) => Uri::builder().scheme("http").authority(authority.clone()).path_and_query(target).build()?,
        None => Uri::from(target),
    };
    let mut request = Request::new(body);
    *request.method_mut() = parts.method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Ok(request)
}

/// The headers the app gets, in one pass over the client's, each handed to `emit`:
/// - the client's headers without the hop-by-hop ones (and those its `Connection` names),
///   `Expect` (our own server side has already answered `100-continue`; the app must not
///   wait for a second go-ahead), Cove's cookie, the bearer token when the gate says so, and
///   those set below;
/// - `Host` as the client sent it (case and all: the app may use it to build links; for
///   HTTP/2 clients and absolute-form targets that is the URI's authority);
/// - `X-Forwarded-For` with the chain of proxies in front of us and the address that
///   connected to us; `X-Forwarded-Host` and `-Proto` as this edge saw them, whatever the
///   client claims;
/// - for a WebSocket, `Connection: upgrade` and the client's `Upgrade`;
/// - the gate's headers, which replace any the client sent under those names.
pub(crate) fn upstream_headers(
    parts: &Parts,
    forwarding: &Forwarding<'_>,
    mut emit: impl FnMut(&HeaderName, &HeaderValue),
) -> Result<(), http::Error> {
    let headers = &parts.headers;
    let listed_in_connection = headers.contains_key(CONNECTION);
    let mut cookies = 0;
    let mut app_cookie = false;
    let mut prior_hops = 0;
    for (name, value) in headers {
        if *name == COOKIE {
            cookies += 1;
            app_cookie |= has_app_cookie(value);
            continue;
        }
        if *name == X_FORWARDED_FOR {
            prior_hops += 1;
            continue;
        }
        let dropped = is_hop_by_hop(name)
            || *name == EXPECT
            || *name == HOST
            || *name == X_FORWARDED_HOST
            || *name == X_FORWARDED_PROTO
            || (forwarding.strip_authorization && *name == AUTHORIZATION)
            || forwarding.headers.iter().any(|(set, _)| set == name)
            || (listed_in_connection
                && connection_tokens(headers).any(|token| token.eq_ignore_ascii_case(name.as_str())));
        if !dropped {
            emit(name, value);
        }
    }
    match (cookies, app_cookie) {
        (0, _) => {}
        (1, false) => headers.get_all(COOKIE).iter().for_each(|value| emit(&COOKIE, value)),
        _ => {
            if let Some(value) = cookies_without_app_cookie(headers) {
                emit(&COOKIE, &value);
            }
        }
    }

    let host = match (parts.uri.authority(), headers.get(HOST)) {
        (None, Some(host)) => host.clone(),
        _ => HeaderValue::from_str(request_host(&parts.uri, headers).unwrap_or(forwarding.host))?,
    };
    emit(&HOST, &host);
    if prior_hops == 0 {
        emit(&X_FORWARDED_FOR, forwarding.peer);
    } else {
        let prior: Vec<&str> =
            headers.get_all(&X_FORWARDED_FOR).iter().filter_map(|value| value.to_str().ok()).collect();
        let peer = forwarding.peer.to_str().unwrap_or_default();
        emit(&X_FORWARDED_FOR, &HeaderValue::from_str(&format!("{}, {peer}", prior.join(", ")))?);
    }
    emit(&X_FORWARDED_HOST, &host);
    emit(&X_FORWARDED_PROTO, forwarding.proto);
    if forwarding.websocket {
        emit(&CONNECTION, &HeaderValue::from_static("upgrade"));
        headers.get_all(UPGRADE).iter().for_each(|value| emit(&UPGRADE, value));
    }
    for (name, value) in forwarding.headers {
        emit(name, value);
    }
    Ok(())
}

/// The request head the app gets, in HTTP/1.1 wire form: the request line with an
/// origin-form target and the headers of [`upstream_headers`] (names and values were
/// validated when they were made: no CR or LF in either).
pub(crate) fn encode_request_head(parts: &Parts, forwarding: &Forwarding<'_>) -> Result<Vec<u8>, http::Error> {
    let mut out = Vec::with_capacity(256 + 64 * parts.headers.len());
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.uri.path_and_query().map_or("/", |target| target.as_str()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    upstream_headers(parts, forwarding, |name, value| {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    })?;
    out.extend_from_slice(b"\r\n");
    Ok(out)
}

/// Removes the hop-by-hop headers of the app's response. A `101 Switching Protocols` keeps
/// `Connection: upgrade` and the app's `Upgrade`: the client needs them to switch.
pub(crate) fn response_headers(headers: &mut HeaderMap, switching_protocols: bool) {
    let upgrade: Vec<HeaderValue> =
        if switching_protocols { headers.get_all(UPGRADE).iter().cloned().collect() } else { Vec::new() };
    remove_hop_by_hop(headers);
    if switching_protocols {
        keep_upgrade(headers, upgrade);
    }
}

fn keep_upgrade(headers: &mut HeaderMap, upgrade: Vec<HeaderValue>) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    for value in upgrade {
        headers.append(UPGRADE, value);
    }
}

/// The tokens of all `Connection` headers, as sent (compare them ignoring case).
pub(crate) fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> + '_ {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages have none: one look at each name is cheaper than a lookup of each of the
    // nine (and they are looked up on every response).
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    // Headers named in Connection are hop-by-hop too; read the names before Connection goes.
    let listed: Vec<HeaderName> =
        connection_tokens(headers).filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok()).collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

fn has_app_cookie(value: &HeaderValue) -> bool {
    value.as_bytes().split(|byte| *byte == b';').any(|pair| cookie_name(pair) == APP_COOKIE.as_bytes())
}

/// All `Cookie` headers joined into one value without [`APP_COOKIE`]; `None` if nothing is
/// left. HTTP/2 clients may split cookies over several headers, which an HTTP/1.1 upstream
/// must receive joined with "; " (RFC 9113 §8.2.3).
fn cookies_without_app_cookie(headers: &HeaderMap) -> Option<HeaderValue> {
    let kept: Vec<&[u8]> = headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|value| value.as_bytes().split(|byte| *byte == b';'))
        .map(<[u8]>::trim_ascii)
        .filter(|pair| !pair.is_empty() && cookie_name(pair) != APP_COOKIE.as_bytes())
        .collect();
    let joined = kept.join(&b"; "[..]);
    // Made only of pieces of valid header values and "; ", so always valid; should it not be,
    // dropping the cookies is the safe way to fail.
    (!joined.is_empty()).then(|| HeaderValue::from_bytes(&joined).ok()).flatten()
}

fn cookie_name(pair: &[u8]) -> &[u8] {
    let name = pair.split(|byte| *byte == b'=').next().unwrap_or(pair);
    name.trim_ascii()
}

/// The value of `X-Forwarded-For` for a client at `peer` (IPv4-mapped IPv6 addresses as IPv4).
pub(crate) fn forwarded_for(peer: IpAddr) -> HeaderValue {
    // An IP address in text form is always a valid header value.
    HeaderValue::from_str(&peer.to_canonical().to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cookies_after(values: &[&str]) -> Vec<String> {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(COOKIE, value.parse().unwrap());
        }
        cookies_without_app_cookie(&headers).map(|value| value.to_str().unwrap().to_string()).into_iter().collect()
    }

    #[test]
    fn app_cookie_is_removed() {
        assert_eq!(cookies_after(&["a=1; cove_app=secret; b=2"]), ["a=1; b=2"]);
        assert_eq!(cookies_after(&["cove_app=secret"]), Vec::<String>::new());
        assert_eq!(cookies_after(&["a=1", "cove_app=x", "b=2;c=3"]), ["a=1; b=2; c=3"]);
        assert_eq!(cookies_after(&["cove_app_other=1; xcove_app=2"]), ["cove_app_other=1; xcove_app=2"]);
        assert_eq!(cookies_after(&[" cove_app = x ;;a=1"]), ["a=1"]);
    }

    fn hop_by_hop_after(pairs: &[(&str, &str)]) -> Vec<String> {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        remove_hop_by_hop(&mut headers);
        headers.keys().map(|name| name.to_string()).collect()
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        assert_eq!(hop_by_hop_after(&[("connection", "close"), ("te", "trailers"), ("x-a", "1")]), ["x-a"]);
        assert_eq!(
            hop_by_hop_after(&[("connection", "X-Secret, keep-alive"), ("x-secret", "1"), ("keep-alive", "5")]),
            Vec::<String>::new()
        );
        assert_eq!(
            hop_by_hop_after(&[("connection", "x-a"), ("connection", "x-b"), ("x-a", "1"), ("x-b", "2")]),
            Vec::<String>::new()
        );
    }

    #[test]
    fn probes_are_not_activity() {
        let activity = |agent: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(USER_AGENT, agent.parse().unwrap());
            is_user_activity(&headers)
        };
        assert!(activity("Mozilla/5.0"));
        assert!(activity("curl/8.0"));
        assert!(!activity("kube-probe/1.29"));
        assert!(!activity("Prometheus/2.51.0"));
        assert!(!activity("cove-probe/0.1"));
        assert!(is_user_activity(&HeaderMap::new()));
    }
}
