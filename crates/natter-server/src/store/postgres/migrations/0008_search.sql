-- Full-text search over plaintext messages, maintained inside each append:
-- `words` holds a message's words as the server's tokenizer splits them
-- (search_query::index_words: letters and digits, case and accents
-- folded, the way the embedded engine's FTS5 index splits them), with
-- their positions, for phrases. NULL for everything not searchable
-- (encrypted chats, system entries, edits, deletions, deleted messages).
-- Nothing follows the log, so the index never lags behind it.
ALTER TABLE chat_log ADD COLUMN words tsvector;
CREATE INDEX chat_log_words ON chat_log USING gin (words) WHERE words IS NOT NULL;

-- Substrings of scripts written without spaces (Chinese, Japanese, Korean).
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX chat_log_trigrams ON chat_log USING gin (content gin_trgm_ops)
    WHERE words IS NOT NULL;
