//! The OpenAPI 3.1 document served at `/api/v1/openapi.json`. Written by hand next to
//! `ROUTES`; a test checks that every route here is served and every served route is here.

use serde_json::{json, Value};

/// Every API route as (method, path template).
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/api/v1/health"),
    ("get", "/api/v1/openapi.json"),
    ("post", "/api/v1/auth/login"),
    ("get", "/api/v1/me"),
    ("get", "/api/v1/me/handoff-key"),
    ("get", "/api/v1/status"),
    ("post", "/api/v1/users"),
    ("patch", "/api/v1/users/{id}"),
    ("get", "/api/v1/admin/audit"),
    ("get", "/api/v1/admin/audit.jsonl"),
    ("get", "/api/v1/admin/quotas"),
    ("put", "/api/v1/admin/quotas"),
    ("get", "/api/v1/tokens"),
    ("post", "/api/v1/tokens"),
    ("delete", "/api/v1/tokens/{id}"),
    ("get", "/api/v1/git-tokens"),
    ("put", "/api/v1/git-tokens/{host}"),
    ("delete", "/api/v1/git-tokens/{host}"),
    ("get", "/api/v1/workspaces"),
    ("post", "/api/v1/workspaces"),
    ("get", "/api/v1/workspaces/{ws}"),
    ("patch", "/api/v1/workspaces/{ws}"),
    ("delete", "/api/v1/workspaces/{ws}"),
    ("post", "/api/v1/workspaces/{ws}/exec"),
    ("get", "/api/v1/workspaces/{ws}/logs"),
    ("put", "/api/v1/workspaces/{ws}/files"),
    ("get", "/api/v1/workspaces/{ws}/apps"),
    ("put", "/api/v1/workspaces/{ws}/apps/{app}"),
    ("get", "/api/v1/workspaces/{ws}/ssh"),
    ("get", "/api/v1/workspaces/{ws}/tcp/{port}"),
    ("get", "/api/v1/workspaces/{ws}/ports"),
    ("post", "/api/v1/workspaces/{ws}/rebuild"),
    ("get", "/api/v1/secrets"),
    ("put", "/api/v1/secrets/{name}"),
    ("delete", "/api/v1/secrets/{name}"),
    ("get", "/api/v1/workspaces/{ws}/secrets"),
    ("post", "/api/v1/workspaces/{ws}/secrets/refresh"),
    ("put", "/api/v1/workspaces/{ws}/secrets/{name}"),
    ("delete", "/api/v1/workspaces/{ws}/secrets/{name}"),
    ("post", "/api/v1/admin/rotate-key"),
    ("get", "/api/v1/sessions"),
    ("delete", "/api/v1/sessions/{id}"),
    ("get", "/api/v1/workspaces/{ws}/shares"),
    ("put", "/api/v1/workspaces/{ws}/shares/{user}"),
    ("delete", "/api/v1/workspaces/{ws}/shares/{user}"),
];

fn summary(method: &str, path: &str) -> (&'static str, Option<&'static str>, &'static str) {
    // (summary, request schema, response description)
    match (method, path) {
        ("get", "/api/v1/health") => ("Liveness; needs no token", None, "ok"),
        ("get", "/api/v1/openapi.json") => ("This document", None, "the document"),
        ("post", "/api/v1/auth/login") => {
            ("Trade a username and password for a new API token", Some("Login"), "a token")
        }
        ("get", "/api/v1/me") => ("The calling user", None, "a user"),
        ("get", "/api/v1/me/handoff-key") => (
            "The key the caller's hand-off webhooks are signed with (X-Cove-Signature: sha256=<hex HMAC-SHA256 of the body>)",
            None,
            "the key, hex",
        ),
        ("get", "/api/v1/status") => ("Instance, engine and reconciler status", None, "status"),
        ("post", "/api/v1/users") => ("Create a user (admins only)", Some("CreateUser"), "the user"),
        ("get", "/api/v1/admin/audit") => (
            "The audit log of state-changing requests (admins only): `?since=<RFC 3339>&limit=N` (default 100), oldest first",
            None,
            "entries: id, at, actor_id, actor_name, action, target, outcome, peer",
        ),
        ("get", "/api/v1/admin/audit.jsonl") => {
            ("The audit log as JSON lines (admins only), same query", None, "application/jsonl")
        }
        ("get", "/api/v1/admin/quotas") => ("The per-user and per-workspace quotas (admins only)", None, "quotas"),
        ("put", "/api/v1/admin/quotas") => (
            "Replace the quotas (admins only); a limit left out is no limit",
            Some("SetQuotas"),
            "the quotas",
        ),
        ("patch", "/api/v1/users/{id}") => (
            "Disable or enable a user, or set their password (admins only); `{id}` is an id or a name",
            Some("PatchUser"),
            "the user",
        ),
        ("get", "/api/v1/tokens") => ("The caller's API tokens (never their secrets)", None, "tokens"),
        ("post", "/api/v1/tokens") => {
            ("Create an API token; the secret is shown once", Some("CreateToken"), "the token")
        }
        ("delete", "/api/v1/tokens/{id}") => ("Revoke an API token", None, "revoked"),
        ("get", "/api/v1/git-tokens") => {
            ("The caller's Git tokens: hosts, usernames, times (never tokens)", None, "git tokens")
        }
        ("put", "/api/v1/git-tokens/{host}") => (
            "Store (encrypted) the caller's Git token for a host, for workspaces' git",
            Some("SetGitToken"),
            "the host",
        ),
        ("delete", "/api/v1/git-tokens/{host}") => ("Forget the caller's Git token for a host", None, "deleted"),
        ("get", "/api/v1/workspaces") => ("The caller's workspaces; `?all=true` for admins", None, "workspaces"),
        ("post", "/api/v1/workspaces") => {
            ("Create a workspace", Some("CreateWorkspace"), "the workspace, actual state CreationRequested")
        }
        ("get", "/api/v1/workspaces/{ws}") => ("One workspace, by name or id", None, "the workspace"),
        ("patch", "/api/v1/workspaces/{ws}") => {
            ("Change desired state, resources or idle timeout", Some("PatchWorkspace"), "the workspace")
        }
        ("delete", "/api/v1/workspaces/{ws}") => {
            ("Delete a workspace, its container and its volume", None, "desired state Terminated")
        }
        ("post", "/api/v1/workspaces/{ws}/exec") => (
            "Run a command; newline-delimited JSON frames stdout/stderr (base64), then exit",
            Some("Exec"),
            "a stream of frames",
        ),
        ("get", "/api/v1/workspaces/{ws}/logs") => ("The container's output; `?follow=true&tail=N`", None, "text"),
        ("put", "/api/v1/workspaces/{ws}/files") => (
            "Put a tar archive (the body, application/x-tar) into the home at `?to=project`, running or stopped, without starting it",
            None,
            "what was put where: {to, files, directories, bytes}",
        ),
        ("get", "/api/v1/workspaces/{ws}/apps") => {
            ("The apps of a workspace that have a share level other than owner", None, "apps")
        }
        ("put", "/api/v1/workspaces/{ws}/apps/{app}") => {
            ("Set who may open an app (a port or a name): owner, authenticated or public", Some("Share"), "the app")
        }
        ("get", "/api/v1/workspaces/{ws}/ssh") => (
            "WebSocket: the workspace's SSH server (binary frames carry the SSH byte stream); wakes a stopped workspace",
            None,
            "101 Switching Protocols",
        ),
        ("get", "/api/v1/workspaces/{ws}/tcp/{port}") => (
            "WebSocket: a byte pipe to 127.0.0.1:{port} inside the workspace; wakes a stopped workspace",
            None,
            "101 Switching Protocols",
        ),
        ("get", "/api/v1/workspaces/{ws}/ports") => {
            ("The TCP ports listening inside the workspace, with their programs", None, "ports")
        }
        ("post", "/api/v1/workspaces/{ws}/rebuild") => (
            "Read devcontainer.json from the volume again and apply it (build, new container, volume kept); 202, follow `devcontainer.build`",
            None,
            "the workspace (202 Accepted)",
        ),
        ("get", "/api/v1/secrets") => (
            "Secrets of a scope: `?scope=user` (default, the caller's) or `?scope=instance` (admins); names, kinds and times, never values",
            None,
            "secrets",
        ),
        ("put", "/api/v1/secrets/{name}") => (
            "Store (encrypted) a secret in `?scope=user|instance`; workspaces made from now on get it",
            Some("SetSecret"),
            "the secret, without its value",
        ),
        ("delete", "/api/v1/secrets/{name}") => ("Forget a secret of `?scope=user|instance`", None, "deleted"),
        ("get", "/api/v1/workspaces/{ws}/secrets") => (
            "The workspace's own secrets and the set it was given (frozen), without values (owner or admin)",
            None,
            "{secrets, frozen}",
        ),
        ("post", "/api/v1/workspaces/{ws}/secrets/refresh") => (
            "Give the workspace the current values of its secrets (delivered at its next start)",
            None,
            "{frozen}",
        ),
        ("put", "/api/v1/workspaces/{ws}/secrets/{name}") => {
            ("Store (encrypted) a secret of this workspace alone", Some("SetSecret"), "the secret, without its value")
        }
        ("delete", "/api/v1/workspaces/{ws}/secrets/{name}") => ("Forget a secret of this workspace", None, "deleted"),
        ("post", "/api/v1/admin/rotate-key") => {
            ("Re-encrypt every stored secret under a new instance key (admins only)", None, "{reencrypted}")
        }
        ("get", "/api/v1/sessions") => (
            "The caller's login sessions: created, last used, address, user agent",
            None,
            "sessions",
        ),
        ("delete", "/api/v1/sessions/{id}") => ("End one of the caller's sessions at once", None, "revoked"),
        ("get", "/api/v1/workspaces/{ws}/shares") => ("The users a workspace is shared with (owner or admin)", None, "users"),
        ("put", "/api/v1/workspaces/{ws}/shares/{user}") => (
            "Share the workspace with a user: they see it and open its apps and terminal; they cannot delete it",
            None,
            "users",
        ),
        ("delete", "/api/v1/workspaces/{ws}/shares/{user}") => ("Stop sharing the workspace with a user", None, "users"),
        _ => ("", None, ""),
    }
}

/// One string path parameter per `{placeholder}` of `path`.
fn path_parameters(path: &str) -> Value {
    let names: Vec<&str> = path.split('{').skip(1).filter_map(|rest| rest.split('}').next()).collect();
    Value::Array(
        names
            .into_iter()
            .map(|name| {
                let description = match name {
                    "ws" => "workspace name or id",
                    "name" => "the secret's name",
                    "user" => "a user's name",
                    _ => "",
                };
                json!({ "name": name, "in": "path", "required": true, "description": description, "schema": { "type": "string" } })
            })
            .collect(),
    )
}

pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for (method, path) in ROUTES {
        let (summary, request, response) = summary(method, path);
        let mut op = json!({
            "summary": summary,
            "responses": {
                "2XX": { "description": response },
                "4XX": { "description": "a client error", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } },
                "5XX": { "description": "a server or engine error", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } },
            },
        });
        if path.contains("{name}") || path.contains("{user}") {
            op["parameters"] = path_parameters(path);
        } else if path.contains("{app}") {
            op["parameters"] = json!([
                { "name": "ws", "in": "path", "required": true, "description": "workspace name or id", "schema": { "type": "string" } },
                { "name": "app", "in": "path", "required": true, "description": "a port number or an app name", "schema": { "type": "string" } }
            ]);
        } else if path.contains("{port}") {
            op["parameters"] = json!([
                { "name": "ws", "in": "path", "required": true, "description": "workspace name or id", "schema": { "type": "string" } },
                { "name": "port", "in": "path", "required": true, "description": "a TCP port inside the workspace", "schema": { "type": "integer", "minimum": 1, "maximum": 65535 } }
            ]);
        } else if path.contains("{ws}") {
            op["parameters"] = json!([{ "name": "ws", "in": "path", "required": true, "description": "workspace name or id", "schema": { "type": "string" } }]);
        } else if path.contains("{host}") {
            op["parameters"] = json!([{ "name": "host", "in": "path", "required": true, "description": "host as git names it, with :port if not the default", "schema": { "type": "string" } }]);
        } else if path.contains("{id}") {
            op["parameters"] =
                json!([{ "name": "id", "in": "path", "required": true, "schema": { "type": "string" } }]);
        }
        if let Some(schema) = request {
            op["requestBody"] = json!({ "required": true, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } });
        }
        if *path != "/api/v1/health" && *path != "/api/v1/openapi.json" && *path != "/api/v1/auth/login" {
            op["security"] = json!([{ "bearer": [] }]);
        }
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[*method] = op;
    }
    let size =
        json!({ "oneOf": [{ "type": "integer", "description": "bytes" }, { "type": "string", "example": "2g" }] });
    json!({
        "openapi": "3.1.0",
        "info": { "title": "Cove API", "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Error": { "type": "object", "required": ["error"], "properties": { "error": { "type": "object", "required": ["code", "message"], "properties": { "code": { "type": "string" }, "message": { "type": "string" } } } } },
                "Login": { "type": "object", "required": ["username", "password"], "properties": { "username": { "type": "string" }, "password": { "type": "string" }, "token_name": { "type": "string" } } },
                "CreateUser": { "type": "object", "required": ["username", "password"], "properties": { "username": { "type": "string" }, "password": { "type": "string", "minLength": 12 }, "role": { "enum": ["admin", "member"] } } },
                "CreateToken": { "type": "object", "required": ["name"], "properties": { "name": { "type": "string" }, "expires_in_days": { "type": "integer", "minimum": 1 }, "scope": { "enum": ["read", "write", "admin"], "description": "read: GET only; write (default): also change own workspaces, apps, tokens; admin: everything, admins only" } } },
                "CreateWorkspace": { "type": "object", "required": ["name"], "additionalProperties": false, "properties": {
                    "name": { "type": "string", "pattern": "^[a-z]([a-z0-9-]{0,30}[a-z0-9])?$" },
                    "image": { "type": "string" }, "cpus": { "type": "number", "minimum": 0.1, "maximum": 64 },
                    "memory": size, "disk": size,
                    "idle_timeout_seconds": { "type": "integer", "minimum": 0 }, "start": { "type": "boolean" } } },
                "PatchWorkspace": { "type": "object", "additionalProperties": false, "properties": {
                    "desired_state": { "enum": ["Running", "Stopped", "RestartRequested"] },
                    "cpus": { "type": "number" }, "memory": size, "disk": size, "idle_timeout_seconds": { "type": "integer" } } },
                "PatchUser": { "type": "object", "additionalProperties": false, "properties": { "disabled": { "type": "boolean" }, "password": { "type": "string", "minLength": 12 } } },
                "SetQuotas": { "type": "object", "additionalProperties": false, "properties": {
                    "max_workspaces": { "type": "integer", "minimum": 0, "description": "workspaces per user" },
                    "max_running": { "type": "integer", "minimum": 0, "description": "workspaces a user may want running at once" },
                    "max_cpus": { "type": "number", "exclusiveMinimum": 0, "description": "CPUs per workspace" },
                    "max_memory": size } },
                "SetGitToken": { "type": "object", "required": ["token"], "additionalProperties": false, "properties": { "token": { "type": "string" }, "username": { "type": "string" } } },
                "SetSecret": { "type": "object", "required": ["value"], "additionalProperties": false, "properties": { "value": { "type": "string", "maxLength": 32768 }, "kind": { "enum": ["env", "file"], "description": "env (default): an environment variable; file: /run/cove/secrets/<name>" } } },
                "Share": { "type": "object", "required": ["share"], "properties": { "share": { "enum": ["owner", "authenticated", "public"] } } },
                "Exec": { "type": "object", "required": ["cmd"], "properties": { "cmd": { "type": "array", "items": { "type": "string" } }, "env": { "type": "array", "items": { "type": "string" } }, "workdir": { "type": "string" } } },
            }
        }
    })
}
