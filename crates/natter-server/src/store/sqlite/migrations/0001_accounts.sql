-- Accounts, devices, verification codes, contacts and server secrets.
-- Ids are UUIDs stored as 16-byte blobs; times are Unix milliseconds.

CREATE TABLE server_secrets (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
) STRICT;

CREATE TABLE users (
    id                   BLOB PRIMARY KEY,
    phone                TEXT NOT NULL UNIQUE,
    name                 TEXT NOT NULL,
    about                TEXT NOT NULL DEFAULT '',
    last_seen_visibility TEXT NOT NULL DEFAULT 'everyone'
                         CHECK (last_seen_visibility IN ('everyone', 'contacts', 'nobody')),
    last_seen_at         INTEGER,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL
) STRICT;

CREATE TABLE devices (
    id             BLOB PRIMARY KEY,
    user_id        BLOB NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name           TEXT NOT NULL,
    token_hash     BLOB NOT NULL UNIQUE,
    created_at     INTEGER NOT NULL,
    last_active_at INTEGER NOT NULL
) STRICT;
CREATE INDEX devices_by_user ON devices(user_id);

CREATE TABLE verification_codes (
    phone      TEXT PRIMARY KEY,
    code_hash  BLOB NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT;
CREATE INDEX verification_codes_by_expiry ON verification_codes(expires_at);

CREATE TABLE contacts (
    owner_id       BLOB NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    contact_id     BLOB NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    added_by_phone INTEGER NOT NULL,
    created_at     INTEGER NOT NULL,
    PRIMARY KEY (owner_id, contact_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX contacts_by_contact ON contacts(contact_id, owner_id);
