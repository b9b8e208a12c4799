//! Stage 1, resolve host: which app, of which workspace, of which owner a request is for.
//!
//! App hosts look like `<app>--<workspace>--<owner>.<apps-domain>[:port]`, one DNS label in
//! front of the apps domain, so a single wildcard DNS record and certificate cover every app.
//! `cove_core::Name` forbids `--` inside names, which is what makes the split unambiguous.

use cove_core::Name;
use http::header::HOST;
use http::{HeaderMap, Uri};

/// What listens behind an app host: a port in the container, or a named app that the
/// server maps to a port (such as `code` for the editor).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum App {
    Port(u16),
    Named(String),
}

/// The app's name as share levels and URLs use it: the port number, or the name.
impl std::fmt::Display for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            App::Port(port) => write!(f, "{port}"),
            App::Named(name) => f.write_str(name),
        }
    }
}

/// A parsed app host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppHost {
    pub app: App,
    pub workspace: Name,
    pub owner: Name,
    /// The host as the client sent it (with its port, if any), lowercased.
    pub host: String,
}

/// Parses `<app>--<workspace>--<owner>.<apps_domain>` with an optional `:port`; `None` for
/// any other host, which then belongs to the dashboard and API.
///
/// The app is a port (1-65535, written without leading zeros so one app has one host name
/// and one set of cookies) or a name under the same rules as [`cove_core::Name`]. Host names
/// are case-insensitive (RFC 4343), and a trailing dot (the fully qualified form) is accepted.
pub fn parse_host(host: &str, apps_domain: &str) -> Option<AppHost> {
    let lowered = host.to_ascii_lowercase();
    let domain = apps_domain.trim_matches('.');
    if domain.is_empty() {
        return None;
    }
    let name = without_port(&lowered)?;
    let name = name.strip_suffix('.').unwrap_or(name);
    let label = strip_suffix_ignore_case(name, domain)?.strip_suffix('.')?;
    if label.contains('.') {
        return None;
    }
    let mut parts = label.split("--");
    let (app, workspace, owner) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    Some(AppHost {
        app: parse_app(app)?,
        workspace: Name::parse(workspace).ok()?,
        owner: Name::parse(owner).ok()?,
        host: lowered,
    })
}

/// `name` without `suffix`, compared ASCII-case-insensitively (without lowercasing the
/// domain into a new string on every request).
fn strip_suffix_ignore_case<'a>(name: &'a str, suffix: &str) -> Option<&'a str> {
    let start = name.len().checked_sub(suffix.len())?;
    let matches = name.as_bytes()[start..].eq_ignore_ascii_case(suffix.as_bytes());
    // A byte-wise match of an ASCII-insensitive compare ends on a character boundary, but
    // `get` checks rather than trusts that.
    if matches {
        name.get(..start)
    } else {
        None
    }
}

/// The host name without a `:port`; `None` if what follows the last colon is not a port.
/// (IPv6 literals such as `[::1]:80` come out as `[::1]`, which no apps domain matches.)
fn without_port(host: &str) -> Option<&str> {
    match host.rsplit_once(':') {
        None => Some(host),
        // RFC 3986 allows an empty port, meaning the scheme's default.
        Some((name, "")) => Some(name),
        Some((name, port)) => (port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok()).then_some(name),
    }
}

fn parse_app(app: &str) -> Option<App> {
    if app.bytes().all(|b| b.is_ascii_digit()) {
        // Also rejects "0" and the empty string (which `parse` refuses).
        if app.starts_with('0') {
            return None;
        }
        return app.parse::<u16>().ok().map(App::Port);
    }
    Name::parse(app).ok().map(|name| App::Named(name.as_str().to_string()))
}

/// The host a request is for, as the client sent it: the URI's authority (HTTP/2's
/// `:authority`, or an absolute-form HTTP/1.1 target, which RFC 9112 §3.2.2 says wins over
/// Host), else the Host header.
pub(crate) fn request_host<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    match uri.authority() {
        // Userinfo ("user@") is not part of the host.
        Some(authority) => authority.as_str().rsplit('@').next(),
        None => headers.get(HOST)?.to_str().ok(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn check(uri: &str, host_header: Option<&str>, expected: Option<&str>) {
        let uri: Uri = uri.parse().unwrap();
        let mut headers = HeaderMap::new();
        if let Some(host) = host_header {
            headers.insert(HOST, host.parse().unwrap());
        }
        assert_eq!(request_host(&uri, &headers), expected, "uri {uri}, host {host_header:?}");
    }

    #[test]
    fn request_host_prefers_the_authority() {
        check("/path", Some("a.example:80"), Some("a.example:80"));
        check("http://b.example:8080/path", Some("a.example"), Some("b.example:8080"));
        check("http://user:pw@b.example/path", None, Some("b.example"));
        check("/path", None, None);
    }
}
