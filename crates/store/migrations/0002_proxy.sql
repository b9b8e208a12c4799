-- Activity seen by the proxy (and exec), for the idle stop; and who may open each app.
ALTER TABLE workspaces ADD COLUMN last_activity_at INTEGER;
ALTER TABLE workspaces ADD COLUMN last_activity_kind TEXT;

CREATE TABLE workspace_apps (
    workspace_id TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    app          TEXT NOT NULL CHECK (app <> ''),
    share        TEXT NOT NULL CHECK (share IN ('owner', 'authenticated', 'public')),
    PRIMARY KEY (workspace_id, app)
) STRICT;
