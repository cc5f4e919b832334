//! [`Accounts`] on PostgreSQL: the accounts database's users, devices,
//! verification codes, contacts and server secrets.
//!
//! Each write is one transaction at READ COMMITTED that locks the row its
//! decision rests on (the code's row, the user's row), so decisions made
//! on many nodes at once are serialized by the database: one code is
//! consumed once, a device or contact limit is never passed by a race.
//! The limits themselves are the shared rules of [`crate::store::rules`].

use async_trait::async_trait;
use natter_proto::{DeviceId, MediaId, UserId};
use uuid::Uuid;

use super::{Postgres, execute, rows};
use crate::clock::Timestamp;
use crate::phone::Phone;
use crate::secret::{CodeHash, TokenHash};
use crate::store::columns::{
    permission_from_sql, permission_to_sql, sort_contacts, visibility_from_sql, visibility_to_sql,
};
use crate::store::rules::has_room;
use crate::store::{
    Accounts, ContactAdded, ContactEntry, Device, LoggedIn, Login, NewDevice, NewVerificationCode,
    ProfilePatch, Registered, Registration, Relation, StoreError, StoreResult, User,
};

/// The columns [`user_from_row`] reads, in a `SELECT`.
pub(super) const USER_COLUMNS: &str = "id, phone, name, about, last_seen_visibility, \
     group_add_permission, last_seen_at, profile_pic, created_at";

pub(super) const DEVICE_COLUMNS: &str = "id, user_id, name, created_at, last_active_at";

pub(super) fn user_from_row(row: &tokio_postgres::Row) -> User {
    User {
        id: UserId::from_uuid(row.get("id")),
        phone: Phone::from_stored(row.get("phone")),
        name: row.get("name"),
        about: row.get("about"),
        last_seen_visibility: visibility_from_sql(row.get("last_seen_visibility")),
        group_add_permission: permission_from_sql(row.get("group_add_permission")),
        last_seen_at: row.get::<_, Option<i64>>("last_seen_at").map(Timestamp),
        profile_pic: row
            .get::<_, Option<Uuid>>("profile_pic")
            .map(MediaId::from_uuid),
        created_at: Timestamp(row.get("created_at")),
    }
}

pub(super) fn device_from_row(row: &tokio_postgres::Row) -> Device {
    Device {
        id: DeviceId::from_uuid(row.get("id")),
        user_id: UserId::from_uuid(row.get("user_id")),
        name: row.get("name"),
        created_at: Timestamp(row.get("created_at")),
        last_active_at: Timestamp(row.get("last_active_at")),
    }
}

/// An account by id; a deleted account's tombstone is no account.
pub(super) async fn user_by_id(
    tx: &deadpool_postgres::Transaction<'_>,
    id: UserId,
) -> StoreResult<Option<User>> {
    let found = rows(
        tx,
        &format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1 AND deleted_at IS NULL"),
        &[id.as_uuid()],
    )
    .await?;
    Ok(found.first().map(user_from_row))
}

/// Creates an account as given (the operator's and the invite's way; a
/// code-verified sign-up is [`Accounts::register`]); false if the number
/// is taken, when nothing is written.
pub(super) async fn insert_user(
    tx: &deadpool_postgres::Transaction<'_>,
    u: &User,
) -> StoreResult<bool> {
    let inserted = execute(
        tx,
        "INSERT INTO users (id, phone, name, about, last_seen_visibility,
                            last_seen_at, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
         ON CONFLICT (phone) DO NOTHING",
        &[
            u.id.as_uuid(),
            &u.phone.as_str(),
            &u.name,
            &u.about,
            &visibility_to_sql(u.last_seen_visibility),
            &u.last_seen_at.map(|t| t.0),
            &u.created_at.0,
        ],
    )
    .await?;
    Ok(inserted == 1)
}

/// Creates a device and counts the login as the user's activity.
pub(super) async fn insert_device(
    tx: &deadpool_postgres::Transaction<'_>,
    user: UserId,
    device: &NewDevice,
) -> StoreResult<()> {
    execute(
        tx,
        "INSERT INTO devices (id, user_id, name, token_hash, created_at, last_active_at)
         VALUES ($1, $2, $3, $4, $5, $5)",
        &[
            device.id.as_uuid(),
            user.as_uuid(),
            &device.name,
            &device.token_hash.0.as_slice(),
            &device.created_at.0,
        ],
    )
    .await?;
    execute(
        tx,
        "UPDATE users SET last_seen_at = $2 WHERE id = $1",
        &[user.as_uuid(), &device.created_at.0],
    )
    .await?;
    Ok(())
}

/// Deletes the number's code if it still has this hash; true if it did.
async fn consume_code(
    tx: &deadpool_postgres::Transaction<'_>,
    phone: &Phone,
    code: &CodeHash,
) -> StoreResult<bool> {
    let n = execute(
        tx,
        "DELETE FROM verification_codes WHERE phone = $1 AND code_hash = $2",
        &[&phone.as_str(), &code.0.as_slice()],
    )
    .await?;
    Ok(n == 1)
}

/// Gives back the attempt a right code used, when what it guarded was refused.
async fn refund_attempt(
    tx: &deadpool_postgres::Transaction<'_>,
    phone: &Phone,
    code: &CodeHash,
) -> StoreResult<()> {
    execute(
        tx,
        "UPDATE verification_codes SET attempts = greatest(attempts - 1, 0)
         WHERE phone = $1 AND code_hash = $2",
        &[&phone.as_str(), &code.0.as_slice()],
    )
    .await?;
    Ok(())
}

fn count(row: &tokio_postgres::Row) -> usize {
    usize::try_from(row.get::<_, i64>(0)).unwrap_or(usize::MAX)
}

#[async_trait]
impl Accounts for Postgres {
    async fn server_secret(
        &self,
        name: &'static str,
        make: Box<dyn FnOnce() -> Vec<u8> + Send>,
    ) -> StoreResult<Vec<u8>> {
        if let Some(row) = self
            .accounts()
            .read("SELECT value FROM server_secrets WHERE name = $1", &[&name])
            .await?
            .first()
        {
            return Ok(row.get(0));
        }
        // Another node may make it at the same time: the first insert
        // wins and every node reads that one back.
        let value = make();
        self.accounts()
            .write(|tx| {
                let value = value.clone();
                Box::pin(async move {
                    execute(
                        tx,
                        "INSERT INTO server_secrets (name, value) VALUES ($1, $2)
                     ON CONFLICT (name) DO NOTHING",
                        &[&name, &value],
                    )
                    .await?;
                    let stored = rows(
                        tx,
                        "SELECT value FROM server_secrets WHERE name = $1",
                        &[&name],
                    )
                    .await?;
                    stored
                        .first()
                        .map(|row| row.get(0))
                        .ok_or_else(|| StoreError::internal("the server secret vanished"))
                })
            })
            .await
    }

    async fn put_verification_code(&self, code: NewVerificationCode) -> StoreResult<()> {
        self.accounts()
            .write(|tx| {
                let code = code.clone();
                Box::pin(async move {
                    execute(
                        tx,
                        "INSERT INTO verification_codes
                       (phone, code_hash, attempts, created_at, expires_at, shown_code)
                     VALUES ($1, $2, 0, $3, $4, $5)
                     ON CONFLICT (phone) DO UPDATE SET code_hash = excluded.code_hash,
                       attempts = 0, created_at = excluded.created_at,
                       expires_at = excluded.expires_at, shown_code = excluded.shown_code",
                        &[
                            &code.phone.as_str(),
                            &code.hash.0.as_slice(),
                            &code.created_at.0,
                            &code.expires_at.0,
                            &code.shown,
                        ],
                    )
                    .await
                    .map(drop)
                })
            })
            .await
    }

    async fn attempt_verification_code(
        &self,
        phone: &Phone,
        now: Timestamp,
        max_attempts: u32,
    ) -> StoreResult<Option<CodeHash>> {
        let max = i32::try_from(max_attempts).unwrap_or(i32::MAX);
        self.accounts()
            .write(|tx| {
                let phone = phone.clone();
                Box::pin(async move {
                    // Count the attempt first, so it counts even if the caller goes away.
                    let hash = rows(
                        tx,
                        "UPDATE verification_codes SET attempts = attempts + 1
                     WHERE phone = $1 AND expires_at > $2 AND attempts < $3
                     RETURNING code_hash",
                        &[&phone.as_str(), &now.0, &max],
                    )
                    .await?;
                    Ok(hash
                        .first()
                        .and_then(|row| <[u8; 32]>::try_from(row.get::<_, &[u8]>(0)).ok())
                        .map(CodeHash))
                })
            })
            .await
    }

    async fn delete_expired_verification_codes(&self, now: Timestamp) -> StoreResult<u64> {
        self.accounts()
            .execute_one(
                "DELETE FROM verification_codes WHERE expires_at <= $1",
                &[&now.0],
            )
            .await
    }

    async fn register(&self, registration: Registration) -> StoreResult<Registered> {
        self.accounts()
            .write(|tx| {
                let r = registration.clone();
                Box::pin(async move {
                    let u = &r.user;
                    // The insert decides a race for the number (with an invite
                    // registration on another node, say): the unique index
                    // lets one account have it.
                    // Signing up is activity: last seen at creation.
                    let inserted = insert_user(
                        tx,
                        &User {
                            last_seen_at: Some(u.created_at),
                            ..u.clone()
                        },
                    )
                    .await?;
                    if !inserted {
                        // The right code proved the number; that try is not held against it.
                        refund_attempt(tx, &u.phone, &r.code).await?;
                        return Ok(Registered::PhoneTaken);
                    }
                    if !consume_code(tx, &u.phone, &r.code).await? {
                        // Undo the account this transaction made (no one else saw it).
                        execute(tx, "DELETE FROM users WHERE id = $1", &[u.id.as_uuid()]).await?;
                        return Ok(Registered::CodeGone);
                    }
                    insert_device(tx, u.id, &r.device).await?;
                    user_by_id(tx, u.id)
                        .await?
                        .map(Registered::Created)
                        .ok_or_else(|| StoreError::internal("the new user vanished"))
                })
            })
            .await
    }

    async fn login(&self, login: Login) -> StoreResult<LoggedIn> {
        self.accounts()
            .write(|tx| {
                let l = login.clone();
                Box::pin(async move {
                    // The user's row is locked: logins on other nodes wait, so
                    // the device count below stays true until this commits.
                    let user = rows(
                        tx,
                        &format!(
                            "SELECT {USER_COLUMNS} FROM users
                         WHERE phone = $1 AND deactivated_at IS NULL FOR UPDATE"
                        ),
                        &[&l.phone.as_str()],
                    )
                    .await?;
                    let Some(user) = user.first().map(user_from_row) else {
                        return Ok(LoggedIn::UnknownPhone);
                    };
                    let devices = rows(
                        tx,
                        "SELECT count(*) FROM devices WHERE user_id = $1",
                        &[user.id.as_uuid()],
                    )
                    .await?;
                    if !has_room(devices.first().map_or(0, count), 1, l.max_devices) {
                        refund_attempt(tx, &l.phone, &l.code).await?;
                        return Ok(LoggedIn::DeviceLimit);
                    }
                    if !consume_code(tx, &l.phone, &l.code).await? {
                        return Ok(LoggedIn::CodeGone);
                    }
                    insert_device(tx, user.id, &l.device).await?;
                    let fresh = user_by_id(tx, user.id).await?.unwrap_or(user);
                    Ok(LoggedIn::Created(fresh))
                })
            })
            .await
    }

    async fn device_by_token(&self, token: &TokenHash) -> StoreResult<Option<Device>> {
        let found = self
            .accounts()
            .read(
                &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE token_hash = $1"),
                &[&token.0.as_slice()],
            )
            .await?;
        Ok(found.first().map(device_from_row))
    }

    async fn touch_device(
        &self,
        user: UserId,
        device: DeviceId,
        now: Timestamp,
    ) -> StoreResult<()> {
        self.accounts()
            .execute_one(
                "UPDATE devices SET last_active_at = $2 WHERE id = $1",
                &[device.as_uuid(), &now.0],
            )
            .await?;
        self.accounts()
            .execute_one(
                "UPDATE users SET last_seen_at = greatest(coalesce(last_seen_at, 0), $2)
             WHERE id = $1 AND deleted_at IS NULL",
                &[user.as_uuid(), &now.0],
            )
            .await
            .map(drop)
    }

    async fn devices(&self, user: UserId) -> StoreResult<Vec<Device>> {
        let found = self
            .accounts()
            .read(
                &format!(
                    "SELECT {DEVICE_COLUMNS} FROM devices WHERE user_id = $1
                     ORDER BY created_at, id"
                ),
                &[user.as_uuid()],
            )
            .await?;
        Ok(found.iter().map(device_from_row).collect())
    }

    async fn delete_device(&self, user: UserId, device: DeviceId) -> StoreResult<bool> {
        self.accounts()
            .execute_one(
                "DELETE FROM devices WHERE id = $1 AND user_id = $2",
                &[device.as_uuid(), user.as_uuid()],
            )
            .await
            .map(|n| n == 1)
    }

    async fn user(&self, id: UserId) -> StoreResult<Option<User>> {
        let found = self
            .accounts()
            .read(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1 AND deleted_at IS NULL"),
                &[id.as_uuid()],
            )
            .await?;
        Ok(found.first().map(user_from_row))
    }

    async fn user_by_phone(&self, phone: &Phone) -> StoreResult<Option<User>> {
        let found = self
            .accounts()
            .read(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE phone = $1"),
                &[&phone.as_str()],
            )
            .await?;
        Ok(found.first().map(user_from_row))
    }

    async fn update_profile(
        &self,
        id: UserId,
        patch: ProfilePatch,
        now: Timestamp,
    ) -> StoreResult<Option<User>> {
        self.accounts()
            .write(|tx| {
                let patch = patch.clone();
                Box::pin(async move {
                    let picture: Option<Uuid> = patch.profile_pic.flatten().map(|m| *m.as_uuid());
                    execute(
                        tx,
                        "UPDATE users SET name = coalesce($2, name), about = coalesce($3, about),
                       last_seen_visibility = coalesce($4, last_seen_visibility),
                       updated_at = $5,
                       group_add_permission = coalesce($8, group_add_permission),
                       profile_pic = CASE WHEN $6 THEN (
                         SELECT m.id FROM media m WHERE m.id = $7 AND m.owner_id = $1
                           AND m.ready AND m.kind = 'image')
                         ELSE profile_pic END
                     WHERE id = $1",
                        &[
                            id.as_uuid(),
                            &patch.name,
                            &patch.about,
                            &patch.last_seen_visibility.map(visibility_to_sql),
                            &now.0,
                            &patch.profile_pic.is_some(),
                            &picture,
                            &patch.group_add_permission.map(permission_to_sql),
                        ],
                    )
                    .await?;
                    user_by_id(tx, id).await
                })
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
        self.accounts()
            .write(|tx| {
                Box::pin(async move {
                    let (o, t) = (owner.as_uuid(), contact.as_uuid());
                    // The owner's row is locked so the count below holds until commit.
                    rows(tx, "SELECT 1 FROM users WHERE id = $1 FOR UPDATE", &[o]).await?;
                    let existing = execute(
                        tx,
                        "UPDATE contacts SET added_by_phone = added_by_phone OR $3
                     WHERE owner_id = $1 AND contact_id = $2",
                        &[o, t, &by_phone],
                    )
                    .await?;
                    if existing == 1 {
                        return Ok(ContactAdded::AlreadyThere);
                    }
                    let listed = rows(
                        tx,
                        "SELECT count(*) FROM contacts WHERE owner_id = $1",
                        &[o],
                    )
                    .await?;
                    if !has_room(listed.first().map_or(0, count), 1, max_contacts) {
                        return Ok(ContactAdded::LimitReached);
                    }
                    execute(
                        tx,
                        "INSERT INTO contacts (owner_id, contact_id, added_by_phone, created_at)
                     VALUES ($1, $2, $3, $4)",
                        &[o, t, &by_phone, &now.0],
                    )
                    .await?;
                    Ok(ContactAdded::Added)
                })
            })
            .await
    }

    async fn remove_contact(&self, owner: UserId, contact: UserId) -> StoreResult<bool> {
        self.accounts()
            .execute_one(
                "DELETE FROM contacts WHERE owner_id = $1 AND contact_id = $2",
                &[owner.as_uuid(), contact.as_uuid()],
            )
            .await
            .map(|n| n == 1)
    }

    async fn contacts(&self, owner: UserId) -> StoreResult<Vec<ContactEntry>> {
        let found = self
            .accounts()
            .read(
                "SELECT u.id, u.phone, u.name, u.about, u.last_seen_visibility,
                        u.group_add_permission, u.last_seen_at, u.profile_pic, u.created_at,
                        c.added_by_phone,
                        EXISTS (SELECT 1 FROM contacts r
                                WHERE r.owner_id = u.id AND r.contact_id = c.owner_id)
                          AS they_have_me
                 FROM contacts c JOIN users u ON u.id = c.contact_id
                 WHERE c.owner_id = $1",
                &[owner.as_uuid()],
            )
            .await?;
        let mut list: Vec<ContactEntry> = found
            .iter()
            .map(|row| ContactEntry {
                user: user_from_row(row),
                relation: Relation {
                    viewer_has_target: true,
                    viewer_knows_phone: row.get("added_by_phone"),
                    target_has_viewer: row.get("they_have_me"),
                },
            })
            .collect();
        sort_contacts(&mut list);
        Ok(list)
    }

    async fn relation(&self, viewer: UserId, target: UserId) -> StoreResult<Relation> {
        let found = self
            .accounts()
            .read(
                "SELECT
                   (SELECT added_by_phone FROM contacts WHERE owner_id = $1 AND contact_id = $2),
                   EXISTS (SELECT 1 FROM contacts WHERE owner_id = $2 AND contact_id = $1)",
                &[viewer.as_uuid(), target.as_uuid()],
            )
            .await?;
        let row = found
            .first()
            .ok_or_else(|| StoreError::internal("a SELECT without FROM returned no row"))?;
        let mine: Option<bool> = row.get(0);
        Ok(Relation {
            viewer_has_target: mine.is_some(),
            viewer_knows_phone: mine.unwrap_or(false),
            target_has_viewer: row.get(1),
        })
    }

    async fn users_by_phones(&self, phones: &[Phone]) -> StoreResult<Vec<(Phone, UserId)>> {
        let numbers: Vec<&str> = phones.iter().map(Phone::as_str).collect();
        let found = self
            .accounts()
            .read(
                "SELECT phone, id FROM users WHERE phone = ANY($1)",
                &[&numbers],
            )
            .await?;
        let ids: std::collections::HashMap<String, Uuid> = found
            .iter()
            .map(|row| (row.get("phone"), row.get("id")))
            .collect();
        // In the order asked, as the embedded engine answers.
        Ok(phones
            .iter()
            .filter_map(|p| {
                ids.get(p.as_str())
                    .map(|id| (p.clone(), UserId::from_uuid(*id)))
            })
            .collect())
    }

    async fn set_last_seen(&self, user: UserId, at: Timestamp) -> StoreResult<()> {
        self.accounts()
            .execute_one(
                "UPDATE users SET last_seen_at = greatest(coalesce(last_seen_at, 0), $2)
                     WHERE id = $1 AND deleted_at IS NULL",
                &[user.as_uuid(), &at.0],
            )
            .await
            .map(drop)
    }
}
