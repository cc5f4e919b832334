-- Fan-out on read. A message is one row of its chat's log; devices follow
-- each of their chats by its seq, so nothing is written per recipient. The
-- per-user update stream (pts), its rows and each device's acknowledged pts
-- go. A chat's head and last activity are read from its log, and each
-- chat's members, head and receipt positions are kept in the writer's
-- memory (rebuilt from these tables), so the chats row is no longer written
-- per message.

DROP TABLE updates;
ALTER TABLE users DROP COLUMN pts;
ALTER TABLE devices DROP COLUMN acked_pts;
ALTER TABLE chats DROP COLUMN last_seq;
ALTER TABLE chats DROP COLUMN last_activity_at;

-- A waiting push names the position to sync from in its chat, not a pts.
ALTER TABLE push_outbox RENAME COLUMN since_pts TO since_seq;
ALTER TABLE push_outbox RENAME COLUMN last_pts TO last_seq;
