-- Chats, membership periods, chat logs and receipt positions: the tables a
-- chat database holds. Every database gets the whole schema, so any of them
-- can serve as the accounts database or as one of the chat databases; a
-- chat lives in the database its id hashes to. So chat tables carry user
-- ids without foreign keys to users (the accounts may be elsewhere).
--
-- An append locks its chat's row (FOR UPDATE): appends to one chat from
-- many nodes are serialized there, and the row holds the log's head
-- (`last_seq`), so a seq is never taken twice.

CREATE TABLE chats (
    id               uuid PRIMARY KEY,
    kind             text NOT NULL CHECK (kind IN ('direct', 'group')),
    name             text,
    encrypted        boolean NOT NULL,
    epoch            bigint NOT NULL DEFAULT 0,
    -- Direct chats: the two user ids, sorted and concatenated; one chat per pair.
    direct_key       bytea UNIQUE,
    created_by       uuid NOT NULL,
    created_at       bigint NOT NULL,
    last_seq         bigint NOT NULL DEFAULT 0,
    last_activity_at bigint NOT NULL
);

-- A user sees the events from from_seq (their join) to to_seq (their
-- removal, inclusive); to_seq is NULL while they are a member.
CREATE TABLE memberships (
    chat_id   uuid NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    user_id   uuid NOT NULL,
    from_seq  bigint NOT NULL,
    to_seq    bigint,
    role      text NOT NULL CHECK (role IN ('admin', 'member')),
    joined_at bigint NOT NULL,
    PRIMARY KEY (chat_id, user_id, from_seq)
);
CREATE UNIQUE INDEX memberships_current ON memberships (chat_id, user_id) WHERE to_seq IS NULL;
CREATE INDEX memberships_by_user ON memberships (user_id, chat_id) WHERE to_seq IS NULL;

-- The append-only chat log. kind: message | system | edit | delete.
CREATE TABLE chat_log (
    chat_id           uuid NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    seq               bigint NOT NULL,
    id                uuid NOT NULL UNIQUE,
    kind              text NOT NULL CHECK (kind IN ('message', 'system', 'edit', 'delete')),
    sender_id         uuid NOT NULL,
    sender_device_id  uuid,
    msg_type          text,
    content           text,
    ciphertext        bytea,
    media_id          text,
    reply_to          uuid,
    client_message_id text,
    client_timestamp  bigint,
    -- system: the event as JSON; edit/delete: the target message id.
    event             text,
    target_id         uuid,
    created_at        bigint NOT NULL,
    edited_at         bigint,
    deleted_at        bigint,
    PRIMARY KEY (chat_id, seq)
);
CREATE UNIQUE INDEX chat_log_idempotency
    ON chat_log (chat_id, sender_id, client_message_id) WHERE client_message_id IS NOT NULL;
CREATE INDEX chat_log_by_media ON chat_log (media_id) WHERE media_id IS NOT NULL;
CREATE INDEX chat_log_by_sender ON chat_log (sender_id) WHERE kind = 'message';

CREATE TABLE receipts (
    chat_id       uuid NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    user_id       uuid NOT NULL,
    delivered_seq bigint NOT NULL DEFAULT 0,
    read_seq      bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (chat_id, user_id)
);
