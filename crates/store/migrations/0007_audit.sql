-- Who changed what, when and from where: one row per state-changing API request.
-- No foreign key on the actor: the record outlives the user. Nothing secret goes here
-- (the server records routes and outcomes, never request bodies).
CREATE TABLE audit_log (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         INTEGER NOT NULL,
    actor_id   TEXT,
    actor_name TEXT,
    action     TEXT NOT NULL,
    target     TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    peer       TEXT
) STRICT;

CREATE INDEX audit_log_at ON audit_log (at);
