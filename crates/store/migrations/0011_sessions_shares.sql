-- Login sessions: the API tokens a password login made (the CLI's, the dashboard's cookie),
-- with where they came from, so that a user can list and revoke them.
CREATE TABLE sessions (
    token_id   TEXT NOT NULL PRIMARY KEY REFERENCES api_tokens (id) ON DELETE CASCADE,
    peer       TEXT,
    user_agent TEXT
) STRICT;

-- Workspaces shared with named users: they may open its apps and terminal.
CREATE TABLE workspace_shares (
    workspace_id TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, user_id)
) STRICT;

CREATE INDEX workspace_shares_user_id ON workspace_shares (user_id);
