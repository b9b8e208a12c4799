-- Secrets users and admins keep for their workspaces (environment variables and files).
-- Values are AES-256-GCM ciphertext under the instance key (kept outside the database),
-- with a fresh random nonce per value; the row's identity is bound in as associated data.
--
-- `owner` is '' for the instance scope, a user id for the user scope and a workspace id for
-- the workspace scope.
CREATE TABLE secrets (
    scope      TEXT NOT NULL CHECK (scope IN ('instance', 'user', 'workspace')),
    owner      TEXT NOT NULL,
    name       TEXT NOT NULL CHECK (name <> ''),
    kind       TEXT NOT NULL CHECK (kind IN ('env', 'file')),
    nonce      BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (scope, owner, name)
) STRICT;

-- The resolved set each workspace was given, frozen when it was made (or refreshed): what
-- its agent delivers, whatever the scopes say now.
CREATE TABLE workspace_secrets (
    workspace_id TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    name         TEXT NOT NULL CHECK (name <> ''),
    kind         TEXT NOT NULL CHECK (kind IN ('env', 'file')),
    scope        TEXT NOT NULL CHECK (scope IN ('instance', 'user', 'workspace')),
    nonce        BLOB NOT NULL,
    ciphertext   BLOB NOT NULL,
    frozen_at    INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, name)
) STRICT;
