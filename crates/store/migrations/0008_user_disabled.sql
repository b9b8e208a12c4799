-- An admin can disable a user: their tokens and sessions stop working at once, and
-- they cannot log in, until enabled again. Nothing of theirs is deleted.
ALTER TABLE users ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1));
