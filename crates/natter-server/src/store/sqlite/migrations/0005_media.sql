-- Media: uploads in progress (resumable, tus) and finished blobs. The bytes
-- live in the blob store under keys made from the id; this table holds who
-- owns them, what they are and whether they are complete.

CREATE TABLE media (
    id           BLOB PRIMARY KEY,
    owner_id     BLOB NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    kind         TEXT NOT NULL CHECK (kind IN ('image', 'video', 'file', 'encrypted')),
    chat_id      BLOB,
    filename     TEXT,
    -- The declared length while uploading; the size once ready. Counts
    -- against the owner's quota either way.
    length       INTEGER NOT NULL,
    -- Bytes durably received so far (resumable uploads).
    received     INTEGER NOT NULL DEFAULT 0,
    ready        INTEGER NOT NULL DEFAULT 0,
    content_type TEXT,
    sha256       BLOB,
    width        INTEGER,
    height       INTEGER,
    thumbnail    INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL,
    completed_at INTEGER,
    -- Unfinished uploads expire.
    expires_at   INTEGER
) STRICT;
CREATE INDEX media_by_owner ON media(owner_id, ready);
CREATE INDEX media_expiring ON media(expires_at) WHERE ready = 0;
CREATE INDEX media_unreferenced ON media(completed_at) WHERE ready = 1;

-- Messages reference media by id (text form); this finds the references.
CREATE INDEX chat_log_by_media ON chat_log(media_id) WHERE media_id IS NOT NULL;

ALTER TABLE users ADD COLUMN profile_pic BLOB;
CREATE INDEX users_by_profile_pic ON users(profile_pic) WHERE profile_pic IS NOT NULL;
