-- Full-text search over plaintext messages. Encrypted chats are never
-- indexed. Maintained in the same transaction as the chat log.

-- One row per indexed message; its id is the rowid in the FTS tables.
CREATE TABLE search_docs (
    id         INTEGER PRIMARY KEY,
    chat_id    BLOB NOT NULL,
    seq        INTEGER NOT NULL,
    sender_id  BLOB NOT NULL,
    msg_type   TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (chat_id, seq)
) STRICT;

-- Words, with case and accents folded (café finds cafe).
CREATE VIRTUAL TABLE search_words USING fts5(
    content, tokenize = 'unicode61 remove_diacritics 2'
);

-- Trigrams, for scripts written without spaces (Chinese, Japanese, Korean);
-- only messages that contain such characters are indexed here.
CREATE VIRTUAL TABLE search_trigrams USING fts5(
    content, tokenize = 'trigram remove_diacritics 1', content = '', contentless_delete = 1
);

-- Deleting a message removes its tokens from the index at once, not at the
-- next segment merge: "deleted for everyone" leaves nothing searchable behind.
INSERT INTO search_words (search_words, rank) VALUES ('secure-delete', 1);
INSERT INTO search_trigrams (search_trigrams, rank) VALUES ('secure-delete', 1);
