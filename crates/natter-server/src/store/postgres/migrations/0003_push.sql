-- Push channels (one per device) and the outbox of pushes waiting to be
-- sent, at most one row per device (new messages coalesce into it). Every
-- node's push worker claims due rows with FOR UPDATE SKIP LOCKED and leases
-- them, so a push is sent by one node, and retried after the lease if that
-- node dies mid-send.

CREATE TABLE push_channels (
    device_id   uuid PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind        text NOT NULL CHECK (kind IN ('webpush', 'unifiedpush', 'fcm', 'apns')),
    endpoint    text NOT NULL,
    p256dh      bytea,
    auth        bytea,
    created_at  bigint NOT NULL,
    environment text CHECK (environment IN ('sandbox', 'production'))
);
CREATE INDEX push_channels_by_user ON push_channels (user_id);

CREATE TABLE push_outbox (
    device_id      uuid PRIMARY KEY REFERENCES push_channels (device_id) ON DELETE CASCADE,
    user_id        uuid NOT NULL,
    chat_id        uuid,              -- NULL: the messages are in several chats
    count          bigint NOT NULL,
    since_seq      bigint NOT NULL,   -- the device syncs from here
    last_seq       bigint NOT NULL,
    preview_sender text,              -- only with previews on, plaintext chats
    preview_text   text,
    queued_at      bigint NOT NULL,   -- the burst's first message; due a window later
    retry_at       bigint,            -- set by a retry, or by a send in progress (lease)
    attempts       integer NOT NULL DEFAULT 0,
    version        bigint NOT NULL DEFAULT 0
);
