-- Users who log in through OpenID Connect. A provider's account is linked to a Cove user
-- by (issuer, subject), the pair the provider promises never to reuse; never by the email
-- address, which a user can change and a provider may not have verified.
CREATE TABLE oidc_identities (
    issuer        TEXT NOT NULL CHECK (issuer <> ''),
    subject       TEXT NOT NULL CHECK (subject <> ''),
    user_id       TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- The address the provider last gave, for people reading the database.
    email         TEXT,
    created_at    INTEGER NOT NULL,
    last_login_at INTEGER NOT NULL,
    PRIMARY KEY (issuer, subject)
) STRICT;

CREATE INDEX oidc_identities_user_id ON oidc_identities (user_id);
