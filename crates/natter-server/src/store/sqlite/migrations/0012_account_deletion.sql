-- Account deletion (DELETE /api/v1/users/me). A deleted account keeps a
-- tombstone row: its id only, so the chats it created and the messages it
-- sent keep a valid author. Its number, name, about text and picture are
-- overwritten (secure_delete wipes the old bytes), and everything else it
-- owned is deleted. A tombstone is not an account: it cannot log in, be
-- found, be added to a chat or be seen as a profile.
ALTER TABLE users ADD COLUMN deleted_at INTEGER;
