-- Git tokens users keep for their workspaces' credential helper, one per user and host.
-- The token is AES-256-GCM ciphertext under the instance key (<data-dir>/secret.key, not in
-- the database), with a fresh random nonce per value.
CREATE TABLE git_tokens (
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    host       TEXT NOT NULL CHECK (host <> ''),
    username   TEXT NOT NULL,
    nonce      BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, host)
) STRICT;
