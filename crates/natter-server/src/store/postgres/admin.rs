//! [`Administration`] on PostgreSQL: what `natter admin` does to accounts
//! and the store as a whole.

use async_trait::async_trait;
use natter_proto::{DeviceId, MediaId, UserId};

use super::accounts::{DEVICE_COLUMNS, USER_COLUMNS, device_from_row, insert_user, user_from_row};
use super::{Postgres, execute, rows};
use crate::clock::Timestamp;
use crate::store::admin::{Administration, Deactivated, ReferencedBlob, StoreStats, UserSummary};
use crate::store::{Device, StoreResult, User};

/// Checks of what PostgreSQL's foreign keys cannot enforce, because chat
/// tables live in other databases than the accounts: each query lists, by
/// user, the rows of a chat database that name a user; the accounts
/// database then says which of those users are not there.
const ORPHAN_CHECKS: &[(&str, &str)] = &[
    (
        "memberships",
        "SELECT user_id, count(*) FROM memberships GROUP BY user_id",
    ),
    (
        "receipts",
        "SELECT user_id, count(*) FROM receipts GROUP BY user_id",
    ),
    (
        "chat_log",
        "SELECT sender_id, count(*) FROM chat_log GROUP BY sender_id",
    ),
];

fn count_of(found: &[tokio_postgres::Row]) -> u64 {
    found
        .first()
        .map_or(0, |r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(0))
}

impl Postgres {
    /// A count summed over the chat databases.
    async fn count_in_chat_dbs(&self, sql: &str) -> StoreResult<u64> {
        let mut total = 0;
        for db in self.chat_dbs() {
            total += count_of(&db.read(sql, &[]).await?);
        }
        Ok(total)
    }
}

#[async_trait]
impl Administration for Postgres {
    async fn create_user(&self, user: User) -> StoreResult<bool> {
        self.accounts()
            .write(|tx| {
                let user = user.clone();
                Box::pin(async move { insert_user(tx, &user).await })
            })
            .await
    }

    async fn users_summary(&self) -> StoreResult<Vec<UserSummary>> {
        let found = self
            .accounts()
            .read(
                &format!(
                    "SELECT {USER_COLUMNS}, deactivated_at,
                       (SELECT count(*) FROM devices d WHERE d.user_id = users.id) AS n
                     FROM users WHERE deleted_at IS NULL ORDER BY created_at, id"
                ),
                &[],
            )
            .await?;
        Ok(found
            .iter()
            .map(|row| UserSummary {
                user: user_from_row(row),
                devices: u64::try_from(row.get::<_, i64>("n")).unwrap_or(0),
                deactivated_at: row.get::<_, Option<i64>>("deactivated_at").map(Timestamp),
            })
            .collect())
    }

    async fn deactivated_at(&self, user: UserId) -> StoreResult<Option<Option<Timestamp>>> {
        let found = self
            .accounts()
            .read(
                "SELECT deactivated_at FROM users WHERE id = $1",
                &[user.as_uuid()],
            )
            .await?;
        Ok(found
            .first()
            .map(|r| r.get::<_, Option<i64>>(0).map(Timestamp)))
    }

    async fn deactivate_user(&self, user: UserId, now: Timestamp) -> StoreResult<Deactivated> {
        self.accounts()
            .write(|tx| {
                Box::pin(async move {
                    let id = user.as_uuid();
                    let state = rows(
                        tx,
                        "SELECT deactivated_at FROM users WHERE id = $1 FOR UPDATE",
                        &[id],
                    )
                    .await?;
                    match state.first().map(|r| r.get::<_, Option<i64>>(0)) {
                        None => return Ok(Deactivated::NoSuchUser),
                        Some(Some(_)) => return Ok(Deactivated::Already),
                        Some(None) => {}
                    }
                    let devices = rows(
                        tx,
                        "DELETE FROM devices WHERE user_id = $1 RETURNING id",
                        &[id],
                    )
                    .await?
                    .iter()
                    .map(|r| DeviceId::from_uuid(r.get(0)))
                    .collect();
                    execute(
                        tx,
                        "DELETE FROM verification_codes
                     WHERE phone = (SELECT phone FROM users WHERE id = $1)",
                        &[id],
                    )
                    .await?;
                    execute(
                        tx,
                        "UPDATE users SET deactivated_at = $2, updated_at = $2 WHERE id = $1",
                        &[id, &now.0],
                    )
                    .await?;
                    Ok(Deactivated::Done(devices))
                })
            })
            .await
    }

    async fn device_by_id(&self, device: DeviceId) -> StoreResult<Option<Device>> {
        let found = self
            .accounts()
            .read(
                &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1"),
                &[device.as_uuid()],
            )
            .await?;
        Ok(found.first().map(device_from_row))
    }

    async fn stats(&self) -> StoreResult<StoreStats> {
        let now = Timestamp::now().0;
        let count = |sql: &'static str| async move {
            self.accounts().read(sql, &[]).await.map(|r| count_of(&r))
        };
        Ok(StoreStats {
            users: count("SELECT count(*) FROM users WHERE deleted_at IS NULL").await?,
            deactivated_users: count(
                "SELECT count(*) FROM users WHERE deactivated_at IS NOT NULL AND deleted_at IS NULL",
            )
            .await?,
            devices: count("SELECT count(*) FROM devices").await?,
            chats: self.count_in_chat_dbs("SELECT count(*) FROM chats").await?,
            log_entries: self.count_in_chat_dbs("SELECT count(*) FROM chat_log").await?,
            media: count("SELECT count(*) FROM media WHERE ready").await?,
            media_bytes: count("SELECT coalesce(sum(length), 0)::bigint FROM media WHERE ready")
                .await?,
            usable_invites: count_of(
                &self
                    .accounts()
                    .read(
                        "SELECT count(*) FROM invites WHERE revoked_at IS NULL
                           AND uses < max_uses AND (expires_at IS NULL OR expires_at > $1)",
                        &[&now],
                    )
                    .await?,
            ),
        })
    }

    async fn integrity_problems(&self) -> StoreResult<Vec<String>> {
        let mut problems = Vec::new();
        for (table, sql) in ORPHAN_CHECKS {
            let mut by_user: std::collections::HashMap<uuid::Uuid, i64> =
                std::collections::HashMap::new();
            for db in self.chat_dbs() {
                for row in db.read(sql, &[]).await? {
                    *by_user.entry(row.get(0)).or_insert(0) += row.get::<_, i64>(1);
                }
            }
            let users: Vec<uuid::Uuid> = by_user.keys().copied().collect();
            let missing = self
                .accounts()
                .read(
                    "SELECT u.id FROM unnest($1::uuid[]) AS u(id)
                     WHERE NOT EXISTS (SELECT 1 FROM users WHERE users.id = u.id)",
                    &[&users],
                )
                .await?;
            let n: i64 = missing
                .iter()
                .map(|r| {
                    by_user
                        .get(&r.get::<_, uuid::Uuid>(0))
                        .copied()
                        .unwrap_or(0)
                })
                .sum();
            if n > 0 {
                problems.push(format!("{table}: {n} rows point to a missing account"));
            }
        }
        Ok(problems)
    }

    async fn referenced_blobs(&self) -> StoreResult<Vec<ReferencedBlob>> {
        let found = self
            .accounts()
            .read(
                "SELECT id, thumbnail FROM media WHERE ready ORDER BY id",
                &[],
            )
            .await?;
        Ok(found
            .iter()
            .map(|r| ReferencedBlob {
                id: MediaId::from_uuid(r.get("id")),
                thumbnail: r.get("thumbnail"),
            })
            .collect())
    }
}
