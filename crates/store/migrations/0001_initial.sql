-- Cove's first schema.
--
-- sqlx records a checksum of every applied migration: once released, never edit this
-- file; change the schema in a new one.
--
-- Times are INTEGER unix milliseconds (UTC); ids are hyphenated uuid text. STRICT makes
-- SQLite refuse values of the wrong type instead of storing them anyway. The CHECKs on
-- states mirror `cove_core::{DesiredState, ActualState}`: a new state needs a migration
-- (the store tests write every state, so a forgotten one fails there first).

CREATE TABLE settings (
    key   TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

CREATE TABLE users (
    id            TEXT NOT NULL PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'member')),
    password_hash TEXT NOT NULL,
    created_at    INTEGER NOT NULL
) STRICT;

CREATE TABLE api_tokens (
    id           TEXT NOT NULL PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    token_hash   TEXT NOT NULL UNIQUE,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER,
    last_used_at INTEGER
) STRICT;

-- Listing a user's tokens, and the cascade when a user goes.
CREATE INDEX api_tokens_user_id ON api_tokens (user_id);

CREATE TABLE workspaces (
    id                   TEXT NOT NULL PRIMARY KEY,
    name                 TEXT NOT NULL,
    owner_id             TEXT NOT NULL REFERENCES users (id),
    image                TEXT NOT NULL CHECK (image <> ''),
    cpus_milli           INTEGER NOT NULL CHECK (cpus_milli > 0),
    memory_bytes         INTEGER NOT NULL CHECK (memory_bytes > 0),
    disk_bytes           INTEGER CHECK (disk_bytes > 0),
    idle_timeout_seconds INTEGER NOT NULL CHECK (idle_timeout_seconds >= 0),
    desired              TEXT NOT NULL CHECK (desired IN (
        'Running', 'Stopped', 'RestartRequested', 'Terminated'
    )),
    actual               TEXT NOT NULL CHECK (actual IN (
        'CreationRequested', 'Starting', 'Running', 'Stopping', 'Stopped',
        'Failed', 'Error', 'Terminating', 'Terminated', 'Unknown'
    )),
    message              TEXT,
    generation           INTEGER NOT NULL CHECK (generation >= 1),
    actual_generation    INTEGER NOT NULL CHECK (actual_generation >= 0),
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL,
    UNIQUE (owner_id, name)
) STRICT;
