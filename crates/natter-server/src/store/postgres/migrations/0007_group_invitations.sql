-- The invitations an add to a group becomes when the added user's setting
-- refuses it. An invitation is no membership. One pending invitation per
-- (chat, user); expired rows are ignored by every query and swept by
-- housekeeping. Kept in the chat's database, beside its memberships.

CREATE TABLE group_invitations (
    id         uuid PRIMARY KEY,
    chat_id    uuid NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    user_id    uuid NOT NULL,
    inviter_id uuid NOT NULL,
    created_at bigint NOT NULL,
    expires_at bigint NOT NULL,
    UNIQUE (chat_id, user_id)
);
CREATE INDEX group_invitations_by_user ON group_invitations (user_id, expires_at);
CREATE INDEX group_invitations_by_chat ON group_invitations (chat_id, expires_at);
CREATE INDEX group_invitations_by_expiry ON group_invitations (expires_at);
