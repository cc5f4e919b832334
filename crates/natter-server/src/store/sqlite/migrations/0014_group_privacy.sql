-- Who may add a user to groups, and the invitations an add becomes when
-- the setting refuses it. An invitation is no membership: its user sees
-- nothing of the chat log until they accept. One pending invitation per
-- (chat, user); expired rows are ignored by every query and swept by
-- housekeeping.
ALTER TABLE users ADD COLUMN group_add_permission TEXT NOT NULL DEFAULT 'everyone'
    CHECK (group_add_permission IN ('everyone', 'contacts', 'nobody'));

CREATE TABLE group_invitations (
    id         BLOB PRIMARY KEY,
    chat_id    BLOB NOT NULL REFERENCES chats(id) ON DELETE CASCADE,
    user_id    BLOB NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    inviter_id BLOB NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    UNIQUE (chat_id, user_id)
) STRICT;
CREATE INDEX group_invitations_by_user ON group_invitations(user_id, expires_at);
CREATE INDEX group_invitations_by_chat ON group_invitations(chat_id, expires_at);
CREATE INDEX group_invitations_by_expiry ON group_invitations(expires_at);
