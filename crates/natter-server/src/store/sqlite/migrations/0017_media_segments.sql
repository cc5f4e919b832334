-- Resumable uploads: each request's bytes are one blob (a segment) in the
-- blob store, so any node can continue an upload another began. The
-- segments of an upload in progress, in offset order; a finished upload's
-- are dropped with its blob written. At most one segment starts at an
-- offset (the compare-and-set on `media.received` already sees to that).
CREATE TABLE media_segments (
    media_id     BLOB NOT NULL REFERENCES media(id) ON DELETE CASCADE,
    start_offset INTEGER NOT NULL,
    end_offset   INTEGER NOT NULL CHECK (end_offset > start_offset),
    blob_key     TEXT NOT NULL,
    PRIMARY KEY (media_id, start_offset)
) STRICT;

-- Before this step an upload's bytes sat in one node's staging file, which
-- the server no longer reads: uploads in progress start again from offset 0
-- (a tus client asks for the offset before it resumes).
UPDATE media SET received = 0 WHERE ready = 0;
