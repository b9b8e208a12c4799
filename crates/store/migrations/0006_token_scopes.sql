-- What each API token may do (`cove_core::TokenScope`). Tokens made before scopes existed
-- keep what they could do: everything their user could, so admins' tokens become admin.
ALTER TABLE api_tokens ADD COLUMN scope TEXT NOT NULL DEFAULT 'write'
    CHECK (scope IN ('read', 'write', 'admin'));

UPDATE api_tokens SET scope = 'admin' WHERE user_id IN (SELECT id FROM users WHERE role = 'admin');
