-- Chats, membership periods, the chat log, read receipts and each user's
-- update stream (pts).

CREATE TABLE chats (
    id               BLOB PRIMARY KEY,
    kind             TEXT NOT NULL CHECK (kind IN ('direct', 'group')),
    name             TEXT,
    encrypted        INTEGER NOT NULL,
    -- Direct chats: the two user ids, sorted and concatenated; one chat per pair.
    direct_key       BLOB UNIQUE,
    created_by       BLOB NOT NULL REFERENCES users(id),
    created_at       INTEGER NOT NULL,
    -- The chat log's head: the last seq allocated.
    last_seq         INTEGER NOT NULL DEFAULT 0,
    last_activity_at INTEGER NOT NULL
) STRICT;

-- A user sees the events from from_seq (their join) to to_seq (their
-- removal, inclusive); to_seq is NULL while they are a member.
CREATE TABLE memberships (
    chat_id   BLOB NOT NULL REFERENCES chats(id) ON DELETE CASCADE,
    user_id   BLOB NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    from_seq  INTEGER NOT NULL,
    to_seq    INTEGER,
    role      TEXT NOT NULL CHECK (role IN ('admin', 'member')),
    joined_at INTEGER NOT NULL,
    PRIMARY KEY (chat_id, user_id, from_seq)
) STRICT, WITHOUT ROWID;
CREATE UNIQUE INDEX memberships_current ON memberships(chat_id, user_id) WHERE to_seq IS NULL;
CREATE INDEX memberships_by_user ON memberships(user_id, chat_id) WHERE to_seq IS NULL;

-- The append-only chat log. kind: message | system | edit | delete.
CREATE TABLE chat_log (
    chat_id           BLOB NOT NULL REFERENCES chats(id) ON DELETE CASCADE,
    seq               INTEGER NOT NULL,
    id                BLOB NOT NULL,
    kind              TEXT NOT NULL CHECK (kind IN ('message', 'system', 'edit', 'delete')),
    sender_id         BLOB NOT NULL,
    sender_device_id  BLOB,
    msg_type          TEXT,
    content           TEXT,
    ciphertext        BLOB,
    media_id          TEXT,
    reply_to          BLOB,
    client_message_id TEXT,
    client_timestamp  INTEGER,
    -- system: the event as JSON; edit/delete: the target message id.
    event             TEXT,
    target_id         BLOB,
    created_at        INTEGER NOT NULL,
    edited_at         INTEGER,
    deleted_at        INTEGER,
    PRIMARY KEY (chat_id, seq)
) STRICT, WITHOUT ROWID;
CREATE UNIQUE INDEX chat_log_by_id ON chat_log(id);
CREATE UNIQUE INDEX chat_log_idempotency
    ON chat_log(chat_id, sender_id, client_message_id) WHERE client_message_id IS NOT NULL;

CREATE TABLE receipts (
    chat_id       BLOB NOT NULL REFERENCES chats(id) ON DELETE CASCADE,
    user_id       BLOB NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    delivered_seq INTEGER NOT NULL DEFAULT 0,
    read_seq      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (chat_id, user_id)
) STRICT, WITHOUT ROWID;

-- Every persisted update that concerns a user, numbered by that user's pts.
ALTER TABLE users ADD COLUMN pts INTEGER NOT NULL DEFAULT 0;
CREATE TABLE updates (
    user_id    BLOB NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    pts        INTEGER NOT NULL,
    chat_id    BLOB NOT NULL,
    seq        INTEGER,
    kind       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, pts)
) STRICT, WITHOUT ROWID;
