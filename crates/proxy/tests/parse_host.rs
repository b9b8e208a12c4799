//! Which hosts are app hosts, and what they say.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cove_core::Name;
use cove_proxy::{parse_host, App, AppHost};

fn check(host: &str, apps_domain: &str, expected: Option<(App, &str, &str)>) {
    let expected = expected.map(|(app, workspace, owner)| AppHost {
        app,
        workspace: Name::parse(workspace).unwrap(),
        owner: Name::parse(owner).unwrap(),
        host: host.to_ascii_lowercase(),
    });
    assert_eq!(parse_host(host, apps_domain), expected, "host {host:?} under {apps_domain:?}");
}

fn port(port: u16, workspace: &'static str, owner: &'static str) -> Option<(App, &'static str, &'static str)> {
    Some((App::Port(port), workspace, owner))
}

fn named(app: &str, workspace: &'static str, owner: &'static str) -> Option<(App, &'static str, &'static str)> {
    Some((App::Named(app.to_string()), workspace, owner))
}

#[test]
fn app_hosts() {
    // Ports, with and without the listener's port.
    check("8080--api--alice.localhost", "localhost", port(8080, "api", "alice"));
    check("8080--api--alice.localhost:7080", "localhost", port(8080, "api", "alice"));
    check("1--a--b.localhost", "localhost", port(1, "a", "b"));
    check("65535--a--b.localhost", "localhost", port(65535, "a", "b"));
    // Named apps.
    check("code--api--alice.localhost:7080", "localhost", named("code", "api", "alice"));
    check("my-app2--web-1--bob.localhost", "localhost", named("my-app2", "web-1", "bob"));
    // Case-insensitive; `host` keeps the port, lowercased.
    check("8080--API--Alice.LOCALHOST:7080", "localhost", port(8080, "api", "alice"));
    check("code--api--alice.localhost", "LocalHost", named("code", "api", "alice"));
    // Apps domains of several labels, and the fully qualified form.
    check("3000--api--alice.apps.example.com", "apps.example.com", port(3000, "api", "alice"));
    check("3000--api--alice.apps.example.com:443", "apps.example.com", port(3000, "api", "alice"));
    check("3000--api--alice.apps.example.com.", "apps.example.com", port(3000, "api", "alice"));
    check("3000--api--alice.apps.example.com", ".apps.example.com.", port(3000, "api", "alice"));
}

#[test]
fn other_hosts() {
    for (host, apps_domain) in [
        // Not three parts.
        ("8080--api.localhost", "localhost"),
        ("8080--a--b--c.localhost", "localhost"),
        ("localhost", "localhost"),
        ("localhost:7080", "localhost"),
        ("api.localhost", "localhost"),
        // Another domain, or the apps domain as a mere suffix of a label.
        ("a--b--c.other.com", "localhost"),
        ("a--b--c.other.com", "example.com"),
        ("8080--a--b.xlocalhost", "localhost"),
        ("8080--a--b.apps.example.com", "example.com"),
        // Two labels in front of the apps domain.
        ("x.8080--a--b.localhost", "localhost"),
        // Ports out of range or not canonical.
        ("0--a--b.localhost", "localhost"),
        ("70000--a--b.localhost", "localhost"),
        ("65536--a--b.localhost", "localhost"),
        ("08080--a--b.localhost", "localhost"),
        // Empty or invalid parts.
        ("--a--b.localhost", "localhost"),
        ("8080----b.localhost", "localhost"),
        ("8080--a--.localhost", "localhost"),
        ("8080--9a--b.localhost", "localhost"),
        ("9app--a--b.localhost", "localhost"),
        ("8080--a_b--c.localhost", "localhost"),
        ("8080---a--b.localhost", "localhost"),
        // Bad listener ports, IP literals, an empty apps domain.
        ("8080--a--b.localhost:http", "localhost"),
        ("8080--a--b.localhost:99999", "localhost"),
        ("127.0.0.1:7080", "localhost"),
        ("[::1]:7080", "localhost"),
        ("8080--a--b.localhost", ""),
        ("", "localhost"),
    ] {
        check(host, apps_domain, None);
    }
}
