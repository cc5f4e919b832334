-- The search index leaves the append transaction: an indexer follows the
-- chat log in `pos` order and keeps its place here, moving it in the same
-- transaction as each change to the index, so every entry is indexed
-- exactly once, also after a crash between an append and its indexing.

-- One row: the last chat_log.pos the index has followed.
CREATE TABLE search_cursor (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    pos INTEGER NOT NULL
) STRICT;

-- Until now every entry was indexed inside its own append transaction, so
-- the whole log so far is already followed (0 for a new database).
INSERT INTO search_cursor (id, pos) SELECT 1, coalesce(max(pos), 0) FROM chat_log;

-- Snippets mark matches with U+E000 and U+E001 inside the indexed text; a
-- message holding those characters could forge marks. The index now keeps
-- U+FFFD in their place (the message itself is unchanged); rewrite what the
-- earlier code indexed verbatim.
UPDATE search_words
SET content = replace(replace(content, char(57344), char(65533)), char(57345), char(65533))
WHERE instr(content, char(57344)) > 0 OR instr(content, char(57345)) > 0;
