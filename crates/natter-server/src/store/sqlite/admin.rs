//! Invites and administration on the embedded store (`store::admin`).

use async_trait::async_trait;
use natter_proto::{DeviceId, MediaId, UserId};
use rusqlite::{Connection, OptionalExtension, Row, params};
use uuid::Uuid;

use super::engine::db_err;
use super::{
    SqliteStore, USER_COLUMNS, device_from_row, insert_device, user_by_id, user_from_row, uuid_of,
};
use crate::clock::Timestamp;
use crate::store::admin::{
    Administration, Deactivated, InviteRecord, InviteRegistration, Invites, NewInvite,
    ReferencedBlob, RegisteredByInvite, StoreStats, UserSummary,
};
use crate::store::columns::visibility_to_sql;
use crate::store::{Device, StoreError, StoreResult, User};

fn invite_from_row(row: &Row<'_>) -> rusqlite::Result<InviteRecord> {
    Ok(InviteRecord {
        id: uuid_of(row, "id")?,
        max_uses: row.get("max_uses")?,
        uses: row.get("uses")?,
        expires_at: row.get::<_, Option<i64>>("expires_at")?.map(Timestamp),
        created_at: Timestamp(row.get("created_at")?),
        revoked_at: row.get::<_, Option<i64>>("revoked_at")?.map(Timestamp),
    })
}

fn insert_user(c: &Connection, u: &User) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO users (id, phone, name, about, last_seen_visibility,
                            last_seen_at, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
    )?
    .execute(params![
        u.id.as_uuid().as_bytes(),
        u.phone.as_str(),
        u.name,
        u.about,
        visibility_to_sql(u.last_seen_visibility),
        u.last_seen_at.map(|t| t.0),
        u.created_at.0
    ])
    .map(drop)
}

fn phone_taken(c: &Connection, phone: &str) -> rusqlite::Result<bool> {
    c.prepare_cached("SELECT 1 FROM users WHERE phone = ?1")?
        .exists([phone])
}

fn count(c: &Connection, sql: &str) -> StoreResult<u64> {
    c.query_row(sql, [], |r| r.get::<_, i64>(0))
        .map(|n| u64::try_from(n).unwrap_or(0))
        .map_err(db_err)
}

fn pragma_lines(c: &Connection, pragma: &str) -> rusqlite::Result<Vec<String>> {
    let mut s = c.prepare(pragma)?;
    s.query_map([], |r| r.get::<_, String>(0))?.collect()
}

fn foreign_key_problems(c: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut s = c.prepare("PRAGMA foreign_key_check")?;
    s.query_map([], |r| {
        Ok(format!(
            "foreign key: a row of {} points to a missing row of {}",
            r.get::<_, String>(0)?,
            r.get::<_, String>(2)?
        ))
    })?
    .collect()
}

#[async_trait]
impl Invites for SqliteStore {
    async fn create_invite(&self, i: NewInvite) -> StoreResult<()> {
        self.writer
            .write(move |c| {
                c.execute(
                    "INSERT INTO invites (id, token_hash, max_uses, expires_at, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        i.id.as_bytes(),
                        i.token_hash.0,
                        i.max_uses,
                        i.expires_at.map(|t| t.0),
                        i.created_at.0
                    ],
                )
                .map(drop)
                .map_err(db_err)
            })
            .await
    }

    async fn invites(&self) -> StoreResult<Vec<InviteRecord>> {
        self.readers
            .read(|c| {
                let mut s = c
                    .prepare(
                        "SELECT id, max_uses, uses, expires_at, created_at, revoked_at
                         FROM invites ORDER BY created_at DESC, id DESC",
                    )
                    .map_err(db_err)?;
                s.query_map([], invite_from_row)
                    .map_err(db_err)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(db_err)
            })
            .await
    }

    async fn revoke_invite(&self, id: Uuid, now: Timestamp) -> StoreResult<bool> {
        self.writer
            .write(move |c| {
                c.execute(
                    "UPDATE invites SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                    params![id.as_bytes(), now.0],
                )
                .map(|n| n == 1)
                .map_err(db_err)
            })
            .await
    }

    async fn register_by_invite(&self, r: InviteRegistration) -> StoreResult<RegisteredByInvite> {
        self.writer
            .write(move |c| {
                let invite = c
                    .prepare_cached(
                        "SELECT id, max_uses, uses, expires_at, created_at, revoked_at
                         FROM invites WHERE token_hash = ?1",
                    )
                    .and_then(|mut s| s.query_row([r.invite.0], invite_from_row).optional())
                    .map_err(db_err)?;
                if !invite.is_some_and(|i| i.usable(r.now)) {
                    return Ok(RegisteredByInvite::InviteInvalid);
                }
                if phone_taken(c, r.user.phone.as_str()).map_err(db_err)? {
                    return Ok(RegisteredByInvite::PhoneTaken);
                }
                c.prepare_cached("UPDATE invites SET uses = uses + 1 WHERE token_hash = ?1")
                    .and_then(|mut s| s.execute([r.invite.0]))
                    .map_err(db_err)?;
                insert_user(c, &r.user).map_err(db_err)?;
                insert_device(c, r.user.id, &r.device).map_err(db_err)?;
                user_by_id(c, r.user.id)
                    .map_err(db_err)?
                    .map(RegisteredByInvite::Created)
                    .ok_or_else(|| StoreError::internal("the new user vanished"))
            })
            .await
    }
}

#[async_trait]
impl Administration for SqliteStore {
    async fn create_user(&self, user: User) -> StoreResult<bool> {
        self.writer
            .write(move |c| {
                if phone_taken(c, user.phone.as_str()).map_err(db_err)? {
                    return Ok(false);
                }
                insert_user(c, &user).map_err(db_err)?;
                Ok(true)
            })
            .await
    }

    async fn users_summary(&self) -> StoreResult<Vec<UserSummary>> {
        self.readers
            .read(|c| {
                let mut s = c
                    .prepare(&format!(
                        "SELECT {USER_COLUMNS}, deactivated_at,
                           (SELECT count(*) FROM devices d WHERE d.user_id = users.id) AS n
                         FROM users WHERE deleted_at IS NULL ORDER BY created_at, id"
                    ))
                    .map_err(db_err)?;
                s.query_map([], |row| {
                    Ok(UserSummary {
                        user: user_from_row(row)?,
                        devices: u64::try_from(row.get::<_, i64>("n")?).unwrap_or(0),
                        deactivated_at: row.get::<_, Option<i64>>("deactivated_at")?.map(Timestamp),
                    })
                })
                .map_err(db_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db_err)
            })
            .await
    }

    async fn deactivated_at(&self, user: UserId) -> StoreResult<Option<Option<Timestamp>>> {
        self.readers
            .read(move |c| {
                c.query_row(
                    "SELECT deactivated_at FROM users WHERE id = ?1",
                    [user.as_uuid().as_bytes()],
                    |r| r.get::<_, Option<i64>>(0),
                )
                .optional()
                .map(|o| o.map(|t| t.map(Timestamp)))
                .map_err(db_err)
            })
            .await
    }

    async fn deactivate_user(&self, user: UserId, now: Timestamp) -> StoreResult<Deactivated> {
        self.writer
            .write(move |c| {
                let id = user.as_uuid().as_bytes().to_vec();
                let state: Option<Option<i64>> = c
                    .query_row(
                        "SELECT deactivated_at FROM users WHERE id = ?1",
                        [&id],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(db_err)?;
                match state {
                    None => return Ok(Deactivated::NoSuchUser),
                    Some(Some(_)) => return Ok(Deactivated::Already),
                    Some(None) => {}
                }
                let mut s = c
                    .prepare("DELETE FROM devices WHERE user_id = ?1 RETURNING id")
                    .map_err(db_err)?;
                let devices = s
                    .query_map([&id], |r| uuid_of(r, "id"))
                    .map_err(db_err)?
                    .map(|r| r.map(DeviceId::from_uuid))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(db_err)?;
                c.execute(
                    "DELETE FROM verification_codes WHERE phone = (SELECT phone FROM users WHERE id = ?1)",
                    [&id],
                )
                .map_err(db_err)?;
                c.execute(
                    "UPDATE users SET deactivated_at = ?2, updated_at = ?2 WHERE id = ?1",
                    params![id, now.0],
                )
                .map_err(db_err)?;
                Ok(Deactivated::Done(devices))
            })
            .await
    }

    async fn device_by_id(&self, device: DeviceId) -> StoreResult<Option<Device>> {
        self.readers
            .read(move |c| {
                c.query_row(
                    "SELECT id, user_id, name, created_at, last_active_at FROM devices WHERE id = ?1",
                    [device.as_uuid().as_bytes()],
                    device_from_row,
                )
                .optional()
                .map_err(db_err)
            })
            .await
    }

    async fn stats(&self) -> StoreResult<StoreStats> {
        let now = Timestamp::now().0;
        self.readers
            .read(move |c| {
                Ok(StoreStats {
                    users: count(c, "SELECT count(*) FROM users WHERE deleted_at IS NULL")?,
                    deactivated_users: count(
                        c,
                        "SELECT count(*) FROM users
                         WHERE deactivated_at IS NOT NULL AND deleted_at IS NULL",
                    )?,
                    devices: count(c, "SELECT count(*) FROM devices")?,
                    chats: count(c, "SELECT count(*) FROM chats")?,
                    log_entries: count(c, "SELECT count(*) FROM chat_log")?,
                    media: count(c, "SELECT count(*) FROM media WHERE ready = 1")?,
                    media_bytes: count(
                        c,
                        "SELECT coalesce(sum(length), 0) FROM media WHERE ready = 1",
                    )?,
                    usable_invites: c
                        .query_row(
                            "SELECT count(*) FROM invites WHERE revoked_at IS NULL
                               AND uses < max_uses AND (expires_at IS NULL OR expires_at > ?1)",
                            [now],
                            |r| r.get::<_, i64>(0),
                        )
                        .map(|n| u64::try_from(n).unwrap_or(0))
                        .map_err(db_err)?,
                })
            })
            .await
    }

    async fn integrity_problems(&self) -> StoreResult<Vec<String>> {
        self.readers
            .read(|c| {
                // A damaged file is a finding, not a failure of the check.
                let mut lines = match pragma_lines(c, "PRAGMA integrity_check") {
                    Ok(lines) => lines,
                    Err(e) => vec![format!("integrity_check: {e}")],
                };
                lines.retain(|l| l != "ok");
                if lines.is_empty() {
                    match foreign_key_problems(c) {
                        Ok(broken) => lines.extend(broken),
                        Err(e) => lines.push(format!("foreign_key_check: {e}")),
                    }
                }
                Ok(lines)
            })
            .await
    }

    async fn referenced_blobs(&self) -> StoreResult<Vec<ReferencedBlob>> {
        self.readers
            .read(|c| {
                let mut s = c
                    .prepare("SELECT id, thumbnail FROM media WHERE ready = 1 ORDER BY id")
                    .map_err(db_err)?;
                s.query_map([], |r| {
                    Ok(ReferencedBlob {
                        id: MediaId::from_uuid(uuid_of(r, "id")?),
                        thumbnail: r.get::<_, i64>("thumbnail")? != 0,
                    })
                })
                .map_err(db_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db_err)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::config::StoreConfig;
    use crate::store::Store as _;
    use crate::store::sqlite::DB_FILE;

    #[tokio::test]
    async fn a_database_with_0008_and_0010_but_not_0009_takes_0009_next() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), &StoreConfig::default()).unwrap();
        store.close().await;
        drop(store);
        // What a binary with 0008 and 0010 but without this branch left.
        let c = Connection::open(dir.path().join(DB_FILE)).unwrap();
        c.execute_batch(
            "DROP TABLE group_invitations;
             ALTER TABLE users DROP COLUMN group_add_permission;
             DROP TABLE device_inbox; DROP TABLE key_packages; DROP TABLE device_keys;
             DROP TABLE identity_keys; ALTER TABLE chats DROP COLUMN epoch;
             DROP TABLE invites;
             ALTER TABLE users DROP COLUMN deactivated_at;
             ALTER TABLE users DROP COLUMN deleted_at;
             ALTER TABLE verification_codes DROP COLUMN shown_code;
             DROP TABLE media_segments;
             PRAGMA user_version = 9;",
        )
        .unwrap();
        drop(c);

        let store = SqliteStore::open(dir.path(), &StoreConfig::default()).unwrap();
        assert!(store.invites().await.unwrap().is_empty());
        assert_eq!(store.stats().await.unwrap().deactivated_users, 0);
        store.close().await;
    }
}
