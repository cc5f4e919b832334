-- Invites (signup.mode = "invite") and deactivated accounts (natter admin).
-- An invite is kept only as the SHA-256 of its token, like access tokens.

CREATE TABLE invites (
    id         BLOB PRIMARY KEY,
    token_hash BLOB NOT NULL UNIQUE,
    max_uses   INTEGER NOT NULL CHECK (max_uses > 0),
    uses       INTEGER NOT NULL DEFAULT 0,
    expires_at INTEGER,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
) STRICT;

-- Set by `natter admin user deactivate`: no device, no login.
ALTER TABLE users ADD COLUMN deactivated_at INTEGER;
