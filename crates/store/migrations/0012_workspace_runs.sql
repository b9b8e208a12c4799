-- Run intervals: one row per time a workspace was seen running, from the observation
-- that it runs to the one that it does not (NULL while it still runs). The store writes
-- them with the observed state itself, so no path that records state can forget them.
-- The workspace's name, owner and size are copied: usage outlives the workspace (no
-- foreign key), and a resize only affects later runs.
CREATE TABLE workspace_runs (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace_id   TEXT NOT NULL,
    workspace_name TEXT NOT NULL,
    owner_id       TEXT NOT NULL,
    cpus_milli     INTEGER NOT NULL CHECK (cpus_milli > 0),
    memory_bytes   INTEGER NOT NULL CHECK (memory_bytes > 0),
    started_at     INTEGER NOT NULL,
    stopped_at     INTEGER CHECK (stopped_at IS NULL OR stopped_at >= started_at)
) STRICT;

-- At most one open run per workspace.
CREATE UNIQUE INDEX workspace_runs_open ON workspace_runs (workspace_id) WHERE stopped_at IS NULL;
CREATE INDEX workspace_runs_stopped_at ON workspace_runs (stopped_at);
