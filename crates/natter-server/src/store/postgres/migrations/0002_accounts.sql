-- Accounts, devices, verification codes, contacts, server secrets, and the
-- media records a profile picture points at: the aggregate that lives in
-- the one accounts database (chat logs are partitioned by chat over one or
-- more databases of their own). Ids are uuids; times are Unix milliseconds
-- (bigint), as in the embedded engine, so both answer with the same values.

CREATE TABLE server_secrets (
    name  text PRIMARY KEY,
    value bytea NOT NULL
);

CREATE TABLE users (
    id                   uuid PRIMARY KEY,
    phone                text NOT NULL UNIQUE,
    name                 text NOT NULL,
    about                text NOT NULL DEFAULT '',
    last_seen_visibility text NOT NULL DEFAULT 'everyone'
                         CHECK (last_seen_visibility IN ('everyone', 'contacts', 'nobody')),
    group_add_permission text NOT NULL DEFAULT 'everyone'
                         CHECK (group_add_permission IN ('everyone', 'contacts', 'nobody')),
    last_seen_at         bigint,
    profile_pic          uuid,
    created_at           bigint NOT NULL,
    updated_at           bigint NOT NULL,
    deactivated_at       bigint,
    deleted_at           bigint
);
CREATE INDEX users_by_profile_pic ON users (profile_pic) WHERE profile_pic IS NOT NULL;

CREATE TABLE devices (
    id             uuid PRIMARY KEY,
    user_id        uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name           text NOT NULL,
    token_hash     bytea NOT NULL UNIQUE,
    created_at     bigint NOT NULL,
    last_active_at bigint NOT NULL
);
CREATE INDEX devices_by_user ON devices (user_id, created_at, id);

CREATE TABLE verification_codes (
    phone      text PRIMARY KEY,
    code_hash  bytea NOT NULL,
    attempts   integer NOT NULL DEFAULT 0,
    created_at bigint NOT NULL,
    expires_at bigint NOT NULL,
    -- The code itself, only in sign-up mode `open` (development).
    shown_code text
);
CREATE INDEX verification_codes_by_expiry ON verification_codes (expires_at);

CREATE TABLE contacts (
    owner_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    contact_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    added_by_phone boolean NOT NULL,
    created_at     bigint NOT NULL,
    PRIMARY KEY (owner_id, contact_id)
);
CREATE INDEX contacts_by_contact ON contacts (contact_id, owner_id);

CREATE TABLE media (
    id           uuid PRIMARY KEY,
    owner_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind         text NOT NULL CHECK (kind IN ('image', 'video', 'file', 'encrypted')),
    chat_id      uuid,
    filename     text,
    -- The declared length while uploading; the size once ready.
    length       bigint NOT NULL,
    -- Bytes durably received so far (resumable uploads, from any node).
    received     bigint NOT NULL DEFAULT 0,
    ready        boolean NOT NULL DEFAULT false,
    content_type text,
    sha256       bytea,
    width        integer,
    height       integer,
    thumbnail    boolean NOT NULL DEFAULT false,
    created_at   bigint NOT NULL,
    completed_at bigint,
    expires_at   bigint
);
CREATE INDEX media_by_owner ON media (owner_id, ready);
CREATE INDEX media_expiring ON media (expires_at) WHERE NOT ready;
CREATE INDEX media_unreferenced ON media (completed_at) WHERE ready;
