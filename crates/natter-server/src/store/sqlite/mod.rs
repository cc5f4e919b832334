//! The embedded store: SQLite in WAL mode in the data directory.
//!
//! Writes go through the single writer with group commit, reads through a
//! small pool (see [`engine`]). Migrations are embedded and applied at open,
//! tracked by `PRAGMA user_version`.

mod admin;
mod cache;
mod chats;
mod e2ee;
mod engine;
mod invitations;
mod media;
mod push;
mod search;

use std::path::Path;

use async_trait::async_trait;
use natter_proto::{ChatId, DeviceId, InvitationId, MediaId, MessageId, UserId};
use rusqlite::{Connection, OptionalExtension, Row, params};
use uuid::Uuid;

use self::engine::{ReadPool, Writer, db_err};
use super::columns::{
    permission_from_sql, permission_to_sql, visibility_from_sql, visibility_to_sql,
};
use super::{
    AccountDeleted, Accounts, AccountsAcrossChats, Appended, ChatAccess, ChatChange, ChatChanged,
    ChatCreated, ChatHead, ChatLog, ChatOverview, CollectedMedia, ContactAdded, ContactEntry,
    Device, FinishedMedia, HistoryQuery, IndexProgress, LogEntry, LogEvent, LoggedIn, Login,
    MediaCreated, MediaRecord, MediaSegment, MediaStore, Member, MessageChange, MessageChanged,
    NewChat, NewDevice, NewMedia, NewMessage, NewPush, NewVerificationCode, PendingPush, Posted,
    ProfilePatch, PushChannelRecord, PushFinished, PushOutbox, ReceiptChange, ReceiptState,
    Registered, Registration, Relation, SearchIndex, SearchPage, SearchQuery, Store, StoreError,
    StoreResult, User,
};
use super::{
    GroupAdded, GroupCreated, GroupInvitations, InvitationAccepted, InvitationRecord,
    InvitationRules,
};
use crate::clock::Timestamp;
use crate::config::StoreConfig;
use crate::phone::Phone;
use crate::secret::{CodeHash, TokenHash};

/// The schema, in order. Never edit a released migration; add a new one.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_accounts.sql"),
    include_str!("migrations/0002_chats.sql"),
    include_str!("migrations/0003_receipt_updates.sql"),
    include_str!("migrations/0004_search.sql"),
    include_str!("migrations/0005_media.sql"),
    include_str!("migrations/0006_push.sql"),
    include_str!("migrations/0007_log_position.sql"),
    include_str!("migrations/0008_search_indexer.sql"),
    include_str!("migrations/0010_fanout_on_read.sql"),
    // After 0010 although numbered 9: the files were numbered on parallel
    // branches, and what counts is this order (`user_version` is the count
    // applied). A database made with 0008 and 0010 takes 0009 next. There
    // is no 0011.
    include_str!("migrations/0009_invites_admin.sql"),
    include_str!("migrations/0012_account_deletion.sql"),
    include_str!("migrations/0013_e2ee.sql"),
    include_str!("migrations/0014_group_privacy.sql"),
    include_str!("migrations/0015_shown_codes.sql"),
    include_str!("migrations/0016_mobile_push.sql"),
    include_str!("migrations/0017_media_segments.sql"),
];

/// The database file inside the data directory.
pub const DB_FILE: &str = "natter.db";

/// The lock file that keeps a second server off the same data directory.
pub const LOCK_FILE: &str = "natter.lock";

/// The embedded SQLite store.
#[derive(Debug)]
pub struct SqliteStore {
    /// The one writer.
    writer: Writer,
    /// Read connections.
    readers: ReadPool,
    /// The receipt positions the writer last committed (newer than the
    /// store's copy while delivered positions wait to be flushed).
    receipts: cache::PublishedReceipts,
    /// Held for the store's life: an exclusive lock on the data directory.
    _lock: std::fs::File,
    /// Poked after commits that append to a chat log; the search indexer
    /// waits on it between passes.
    log_appended: tokio::sync::Notify,
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `data_dir` and migrates it.
    ///
    /// # Errors
    /// When the directory or database cannot be opened or migrated.
    pub fn open(data_dir: &Path, config: &StoreConfig) -> StoreResult<Self> {
        crate::perms::private_dir_all(data_dir).map_err(|e| {
            StoreError::unavailable(format!(
                "cannot create the data directory {}: {e}",
                data_dir.display()
            ))
        })?;
        let lock = lock_data_dir(data_dir)?;
        let path = data_dir.join(DB_FILE);
        // Made 0600 before SQLite opens it: its -wal and -shm files take the
        // database file's mode; they are restricted again below regardless.
        crate::perms::private_file(&path).map_err(|e| {
            StoreError::unavailable(format!("cannot create {}: {e}", path.display()))
        })?;
        let cache = cache::ChatCache::new(
            config.chat_cache_max,
            std::time::Duration::from_millis(config.receipt_flush_ms),
        );
        let receipts = cache.published();
        let writer = Writer::start(
            &path,
            config.write_queue,
            config.write_batch_max,
            cache,
            migrate,
        )?;
        let readers = ReadPool::open(&path, config.read_connections)?;
        for suffix in ["-wal", "-shm"] {
            let file = data_dir.join(format!("{DB_FILE}{suffix}"));
            crate::perms::restrict(&file).map_err(|e| {
                StoreError::unavailable(format!("cannot restrict {}: {e}", file.display()))
            })?;
        }
        Ok(Self {
            writer,
            readers,
            receipts,
            _lock: lock,
            log_appended: tokio::sync::Notify::new(),
        })
    }

    /// Runs a writer job that may append to a chat log, then wakes the
    /// search indexer (a failed one appended nothing, so it stays asleep).
    async fn append_job<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut cache::ChatCache) -> StoreResult<T> + Send + 'static,
    {
        let result = self.writer.write_chats(f).await;
        if result.is_ok() {
            self.log_appended.notify_one();
        }
        result
    }
}

/// Takes the data directory's exclusive lock, so two servers never share one
/// store (their writers and rate limits would not know of each other).
fn lock_data_dir(data_dir: &Path) -> StoreResult<std::fs::File> {
    let path = data_dir.join(LOCK_FILE);
    crate::perms::private_file(&path)
        .map_err(|e| StoreError::unavailable(format!("cannot open {}: {e}", path.display())))?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::unavailable(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::unavailable(format!(
            "another natter process is using the data directory {}",
            data_dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::unavailable(format!(
            "cannot lock {}: {e}",
            path.display()
        ))),
    }
}

/// Applies the migrations the database has not seen yet, each in its own transaction.
fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let current: usize = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(db_err)?;
    if current > MIGRATIONS.len() {
        return Err(StoreError::unavailable(format!(
            "the database has schema version {current}, newer than this server knows ({}); \
             run a newer natter",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction().map_err(db_err)?;
        tx.execute_batch(sql).map_err(db_err)?;
        tx.pragma_update(None, "user_version", i + 1)
            .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        tracing::info!(version = i + 1, "applied schema migration");
    }
    Ok(())
}

fn uuid_of(row: &Row<'_>, idx: &str) -> rusqlite::Result<Uuid> {
    let bytes: Vec<u8> = row.get(idx)?;
    Uuid::from_slice(&bytes).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, Box::new(e))
    })
}

const USER_COLUMNS: &str = "id, phone, name, about, last_seen_visibility, group_add_permission, \
     last_seen_at, profile_pic, created_at";

fn user_from_row(row: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: UserId::from_uuid(uuid_of(row, "id")?),
        phone: Phone::from_stored(row.get("phone")?),
        name: row.get("name")?,
        about: row.get("about")?,
        last_seen_visibility: visibility_from_sql(&row.get::<_, String>("last_seen_visibility")?),
        group_add_permission: permission_from_sql(&row.get::<_, String>("group_add_permission")?),
        last_seen_at: row.get::<_, Option<i64>>("last_seen_at")?.map(Timestamp),
        profile_pic: row
            .get::<_, Option<Vec<u8>>>("profile_pic")?
            .and_then(|b| Uuid::from_slice(&b).ok())
            .map(MediaId::from_uuid),
        created_at: Timestamp(row.get("created_at")?),
    })
}

fn device_from_row(row: &Row<'_>) -> rusqlite::Result<Device> {
    Ok(Device {
        id: DeviceId::from_uuid(uuid_of(row, "id")?),
        user_id: UserId::from_uuid(uuid_of(row, "user_id")?),
        name: row.get("name")?,
        created_at: Timestamp(row.get("created_at")?),
        last_active_at: Timestamp(row.get("last_active_at")?),
    })
}

/// An account by id; a deleted account's tombstone is no account.
fn user_by_id(conn: &Connection, id: UserId) -> rusqlite::Result<Option<User>> {
    conn.prepare_cached(&format!(
        "SELECT {USER_COLUMNS} FROM users WHERE id = ?1 AND deleted_at IS NULL"
    ))?
    .query_row([id.as_uuid().as_bytes()], user_from_row)
    .optional()
}

fn insert_device(conn: &Connection, user: UserId, d: &NewDevice) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO devices (id, user_id, name, token_hash, created_at, last_active_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
    )?
    .execute(params![
        d.id.as_uuid().as_bytes(),
        user.as_uuid().as_bytes(),
        d.name,
        d.token_hash.0,
        d.created_at.0
    ])?;
    // Logging in is activity.
    conn.prepare_cached("UPDATE users SET last_seen_at = ?2 WHERE id = ?1")?
        .execute(params![user.as_uuid().as_bytes(), d.created_at.0])?;
    Ok(())
}

/// Deletes the number's code if it still has this hash; true if it did.
fn consume_code(conn: &Connection, phone: &Phone, code: &CodeHash) -> rusqlite::Result<bool> {
    let n = conn
        .prepare_cached("DELETE FROM verification_codes WHERE phone = ?1 AND code_hash = ?2")?
        .execute(params![phone.as_str(), code.0])?;
    Ok(n == 1)
}

/// Gives back the attempt a right code used, when what it guarded was refused.
fn refund_attempt(conn: &Connection, phone: &Phone, code: &CodeHash) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE verification_codes SET attempts = max(attempts - 1, 0)
         WHERE phone = ?1 AND code_hash = ?2",
    )?
    .execute(params![phone.as_str(), code.0])?;
    Ok(())
}

fn relation_of(conn: &Connection, viewer: UserId, target: UserId) -> rusqlite::Result<Relation> {
    let mine: Option<bool> = conn
        .prepare_cached(
            "SELECT added_by_phone FROM contacts WHERE owner_id = ?1 AND contact_id = ?2",
        )?
        .query_row(
            params![viewer.as_uuid().as_bytes(), target.as_uuid().as_bytes()],
            |r| r.get(0),
        )
        .optional()?;
    let theirs = conn
        .prepare_cached("SELECT 1 FROM contacts WHERE owner_id = ?1 AND contact_id = ?2")?
        .exists(params![
            target.as_uuid().as_bytes(),
            viewer.as_uuid().as_bytes()
        ])?;
    Ok(Relation {
        viewer_has_target: mine.is_some(),
        viewer_knows_phone: mine.unwrap_or(false),
        target_has_viewer: theirs,
    })
}

/// The writer job of [`Accounts::delete_account`].
fn delete_account(
    c: &Connection,
    cache: &mut cache::ChatCache,
    user: UserId,
    now: Timestamp,
) -> rusqlite::Result<Option<AccountDeleted>> {
    let id = user.as_uuid().as_bytes();
    let phone: Option<String> = c
        .prepare_cached("SELECT phone FROM users WHERE id = ?1 AND deleted_at IS NULL")?
        .query_row([id], |r| r.get(0))
        .optional()?;
    let Some(phone) = phone else {
        return Ok(None);
    };
    // First the chats, through the one removal path (entries, memory).
    let left = chats::leave_every_chat(c, cache, user, now)?;
    // Push channels and waiting pushes go with their devices (cascade).
    let devices = c
        .prepare_cached("DELETE FROM devices WHERE user_id = ?1 RETURNING id")?
        .query_map([id], |r| uuid_of(r, "id").map(DeviceId::from_uuid))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    c.prepare_cached("DELETE FROM push_channels WHERE user_id = ?1")?
        .execute([id])?;
    c.prepare_cached("DELETE FROM push_outbox WHERE user_id = ?1")?
        .execute([id])?;
    // Device keys, KeyPackages and inboxes went with the devices (cascade);
    // the identity key is the account's.
    c.prepare_cached("DELETE FROM identity_keys WHERE user_id = ?1")?
        .execute([id])?;
    c.prepare_cached("DELETE FROM contacts WHERE owner_id = ?1 OR contact_id = ?1")?
        .execute([id])?;
    c.prepare_cached("DELETE FROM verification_codes WHERE phone = ?1")?
        .execute([&phone])?;
    c.prepare_cached("DELETE FROM receipts WHERE user_id = ?1")?
        .execute([id])?;
    c.prepare_cached("DELETE FROM memberships WHERE user_id = ?1")?
        .execute([id])?;
    c.prepare_cached("DELETE FROM group_invitations WHERE user_id = ?1 OR inviter_id = ?1")?
        .execute([id])?;
    let mut media = Vec::new();
    let mut uploads = Vec::new();
    let mut gone = c.prepare_cached("DELETE FROM media WHERE owner_id = ?1 RETURNING id, ready")?;
    let rows = gone.query_map([id], |r| {
        Ok((
            MediaId::from_uuid(uuid_of(r, "id")?),
            r.get::<_, bool>("ready")?,
        ))
    })?;
    for row in rows {
        let (m, ready) = row?;
        if ready {
            media.push(m)
        } else {
            uploads.push(m)
        }
    }
    // The tombstone: the id stays (author of chats and messages), nothing
    // else of the person does. The number becomes a placeholder no real
    // number can equal, so it is free for a new account.
    c.prepare_cached(
        "UPDATE users SET phone = 'deleted:' || lower(hex(id)), name = 'Deleted account',
           about = '', last_seen_visibility = 'nobody', group_add_permission = 'nobody',
           last_seen_at = NULL,
           profile_pic = NULL, deactivated_at = coalesce(deactivated_at, ?2),
           deleted_at = ?2, updated_at = ?2
         WHERE id = ?1",
    )?
    .execute(params![id, now.0])?;
    Ok(Some(AccountDeleted {
        left,
        devices,
        media,
        uploads,
    }))
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        self.readers
            .read(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(db_err))
            .await?;
        self.writer.write(|_| Ok(())).await
    }

    async fn close(&self) {
        self.readers.close().await;
        self.writer.close().await;
    }
}

#[async_trait]
impl Accounts for SqliteStore {
    async fn server_secret(
        &self,
        name: &'static str,
        make: Box<dyn FnOnce() -> Vec<u8> + Send>,
    ) -> StoreResult<Vec<u8>> {
        self.writer
            .write(move |c| {
                let existing: Option<Vec<u8>> = c
                    .query_row(
                        "SELECT value FROM server_secrets WHERE name = ?1",
                        [name],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(db_err)?;
                if let Some(v) = existing {
                    return Ok(v);
                }
                let value = make();
                c.execute(
                    "INSERT INTO server_secrets (name, value) VALUES (?1, ?2)",
                    params![name, value],
                )
                .map_err(db_err)?;
                Ok(value)
            })
            .await
    }

    async fn put_verification_code(&self, code: NewVerificationCode) -> StoreResult<()> {
        self.writer
            .write(move |c| {
                c.prepare_cached(
                    "INSERT INTO verification_codes
                       (phone, code_hash, attempts, created_at, expires_at, shown_code)
                     VALUES (?1, ?2, 0, ?3, ?4, ?5)
                     ON CONFLICT (phone) DO UPDATE SET code_hash = excluded.code_hash,
                       attempts = 0, created_at = excluded.created_at,
                       expires_at = excluded.expires_at, shown_code = excluded.shown_code",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        code.phone.as_str(),
                        code.hash.0,
                        code.created_at.0,
                        code.expires_at.0,
                        code.shown
                    ])
                })
                .map(drop)
                .map_err(db_err)
            })
            .await
    }

    async fn attempt_verification_code(
        &self,
        phone: &Phone,
        now: Timestamp,
        max_attempts: u32,
    ) -> StoreResult<Option<CodeHash>> {
        let phone = phone.clone();
        self.writer
            .write(move |c| {
                // Count the attempt first, so it counts even if the caller goes away.
                let hash: Option<Vec<u8>> = c
                    .prepare_cached(
                        "UPDATE verification_codes SET attempts = attempts + 1
                         WHERE phone = ?1 AND expires_at > ?2 AND attempts < ?3
                         RETURNING code_hash",
                    )
                    .and_then(|mut s| {
                        s.query_row(params![phone.as_str(), now.0, max_attempts], |r| r.get(0))
                            .optional()
                    })
                    .map_err(db_err)?;
                Ok(hash
                    .and_then(|h| <[u8; 32]>::try_from(h.as_slice()).ok())
                    .map(CodeHash))
            })
            .await
    }

    async fn delete_expired_verification_codes(&self, now: Timestamp) -> StoreResult<u64> {
        self.writer
            .write(move |c| {
                c.execute(
                    "DELETE FROM verification_codes WHERE expires_at <= ?1",
                    [now.0],
                )
                .map(|n| n as u64)
                .map_err(db_err)
            })
            .await
    }

    async fn register(&self, r: Registration) -> StoreResult<Registered> {
        self.writer
            .write(move |c| {
                let taken = c
                    .prepare_cached("SELECT 1 FROM users WHERE phone = ?1")
                    .and_then(|mut s| s.exists([r.user.phone.as_str()]))
                    .map_err(db_err)?;
                if taken {
                    // The right code proved the number; that try is not held against it.
                    refund_attempt(c, &r.user.phone, &r.code).map_err(db_err)?;
                    return Ok(Registered::PhoneTaken);
                }
                if !consume_code(c, &r.user.phone, &r.code).map_err(db_err)? {
                    return Ok(Registered::CodeGone);
                }
                let u = &r.user;
                c.prepare_cached(
                    "INSERT INTO users (id, phone, name, about, last_seen_visibility,
                                        last_seen_at, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?6)",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        u.id.as_uuid().as_bytes(),
                        u.phone.as_str(),
                        u.name,
                        u.about,
                        visibility_to_sql(u.last_seen_visibility),
                        u.created_at.0
                    ])
                })
                .map_err(db_err)?;
                insert_device(c, u.id, &r.device).map_err(db_err)?;
                user_by_id(c, u.id)
                    .map_err(db_err)?
                    .map(Registered::Created)
                    .ok_or_else(|| StoreError::internal("the new user vanished"))
            })
            .await
    }

    async fn login(&self, l: Login) -> StoreResult<LoggedIn> {
        self.writer
            .write(move |c| {
                let user = c
                    .prepare_cached(&format!(
                        "SELECT {USER_COLUMNS} FROM users
                         WHERE phone = ?1 AND deactivated_at IS NULL"
                    ))
                    .and_then(|mut s| s.query_row([l.phone.as_str()], user_from_row).optional())
                    .map_err(db_err)?;
                let Some(user) = user else {
                    return Ok(LoggedIn::UnknownPhone);
                };
                let devices: i64 = c
                    .prepare_cached("SELECT count(*) FROM devices WHERE user_id = ?1")
                    .and_then(|mut s| s.query_row([user.id.as_uuid().as_bytes()], |r| r.get(0)))
                    .map_err(db_err)?;
                if usize::try_from(devices).unwrap_or(usize::MAX) >= l.max_devices {
                    refund_attempt(c, &l.phone, &l.code).map_err(db_err)?;
                    return Ok(LoggedIn::DeviceLimit);
                }
                if !consume_code(c, &l.phone, &l.code).map_err(db_err)? {
                    return Ok(LoggedIn::CodeGone);
                }
                insert_device(c, user.id, &l.device).map_err(db_err)?;
                let user = user_by_id(c, user.id).map_err(db_err)?.unwrap_or(user);
                Ok(LoggedIn::Created(user))
            })
            .await
    }

    async fn device_by_token(&self, token: &TokenHash) -> StoreResult<Option<Device>> {
        let hash = token.0;
        self.readers
            .read(move |c| {
                c.prepare_cached(
                    "SELECT id, user_id, name, created_at, last_active_at
                     FROM devices WHERE token_hash = ?1",
                )
                .and_then(|mut s| s.query_row([hash], device_from_row).optional())
                .map_err(db_err)
            })
            .await
    }

    async fn touch_device(
        &self,
        user: UserId,
        device: DeviceId,
        now: Timestamp,
    ) -> StoreResult<()> {
        self.writer
            .write(move |c| {
                c.prepare_cached("UPDATE devices SET last_active_at = ?2 WHERE id = ?1")
                    .and_then(|mut s| s.execute(params![device.as_uuid().as_bytes(), now.0]))
                    .map_err(db_err)?;
                c.prepare_cached(
                    "UPDATE users SET last_seen_at = max(coalesce(last_seen_at, 0), ?2)
                     WHERE id = ?1 AND deleted_at IS NULL",
                )
                .and_then(|mut s| s.execute(params![user.as_uuid().as_bytes(), now.0]))
                .map_err(db_err)?;
                Ok(())
            })
            .await
    }

    async fn devices(&self, user: UserId) -> StoreResult<Vec<Device>> {
        self.readers
            .read(move |c| {
                let mut s = c
                    .prepare_cached(
                        "SELECT id, user_id, name, created_at, last_active_at
                         FROM devices WHERE user_id = ?1 ORDER BY created_at, id",
                    )
                    .map_err(db_err)?;
                let rows = s
                    .query_map([user.as_uuid().as_bytes()], device_from_row)
                    .map_err(db_err)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(db_err)?;
                Ok(rows)
            })
            .await
    }

    async fn delete_device(&self, user: UserId, device: DeviceId) -> StoreResult<bool> {
        self.writer
            .write(move |c| {
                c.prepare_cached("DELETE FROM devices WHERE id = ?1 AND user_id = ?2")
                    .and_then(|mut s| {
                        s.execute(params![
                            device.as_uuid().as_bytes(),
                            user.as_uuid().as_bytes()
                        ])
                    })
                    .map(|n| n == 1)
                    .map_err(db_err)
            })
            .await
    }

    async fn user(&self, id: UserId) -> StoreResult<Option<User>> {
        self.readers
            .read(move |c| user_by_id(c, id).map_err(db_err))
            .await
    }

    async fn user_by_phone(&self, phone: &Phone) -> StoreResult<Option<User>> {
        let phone = phone.clone();
        self.readers
            .read(move |c| {
                c.prepare_cached(&format!(
                    "SELECT {USER_COLUMNS} FROM users WHERE phone = ?1"
                ))
                .and_then(|mut s| s.query_row([phone.as_str()], user_from_row).optional())
                .map_err(db_err)
            })
            .await
    }

    async fn update_profile(
        &self,
        id: UserId,
        patch: ProfilePatch,
        now: Timestamp,
    ) -> StoreResult<Option<User>> {
        self.writer
            .write(move |c| {
                c.prepare_cached(
                    "UPDATE users SET name = coalesce(?2, name), about = coalesce(?3, about),
                       last_seen_visibility = coalesce(?4, last_seen_visibility), updated_at = ?5,
                       group_add_permission = coalesce(?8, group_add_permission),
                       profile_pic = CASE WHEN ?6 THEN (
                         SELECT m.id FROM media m WHERE m.id = ?7 AND m.owner_id = ?1
                           AND m.ready = 1 AND m.kind = 'image')
                         ELSE profile_pic END
                     WHERE id = ?1",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        id.as_uuid().as_bytes(),
                        patch.name,
                        patch.about,
                        patch.last_seen_visibility.map(visibility_to_sql),
                        now.0,
                        patch.profile_pic.is_some(),
                        patch.profile_pic.flatten().map(|m| *m.as_uuid().as_bytes()),
                        patch.group_add_permission.map(permission_to_sql),
                    ])
                })
                .map_err(db_err)?;
                user_by_id(c, id).map_err(db_err)
            })
            .await
    }

    async fn add_contact(
        &self,
        owner: UserId,
        contact: UserId,
        by_phone: bool,
        max_contacts: usize,
        now: Timestamp,
    ) -> StoreResult<ContactAdded> {
        self.writer
            .write(move |c| {
                let (o, t) = (owner.as_uuid().as_bytes(), contact.as_uuid().as_bytes());
                let existing = c
                    .prepare_cached(
                        "SELECT 1 FROM contacts WHERE owner_id = ?1 AND contact_id = ?2",
                    )
                    .and_then(|mut s| s.exists(params![o, t]))
                    .map_err(db_err)?;
                if existing {
                    if by_phone {
                        c.prepare_cached(
                            "UPDATE contacts SET added_by_phone = 1
                             WHERE owner_id = ?1 AND contact_id = ?2",
                        )
                        .and_then(|mut s| s.execute(params![o, t]))
                        .map_err(db_err)?;
                    }
                    return Ok(ContactAdded::AlreadyThere);
                }
                let count: i64 = c
                    .prepare_cached("SELECT count(*) FROM contacts WHERE owner_id = ?1")
                    .and_then(|mut s| s.query_row([o], |r| r.get(0)))
                    .map_err(db_err)?;
                if usize::try_from(count).unwrap_or(usize::MAX) >= max_contacts {
                    return Ok(ContactAdded::LimitReached);
                }
                c.prepare_cached(
                    "INSERT INTO contacts (owner_id, contact_id, added_by_phone, created_at)
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .and_then(|mut s| s.execute(params![o, t, by_phone, now.0]))
                .map_err(db_err)?;
                Ok(ContactAdded::Added)
            })
            .await
    }

    async fn remove_contact(&self, owner: UserId, contact: UserId) -> StoreResult<bool> {
        self.writer
            .write(move |c| {
                c.prepare_cached("DELETE FROM contacts WHERE owner_id = ?1 AND contact_id = ?2")
                    .and_then(|mut s| {
                        s.execute(params![
                            owner.as_uuid().as_bytes(),
                            contact.as_uuid().as_bytes()
                        ])
                    })
                    .map(|n| n == 1)
                    .map_err(db_err)
            })
            .await
    }

    async fn contacts(&self, owner: UserId) -> StoreResult<Vec<ContactEntry>> {
        self.readers
            .read(move |c| {
                let mut s = c
                    .prepare_cached(
                        "SELECT u.id, u.phone, u.name, u.about, u.last_seen_visibility,
                                u.group_add_permission, u.last_seen_at, u.profile_pic, u.created_at, c.added_by_phone,
                                EXISTS (SELECT 1 FROM contacts r
                                        WHERE r.owner_id = u.id AND r.contact_id = c.owner_id)
                                  AS they_have_me
                         FROM contacts c JOIN users u ON u.id = c.contact_id
                         WHERE c.owner_id = ?1",
                    )
                    .map_err(db_err)?;
                let mut rows = s
                    .query_map([owner.as_uuid().as_bytes()], |row| {
                        Ok(ContactEntry {
                            user: user_from_row(row)?,
                            relation: Relation {
                                viewer_has_target: true,
                                viewer_knows_phone: row.get("added_by_phone")?,
                                target_has_viewer: row.get("they_have_me")?,
                            },
                        })
                    })
                    .map_err(db_err)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(db_err)?;
                super::columns::sort_contacts(&mut rows);
                Ok(rows)
            })
            .await
    }

    async fn relation(&self, viewer: UserId, target: UserId) -> StoreResult<Relation> {
        self.readers
            .read(move |c| relation_of(c, viewer, target).map_err(db_err))
            .await
    }

    async fn users_by_phones(&self, phones: &[Phone]) -> StoreResult<Vec<(Phone, UserId)>> {
        let phones = phones.to_vec();
        self.readers
            .read(move |c| {
                let mut s = c
                    .prepare_cached("SELECT id FROM users WHERE phone = ?1")
                    .map_err(db_err)?;
                let mut found = Vec::new();
                for phone in phones {
                    let id = s
                        .query_row([phone.as_str()], |r| uuid_of(r, "id"))
                        .optional()
                        .map_err(db_err)?;
                    if let Some(id) = id {
                        found.push((phone, UserId::from_uuid(id)));
                    }
                }
                Ok(found)
            })
            .await
    }

    async fn set_last_seen(&self, user: UserId, at: Timestamp) -> StoreResult<()> {
        self.writer
            .write(move |c| {
                c.prepare_cached(
                    "UPDATE users SET last_seen_at = max(coalesce(last_seen_at, 0), ?2)
                     WHERE id = ?1 AND deleted_at IS NULL",
                )
                .and_then(|mut s| s.execute(params![user.as_uuid().as_bytes(), at.0]))
                .map(drop)
                .map_err(db_err)
            })
            .await
    }
}

#[async_trait]
impl AccountsAcrossChats for SqliteStore {
    async fn presence_audience(
        &self,
        user: UserId,
        max_group_members: usize,
    ) -> StoreResult<Vec<UserId>> {
        let max = i64::try_from(max_group_members).unwrap_or(i64::MAX);
        self.readers
            .read(move |c| chats::presence_audience(c, user, max).map_err(db_err))
            .await
    }

    async fn delete_account(
        &self,
        user: UserId,
        now: Timestamp,
    ) -> StoreResult<Option<AccountDeleted>> {
        let deleted = self
            .append_job(move |c, cache| delete_account(c, cache, user, now).map_err(db_err))
            .await?;
        if deleted.is_some() && !self.writer.checkpoint().await? {
            tracing::warn!(
                "the write-ahead log could not be truncated after an account deletion \
                 (readers busy); the next checkpoint, within a minute, removes the old copies"
            );
        }
        Ok(deleted)
    }
}

#[async_trait]
impl GroupInvitations for SqliteStore {
    async fn create_group(
        &self,
        chat: NewChat,
        rules: InvitationRules,
    ) -> StoreResult<GroupCreated> {
        self.append_job(move |c, cache| {
            invitations::create_group(c, cache, chat, rules).map_err(db_err)
        })
        .await
    }

    async fn add_to_group(
        &self,
        chat: ChatId,
        actor: UserId,
        users: Vec<UserId>,
        max_members: usize,
        rules: InvitationRules,
        now: Timestamp,
    ) -> StoreResult<GroupAdded> {
        self.append_job(move |c, cache| {
            invitations::add_to_group(c, cache, chat, actor, users, max_members, rules, now)
                .map_err(db_err)
        })
        .await
    }

    async fn invitations(
        &self,
        user: UserId,
        now: Timestamp,
    ) -> StoreResult<Vec<InvitationRecord>> {
        self.readers
            .read(move |c| invitations::invitations(c, user, now).map_err(db_err))
            .await
    }

    async fn accept_invitation(
        &self,
        id: InvitationId,
        user: UserId,
        max_members: usize,
        now: Timestamp,
    ) -> StoreResult<InvitationAccepted> {
        self.append_job(move |c, cache| {
            invitations::accept(c, cache, id, user, max_members, now).map_err(db_err)
        })
        .await
    }

    async fn decline_invitation(
        &self,
        id: InvitationId,
        user: UserId,
        now: Timestamp,
    ) -> StoreResult<bool> {
        self.writer
            .write(move |c| invitations::decline(c, id, user, now).map_err(db_err))
            .await
    }

    async fn delete_expired_invitations(&self, now: Timestamp) -> StoreResult<u64> {
        self.writer
            .write(move |c| invitations::delete_expired(c, now).map_err(db_err))
            .await
    }
}

#[async_trait]
impl ChatLog for SqliteStore {
    async fn create_chat(&self, chat: NewChat) -> StoreResult<ChatCreated> {
        self.append_job(move |c, cache| chats::create_chat(c, cache, chat).map_err(db_err))
            .await
    }

    async fn chat_access(&self, chat: ChatId, user: UserId) -> StoreResult<Option<ChatAccess>> {
        self.readers
            .read(move |c| chats::chat_access(c, chat, user).map_err(db_err))
            .await
    }

    async fn members(&self, chat: ChatId) -> StoreResult<Vec<Member>> {
        self.readers
            .read(move |c| chats::members(c, chat).map_err(db_err))
            .await
    }

    async fn receipt_state(&self, chat: ChatId) -> StoreResult<ReceiptState> {
        let published = self
            .receipts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&chat)
            .copied();
        if let Some(receipts) = published {
            return Ok(receipts);
        }
        self.readers
            .read(move |c| chats::receipt_state(c, chat).map_err(db_err))
            .await
    }

    async fn chats_of(&self, user: UserId) -> StoreResult<Vec<ChatOverview>> {
        self.readers
            .read(move |c| chats::chats_of(c, user).map_err(db_err))
            .await
    }

    async fn post(&self, message: NewMessage) -> StoreResult<Posted> {
        self.append_job(move |c, cache| chats::post(c, cache, message).map_err(db_err))
            .await
    }

    async fn post_in_order(&self, messages: Vec<NewMessage>) -> Vec<StoreResult<Posted>> {
        // `join_all` polls the posts in order, so each enters the writer's
        // (fair, FIFO) queue in order and they share group commits.
        futures_util::future::join_all(messages.into_iter().map(|m| self.post(m))).await
    }

    async fn change_chat(
        &self,
        chat: ChatId,
        actor: UserId,
        change: ChatChange,
        max_members: usize,
        now: Timestamp,
    ) -> StoreResult<ChatChanged> {
        self.append_job(move |c, cache| {
            chats::change_chat(c, cache, chat, actor, change, max_members, now).map_err(db_err)
        })
        .await
    }

    async fn history(
        &self,
        chat: ChatId,
        user: UserId,
        query: HistoryQuery,
    ) -> StoreResult<(Vec<LogEntry>, bool)> {
        self.readers
            .read(move |c| chats::history(c, chat, user, query).map_err(db_err))
            .await
    }

    async fn change_message(&self, change: MessageChange) -> StoreResult<MessageChanged> {
        self.append_job(move |c, cache| chats::change_message(c, cache, change).map_err(db_err))
            .await
    }

    async fn chat_of_message(&self, message: MessageId) -> StoreResult<Option<ChatId>> {
        self.readers
            .read(move |c| {
                c.prepare_cached("SELECT chat_id FROM chat_log WHERE id = ?1")
                    .and_then(|mut s| {
                        s.query_row([message.as_uuid().as_bytes()], |r| uuid_of(r, "chat_id"))
                            .optional()
                    })
                    .map(|id| id.map(ChatId::from_uuid))
                    .map_err(db_err)
            })
            .await
    }

    async fn mark_read(
        &self,
        chat: ChatId,
        user: UserId,
        seq: i64,
        now: Timestamp,
    ) -> StoreResult<(i64, Option<ReceiptChange>)> {
        self.writer
            .write_chats(move |c, cache| {
                chats::mark_read(c, cache, chat, user, seq, now).map_err(db_err)
            })
            .await
    }

    async fn ack(
        &self,
        user: UserId,
        positions: Vec<(ChatId, i64)>,
        now: Timestamp,
    ) -> StoreResult<Vec<ReceiptChange>> {
        self.writer
            .write_chats(move |c, cache| chats::ack(c, cache, user, positions, now).map_err(db_err))
            .await
    }

    async fn chat_heads(&self, user: UserId) -> StoreResult<Vec<ChatHead>> {
        self.readers
            .read(move |c| chats::chat_heads(c, user).map_err(db_err))
            .await
    }

    async fn messages_sent_by(&self, user: UserId, limit: i64) -> StoreResult<Vec<LogEntry>> {
        self.readers
            .read(move |c| chats::messages_sent_by(c, user, limit).map_err(db_err))
            .await
    }

    async fn chat_head(&self, chat: ChatId, user: UserId) -> StoreResult<Option<ChatHead>> {
        self.readers
            .read(move |c| chats::chat_head(c, chat, user).map_err(db_err))
            .await
    }

    async fn events_after(
        &self,
        chat: ChatId,
        user: UserId,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<LogEvent>> {
        self.readers
            .read(move |c| chats::events_after(c, chat, user, after, limit).map_err(db_err))
            .await
    }
}

#[async_trait]
impl SearchIndex for SqliteStore {
    async fn search_messages(&self, query: SearchQuery) -> StoreResult<SearchPage> {
        self.readers
            .read(move |c| search::search(c, &query).map_err(db_err))
            .await
    }

    async fn index_search(&self, max_entries: usize) -> StoreResult<IndexProgress> {
        self.writer
            .write(move |c| search::follow_log(c, max_entries).map_err(db_err))
            .await
    }

    async fn search_index_lag(&self) -> StoreResult<u64> {
        self.readers.read(|c| search::lag(c).map_err(db_err)).await
    }

    fn log_appended(&self) -> &tokio::sync::Notify {
        &self.log_appended
    }
}

#[async_trait]
impl MediaStore for SqliteStore {
    async fn create_media(
        &self,
        m: NewMedia,
        quota: u64,
        max_pending: u64,
    ) -> StoreResult<MediaCreated> {
        self.writer
            .write(move |c| media::create(c, &m, quota, max_pending).map_err(db_err))
            .await
    }

    async fn media(&self, id: MediaId) -> StoreResult<Option<MediaRecord>> {
        self.readers
            .read(move |c| media::get(c, id).map_err(db_err))
            .await
    }

    async fn media_of(&self, owner: UserId) -> StoreResult<Vec<MediaRecord>> {
        self.readers
            .read(move |c| media::of_owner(c, owner).map_err(db_err))
            .await
    }

    async fn advance_media_received(&self, segment: MediaSegment) -> StoreResult<bool> {
        self.writer
            .write(move |c| media::advance(c, &segment).map_err(db_err))
            .await
    }

    async fn media_segments(&self, id: MediaId) -> StoreResult<Vec<MediaSegment>> {
        self.readers
            .read(move |c| media::segments(c, id).map_err(db_err))
            .await
    }

    async fn finish_media(&self, id: MediaId, finished: FinishedMedia) -> StoreResult<bool> {
        self.writer
            .write(move |c| media::finish(c, id, &finished).map_err(db_err))
            .await
    }

    async fn delete_media(&self, id: MediaId) -> StoreResult<bool> {
        self.writer
            .write(move |c| media::delete(c, id).map_err(db_err))
            .await
    }

    async fn media_visible(&self, id: MediaId, user: UserId) -> StoreResult<bool> {
        self.readers
            .read(move |c| media::visible(c, id, user).map_err(db_err))
            .await
    }

    async fn collect_media(
        &self,
        now: Timestamp,
        unreferenced_before: Timestamp,
        limit: usize,
    ) -> StoreResult<CollectedMedia> {
        self.writer
            .write(move |c| media::collect(c, now, unreferenced_before, limit).map_err(db_err))
            .await
    }
}

#[async_trait]
impl PushOutbox for SqliteStore {
    async fn put_push_channel(
        &self,
        user: UserId,
        channel: PushChannelRecord,
    ) -> StoreResult<Option<bool>> {
        self.writer
            .write(move |c| push::put_channel(c, user, &channel).map_err(db_err))
            .await
    }

    async fn delete_push_channel(&self, user: UserId, device: DeviceId) -> StoreResult<bool> {
        self.writer
            .write(move |c| push::delete_channel(c, user, device).map_err(db_err))
            .await
    }

    async fn push_devices(&self, users: Vec<UserId>) -> StoreResult<Vec<(UserId, DeviceId)>> {
        self.readers
            .read(move |c| push::devices_with_channel(c, &users).map_err(db_err))
            .await
    }

    async fn queue_pushes(&self, pushes: Vec<NewPush>) -> StoreResult<()> {
        self.writer
            .write(move |c| {
                for p in &pushes {
                    push::queue(c, p).map_err(db_err)?;
                }
                Ok(())
            })
            .await
    }

    async fn next_push_due(&self, window_ms: i64) -> StoreResult<Option<Timestamp>> {
        self.readers
            .read(move |c| push::next_due(c, window_ms).map_err(db_err))
            .await
    }

    async fn claim_pushes(
        &self,
        now: Timestamp,
        window_ms: i64,
        lease_until: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<PendingPush>> {
        self.writer
            .write(move |c| push::claim(c, now, window_ms, lease_until, limit).map_err(db_err))
            .await
    }

    async fn finish_push(&self, device: DeviceId, outcome: PushFinished) -> StoreResult<()> {
        self.writer
            .write(move |c| push::finish(c, device, &outcome).map_err(db_err))
            .await
    }

    async fn cancel_push(&self, device: DeviceId) -> StoreResult<bool> {
        // Called at every connect: most devices have nothing waiting, and a
        // read keeps them off the writer.
        let waiting = self
            .readers
            .read(move |c| push::is_waiting(c, device).map_err(db_err))
            .await?;
        if !waiting {
            return Ok(false);
        }
        self.writer
            .write(move |c| push::cancel(c, device).map_err(db_err))
            .await
    }
}

#[async_trait]
impl crate::store::e2ee::KeyDirectory for SqliteStore {
    async fn set_identity_key(
        &self,
        user: UserId,
        key: Vec<u8>,
        now: Timestamp,
    ) -> StoreResult<Vec<Appended>> {
        self.append_job(move |c, cache| {
            e2ee::set_identity_key(c, cache, user, &key, now).map_err(db_err)
        })
        .await
    }

    async fn identity_key(&self, user: UserId) -> StoreResult<Option<Vec<u8>>> {
        self.readers
            .read(move |c| e2ee::identity_key(c, user).map_err(db_err))
            .await
    }

    async fn set_device_credential(
        &self,
        user: UserId,
        credential: crate::store::e2ee::DeviceCredential,
        now: Timestamp,
    ) -> StoreResult<crate::store::e2ee::CredentialSet> {
        self.append_job(move |c, cache| {
            e2ee::set_device_credential(c, cache, user, credential, now).map_err(db_err)
        })
        .await
    }

    async fn device_credentials(
        &self,
        user: UserId,
    ) -> StoreResult<Vec<crate::store::e2ee::DeviceCredential>> {
        self.readers
            .read(move |c| e2ee::device_credentials(c, user).map_err(db_err))
            .await
    }

    async fn publish_key_packages(
        &self,
        device: DeviceId,
        packages: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
        max_per_device: u64,
        now: Timestamp,
    ) -> StoreResult<crate::store::e2ee::Published> {
        self.writer
            .write(move |c| {
                e2ee::publish(c, device, packages, last_resort, max_per_device, now).map_err(db_err)
            })
            .await
    }

    async fn key_package_stock(&self, device: DeviceId) -> StoreResult<(u32, bool)> {
        self.readers
            .read(move |c| e2ee::stock(c, device).map_err(db_err))
            .await
    }

    async fn claim_key_packages(
        &self,
        users: Vec<UserId>,
        except: DeviceId,
    ) -> StoreResult<Vec<crate::store::e2ee::ClaimedUser>> {
        self.writer
            .write(move |c| e2ee::claim(c, users, except).map_err(db_err))
            .await
    }

    async fn devices_changed(&self, user: UserId, now: Timestamp) -> StoreResult<Vec<Appended>> {
        self.append_job(move |c, cache| e2ee::devices_changed(c, cache, user, now).map_err(db_err))
            .await
    }
}

#[async_trait]
impl crate::store::e2ee::DeviceInbox for SqliteStore {
    async fn commit(
        &self,
        commit: crate::store::e2ee::NewCommit,
    ) -> StoreResult<crate::store::e2ee::Committed> {
        self.append_job(move |c, cache| e2ee::commit(c, cache, commit).map_err(db_err))
            .await
    }

    async fn hand_over(
        &self,
        handover: crate::store::e2ee::NewHandover,
    ) -> StoreResult<crate::store::e2ee::HandedOver> {
        self.writer
            .write(move |c| e2ee::hand_over(c, handover).map_err(db_err))
            .await
    }

    async fn inbox(
        &self,
        device: DeviceId,
        limit: u64,
    ) -> StoreResult<Vec<crate::store::e2ee::InboxRecord>> {
        self.readers
            .read(move |c| e2ee::inbox(c, device, limit).map_err(db_err))
            .await
    }

    async fn ack_inbox(&self, device: DeviceId, id: i64) -> StoreResult<bool> {
        self.writer
            .write(move |c| e2ee::ack(c, device, id).map_err(db_err))
            .await
    }
}

#[cfg(test)]
mod tests {
    use natter_proto::chats::{ChatKind, MessageType};
    use natter_proto::users::LastSeenVisibility;

    use super::*;

    async fn user(store: &SqliteStore, n: u32) -> UserId {
        let phone = Phone::from_stored(format!("+1415555{n:04}"));
        let now = Timestamp::now();
        store
            .put_verification_code(NewVerificationCode {
                phone: phone.clone(),
                hash: CodeHash([1; 32]),
                created_at: now,
                expires_at: now.plus(std::time::Duration::from_secs(60)),
                shown: None,
            })
            .await
            .unwrap();
        let user = User {
            id: UserId::new(),
            phone,
            name: format!("u{n}"),
            about: String::new(),
            last_seen_visibility: LastSeenVisibility::Everyone,
            group_add_permission: natter_proto::users::GroupAddPermission::Everyone,
            last_seen_at: None,
            profile_pic: None,
            created_at: now,
        };
        let device = NewDevice {
            id: DeviceId::new(),
            name: "test".into(),
            token_hash: crate::secret::PlainToken::generate().hash(),
            created_at: now,
        };
        let registration = Registration {
            code: CodeHash([1; 32]),
            user,
            device,
        };
        match store.register(registration).await.unwrap() {
            Registered::Created(u) => u.id,
            other => panic!("{other:?}"),
        }
    }

    fn message(chat: ChatId, sender: UserId, text: &str) -> NewMessage {
        NewMessage {
            id: MessageId::new(),
            chat_id: chat,
            sender_id: sender,
            sender_device_id: DeviceId::new(),
            message_type: natter_proto::chats::MessageType::Text,
            content: Some(text.to_owned()),
            ciphertext: None,
            media_id: None,
            reply_to: None,
            client_message_id: None,
            client_timestamp: None,
            now: Timestamp::now(),
        }
    }

    async fn group(store: &SqliteStore, creator: UserId, others: Vec<UserId>) -> ChatId {
        let new = NewChat {
            id: ChatId::new(),
            kind: natter_proto::chats::ChatKind::Group,
            name: Some("G".into()),
            encrypted: false,
            creator,
            others,
            now: Timestamp::now(),
        };
        match store.create_chat(new).await.unwrap() {
            ChatCreated::Created(chat, _) => chat.id,
            other => panic!("{other:?}"),
        }
    }

    async fn seqs(store: &SqliteStore, chat: ChatId, user: UserId) -> Vec<i64> {
        store
            .events_after(chat, user, 0, 100_000)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect()
    }

    #[tokio::test]
    async fn a_restart_rebuilds_members_heads_and_receipts_from_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c, chat);
        {
            let store = SqliteStore::open(dir.path(), &StoreConfig::default()).unwrap();
            (a, b, c) = (
                user(&store, 1).await,
                user(&store, 2).await,
                user(&store, 3).await,
            );
            chat = group(&store, a, vec![b, c]).await;
            for n in 0..5 {
                store
                    .post(message(chat, b, &format!("m{n}")))
                    .await
                    .unwrap();
            }
            let removed = store
                .change_chat(chat, a, ChatChange::Remove(c), 10, Timestamp::now())
                .await
                .unwrap();
            assert!(matches!(removed, ChatChanged::Done(_)));
            // Delivered positions wait in memory; closing writes them out.
            store
                .ack(a, vec![(chat, 6)], Timestamp::now())
                .await
                .unwrap();
            store.close().await;
        }
        let store = SqliteStore::open(dir.path(), &StoreConfig::default()).unwrap();
        // The head continues where it was (1 created, 5 messages, 1 removal).
        let Posted::Created(next) = store.post(message(chat, a, "after")).await.unwrap() else {
            panic!("a is a member")
        };
        assert_eq!(next.entry.seq, 8);
        assert_eq!(&*next.recipients, {
            let mut v = vec![a, b];
            v.sort_unstable();
            v
        });
        // a acked 6 and sent 8; b sent 6: everyone has 6.
        assert_eq!(next.receipts.delivered_seq, 6);
        assert!(matches!(
            store.post(message(chat, c, "let me in")).await.unwrap(),
            Posted::NotMember
        ));
        assert_eq!(seqs(&store, chat, a).await, (1..=8).collect::<Vec<_>>());
        assert_eq!(
            seqs(&store, chat, c).await,
            (1..=7).collect::<Vec<_>>(),
            "up to the removal"
        );
        store.close().await;
    }

    #[tokio::test]
    async fn a_chat_renamed_and_left_during_a_burst_keeps_a_gapless_log() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            std::sync::Arc::new(SqliteStore::open(dir.path(), &StoreConfig::default()).unwrap());
        let (a, b) = (user(&store, 1).await, user(&store, 2).await);
        let chat = group(&store, a, vec![b]).await;
        let burst = |sender: UserId, tag: &'static str| {
            let store = std::sync::Arc::clone(&store);
            tokio::spawn(async move {
                let mut accepted = Vec::new();
                for n in 0..200 {
                    if let Posted::Created(p) = store
                        .post(message(chat, sender, &format!("{tag}{n}")))
                        .await
                        .unwrap()
                    {
                        accepted.push(p.entry.seq);
                    }
                    if n % 16 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                accepted
            })
        };
        let (from_a, from_b) = (burst(a, "a"), burst(b, "b"));
        tokio::task::yield_now().await;
        let renamed = store
            .change_chat(
                chat,
                a,
                ChatChange::Rename("H".into()),
                10,
                Timestamp::now(),
            )
            .await
            .unwrap();
        let ChatChanged::Done(left) = store
            .change_chat(chat, b, ChatChange::Remove(b), 10, Timestamp::now())
            .await
            .unwrap()
        else {
            panic!("b may leave")
        };
        assert!(matches!(renamed, ChatChanged::Done(_)));
        let left_at = left[0].entry.seq;
        let (from_a, from_b) = (from_a.await.unwrap(), from_b.await.unwrap());
        assert!(
            from_b.iter().all(|seq| *seq < left_at),
            "nothing from b after it left at {left_at}"
        );
        assert_eq!(from_a.len(), 200, "a stays a member");
        // One entry per accepted message, the creation, the rename, the
        // leave (and the successor admin: none, a is admin): gapless.
        let all = seqs(&store, chat, a).await;
        assert_eq!(all, (1..=all.len() as i64).collect::<Vec<_>>());
        assert_eq!(all.len(), 1 + from_a.len() + from_b.len() + 2);
        store.close().await;
    }

    #[tokio::test]
    async fn a_data_directory_of_the_previous_schema_is_carried_forward() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let (chat, alice, bob) = (ChatId::new(), UserId::new(), UserId::new());
        {
            // A database as the previous release left it: six migrations,
            // a direct chat with two messages and its per-user updates.
            let mut conn = Connection::open(&path).unwrap();
            for (i, sql) in MIGRATIONS[..6].iter().enumerate() {
                let tx = conn.transaction().unwrap();
                tx.execute_batch(sql).unwrap();
                tx.pragma_update(None, "user_version", i + 1).unwrap();
                tx.commit().unwrap();
            }
            let (c, a, b) = (
                chat.as_uuid().as_bytes().to_vec(),
                alice.as_uuid().as_bytes().to_vec(),
                bob.as_uuid().as_bytes().to_vec(),
            );
            for (id, phone) in [(&a, "+14155550001"), (&b, "+14155550002")] {
                conn.execute(
                    "INSERT INTO users (id, phone, name, created_at, updated_at, pts)
                     VALUES (?1, ?2, 'u', 1, 1, 3)",
                    params![id, phone],
                )
                .unwrap();
            }
            conn.execute(
                "INSERT INTO chats (id, kind, encrypted, created_by, created_at, last_seq,
                                    last_activity_at)
                 VALUES (?1, 'direct', 0, ?2, 1, 3, 3)",
                params![c, a],
            )
            .unwrap();
            for u in [&a, &b] {
                conn.execute(
                    "INSERT INTO memberships (chat_id, user_id, from_seq, role, joined_at)
                     VALUES (?1, ?2, 1, 'member', 1)",
                    params![c, u],
                )
                .unwrap();
                conn.execute(
                    "INSERT INTO receipts (chat_id, user_id, delivered_seq, read_seq)
                     VALUES (?1, ?2, 3, 2)",
                    params![c, u],
                )
                .unwrap();
            }
            for (seq, kind, text) in [
                (1, "system", None),
                (2, "message", Some("one")),
                (3, "message", Some("two")),
            ] {
                conn.execute(
                    "INSERT INTO chat_log (chat_id, seq, id, kind, sender_id, msg_type, content,
                                           event, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?2)",
                    params![
                        c,
                        seq,
                        MessageId::new().as_uuid().as_bytes().to_vec(),
                        kind,
                        a,
                        if kind == "system" { "system" } else { "text" },
                        text,
                        (kind == "system").then_some(r#"{"kind":"created"}"#),
                    ],
                )
                .unwrap();
                for u in [&a, &b] {
                    conn.execute(
                        "INSERT INTO updates (user_id, pts, chat_id, seq, kind, created_at)
                         VALUES (?1, ?2, ?3, ?2, ?4, ?2)",
                        params![u, seq, c, kind],
                    )
                    .unwrap();
                }
            }
        }
        let store = SqliteStore::open(dir.path(), &StoreConfig::default()).unwrap();
        let events = store.events_after(chat, bob, 0, 10).await.unwrap();
        let texts: Vec<Option<String>> = events
            .iter()
            .map(|e| match &e.body {
                crate::store::EventBody::Entry(entry) => entry.content.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(texts, [None, Some("one".into()), Some("two".into())]);
        let receipts = store.receipt_state(chat).await.unwrap();
        assert_eq!((receipts.delivered_seq, receipts.read_seq), (3, 2));
        let Posted::Created(next) = store.post(message(chat, bob, "three")).await.unwrap() else {
            panic!("bob is a member")
        };
        assert_eq!(next.entry.seq, 4);
        let heads = store.chat_heads(alice).await.unwrap();
        assert_eq!(heads.len(), 1);
        assert_eq!(heads[0].last_seq, 4);
        store.close().await;
        let conn = Connection::open(&path).unwrap();
        let updates: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = 'updates'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(updates, 0, "the per-user update rows are gone");
    }

    #[tokio::test]
    async fn push_channels_and_waiting_pushes_survive_the_mobile_push_migration() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let (user, device) = (UserId::new(), DeviceId::new());
        let before = MIGRATIONS
            .iter()
            .position(|m| m.starts_with("-- Mobile push: FCM and APNs"))
            .unwrap();
        {
            // Everything before 0016, a Web Push channel and a waiting push.
            let mut conn = Connection::open(&path).unwrap();
            for (i, sql) in MIGRATIONS[..before].iter().enumerate() {
                let tx = conn.transaction().unwrap();
                tx.execute_batch(sql).unwrap();
                tx.pragma_update(None, "user_version", i + 1).unwrap();
                tx.commit().unwrap();
            }
            let (u, d) = (
                user.as_uuid().as_bytes().to_vec(),
                device.as_uuid().as_bytes().to_vec(),
            );
            conn.execute(
                "INSERT INTO users (id, phone, name, created_at, updated_at)
                 VALUES (?1, '+14155550009', 'u', 1, 1)",
                [&u],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO devices (id, user_id, name, token_hash, created_at, last_active_at)
                 VALUES (?1, ?2, 'phone', x'01', 1, 1)",
                params![d, u],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO push_channels (device_id, user_id, kind, endpoint, p256dh, auth,
                                            created_at)
                 VALUES (?1, ?2, 'webpush', 'https://push.example.com/1', x'04', x'05', 1)",
                params![d, u],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO push_outbox (device_id, user_id, chat_id, count, since_seq, last_seq,
                                          queued_at)
                 VALUES (?1, ?2, NULL, 2, 4, 6, 1)",
                params![d, u],
            )
            .unwrap();
        }
        let store = SqliteStore::open(dir.path(), &StoreConfig::default()).unwrap();
        let claimed = store
            .claim_pushes(Timestamp(10_000), 0, Timestamp(20_000), 10)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        let push = &claimed[0];
        assert_eq!((push.device_id, push.count, push.last_seq), (device, 2, 6));
        assert_eq!(push.channel.target.endpoint, "https://push.example.com/1");
        assert_eq!(push.channel.target.p256dh.as_deref(), Some(&[4u8][..]));
        assert_eq!(push.channel.target.environment, None);
        store.close().await;
        // The outbox still refers to the (renamed) channels table.
        let conn = Connection::open(&path).unwrap();
        let parent: String = conn
            .query_row(
                "SELECT \"table\" FROM pragma_foreign_key_list('push_outbox')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(parent, "push_channels");
    }

    #[tokio::test]
    async fn uploads_in_progress_start_again_from_zero_with_the_segments_migration() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let (user, pending, done) = (UserId::new(), MediaId::new(), MediaId::new());
        let before = MIGRATIONS.len() - 1;
        assert!(MIGRATIONS[before].starts_with("-- Resumable uploads: each request"));
        {
            // Everything before 0017, an upload half received (its bytes in
            // a staging file no server reads any more) and a finished one.
            let mut conn = Connection::open(&path).unwrap();
            for (i, sql) in MIGRATIONS[..before].iter().enumerate() {
                let tx = conn.transaction().unwrap();
                tx.execute_batch(sql).unwrap();
                tx.pragma_update(None, "user_version", i + 1).unwrap();
                tx.commit().unwrap();
            }
            let u = user.as_uuid().as_bytes().to_vec();
            conn.execute(
                "INSERT INTO users (id, phone, name, created_at, updated_at)
                 VALUES (?1, '+14155550009', 'u', 1, 1)",
                [&u],
            )
            .unwrap();
            for (id, received, ready) in [(pending, 50, 0), (done, 100, 1)] {
                conn.execute(
                    "INSERT INTO media (id, owner_id, kind, length, received, ready, created_at)
                     VALUES (?1, ?2, 'file', 100, ?3, ?4, 1)",
                    params![id.as_uuid().as_bytes().to_vec(), u, received, ready],
                )
                .unwrap();
            }
        }
        let store = SqliteStore::open(dir.path(), &StoreConfig::default()).unwrap();
        let pending = store.media(pending).await.unwrap().unwrap();
        assert_eq!(pending.received, 0, "resumed from the start");
        assert!(store.media_segments(pending.id).await.unwrap().is_empty());
        assert_eq!(store.media(done).await.unwrap().unwrap().received, 100);
        store.close().await;
    }

    #[tokio::test]
    async fn a_burst_coalesces_into_one_push_and_late_arrivals_survive_the_send() {
        use crate::push::PushTarget;
        use crate::store::{NewPush, PushChannelRecord, PushFinished};
        use natter_proto::push::PushKind;

        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), &StoreConfig::default()).unwrap();
        let a = user(&store, 1).await;
        let device = store.devices(a).await.unwrap()[0].id;
        let channel = PushChannelRecord {
            device_id: device,
            target: PushTarget {
                kind: PushKind::Unifiedpush,
                endpoint: "https://up.example.com/x".into(),
                p256dh: None,
                auth: None,
                environment: None,
            },
            created_at: Timestamp(0),
        };
        assert_eq!(
            store
                .put_push_channel(UserId::new(), channel.clone())
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            store.put_push_channel(a, channel.clone()).await.unwrap(),
            Some(true)
        );
        assert_eq!(
            store.put_push_channel(a, channel).await.unwrap(),
            Some(false)
        );
        let (c1, c2) = (ChatId::new(), ChatId::new());
        let push = |chat, seq, now| NewPush {
            device_id: device,
            user_id: a,
            chat_id: chat,
            seq,
            preview: None,
            now: Timestamp(now),
        };
        store
            .queue_pushes(vec![
                push(c1, 5, 1000),
                push(c1, 6, 1100),
                push(c1, 7, 1200),
            ])
            .await
            .unwrap();
        assert_eq!(
            store.next_push_due(500).await.unwrap(),
            Some(Timestamp(1500))
        );
        assert!(
            store
                .claim_pushes(Timestamp(1499), 500, Timestamp(9999), 10)
                .await
                .unwrap()
                .is_empty()
        );
        let claimed = store
            .claim_pushes(Timestamp(1500), 500, Timestamp(9000), 10)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        let p = &claimed[0];
        assert_eq!(
            (p.count, p.since_seq, p.last_seq, p.chat_id),
            (3, 4, 7, Some(c1))
        );
        // Leased: not claimable again until the lease ends.
        assert_eq!(
            store.next_push_due(500).await.unwrap(),
            Some(Timestamp(9000))
        );
        // Another chat's message arrives while it is being sent.
        store.queue_pushes(vec![push(c2, 8, 1600)]).await.unwrap();
        store
            .finish_push(
                device,
                PushFinished::Settled {
                    version: p.version,
                    count: p.count,
                    last_seq: p.last_seq,
                    now: Timestamp(2000),
                },
            )
            .await
            .unwrap();
        let rest = store
            .claim_pushes(Timestamp(2500), 500, Timestamp(9000), 10)
            .await
            .unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(
            (rest[0].count, rest[0].since_seq, rest[0].last_seq),
            (1, 7, 8)
        );
        assert_eq!(rest[0].chat_id, None, "two chats in the burst");
        store
            .finish_push(
                device,
                PushFinished::Settled {
                    version: rest[0].version,
                    count: 1,
                    last_seq: 8,
                    now: Timestamp(2600),
                },
            )
            .await
            .unwrap();
        assert_eq!(store.next_push_due(500).await.unwrap(), None);
        // 410: the channel goes, unless the endpoint changed meanwhile.
        store.queue_pushes(vec![push(c1, 9, 3000)]).await.unwrap();
        store
            .finish_push(
                device,
                PushFinished::Gone {
                    endpoint: "https://other.example.com/".into(),
                },
            )
            .await
            .unwrap();
        assert_eq!(store.push_devices(vec![a]).await.unwrap().len(), 1);
        store
            .finish_push(
                device,
                PushFinished::Gone {
                    endpoint: "https://up.example.com/x".into(),
                },
            )
            .await
            .unwrap();
        assert!(store.push_devices(vec![a]).await.unwrap().is_empty());
        store.close().await;
    }

    fn words(q: &str) -> crate::search_query::TextQuery {
        let limits = crate::search_query::QueryLimits {
            max_chars: 256,
            max_terms: 16,
        };
        crate::search_query::parse(q, limits).unwrap()
    }

    async fn found(store: &SqliteStore, user: UserId, q: &str) -> Vec<String> {
        let page = store
            .search_messages(SearchQuery {
                user,
                text: words(q),
                chats: Vec::new(),
                sender: None,
                message_type: None,
                before: None,
                after: None,
                by_relevance: false,
                offset: 0,
                limit: 50,
            })
            .await
            .unwrap();
        assert_eq!(page.total, page.hits.len() as i64);
        page.hits
            .into_iter()
            .map(|h| h.entry.content.unwrap_or_default())
            .collect()
    }

    #[tokio::test]
    async fn the_search_indexer_follows_the_log_once_in_bounded_passes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), &StoreConfig::default()).unwrap();
        let (a, b) = (user(&store, 1).await, user(&store, 2).await);
        let chat = |encrypted: bool, name: &str| NewChat {
            id: ChatId::new(),
            kind: ChatKind::Group,
            name: Some(name.to_owned()),
            encrypted,
            creator: a,
            others: vec![b],
            now: Timestamp::now(),
        };
        let ChatCreated::Created(plain, _) = store.create_chat(chat(false, "p")).await.unwrap()
        else {
            panic!("new chat")
        };
        let ChatCreated::Created(sealed, _) = store.create_chat(chat(true, "s")).await.unwrap()
        else {
            panic!("new chat")
        };
        let post = |chat: ChatId, text: &str| {
            let id = MessageId::new();
            let message = NewMessage {
                id,
                chat_id: chat,
                sender_id: a,
                sender_device_id: DeviceId::new(),
                message_type: MessageType::Text,
                content: Some(text.to_owned()),
                ciphertext: None,
                media_id: None,
                reply_to: None,
                client_message_id: None,
                client_timestamp: None,
                now: Timestamp::now(),
            };
            let store = &store;
            async move {
                store.post(message).await.unwrap();
                id
            }
        };
        let change = |message: MessageId, edit: Option<&str>| crate::store::MessageChange {
            message,
            actor: a,
            device: DeviceId::new(),
            edit: edit.map(|t| crate::store::NewContent {
                content: Some(t.to_owned()),
                ciphertext: None,
                window_ms: i64::MAX,
            }),
            now: Timestamp::now(),
        };
        post(plain.id, "alpha one").await;
        // The store does not check that an encrypted chat's message has no
        // text; the indexer must skip it anyway.
        post(sealed.id, "alpha sealed").await;
        let edited = post(plain.id, "beta two").await;
        store
            .change_message(change(edited, Some("gamma two")))
            .await
            .unwrap();
        let doomed = post(plain.id, "alpha doomed").await;
        store.change_message(change(doomed, None)).await.unwrap();
        let appended = store.search_index_lag().await.unwrap();
        assert!(appended >= 6, "{appended}");
        assert!(
            found(&store, b, "alpha").await.is_empty(),
            "nothing indexed yet"
        );

        let mut passes = 0;
        let mut followed = 0;
        loop {
            let progress = store.index_search(2).await.unwrap();
            assert!(progress.processed <= 2, "bounded: {progress:?}");
            followed += progress.processed;
            passes += 1;
            assert_eq!(progress.remaining, appended - followed);
            if progress.remaining == 0 {
                break;
            }
        }
        assert_eq!(followed, appended);
        assert_eq!(passes, appended.div_ceil(2));
        let idle = store.index_search(2).await.unwrap();
        assert_eq!((idle.processed, idle.remaining), (0, 0));

        assert_eq!(found(&store, b, "alpha").await, ["alpha one"]);
        assert!(found(&store, b, "beta").await.is_empty());
        assert_eq!(found(&store, b, "gamma").await, ["gamma two"]);
        assert!(found(&store, b, "doomed").await.is_empty());

        // A deletion hides the message at once, and the indexer then
        // removes it from the index.
        store.change_message(change(edited, None)).await.unwrap();
        assert_eq!(store.search_index_lag().await.unwrap(), 1);
        assert!(
            found(&store, b, "gamma").await.is_empty(),
            "hidden before indexing"
        );
        let docs = || {
            store.readers.read(|c| {
                c.query_row("SELECT count(*) FROM search_docs", [], |r| {
                    r.get::<_, i64>(0)
                })
                .map_err(db_err)
            })
        };
        assert_eq!(docs().await.unwrap(), 2, "alpha one and gamma two");
        store.index_search(10).await.unwrap();
        assert_eq!(docs().await.unwrap(), 1, "alpha one");
        assert!(found(&store, b, "gamma").await.is_empty());
        store.close().await;
    }

    #[tokio::test]
    async fn a_database_from_before_the_indexer_starts_caught_up_and_loses_forged_markers() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), &StoreConfig::default()).unwrap();
        let (a, b) = (user(&store, 1).await, user(&store, 2).await);
        let new = NewChat {
            id: ChatId::new(),
            kind: ChatKind::Direct,
            name: None,
            encrypted: false,
            creator: a,
            others: vec![b],
            now: Timestamp::now(),
        };
        let ChatCreated::Created(chat, _) = store.create_chat(new).await.unwrap() else {
            panic!("new chat")
        };
        store
            .post(NewMessage {
                id: MessageId::new(),
                chat_id: chat.id,
                sender_id: a,
                sender_device_id: DeviceId::new(),
                message_type: MessageType::Text,
                content: Some("tagged forged words".to_owned()),
                ciphertext: None,
                media_id: None,
                reply_to: None,
                client_message_id: None,
                client_timestamp: None,
                now: Timestamp::now(),
            })
            .await
            .unwrap();
        while store.index_search(100).await.unwrap().remaining > 0 {}
        store.close().await;
        drop(store);
        // Back to schema 7 as the earlier code left it: everything indexed
        // in its append transaction, no cursor, the text stored verbatim.
        let c = Connection::open(dir.path().join(DB_FILE)).unwrap();
        // (Schema 7 still had what the fan-out migration later removes, and
        // not what 0009 adds.)
        c.execute_batch(
            "DROP TABLE group_invitations;
             ALTER TABLE users DROP COLUMN group_add_permission;
             DROP TABLE search_cursor;
             DROP TABLE invites;
             DROP TABLE device_inbox; DROP TABLE key_packages; DROP TABLE device_keys;
             DROP TABLE identity_keys; ALTER TABLE chats DROP COLUMN epoch;
             ALTER TABLE users DROP COLUMN deactivated_at;
             ALTER TABLE users DROP COLUMN deleted_at;
             ALTER TABLE verification_codes DROP COLUMN shown_code;
             DROP TABLE media_segments;
             CREATE TABLE updates (user_id BLOB, pts INTEGER);
             ALTER TABLE users ADD COLUMN pts INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE devices ADD COLUMN acked_pts INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE chats ADD COLUMN last_seq INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE chats ADD COLUMN last_activity_at INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE push_outbox RENAME COLUMN since_seq TO since_pts;
             ALTER TABLE push_outbox RENAME COLUMN last_seq TO last_pts;
             PRAGMA user_version = 7;",
        )
        .unwrap();
        c.execute(
            "UPDATE search_words SET content = ?1",
            ["tagged \u{E000}forged\u{E001} words"],
        )
        .unwrap();
        drop(c);

        let store = SqliteStore::open(dir.path(), &StoreConfig::default()).unwrap();
        assert_eq!(store.search_index_lag().await.unwrap(), 0);
        assert_eq!(store.index_search(100).await.unwrap().processed, 0);
        let page = store
            .search_messages(SearchQuery {
                user: b,
                text: words("tagged"),
                chats: Vec::new(),
                sender: None,
                message_type: None,
                before: None,
                after: None,
                by_relevance: false,
                offset: 0,
                limit: 10,
            })
            .await
            .unwrap();
        assert_eq!(page.total, 1, "indexed once, not again");
        let snippet = &page.hits[0].snippet;
        assert!(
            !snippet.text.contains(['\u{E000}', '\u{E001}']),
            "{snippet:?}"
        );
        let marked: Vec<&str> = snippet
            .marks
            .iter()
            .map(|r| &snippet.text[r.clone()])
            .collect();
        assert_eq!(marked, ["tagged"]);
        store.close().await;
    }
}
