-- A workspace's hand-off: who to tell (a webhook) once it is ready, and how that went.
CREATE TABLE handoffs (
    workspace_id    TEXT NOT NULL PRIMARY KEY REFERENCES workspaces (id) ON DELETE CASCADE,
    notify_url      TEXT NOT NULL CHECK (notify_url <> ''),
    message         TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL CHECK (attempts >= 0),
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT,
    delivered_at    INTEGER,
    created_at      INTEGER NOT NULL
) STRICT;
