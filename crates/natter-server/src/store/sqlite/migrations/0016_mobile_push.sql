-- Mobile push: FCM and APNs channels beside Web Push and UnifiedPush. For
-- them `endpoint` holds the device token; `environment` is the APNs
-- environment that issued it ('sandbox' or 'production', NULL otherwise).
-- SQLite cannot change a CHECK constraint in place, so both tables are
-- made anew (the outbox refers to the channels) and the rows copied over.

CREATE TABLE push_channels_new (
    device_id   BLOB PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,
    user_id     BLOB NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    kind        TEXT NOT NULL CHECK (kind IN ('webpush', 'unifiedpush', 'fcm', 'apns')),
    endpoint    TEXT NOT NULL,
    p256dh      BLOB,
    auth        BLOB,
    created_at  INTEGER NOT NULL,
    environment TEXT CHECK (environment IN ('sandbox', 'production'))
) STRICT;
INSERT INTO push_channels_new (device_id, user_id, kind, endpoint, p256dh, auth, created_at)
    SELECT device_id, user_id, kind, endpoint, p256dh, auth, created_at FROM push_channels;

CREATE TABLE push_outbox_new (
    device_id      BLOB PRIMARY KEY REFERENCES push_channels_new(device_id) ON DELETE CASCADE,
    user_id        BLOB NOT NULL,
    chat_id        BLOB,              -- NULL: the messages are in several chats
    count          INTEGER NOT NULL,
    since_seq      INTEGER NOT NULL,  -- the device syncs from here
    last_seq       INTEGER NOT NULL,
    preview_sender TEXT,              -- only with previews on, plaintext chats
    preview_text   TEXT,
    queued_at      INTEGER NOT NULL,  -- the burst's first message; due a window later
    retry_at       INTEGER,           -- set by a retry, or by a send in progress (lease)
    attempts       INTEGER NOT NULL DEFAULT 0,
    version        INTEGER NOT NULL DEFAULT 0
) STRICT;
INSERT INTO push_outbox_new (device_id, user_id, chat_id, count, since_seq, last_seq,
                             preview_sender, preview_text, queued_at, retry_at, attempts, version)
    SELECT device_id, user_id, chat_id, count, since_seq, last_seq,
           preview_sender, preview_text, queued_at, retry_at, attempts, version FROM push_outbox;

DROP TABLE push_outbox;
DROP TABLE push_channels;
-- Renaming rewrites the outbox's reference to the new name.
ALTER TABLE push_channels_new RENAME TO push_channels;
ALTER TABLE push_outbox_new RENAME TO push_outbox;
CREATE INDEX push_channels_by_user ON push_channels(user_id);
