//! [`AccountsAcrossChats`] on PostgreSQL: who may see a user's presence,
//! and deleting an account, the two account operations that read or change
//! chat membership too.
//!
//! Deletion is one transaction: the user leaves every chat through the
//! chat log's removal path (each chat locked, in id order, so a deletion
//! never deadlocks with another job), then the account's rows go and its
//! row becomes a tombstone. PostgreSQL keeps the old row versions until
//! (auto)vacuum reuses their space; `docs/security.md` says what that means
//! for erasure.

use async_trait::async_trait;
use natter_proto::{ChatId, DeviceId, MediaId, UserId};
use uuid::Uuid;

use super::chats::{lock_chat, remove_member};
use super::{Postgres, execute, rows};
use crate::clock::Timestamp;
use crate::store::{AccountDeleted, AccountsAcrossChats, StoreResult};

#[async_trait]
impl AccountsAcrossChats for Postgres {
    async fn presence_audience(
        &self,
        user: UserId,
        max_group_members: usize,
    ) -> StoreResult<Vec<UserId>> {
        let max = i64::try_from(max_group_members).unwrap_or(i64::MAX);
        let visibility = self
            .read(
                "SELECT last_seen_visibility FROM users WHERE id = $1",
                &[user.as_uuid()],
            )
            .await?;
        let found = match visibility.first().map(|r| r.get::<_, String>(0)).as_deref() {
            Some("everyone") => {
                self.read(
                    "SELECT DISTINCT other FROM (
                       SELECT m2.user_id AS other FROM memberships m1
                       JOIN chats c ON c.id = m1.chat_id
                       JOIN memberships m2 ON m2.chat_id = m1.chat_id AND m2.to_seq IS NULL
                       WHERE m1.user_id = $1 AND m1.to_seq IS NULL
                         AND (c.kind = 'direct'
                              OR (SELECT count(*) FROM memberships m3
                                  WHERE m3.chat_id = m1.chat_id AND m3.to_seq IS NULL) <= $2)
                       UNION SELECT owner_id AS other FROM contacts WHERE contact_id = $1) o
                     WHERE other != $1",
                    &[user.as_uuid(), &max],
                )
                .await?
            }
            // Only the user's own contacts may see them.
            Some("contacts") => {
                self.read(
                    "SELECT contact_id AS other FROM contacts WHERE owner_id = $1",
                    &[user.as_uuid()],
                )
                .await?
            }
            _ => return Ok(Vec::new()),
        };
        Ok(found.iter().map(|r| UserId::from_uuid(r.get(0))).collect())
    }

    async fn delete_account(
        &self,
        user: UserId,
        now: Timestamp,
    ) -> StoreResult<Option<AccountDeleted>> {
        self.write(|tx| {
            Box::pin(async move {
                let id = user.as_uuid();
                let phone = rows(
                    tx,
                    "SELECT phone FROM users WHERE id = $1 AND deleted_at IS NULL FOR UPDATE",
                    &[id],
                )
                .await?;
                let Some(phone) = phone.first().map(|r| r.get::<_, String>(0)) else {
                    return Ok(None);
                };
                // First the chats, through the one removal path.
                let mut chats: Vec<Uuid> = rows(
                    tx,
                    "SELECT chat_id FROM memberships WHERE user_id = $1 AND to_seq IS NULL",
                    &[id],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
                chats.sort_unstable();
                let mut left = Vec::new();
                for chat in chats.into_iter().map(ChatId::from_uuid) {
                    let Some(mut state) = lock_chat(tx, chat).await? else {
                        continue;
                    };
                    if state.role(user).is_some() {
                        left.extend(remove_member(tx, &mut state, chat, user, user, now).await?);
                    }
                }
                // Push channels, waiting pushes, keys, packages and inboxes
                // go with the devices (cascade).
                let devices = rows(
                    tx,
                    "DELETE FROM devices WHERE user_id = $1 RETURNING id",
                    &[id],
                )
                .await?
                .iter()
                .map(|r| DeviceId::from_uuid(r.get(0)))
                .collect();
                for sql in [
                    "DELETE FROM push_channels WHERE user_id = $1",
                    "DELETE FROM push_outbox WHERE user_id = $1",
                    "DELETE FROM identity_keys WHERE user_id = $1",
                    "DELETE FROM contacts WHERE owner_id = $1 OR contact_id = $1",
                    "DELETE FROM receipts WHERE user_id = $1",
                    "DELETE FROM memberships WHERE user_id = $1",
                    "DELETE FROM group_invitations WHERE user_id = $1 OR inviter_id = $1",
                ] {
                    execute(tx, sql, &[id]).await?;
                }
                execute(
                    tx,
                    "DELETE FROM verification_codes WHERE phone = $1",
                    &[&phone],
                )
                .await?;
                let (mut media, mut uploads) = (Vec::new(), Vec::new());
                for r in rows(
                    tx,
                    "DELETE FROM media WHERE owner_id = $1 RETURNING id, ready",
                    &[id],
                )
                .await?
                {
                    let m = MediaId::from_uuid(r.get(0));
                    if r.get::<_, bool>(1) {
                        media.push(m);
                    } else {
                        uploads.push(m);
                    }
                }
                // The tombstone: the id stays (author of chats and
                // messages), nothing else of the person does. The number
                // becomes a placeholder no real number can equal.
                execute(
                    tx,
                    "UPDATE users SET phone = 'deleted:' || replace(id::text, '-', ''),
                       name = 'Deleted account', about = '', last_seen_visibility = 'nobody',
                       group_add_permission = 'nobody', last_seen_at = NULL, profile_pic = NULL,
                       deactivated_at = coalesce(deactivated_at, $2), deleted_at = $2,
                       updated_at = $2
                     WHERE id = $1",
                    &[id, &now.0],
                )
                .await?;
                Ok(Some(AccountDeleted {
                    left,
                    devices,
                    media,
                    uploads,
                }))
            })
        })
        .await
    }
}
