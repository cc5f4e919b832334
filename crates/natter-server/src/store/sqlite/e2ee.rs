//! The key directory, device inboxes and commits on SQLite. Everything that
//! depends on the state at the moment of a write (membership, the chat's
//! epoch, certification, stock) is checked in the writer's job, inside the
//! transaction that writes.

use natter_proto::chats::{ChatEvent, MessageType};
use natter_proto::e2ee::InboxKind;
use natter_proto::{ChatId, DeviceId, UserId};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::cache::ChatCache;
use super::chats::{Draft, append, append_entry, by_idempotency_key, conversion};
use super::uuid_of;
use crate::clock::Timestamp;
use crate::store::columns::{inbox_kind_from_sql, inbox_kind_to_sql};
use crate::store::e2ee::{
    ClaimedPackage, ClaimedUser, Committed, CredentialSet, DeviceCredential, HandedOver,
    InboxRecord, NewCommit, NewHandover, Published,
};
use crate::store::{Appended, EntryKind};

type Result<T> = rusqlite::Result<T>;

fn inbox_from_row(r: &Row<'_>) -> Result<InboxRecord> {
    let kind: String = r.get("kind")?;
    let chat: Option<Vec<u8>> = r.get("chat_id")?;
    let chat_id = match chat {
        Some(b) => Some(ChatId::from_uuid(
            uuid::Uuid::from_slice(&b).map_err(conversion)?,
        )),
        None => None,
    };
    Ok(InboxRecord {
        id: r.get("id")?,
        device_id: DeviceId::from_uuid(uuid_of(r, "device_id")?),
        kind: inbox_kind_from_sql(&kind),
        chat_id,
        seq: r.get("seq")?,
        from_user: UserId::from_uuid(uuid_of(r, "from_user")?),
        from_device: DeviceId::from_uuid(uuid_of(r, "from_device")?),
        payload: r.get("payload")?,
        created_at: Timestamp(r.get("created_at")?),
    })
}

const INBOX_COLUMNS: &str =
    "id, device_id, kind, chat_id, seq, from_user, from_device, payload, created_at";

fn inbox_count(c: &Connection, device: DeviceId) -> Result<u64> {
    c.prepare_cached("SELECT count(*) FROM device_inbox WHERE device_id = ?1")?
        .query_row([device.as_uuid().as_bytes()], |r| r.get(0))
}

fn put_inbox(c: &Connection, item: &InboxRecord) -> Result<InboxRecord> {
    let id: i64 = c
        .prepare_cached(
            "INSERT INTO device_inbox
               (device_id, kind, chat_id, seq, from_user, from_device, payload, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) RETURNING id",
        )?
        .query_row(
            params![
                item.device_id.as_uuid().as_bytes(),
                inbox_kind_to_sql(item.kind),
                item.chat_id.map(|c| *c.as_uuid().as_bytes()),
                item.seq,
                item.from_user.as_uuid().as_bytes(),
                item.from_device.as_uuid().as_bytes(),
                item.payload,
                item.created_at.0,
            ],
            |r| r.get(0),
        )?;
    Ok(InboxRecord { id, ..item.clone() })
}

/// The owner of a device.
fn device_owner(c: &Connection, device: DeviceId) -> Result<Option<UserId>> {
    c.prepare_cached("SELECT user_id FROM devices WHERE id = ?1")?
        .query_row([device.as_uuid().as_bytes()], |r| {
            uuid_of(r, "user_id").map(UserId::from_uuid)
        })
        .optional()
}

/// The writer job of a commit.
pub(super) fn commit(c: &Connection, cache: &mut ChatCache, n: NewCommit) -> Result<Committed> {
    let m = n.message;
    let Some(state) = cache.get(c, m.chat_id)? else {
        return Ok(Committed::NotMember);
    };
    if state.role(m.sender_id).is_none() {
        return Ok(Committed::NotMember);
    }
    if !state.encrypted {
        return Ok(Committed::NotEncrypted);
    }
    // A retry of an accepted commit finds it before its epoch is checked
    // (the epoch has moved on since, because of it).
    if let Some(key) = &m.client_message_id
        && let Some(first) = by_idempotency_key(c, m.chat_id, m.sender_id, key)?
    {
        return Ok(Committed::Duplicate(Box::new(first), state.epoch));
    }
    if n.epoch != state.epoch {
        return Ok(Committed::StaleEpoch(state.epoch));
    }
    let mut owners = Vec::with_capacity(n.welcome_devices.len());
    for device in &n.welcome_devices {
        match device_owner(c, *device)? {
            Some(owner) if state.role(owner).is_some() => owners.push((owner, *device)),
            _ => return Ok(Committed::NotParticipantDevice(*device)),
        }
        if inbox_count(c, *device)? >= n.inbox_max {
            return Ok(Committed::InboxFull(*device));
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
    let Some(appended) = append(c, state, m.chat_id, draft, None)? else {
        return Err(conversion(std::io::Error::other(
            "a chat-log position was taken twice: the writer's memory of the chat is stale",
        )));
    };
    state.epoch += 1;
    let epoch = state.epoch;
    c.prepare_cached("UPDATE chats SET epoch = ?2 WHERE id = ?1")?
        .execute(params![m.chat_id.as_uuid().as_bytes(), epoch])?;
    let mut welcomes = Vec::with_capacity(owners.len());
    if let Some(welcome) = n.welcome {
        for (owner, device) in owners {
            let item = put_inbox(
                c,
                &InboxRecord {
                    id: 0,
                    device_id: device,
                    kind: InboxKind::Welcome,
                    chat_id: Some(m.chat_id),
                    seq: Some(appended.entry.seq),
                    from_user: m.sender_id,
                    from_device: m.sender_device_id,
                    payload: welcome.clone(),
                    created_at: m.now,
                },
            )?;
            welcomes.push((owner, item));
        }
    }
    Ok(Committed::Created(Box::new(appended), epoch, welcomes))
}

/// Appends `devices_changed` for `user` to each encrypted chat they are in.
pub(super) fn devices_changed(
    c: &Connection,
    cache: &mut ChatCache,
    user: UserId,
    now: Timestamp,
) -> Result<Vec<Appended>> {
    let chats: Vec<ChatId> = c
        .prepare_cached(
            "SELECT m.chat_id FROM memberships m JOIN chats c ON c.id = m.chat_id
             WHERE m.user_id = ?1 AND m.to_seq IS NULL AND c.encrypted = 1",
        )?
        .query_map([user.as_uuid().as_bytes()], |r| {
            uuid_of(r, "chat_id").map(ChatId::from_uuid)
        })?
        .collect::<Result<_>>()?;
    let mut appended = Vec::with_capacity(chats.len());
    for chat in chats {
        let Some(state) = cache.get(c, chat)? else {
            continue;
        };
        if state.role(user).is_none() {
            continue;
        }
        let event = ChatEvent::DevicesChanged { user_id: user };
        appended.push(append_entry(
            c,
            state,
            chat,
            Draft::system(user, event, now),
            None,
        )?);
    }
    Ok(appended)
}

pub(super) fn identity_key(c: &Connection, user: UserId) -> Result<Option<Vec<u8>>> {
    c.prepare_cached("SELECT identity_key FROM identity_keys WHERE user_id = ?1")?
        .query_row([user.as_uuid().as_bytes()], |r| r.get(0))
        .optional()
}

/// The writer job of setting an identity key.
pub(super) fn set_identity_key(
    c: &Connection,
    cache: &mut ChatCache,
    user: UserId,
    key: &[u8],
    now: Timestamp,
) -> Result<Vec<Appended>> {
    let id = user.as_uuid().as_bytes();
    if identity_key(c, user)?.as_deref() == Some(key) {
        return Ok(Vec::new());
    }
    c.prepare_cached(
        "INSERT INTO identity_keys (user_id, identity_key, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (user_id) DO UPDATE SET identity_key = ?2, updated_at = ?3",
    )?
    .execute(params![id, key, now.0])?;
    // The old key's certificates say nothing any more, nor do the packages
    // made under them.
    c.prepare_cached("UPDATE device_keys SET certificate = NULL WHERE user_id = ?1")?
        .execute([id])?;
    c.prepare_cached(
        "DELETE FROM key_packages WHERE device_id IN (SELECT id FROM devices WHERE user_id = ?1)",
    )?
    .execute([id])?;
    devices_changed(c, cache, user, now)
}

fn credential_from_row(r: &Row<'_>) -> Result<DeviceCredential> {
    Ok(DeviceCredential {
        device_id: DeviceId::from_uuid(uuid_of(r, "device_id")?),
        signature_key: r.get("signature_key")?,
        link_key: r.get("link_key")?,
        certificate: r.get("certificate")?,
    })
}

fn credential(c: &Connection, device: DeviceId) -> Result<Option<DeviceCredential>> {
    c.prepare_cached(
        "SELECT device_id, signature_key, link_key, certificate FROM device_keys
         WHERE device_id = ?1",
    )?
    .query_row([device.as_uuid().as_bytes()], credential_from_row)
    .optional()
}

/// The writer job of setting a device's credential.
pub(super) fn set_device_credential(
    c: &Connection,
    cache: &mut ChatCache,
    user: UserId,
    new: DeviceCredential,
    now: Timestamp,
) -> Result<CredentialSet> {
    if device_owner(c, new.device_id)? != Some(user) {
        return Ok(CredentialSet::NoDevice);
    }
    let device = new.device_id.as_uuid().as_bytes();
    match credential(c, new.device_id)? {
        Some(old) if old.signature_key != new.signature_key || old.link_key != new.link_key => {
            Ok(CredentialSet::Exists)
        }
        Some(old) => match new.certificate {
            Some(cert) if old.certificate.as_ref() != Some(&cert) => {
                c.prepare_cached("UPDATE device_keys SET certificate = ?2 WHERE device_id = ?1")?
                    .execute(params![device, cert])?;
                Ok(CredentialSet::Stored(devices_changed(c, cache, user, now)?))
            }
            _ => Ok(CredentialSet::Stored(Vec::new())),
        },
        None => {
            c.prepare_cached(
                "INSERT INTO device_keys
                   (device_id, user_id, signature_key, link_key, certificate, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                device,
                user.as_uuid().as_bytes(),
                new.signature_key,
                new.link_key,
                new.certificate,
                now.0
            ])?;
            if new.certificate.is_some() {
                Ok(CredentialSet::Stored(devices_changed(c, cache, user, now)?))
            } else {
                Ok(CredentialSet::Stored(Vec::new()))
            }
        }
    }
}

pub(super) fn device_credentials(c: &Connection, user: UserId) -> Result<Vec<DeviceCredential>> {
    c.prepare_cached(
        "SELECT k.device_id, k.signature_key, k.link_key, k.certificate
         FROM device_keys k JOIN devices d ON d.id = k.device_id
         WHERE d.user_id = ?1 ORDER BY d.created_at, d.id",
    )?
    .query_map([user.as_uuid().as_bytes()], credential_from_row)?
    .collect()
}

pub(super) fn stock(c: &Connection, device: DeviceId) -> Result<(u32, bool)> {
    let (available, last_resort): (u32, bool) = c
        .prepare_cached(
            "SELECT coalesce(sum(last_resort = 0), 0), coalesce(max(last_resort), 0)
             FROM key_packages WHERE device_id = ?1",
        )?
        .query_row([device.as_uuid().as_bytes()], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    Ok((available, last_resort))
}

/// The writer job of a publish.
pub(super) fn publish(
    c: &Connection,
    device: DeviceId,
    packages: Vec<Vec<u8>>,
    last_resort: Option<Vec<u8>>,
    max_per_device: u64,
    now: Timestamp,
) -> Result<Published> {
    if credential(c, device)?.is_none() {
        return Ok(Published::NoKeys);
    }
    let (available, _) = stock(c, device)?;
    let total = u64::from(available).saturating_add(packages.len() as u64);
    if total > max_per_device {
        return Ok(Published::TooMany);
    }
    let id = device.as_uuid().as_bytes();
    let mut insert = c.prepare_cached(
        "INSERT INTO key_packages (device_id, last_resort, bytes, created_at)
         VALUES (?1, ?2, ?3, ?4)",
    )?;
    for bytes in packages {
        insert.execute(params![id, false, bytes, now.0])?;
    }
    if let Some(bytes) = last_resort {
        c.prepare_cached("DELETE FROM key_packages WHERE device_id = ?1 AND last_resort = 1")?
            .execute([id])?;
        insert.execute(params![id, true, bytes, now.0])?;
    }
    let (available, last_resort) = stock(c, device)?;
    Ok(Published::Stock(available, last_resort))
}

/// The writer job of a claim: each one-time package is deleted as it is
/// handed out, in the writer's transaction, so no two claimers get one.
pub(super) fn claim(
    c: &Connection,
    users: Vec<UserId>,
    except: DeviceId,
) -> Result<Vec<ClaimedUser>> {
    let mut out = Vec::with_capacity(users.len());
    for user in users {
        let identity = identity_key(c, user)?;
        let devices: Vec<DeviceCredential> = device_credentials(c, user)?
            .into_iter()
            .filter(|d| d.certificate.is_some() && d.device_id != except)
            .collect();
        let mut claimed = Vec::with_capacity(devices.len());
        for d in devices {
            let id = d.device_id.as_uuid().as_bytes();
            let one_time: Option<(i64, Vec<u8>)> = c
                .prepare_cached(
                    "SELECT id, bytes FROM key_packages
                     WHERE device_id = ?1 AND last_resort = 0 ORDER BY id LIMIT 1",
                )?
                .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let (bytes, last_resort) = match one_time {
                Some((row, bytes)) => {
                    c.prepare_cached("DELETE FROM key_packages WHERE id = ?1")?
                        .execute([row])?;
                    (bytes, false)
                }
                None => {
                    let kept: Option<Vec<u8>> = c
                        .prepare_cached(
                            "SELECT bytes FROM key_packages WHERE device_id = ?1 AND last_resort = 1",
                        )?
                        .query_row([id], |r| r.get(0))
                        .optional()?;
                    match kept {
                        Some(bytes) => (bytes, true),
                        None => continue,
                    }
                }
            };
            let (left, _) = stock(c, d.device_id)?;
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
}

/// The writer job of a handover.
pub(super) fn hand_over(c: &Connection, h: NewHandover) -> Result<HandedOver> {
    if h.to_device == h.from_device || device_owner(c, h.to_device)? != Some(h.from_user) {
        return Ok(HandedOver::NoDevice);
    }
    if inbox_count(c, h.to_device)? >= h.max_items {
        return Ok(HandedOver::InboxFull);
    }
    let item = put_inbox(
        c,
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
    )?;
    Ok(HandedOver::Stored(item))
}

pub(super) fn inbox(c: &Connection, device: DeviceId, limit: u64) -> Result<Vec<InboxRecord>> {
    c.prepare_cached(&format!(
        "SELECT {INBOX_COLUMNS} FROM device_inbox WHERE device_id = ?1 ORDER BY id LIMIT ?2"
    ))?
    .query_map(
        params![
            device.as_uuid().as_bytes(),
            i64::try_from(limit).unwrap_or(i64::MAX)
        ],
        inbox_from_row,
    )?
    .collect()
}

pub(super) fn ack(c: &Connection, device: DeviceId, id: i64) -> Result<bool> {
    c.prepare_cached("DELETE FROM device_inbox WHERE id = ?1 AND device_id = ?2")?
        .execute(params![id, device.as_uuid().as_bytes()])
        .map(|n| n == 1)
}
