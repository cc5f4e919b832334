//! [`KeyDirectory`] and [`DeviceInbox`] on PostgreSQL: identity keys,
//! device credentials, KeyPackages, inboxes, and the commits that move an
//! encrypted chat's epoch.
//!
//! A commit locks its chat's row like every append, so two admins'
//! commits for one epoch on two nodes are decided by the database: the
//! first moves the epoch, the second is `StaleEpoch`. A claim deletes each
//! one-time KeyPackage as it hands it out, skipping rows another claim has
//! locked, so no two claimers get the same package; a publish locks the
//! device's key row, so two publishes cannot pass the stock limit together.
//!
//! Keys, packages and inboxes live in the accounts database, chats in
//! their chat database: a commit's Welcomes are written to the chat
//! database's `welcome_outbox` in the commit's own transaction, then moved
//! to the inboxes ([`Postgres::deliver_welcomes`]); a node stopping in
//! between leaves them for the device's next inbox read to move. The
//! `devices_changed` entries of a key change are appended after the key's
//! transaction commits, one transaction per chat database.

use async_trait::async_trait;
use natter_proto::chats::{ChatEvent, MessageType};
use natter_proto::e2ee::InboxKind;
use natter_proto::{ChatId, DeviceId, UserId};
use uuid::Uuid;

use super::chats::{ENTRY_COLUMNS, Tx, append, append_entry, entry_from_row, lock_chat};
use super::{Database, Postgres, execute, rows};
use crate::clock::Timestamp;
use crate::store::chat_state::Draft;
use crate::store::columns::{inbox_kind_from_sql, inbox_kind_to_sql};
use crate::store::e2ee::{
    ClaimedPackage, ClaimedUser, Committed, CredentialSet, DeviceCredential, DeviceInbox,
    HandedOver, InboxRecord, KeyDirectory, NewCommit, NewHandover, Published,
};
use crate::store::{Appended, EntryKind, StoreError, StoreResult};

const INBOX_COLUMNS: &str =
    "id, device_id, kind, chat_id, seq, from_user, from_device, payload, created_at";

fn inbox_from_row(r: &tokio_postgres::Row) -> InboxRecord {
    InboxRecord {
        id: r.get("id"),
        device_id: DeviceId::from_uuid(r.get("device_id")),
        kind: inbox_kind_from_sql(r.get("kind")),
        chat_id: r.get::<_, Option<Uuid>>("chat_id").map(ChatId::from_uuid),
        seq: r.get("seq"),
        from_user: UserId::from_uuid(r.get("from_user")),
        from_device: DeviceId::from_uuid(r.get("from_device")),
        payload: r.get("payload"),
        created_at: Timestamp(r.get("created_at")),
    }
}

fn credential_from_row(r: &tokio_postgres::Row) -> DeviceCredential {
    DeviceCredential {
        device_id: DeviceId::from_uuid(r.get("device_id")),
        signature_key: r.get("signature_key"),
        link_key: r.get("link_key"),
        certificate: r.get("certificate"),
    }
}

async fn inbox_count(tx: &Tx<'_>, device: DeviceId) -> StoreResult<u64> {
    let n = rows(
        tx,
        "SELECT count(*) FROM device_inbox WHERE device_id = $1",
        &[device.as_uuid()],
    )
    .await?;
    Ok(n.first()
        .map_or(0, |r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(u64::MAX)))
}

async fn put_inbox(tx: &Tx<'_>, item: &InboxRecord) -> StoreResult<InboxRecord> {
    let id = rows(
        tx,
        "INSERT INTO device_inbox
           (device_id, kind, chat_id, seq, from_user, from_device, payload, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        &[
            item.device_id.as_uuid(),
            &inbox_kind_to_sql(item.kind),
            &item.chat_id.map(|c| *c.as_uuid()),
            &item.seq,
            item.from_user.as_uuid(),
            item.from_device.as_uuid(),
            &item.payload,
            &item.created_at.0,
        ],
    )
    .await?;
    let id = id
        .first()
        .map(|r| r.get(0))
        .ok_or_else(|| StoreError::internal("an inbox insert returned no id"))?;
    Ok(InboxRecord { id, ..item.clone() })
}

async fn device_owner(tx: &Tx<'_>, device: DeviceId) -> StoreResult<Option<UserId>> {
    let found = rows(
        tx,
        "SELECT user_id FROM devices WHERE id = $1",
        &[device.as_uuid()],
    )
    .await?;
    Ok(found.first().map(|r| UserId::from_uuid(r.get(0))))
}

async fn identity_key_of(tx: &Tx<'_>, user: UserId) -> StoreResult<Option<Vec<u8>>> {
    let found = rows(
        tx,
        "SELECT identity_key FROM identity_keys WHERE user_id = $1",
        &[user.as_uuid()],
    )
    .await?;
    Ok(found.first().map(|r| r.get(0)))
}

async fn credential(
    tx: &Tx<'_>,
    device: DeviceId,
    lock: bool,
) -> StoreResult<Option<DeviceCredential>> {
    let found = rows(
        tx,
        if lock {
            "SELECT device_id, signature_key, link_key, certificate FROM device_keys
             WHERE device_id = $1 FOR UPDATE"
        } else {
            "SELECT device_id, signature_key, link_key, certificate FROM device_keys
             WHERE device_id = $1"
        },
        &[device.as_uuid()],
    )
    .await?;
    Ok(found.first().map(credential_from_row))
}

async fn credentials_of(tx: &Tx<'_>, user: UserId) -> StoreResult<Vec<DeviceCredential>> {
    let found = rows(
        tx,
        "SELECT k.device_id, k.signature_key, k.link_key, k.certificate
         FROM device_keys k JOIN devices d ON d.id = k.device_id
         WHERE d.user_id = $1 ORDER BY d.created_at, d.id",
        &[user.as_uuid()],
    )
    .await?;
    Ok(found.iter().map(credential_from_row).collect())
}

async fn stock(tx: &Tx<'_>, device: DeviceId) -> StoreResult<(u32, bool)> {
    let found = rows(
        tx,
        "SELECT count(*) FILTER (WHERE NOT last_resort), coalesce(bool_or(last_resort), false)
         FROM key_packages WHERE device_id = $1",
        &[device.as_uuid()],
    )
    .await?;
    Ok(found.first().map_or((0, false), |r| {
        (
            u32::try_from(r.get::<_, i64>(0)).unwrap_or(u32::MAX),
            r.get(1),
        )
    }))
}

/// Appends `devices_changed` for `user` to each encrypted chat they are in.
async fn devices_changed_in(
    tx: &Tx<'_>,
    user: UserId,
    now: Timestamp,
) -> StoreResult<Vec<Appended>> {
    let mut chats: Vec<Uuid> = rows(
        tx,
        "SELECT m.chat_id FROM memberships m JOIN chats c ON c.id = m.chat_id
         WHERE m.user_id = $1 AND m.to_seq IS NULL AND c.encrypted",
        &[user.as_uuid()],
    )
    .await?
    .iter()
    .map(|r| r.get(0))
    .collect();
    // Locked in one order, so two such jobs never wait on each other.
    chats.sort_unstable();
    let mut appended = Vec::with_capacity(chats.len());
    for chat in chats.into_iter().map(ChatId::from_uuid) {
        let Some(mut state) = lock_chat(tx, chat).await? else {
            continue;
        };
        if state.role(user).is_none() {
            continue;
        }
        let event = ChatEvent::DevicesChanged { user_id: user };
        appended
            .push(append_entry(tx, &mut state, chat, Draft::system(user, event, now), None).await?);
    }
    Ok(appended)
}

#[async_trait]
impl KeyDirectory for Postgres {
    async fn set_identity_key(
        &self,
        user: UserId,
        key: Vec<u8>,
        now: Timestamp,
    ) -> StoreResult<Vec<Appended>> {
        let changed = self
            .accounts()
            .write(|tx| {
                let key = key.clone();
                Box::pin(async move {
                    if identity_key_of(tx, user).await?.as_deref() == Some(key.as_slice()) {
                        return Ok(false);
                    }
                    execute(
                        tx,
                        "INSERT INTO identity_keys (user_id, identity_key, updated_at)
                     VALUES ($1, $2, $3)
                     ON CONFLICT (user_id) DO UPDATE SET identity_key = $2, updated_at = $3",
                        &[user.as_uuid(), &key, &now.0],
                    )
                    .await?;
                    // The old key's certificates say nothing any more, nor do
                    // the packages made under them.
                    execute(
                        tx,
                        "UPDATE device_keys SET certificate = NULL WHERE user_id = $1",
                        &[user.as_uuid()],
                    )
                    .await?;
                    execute(
                        tx,
                        "DELETE FROM key_packages
                     WHERE device_id IN (SELECT id FROM devices WHERE user_id = $1)",
                        &[user.as_uuid()],
                    )
                    .await?;
                    Ok(true)
                })
            })
            .await?;
        if !changed {
            return Ok(Vec::new());
        }
        self.devices_changed(user, now).await
    }

    async fn identity_key(&self, user: UserId) -> StoreResult<Option<Vec<u8>>> {
        let found = self
            .accounts()
            .read(
                "SELECT identity_key FROM identity_keys WHERE user_id = $1",
                &[user.as_uuid()],
            )
            .await?;
        Ok(found.first().map(|r| r.get(0)))
    }

    async fn set_device_credential(
        &self,
        user: UserId,
        credential_new: DeviceCredential,
        now: Timestamp,
    ) -> StoreResult<CredentialSet> {
        // Whether the device is newly certified: then, after the commit,
        // its user's encrypted chats hear of it.
        let (set, certified) = self.accounts().write(|tx| {
            let new = credential_new.clone();
            Box::pin(async move {
                if device_owner(tx, new.device_id).await? != Some(user) {
                    return Ok((CredentialSet::NoDevice, false));
                }
                match credential(tx, new.device_id, true).await? {
                    Some(old)
                        if old.signature_key != new.signature_key
                            || old.link_key != new.link_key =>
                    {
                        Ok((CredentialSet::Exists, false))
                    }
                    Some(old) => match new.certificate {
                        Some(cert) if old.certificate.as_ref() != Some(&cert) => {
                            execute(
                                tx,
                                "UPDATE device_keys SET certificate = $2 WHERE device_id = $1",
                                &[new.device_id.as_uuid(), &cert],
                            )
                            .await?;
                            Ok((CredentialSet::Stored(Vec::new()), true))
                        }
                        _ => Ok((CredentialSet::Stored(Vec::new()), false)),
                    },
                    None => {
                        let inserted = execute(
                            tx,
                            "INSERT INTO device_keys
                               (device_id, user_id, signature_key, link_key, certificate, created_at)
                             VALUES ($1, $2, $3, $4, $5, $6)
                             ON CONFLICT (device_id) DO NOTHING",
                            &[
                                new.device_id.as_uuid(),
                                user.as_uuid(),
                                &new.signature_key,
                                &new.link_key,
                                &new.certificate,
                                &now.0,
                            ],
                        )
                        .await?;
                        if inserted == 0 {
                            // Another node registered keys for it meanwhile:
                            // run again, and the branches above decide.
                            return Err(StoreError::new(
                                crate::store::StoreErrorKind::Conflict,
                                "the device's keys were set meanwhile",
                            ));
                        }
                        Ok((CredentialSet::Stored(Vec::new()), new.certificate.is_some()))
                    }
                }
            })
        })
        .await?;
        if !certified {
            return Ok(set);
        }
        Ok(CredentialSet::Stored(
            self.devices_changed(user, now).await?,
        ))
    }

    async fn device_credentials(&self, user: UserId) -> StoreResult<Vec<DeviceCredential>> {
        let found = self
            .accounts()
            .read(
                "SELECT k.device_id, k.signature_key, k.link_key, k.certificate
                 FROM device_keys k JOIN devices d ON d.id = k.device_id
                 WHERE d.user_id = $1 ORDER BY d.created_at, d.id",
                &[user.as_uuid()],
            )
            .await?;
        Ok(found.iter().map(credential_from_row).collect())
    }

    async fn publish_key_packages(
        &self,
        device: DeviceId,
        packages: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
        max_per_device: u64,
        now: Timestamp,
    ) -> StoreResult<Published> {
        self.accounts()
            .write(|tx| {
                let (packages, last_resort) = (packages.clone(), last_resort.clone());
                Box::pin(async move {
                    // The key row's lock holds the stock still until commit.
                    if credential(tx, device, true).await?.is_none() {
                        return Ok(Published::NoKeys);
                    }
                    let (available, _) = stock(tx, device).await?;
                    let total = u64::from(available).saturating_add(packages.len() as u64);
                    if total > max_per_device {
                        return Ok(Published::TooMany);
                    }
                    for bytes in &packages {
                        execute(
                            tx,
                            "INSERT INTO key_packages (device_id, last_resort, bytes, created_at)
                         VALUES ($1, false, $2, $3)",
                            &[device.as_uuid(), bytes, &now.0],
                        )
                        .await?;
                    }
                    if let Some(bytes) = &last_resort {
                        execute(
                            tx,
                            "DELETE FROM key_packages WHERE device_id = $1 AND last_resort",
                            &[device.as_uuid()],
                        )
                        .await?;
                        execute(
                            tx,
                            "INSERT INTO key_packages (device_id, last_resort, bytes, created_at)
                         VALUES ($1, true, $2, $3)",
                            &[device.as_uuid(), bytes, &now.0],
                        )
                        .await?;
                    }
                    let (available, last_resort) = stock(tx, device).await?;
                    Ok(Published::Stock(available, last_resort))
                })
            })
            .await
    }

    async fn key_package_stock(&self, device: DeviceId) -> StoreResult<(u32, bool)> {
        self.accounts()
            .write(|tx| Box::pin(async move { stock(tx, device).await }))
            .await
    }

    async fn claim_key_packages(
        &self,
        users: Vec<UserId>,
        except: DeviceId,
    ) -> StoreResult<Vec<ClaimedUser>> {
        self.accounts()
            .write(|tx| {
                let users = users.clone();
                Box::pin(async move {
                    let mut out = Vec::with_capacity(users.len());
                    for user in users {
                        let identity = identity_key_of(tx, user).await?;
                        let devices: Vec<DeviceCredential> = credentials_of(tx, user)
                            .await?
                            .into_iter()
                            .filter(|d| d.certificate.is_some() && d.device_id != except)
                            .collect();
                        let mut claimed = Vec::with_capacity(devices.len());
                        for d in devices {
                            let id = d.device_id.as_uuid();
                            let one_time = rows(
                                tx,
                                "DELETE FROM key_packages WHERE id = (
                               SELECT id FROM key_packages
                               WHERE device_id = $1 AND NOT last_resort
                               ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
                             RETURNING bytes",
                                &[id],
                            )
                            .await?;
                            let (bytes, last_resort) = match one_time.first() {
                                Some(row) => (row.get::<_, Vec<u8>>(0), false),
                                None => {
                                    let kept = rows(
                                        tx,
                                        "SELECT bytes FROM key_packages
                                     WHERE device_id = $1 AND last_resort",
                                        &[id],
                                    )
                                    .await?;
                                    match kept.first() {
                                        Some(row) => (row.get(0), true),
                                        None => continue,
                                    }
                                }
                            };
                            let (left, _) = stock(tx, d.device_id).await?;
                            claimed.push(ClaimedPackage {
                                device_id: d.device_id,
                                signature_key: d.signature_key,
                                certificate: d.certificate.unwrap_or_default(),
                                key_package: bytes,
                                last_resort,
                                left,
                            });
                        }
                        out.push(ClaimedUser {
                            user_id: user,
                            identity_key: identity,
                            devices: claimed,
                        });
                    }
                    Ok(out)
                })
            })
            .await
    }

    async fn devices_changed(&self, user: UserId, now: Timestamp) -> StoreResult<Vec<Appended>> {
        let mut appended = Vec::new();
        for db in self.chat_dbs() {
            appended.extend(
                db.write(|tx| Box::pin(async move { devices_changed_in(tx, user, now).await }))
                    .await?,
            );
        }
        // In chat id order over all databases, as one database gives them.
        appended.sort_by_key(|a| *a.entry.chat_id.as_uuid());
        Ok(appended)
    }
}

/// A commit in its chat database's transaction: the checks, the append,
/// the epoch's move and the Welcomes into the outbox (returned by id).
/// `facts` are each Welcome device's owner and inbox size.
async fn commit_in(
    tx: &Tx<'_>,
    n: NewCommit,
    facts: &[(DeviceId, Option<UserId>, u64)],
) -> StoreResult<(Committed, Vec<(i64, InboxRecord)>)> {
    let m = n.message;
    let Some(mut state) = lock_chat(tx, m.chat_id).await? else {
        return Ok((Committed::NotMember, Vec::new()));
    };
    if state.role(m.sender_id).is_none() {
        return Ok((Committed::NotMember, Vec::new()));
    }
    if !state.encrypted {
        return Ok((Committed::NotEncrypted, Vec::new()));
    }
    // A retry of an accepted commit finds it before its epoch is checked
    // (the epoch has moved on since, because of it).
    if let Some(key) = &m.client_message_id {
        let first = rows(
            tx,
            &format!(
                "SELECT {ENTRY_COLUMNS} FROM chat_log l
                 WHERE l.chat_id = $1 AND l.sender_id = $2 AND l.client_message_id = $3"
            ),
            &[m.chat_id.as_uuid(), m.sender_id.as_uuid(), key],
        )
        .await?;
        if let Some(row) = first.first() {
            let duplicate = Committed::Duplicate(Box::new(entry_from_row(row)?), state.epoch);
            return Ok((duplicate, Vec::new()));
        }
    }
    if n.epoch != state.epoch {
        return Ok((Committed::StaleEpoch(state.epoch), Vec::new()));
    }
    for (device, owner, items) in facts {
        match owner {
            Some(owner) if state.role(*owner).is_some() => {}
            _ => return Ok((Committed::NotParticipantDevice(*device), Vec::new())),
        }
        if *items >= n.inbox_max {
            return Ok((Committed::InboxFull(*device), Vec::new()));
        }
    }
    let draft = Draft {
        id: m.id,
        sender_id: m.sender_id,
        sender_device_id: Some(m.sender_device_id),
        kind: EntryKind::Message(MessageType::Commit),
        content: None,
        ciphertext: m.ciphertext,
        media_id: None,
        reply_to: None,
        client_message_id: m.client_message_id,
        client_timestamp: m.client_timestamp,
        now: m.now,
    };
    let Some(appended) = append(tx, &mut state, m.chat_id, draft, None).await? else {
        return Err(StoreError::internal("a chat-log position was taken twice"));
    };
    state.epoch += 1;
    let epoch = state.epoch;
    execute(
        tx,
        "UPDATE chats SET epoch = $2 WHERE id = $1",
        &[
            m.chat_id.as_uuid(),
            &i64::try_from(epoch).unwrap_or(i64::MAX),
        ],
    )
    .await?;
    let mut outbox = Vec::with_capacity(facts.len());
    if let Some(welcome) = n.welcome {
        for (device, _, _) in facts {
            let item = InboxRecord {
                id: 0,
                device_id: *device,
                kind: InboxKind::Welcome,
                chat_id: Some(m.chat_id),
                seq: Some(appended.entry.seq),
                from_user: m.sender_id,
                from_device: m.sender_device_id,
                payload: welcome.clone(),
                created_at: m.now,
            };
            let id = rows(
                tx,
                "INSERT INTO welcome_outbox
                   (device_id, chat_id, seq, from_user, from_device, payload, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                &[
                    device.as_uuid(),
                    m.chat_id.as_uuid(),
                    &appended.entry.seq,
                    m.sender_id.as_uuid(),
                    m.sender_device_id.as_uuid(),
                    &item.payload,
                    &m.now.0,
                ],
            )
            .await?
            .first()
            .map(|r| r.get::<_, i64>(0))
            .ok_or_else(|| StoreError::internal("an outbox insert returned no id"))?;
            outbox.push((id, item));
        }
    }
    Ok((
        Committed::Created(Box::new(appended), epoch, Vec::new()),
        outbox,
    ))
}

const OUTBOX_COLUMNS: &str =
    "id, device_id, chat_id, seq, from_user, from_device, payload, created_at";

impl Postgres {
    /// Moves Welcomes from a chat database's outbox (rows by id) to the
    /// devices' inboxes: each once (a Welcome moved before is found, not
    /// copied again), none to a device that is gone. Returns the inbox items.
    async fn deliver_welcomes(
        &self,
        db: &Database,
        outbox: Vec<(i64, InboxRecord)>,
    ) -> StoreResult<Vec<InboxRecord>> {
        if outbox.is_empty() {
            return Ok(Vec::new());
        }
        let items = outbox
            .iter()
            .map(|(_, item)| item.clone())
            .collect::<Vec<_>>();
        let delivered = self
            .accounts()
            .write(|tx| {
                let items = items.clone();
                Box::pin(async move {
                    let mut out = Vec::with_capacity(items.len());
                    for item in items {
                        if device_owner(tx, item.device_id).await?.is_none() {
                            continue;
                        }
                        // Moved by another request at the same time (the
                        // device reading its inbox): the first insert wins,
                        // the second finds its row.
                        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] = [
                            item.device_id.as_uuid(),
                            &item.chat_id.map(|c| *c.as_uuid()),
                            &item.seq,
                            item.from_user.as_uuid(),
                            item.from_device.as_uuid(),
                            &item.payload,
                            &item.created_at.0,
                        ];
                        let mut id = rows(
                            tx,
                            "INSERT INTO device_inbox
                               (device_id, kind, chat_id, seq, from_user, from_device, payload,
                                created_at)
                             VALUES ($1, 'welcome', $2, $3, $4, $5, $6, $7)
                             ON CONFLICT (device_id, chat_id, seq) WHERE kind = 'welcome'
                             DO NOTHING RETURNING id",
                            &params,
                        )
                        .await?;
                        if id.is_empty() {
                            id = rows(
                                tx,
                                "SELECT id FROM device_inbox
                                 WHERE device_id = $1 AND kind = 'welcome'
                                   AND chat_id = $2 AND seq = $3",
                                &params[..3],
                            )
                            .await?;
                        }
                        let Some(row) = id.first() else {
                            // Acknowledged meanwhile: it was delivered.
                            continue;
                        };
                        out.push(InboxRecord {
                            id: row.get(0),
                            ..item
                        });
                    }
                    Ok(out)
                })
            })
            .await?;
        let ids: Vec<i64> = outbox.iter().map(|(id, _)| *id).collect();
        db.execute_one("DELETE FROM welcome_outbox WHERE id = ANY($1)", &[&ids])
            .await?;
        Ok(delivered)
    }

    /// Moves the Welcomes for `device` a stopped node left in the outboxes.
    async fn deliver_left_welcomes(&self, device: DeviceId) -> StoreResult<()> {
        for db in self.chat_dbs() {
            let found = db
                .read(
                    &format!(
                        "SELECT {OUTBOX_COLUMNS} FROM welcome_outbox WHERE device_id = $1 ORDER BY id"
                    ),
                    &[device.as_uuid()],
                )
                .await?;
            let outbox = found.iter().map(outbox_from_row).collect();
            self.deliver_welcomes(db, outbox).await?;
        }
        Ok(())
    }
}

fn outbox_from_row(r: &tokio_postgres::Row) -> (i64, InboxRecord) {
    (
        r.get("id"),
        InboxRecord {
            id: 0,
            device_id: DeviceId::from_uuid(r.get("device_id")),
            kind: InboxKind::Welcome,
            chat_id: Some(ChatId::from_uuid(r.get("chat_id"))),
            seq: Some(r.get("seq")),
            from_user: UserId::from_uuid(r.get("from_user")),
            from_device: DeviceId::from_uuid(r.get("from_device")),
            payload: r.get("payload"),
            created_at: Timestamp(r.get("created_at")),
        },
    )
}

#[async_trait]
impl DeviceInbox for Postgres {
    async fn commit(&self, commit: NewCommit) -> StoreResult<Committed> {
        // The Welcome devices' owners and inbox sizes, from the accounts
        // database; checked against the chat's members under its lock.
        let devices = commit.welcome_devices.clone();
        let facts: Vec<(DeviceId, Option<UserId>, u64)> = self
            .accounts()
            .write(|tx| {
                let devices = devices.clone();
                Box::pin(async move {
                    let mut facts = Vec::with_capacity(devices.len());
                    for device in devices {
                        facts.push((
                            device,
                            device_owner(tx, device).await?,
                            inbox_count(tx, device).await?,
                        ));
                    }
                    Ok(facts)
                })
            })
            .await?;
        let db = self.chat_db(commit.message.chat_id);
        let committed = db
            .write(|tx| {
                let (n, facts) = (commit.clone(), facts.clone());
                Box::pin(async move { commit_in(tx, n, &facts).await })
            })
            .await?;
        match committed {
            (Committed::Created(appended, epoch, _), outbox) => {
                let welcomes = self.deliver_welcomes(db, outbox).await?;
                let owners: std::collections::HashMap<DeviceId, UserId> = facts
                    .iter()
                    .filter_map(|(device, owner, _)| owner.map(|o| (*device, o)))
                    .collect();
                let welcomes = welcomes
                    .into_iter()
                    .filter_map(|item| owners.get(&item.device_id).map(|o| (*o, item)))
                    .collect();
                Ok(Committed::Created(appended, epoch, welcomes))
            }
            (other, _) => Ok(other),
        }
    }

    async fn hand_over(&self, handover: NewHandover) -> StoreResult<HandedOver> {
        self.accounts()
            .write(|tx| {
                let h = handover.clone();
                Box::pin(async move {
                    if h.to_device == h.from_device
                        || device_owner(tx, h.to_device).await? != Some(h.from_user)
                    {
                        return Ok(HandedOver::NoDevice);
                    }
                    // The device's row is locked so the count holds until commit.
                    rows(
                        tx,
                        "SELECT 1 FROM devices WHERE id = $1 FOR UPDATE",
                        &[h.to_device.as_uuid()],
                    )
                    .await?;
                    if inbox_count(tx, h.to_device).await? >= h.max_items {
                        return Ok(HandedOver::InboxFull);
                    }
                    let item = put_inbox(
                        tx,
                        &InboxRecord {
                            id: 0,
                            device_id: h.to_device,
                            kind: InboxKind::Handover,
                            chat_id: None,
                            seq: None,
                            from_user: h.from_user,
                            from_device: h.from_device,
                            payload: h.payload,
                            created_at: h.now,
                        },
                    )
                    .await?;
                    Ok(HandedOver::Stored(item))
                })
            })
            .await
    }

    async fn inbox(&self, device: DeviceId, limit: u64) -> StoreResult<Vec<InboxRecord>> {
        self.deliver_left_welcomes(device).await?;
        let found = self
            .accounts()
            .read(
                &format!(
                    "SELECT {INBOX_COLUMNS} FROM device_inbox WHERE device_id = $1
                     ORDER BY id LIMIT $2"
                ),
                &[device.as_uuid(), &i64::try_from(limit).unwrap_or(i64::MAX)],
            )
            .await?;
        Ok(found.iter().map(inbox_from_row).collect())
    }

    async fn ack_inbox(&self, device: DeviceId, id: i64) -> StoreResult<bool> {
        self.accounts()
            .execute_one(
                "DELETE FROM device_inbox WHERE id = $1 AND device_id = $2",
                &[&id, device.as_uuid()],
            )
            .await
            .map(|n| n == 1)
    }
}
