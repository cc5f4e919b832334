//! Push channels and the push outbox in SQLite (migrations 0006 and 0016).
//!
//! The outbox holds at most one row per device. A new message for a device
//! that already has a waiting push bumps its count and version instead of
//! adding a row; the row is due `window` after its burst began, or at its
//! retry time. Claiming a row leases it (sets its retry time ahead), so a
//! crash mid-send retries it after the lease instead of losing it.

use natter_proto::{ChatId, DeviceId, UserId};
use rusqlite::{Connection, Row, params};

use super::uuid_of;
use crate::clock::Timestamp;
use crate::push::PushTarget;
use crate::store::columns::{
    apns_environment_from_sql, apns_environment_to_sql, push_kind_from_sql, push_kind_to_sql,
};
use crate::store::{NewPush, PendingPush, PushChannelRecord, PushFinished};

fn channel_from_row(row: &Row<'_>) -> rusqlite::Result<PushChannelRecord> {
    let kind = push_kind_from_sql(&row.get::<_, String>("kind")?);
    let environment =
        apns_environment_from_sql(row.get::<_, Option<String>>("environment")?.as_deref());
    Ok(PushChannelRecord {
        device_id: DeviceId::from_uuid(uuid_of(row, "device_id")?),
        target: PushTarget {
            kind,
            endpoint: row.get("endpoint")?,
            p256dh: row.get("p256dh")?,
            auth: row.get("auth")?,
            environment,
        },
        created_at: Timestamp(row.get("created_at")?),
    })
}

/// Sets a device's channel; `None` if the device is not the user's.
pub(super) fn put_channel(
    c: &Connection,
    user: UserId,
    ch: &PushChannelRecord,
) -> rusqlite::Result<Option<bool>> {
    let device = ch.device_id.as_uuid().as_bytes().to_vec();
    let owned = c
        .prepare_cached("SELECT 1 FROM devices WHERE id = ?1 AND user_id = ?2")?
        .exists(params![device, user.as_uuid().as_bytes()])?;
    if !owned {
        return Ok(None);
    }
    let existed = c
        .prepare_cached("SELECT 1 FROM push_channels WHERE device_id = ?1")?
        .exists([&device])?;
    c.prepare_cached(
        "INSERT INTO push_channels (device_id, user_id, kind, endpoint, p256dh, auth, created_at,
                                    environment)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (device_id) DO UPDATE SET kind = excluded.kind,
           endpoint = excluded.endpoint, p256dh = excluded.p256dh, auth = excluded.auth,
           created_at = excluded.created_at, environment = excluded.environment",
    )?
    .execute(params![
        device,
        user.as_uuid().as_bytes(),
        push_kind_to_sql(ch.target.kind),
        ch.target.endpoint,
        ch.target.p256dh,
        ch.target.auth,
        ch.created_at.0,
        apns_environment_to_sql(ch.target.environment)
    ])?;
    Ok(Some(!existed))
}

/// Removes a device's channel (its waiting push goes with it).
pub(super) fn delete_channel(
    c: &Connection,
    user: UserId,
    device: DeviceId,
) -> rusqlite::Result<bool> {
    let n = c
        .prepare_cached("DELETE FROM push_channels WHERE device_id = ?1 AND user_id = ?2")?
        .execute(params![
            device.as_uuid().as_bytes(),
            user.as_uuid().as_bytes()
        ])?;
    Ok(n > 0)
}

/// The devices of `users` with a channel.
pub(super) fn devices_with_channel(
    c: &Connection,
    users: &[UserId],
) -> rusqlite::Result<Vec<(UserId, DeviceId)>> {
    let mut stmt =
        c.prepare_cached("SELECT user_id, device_id FROM push_channels WHERE user_id = ?1")?;
    let mut out = Vec::new();
    for user in users {
        let rows = stmt.query_map([user.as_uuid().as_bytes()], |r| {
            Ok((
                UserId::from_uuid(uuid_of(r, "user_id")?),
                DeviceId::from_uuid(uuid_of(r, "device_id")?),
            ))
        })?;
        for row in rows {
            out.push(row?);
        }
    }
    Ok(out)
}

/// Queues or coalesces one push. A device whose channel vanished meanwhile
/// is skipped (the foreign key would refuse the row).
pub(super) fn queue(c: &Connection, p: &NewPush) -> rusqlite::Result<()> {
    let (sender, text) = match &p.preview {
        Some((s, t)) => (Some(s.as_str()), Some(t.as_str())),
        None => (None, None),
    };
    c.prepare_cached(
        "INSERT INTO push_outbox (device_id, user_id, chat_id, count, since_seq, last_seq,
                                  preview_sender, preview_text, queued_at)
         SELECT ?1, ?2, ?3, 1, ?4 - 1, ?4, ?5, ?6, ?7
         WHERE EXISTS (SELECT 1 FROM push_channels WHERE device_id = ?1)
         ON CONFLICT (device_id) DO UPDATE SET
           count = count + 1,
           chat_id = CASE WHEN chat_id = excluded.chat_id THEN chat_id ELSE NULL END,
           since_seq = min(since_seq, excluded.since_seq),
           last_seq = max(last_seq, excluded.last_seq),
           preview_sender = excluded.preview_sender,
           preview_text = excluded.preview_text,
           version = version + 1",
    )?
    .execute(params![
        p.device_id.as_uuid().as_bytes(),
        p.user_id.as_uuid().as_bytes(),
        p.chat_id.as_uuid().as_bytes(),
        p.seq,
        sender,
        text,
        p.now.0
    ])?;
    Ok(())
}

/// The SQL for a row's due time, with `?1` the window.
const DUE: &str = "coalesce(retry_at, queued_at + ?1)";

/// When the earliest waiting push is due.
pub(super) fn next_due(c: &Connection, window_ms: i64) -> rusqlite::Result<Option<Timestamp>> {
    let due: Option<i64> = c
        .prepare_cached(&format!("SELECT min({DUE}) FROM push_outbox"))?
        .query_row([window_ms], |r| r.get(0))?;
    Ok(due.map(Timestamp))
}

/// Claims due pushes and leases them.
pub(super) fn claim(
    c: &Connection,
    now: Timestamp,
    window_ms: i64,
    lease_until: Timestamp,
    limit: usize,
) -> rusqlite::Result<Vec<PendingPush>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = c.prepare_cached(&format!(
        "SELECT o.device_id, o.user_id, o.chat_id, o.count, o.since_seq, o.last_seq,
                o.preview_sender, o.preview_text, o.attempts, o.version,
                p.kind, p.endpoint, p.p256dh, p.auth, p.created_at, p.environment
         FROM push_outbox o JOIN push_channels p ON p.device_id = o.device_id
         WHERE {DUE} <= ?2 ORDER BY {DUE} LIMIT ?3"
    ))?;
    let claimed = stmt
        .query_map(params![window_ms, now.0, limit], |r| {
            let chat: Option<Vec<u8>> = r.get("chat_id")?;
            let chat_id = chat
                .and_then(|b| uuid::Uuid::from_slice(&b).ok())
                .map(ChatId::from_uuid);
            let preview = match (
                r.get::<_, Option<String>>("preview_sender")?,
                r.get::<_, Option<String>>("preview_text")?,
            ) {
                (Some(s), Some(t)) => Some((s, t)),
                _ => None,
            };
            Ok(PendingPush {
                device_id: DeviceId::from_uuid(uuid_of(r, "device_id")?),
                user_id: UserId::from_uuid(uuid_of(r, "user_id")?),
                chat_id,
                count: r.get("count")?,
                since_seq: r.get("since_seq")?,
                last_seq: r.get("last_seq")?,
                preview,
                attempts: r.get("attempts")?,
                version: r.get("version")?,
                channel: channel_from_row(r)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut lease =
        c.prepare_cached("UPDATE push_outbox SET retry_at = ?2 WHERE device_id = ?1")?;
    for push in &claimed {
        lease.execute(params![push.device_id.as_uuid().as_bytes(), lease_until.0])?;
    }
    Ok(claimed)
}

/// Records what became of a claimed push.
pub(super) fn finish(
    c: &Connection,
    device: DeviceId,
    outcome: &PushFinished,
) -> rusqlite::Result<()> {
    let id = device.as_uuid().as_bytes();
    match outcome {
        PushFinished::Settled {
            version,
            count,
            last_seq,
            now,
        } => {
            let removed = c
                .prepare_cached("DELETE FROM push_outbox WHERE device_id = ?1 AND version = ?2")?
                .execute(params![id, version])?;
            if removed == 0 {
                // More arrived while sending: they are a new burst.
                c.prepare_cached(
                    "UPDATE push_outbox SET count = max(count - ?2, 1), since_seq = ?3,
                       queued_at = ?4, retry_at = NULL, attempts = 0
                     WHERE device_id = ?1",
                )?
                .execute(params![id, count, last_seq, now.0])?;
            }
        }
        PushFinished::Retry { at } => {
            c.prepare_cached(
                "UPDATE push_outbox SET attempts = attempts + 1, retry_at = ?2 WHERE device_id = ?1",
            )?
            .execute(params![id, at.0])?;
        }
        PushFinished::Drop => {
            c.prepare_cached("DELETE FROM push_outbox WHERE device_id = ?1")?
                .execute([id])?;
        }
        PushFinished::Gone { endpoint } => {
            // Only if the device did not register a new endpoint meanwhile.
            c.prepare_cached("DELETE FROM push_channels WHERE device_id = ?1 AND endpoint = ?2")?
                .execute(params![id, endpoint])?;
            c.prepare_cached("DELETE FROM push_outbox WHERE device_id = ?1")?
                .execute([id])?;
        }
    }
    Ok(())
}

/// Whether a device has a push waiting.
pub(super) fn is_waiting(c: &Connection, device: DeviceId) -> rusqlite::Result<bool> {
    c.prepare_cached("SELECT 1 FROM push_outbox WHERE device_id = ?1")?
        .exists([device.as_uuid().as_bytes()])
}

/// Removes a device's waiting push.
pub(super) fn cancel(c: &Connection, device: DeviceId) -> rusqlite::Result<bool> {
    let n = c
        .prepare_cached("DELETE FROM push_outbox WHERE device_id = ?1")?
        .execute([device.as_uuid().as_bytes()])?;
    Ok(n > 0)
}
