//! [`AccountsAcrossChats`] on PostgreSQL: who may see a user's presence,
//! and deleting an account, the two account operations that read or change
//! chat membership too, so the accounts database and every chat database.
//!
//! Deletion is one transaction per database. First, in each chat
//! database, the user leaves every chat through the chat log's removal
//! path (each chat locked, in id order, so a deletion never deadlocks with
//! another job); then, in the accounts database, the account's rows go and
//! its row becomes a tombstone; then each chat database is swept once more
//! for a chat the user joined in between (after the tombstone nobody can
//! add them). A failure part-way leaves an account that has left some
//! chats and can be deleted again. PostgreSQL keeps the old row versions
//! until (auto)vacuum reuses their space; `docs/security.md` says what that
//! means for erasure.

use async_trait::async_trait;
use natter_proto::{ChatId, DeviceId, MediaId, UserId};
use uuid::Uuid;

use super::chats::{lock_chat, remove_member};
use super::{Database, Postgres, execute, rows};
use crate::clock::Timestamp;
use crate::store::{AccountDeleted, AccountsAcrossChats, Appended, StoreResult};

/// `user` leaves every chat of `db` they are in, and their receipt
/// positions, membership periods and invitations there go.
async fn leave_every_chat(
    db: &Database,
    user: UserId,
    now: Timestamp,
) -> StoreResult<Vec<Appended>> {
    db.write(|tx| {
        Box::pin(async move {
            let id = user.as_uuid();
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
            for sql in [
                "DELETE FROM receipts WHERE user_id = $1",
                "DELETE FROM memberships WHERE user_id = $1",
                "DELETE FROM group_invitations WHERE user_id = $1 OR inviter_id = $1",
            ] {
                execute(tx, sql, &[id]).await?;
            }
            Ok(left)
        })
    })
    .await
}

#[async_trait]
impl AccountsAcrossChats for Postgres {
    async fn presence_audience(
        &self,
        user: UserId,
        max_group_members: usize,
    ) -> StoreResult<Vec<UserId>> {
        let max = i64::try_from(max_group_members).unwrap_or(i64::MAX);
        let visibility = self
            .accounts()
            .read(
                "SELECT last_seen_visibility FROM users WHERE id = $1",
                &[user.as_uuid()],
            )
            .await?;
        let mut found: Vec<Uuid> = match visibility
            .first()
            .map(|r| r.get::<_, String>(0))
            .as_deref()
        {
            Some("everyone") => {
                let mut found = Vec::new();
                for db in self.chat_dbs() {
                    let co_members = db
                        .read(
                            "SELECT DISTINCT m2.user_id FROM memberships m1
                             JOIN chats c ON c.id = m1.chat_id
                             JOIN memberships m2 ON m2.chat_id = m1.chat_id AND m2.to_seq IS NULL
                             WHERE m1.user_id = $1 AND m1.to_seq IS NULL AND m2.user_id != $1
                               AND (c.kind = 'direct'
                                    OR (SELECT count(*) FROM memberships m3
                                        WHERE m3.chat_id = m1.chat_id AND m3.to_seq IS NULL) <= $2)",
                            &[user.as_uuid(), &max],
                        )
                        .await?;
                    found.extend(co_members.iter().map(|r| r.get::<_, Uuid>(0)));
                }
                let contacts_of = self
                    .accounts()
                    .read(
                        "SELECT owner_id FROM contacts WHERE contact_id = $1 AND owner_id != $1",
                        &[user.as_uuid()],
                    )
                    .await?;
                found.extend(contacts_of.iter().map(|r| r.get::<_, Uuid>(0)));
                found
            }
            // Only the user's own contacts may see them.
            Some("contacts") => self
                .accounts()
                .read(
                    "SELECT contact_id AS other FROM contacts WHERE owner_id = $1",
                    &[user.as_uuid()],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect(),
            _ => return Ok(Vec::new()),
        };
        found.sort_unstable();
        found.dedup();
        Ok(found.into_iter().map(UserId::from_uuid).collect())
    }

    async fn delete_account(
        &self,
        user: UserId,
        now: Timestamp,
    ) -> StoreResult<Option<AccountDeleted>> {
        let exists = self
            .accounts()
            .read(
                "SELECT 1 FROM users WHERE id = $1 AND deleted_at IS NULL",
                &[user.as_uuid()],
            )
            .await?;
        if exists.is_empty() {
            return Ok(None);
        }
        // First the chats, through the one removal path.
        let mut left = Vec::new();
        for db in self.chat_dbs() {
            left.extend(leave_every_chat(db, user, now).await?);
        }
        let deleted = self
            .accounts()
            .write(|tx| {
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
                    Ok(Some((devices, media, uploads)))
                })
            })
            .await?;
        let Some((devices, media, uploads)) = deleted else {
            // Deleted by another request meanwhile.
            return Ok(None);
        };
        // A chat joined between the first sweep and the tombstone.
        for db in self.chat_dbs() {
            left.extend(leave_every_chat(db, user, now).await?);
        }
        // In chat id order over all databases, as one database gives them
        // (stable: a chat's own entries keep their order).
        left.sort_by_key(|appended| *appended.entry.chat_id.as_uuid());
        Ok(Some(AccountDeleted {
            left,
            devices,
            media,
            uploads,
        }))
    }
}
