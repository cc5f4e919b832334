-- Push channels (one per device) and the push outbox: at most one waiting
-- push per device, into which a burst of messages coalesces.
-- (0005 is reserved for media.)

CREATE TABLE push_channels (
    device_id  BLOB PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,
    user_id    BLOB NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    kind       TEXT NOT NULL CHECK (kind IN ('webpush', 'unifiedpush')),
    endpoint   TEXT NOT NULL,
    p256dh     BLOB,
    auth       BLOB,
    created_at INTEGER NOT NULL
) STRICT;
CREATE INDEX push_channels_by_user ON push_channels(user_id);

CREATE TABLE push_outbox (
    device_id      BLOB PRIMARY KEY REFERENCES push_channels(device_id) ON DELETE CASCADE,
    user_id        BLOB NOT NULL,
    chat_id        BLOB,              -- NULL: the messages are in several chats
    count          INTEGER NOT NULL,
    since_pts      INTEGER NOT NULL,  -- the device syncs from here
    last_pts       INTEGER NOT NULL,
    preview_sender TEXT,              -- only with previews on, plaintext chats
    preview_text   TEXT,
    queued_at      INTEGER NOT NULL,  -- the burst's first message; due a window later
    retry_at       INTEGER,           -- set by a retry, or by a send in progress (lease)
    attempts       INTEGER NOT NULL DEFAULT 0,
    version        INTEGER NOT NULL DEFAULT 0
) STRICT;
