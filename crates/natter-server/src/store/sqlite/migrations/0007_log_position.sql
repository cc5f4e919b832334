-- The chat log gets a global append position, `pos`: the order in which its
-- entries were committed, across all chats (the one writer assigns it).
-- Followers of the log, such as the search indexer, keep a durable cursor on
-- it instead of being written to inside the append transaction. Entries are
-- still addressed by (chat_id, seq); existing entries keep their seq and get
-- positions in the order they were written.

CREATE TABLE chat_log_new (
    pos               INTEGER PRIMARY KEY,
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
    deleted_at        INTEGER
) STRICT;

INSERT INTO chat_log_new (chat_id, seq, id, kind, sender_id, sender_device_id, msg_type,
                          content, ciphertext, media_id, reply_to, client_message_id,
                          client_timestamp, event, target_id, created_at, edited_at, deleted_at)
SELECT chat_id, seq, id, kind, sender_id, sender_device_id, msg_type,
       content, ciphertext, media_id, reply_to, client_message_id,
       client_timestamp, event, target_id, created_at, edited_at, deleted_at
FROM chat_log ORDER BY created_at, chat_id, seq;

DROP TABLE chat_log;
ALTER TABLE chat_log_new RENAME TO chat_log;

CREATE UNIQUE INDEX chat_log_position ON chat_log(chat_id, seq);
CREATE UNIQUE INDEX chat_log_by_id ON chat_log(id);
CREATE UNIQUE INDEX chat_log_idempotency
    ON chat_log(chat_id, sender_id, client_message_id) WHERE client_message_id IS NOT NULL;
CREATE INDEX chat_log_by_media ON chat_log(media_id) WHERE media_id IS NOT NULL;
