//! [`PushOutbox`] on PostgreSQL: push channels and the outbox, shared by
//! every node's push worker.
//!
//! The outbox holds at most one row per device; a new message for a device
//! with a waiting push coalesces into it (an upsert, so two nodes queueing
//! at once make one row). Claiming takes due rows `FOR UPDATE SKIP LOCKED`
//! and leases them in the same transaction: workers on several nodes claim
//! disjoint rows, so no push is sent twice, and a node that dies mid-send
//! leaves its lease to run out and the push to be retried.

use async_trait::async_trait;
use natter_proto::{ChatId, DeviceId, UserId};
use uuid::Uuid;

use super::{Postgres, execute, rows};
use crate::clock::Timestamp;
use crate::push::PushTarget;
use crate::store::columns::{
    apns_environment_from_sql, apns_environment_to_sql, push_kind_from_sql, push_kind_to_sql,
};
use crate::store::{
    NewPush, PendingPush, PushChannelRecord, PushFinished, PushOutbox, StoreResult,
};

/// A row's due time, with `$1` the window.
const DUE: &str = "coalesce(retry_at, queued_at + $1)";

fn channel_from_row(row: &tokio_postgres::Row) -> PushChannelRecord {
    PushChannelRecord {
        device_id: DeviceId::from_uuid(row.get("device_id")),
        target: PushTarget {
            kind: push_kind_from_sql(row.get("kind")),
            endpoint: row.get("endpoint"),
            p256dh: row.get("p256dh"),
            auth: row.get("auth"),
            environment: apns_environment_from_sql(row.get("environment")),
        },
        created_at: Timestamp(row.get("created_at")),
    }
}

fn pending_from_row(row: &tokio_postgres::Row) -> PendingPush {
    let preview = match (
        row.get::<_, Option<String>>("preview_sender"),
        row.get::<_, Option<String>>("preview_text"),
    ) {
        (Some(sender), Some(text)) => Some((sender, text)),
        _ => None,
    };
    PendingPush {
        device_id: DeviceId::from_uuid(row.get("device_id")),
        user_id: UserId::from_uuid(row.get("user_id")),
        chat_id: row.get::<_, Option<Uuid>>("chat_id").map(ChatId::from_uuid),
        count: row.get("count"),
        since_seq: row.get("since_seq"),
        last_seq: row.get("last_seq"),
        preview,
        attempts: u32::try_from(row.get::<_, i32>("attempts")).unwrap_or(0),
        version: row.get("version"),
        channel: channel_from_row(row),
    }
}

#[async_trait]
impl PushOutbox for Postgres {
    async fn put_push_channel(
        &self,
        user: UserId,
        channel: PushChannelRecord,
    ) -> StoreResult<Option<bool>> {
        self.accounts()
            .write(|tx| {
                let ch = channel.clone();
                Box::pin(async move {
                    let device = ch.device_id.as_uuid();
                    let owned = rows(
                        tx,
                        "SELECT 1 FROM devices WHERE id = $1 AND user_id = $2",
                        &[device, user.as_uuid()],
                    )
                    .await?;
                    if owned.is_empty() {
                        return Ok(None);
                    }
                    // `xmax = 0` only on a row this statement inserted.
                    let upserted = rows(
                    tx,
                    "INSERT INTO push_channels (device_id, user_id, kind, endpoint, p256dh, auth,
                                                created_at, environment)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (device_id) DO UPDATE SET kind = excluded.kind,
                       endpoint = excluded.endpoint, p256dh = excluded.p256dh,
                       auth = excluded.auth, created_at = excluded.created_at,
                       environment = excluded.environment
                     RETURNING (xmax = 0) AS inserted",
                    &[
                        device,
                        user.as_uuid(),
                        &push_kind_to_sql(ch.target.kind),
                        &ch.target.endpoint,
                        &ch.target.p256dh,
                        &ch.target.auth,
                        &ch.created_at.0,
                        &apns_environment_to_sql(ch.target.environment),
                    ],
                )
                .await?;
                    Ok(Some(upserted.first().is_some_and(|r| r.get("inserted"))))
                })
            })
            .await
    }

    async fn delete_push_channel(&self, user: UserId, device: DeviceId) -> StoreResult<bool> {
        self.accounts()
            .execute_one(
                "DELETE FROM push_channels WHERE device_id = $1 AND user_id = $2",
                &[device.as_uuid(), user.as_uuid()],
            )
            .await
            .map(|n| n > 0)
    }

    async fn push_devices(&self, users: Vec<UserId>) -> StoreResult<Vec<(UserId, DeviceId)>> {
        let ids: Vec<Uuid> = users.iter().map(|u| *u.as_uuid()).collect();
        let found = self
            .accounts()
            .read(
                "SELECT user_id, device_id FROM push_channels WHERE user_id = ANY($1)",
                &[&ids],
            )
            .await?;
        let mut by_user: std::collections::HashMap<Uuid, Vec<DeviceId>> =
            std::collections::HashMap::new();
        for row in &found {
            by_user
                .entry(row.get("user_id"))
                .or_default()
                .push(DeviceId::from_uuid(row.get("device_id")));
        }
        // In the order of the users asked, as the embedded engine answers.
        Ok(users
            .iter()
            .flat_map(|user| {
                by_user
                    .get(user.as_uuid())
                    .into_iter()
                    .flatten()
                    .map(move |device| (*user, *device))
            })
            .collect())
    }

    async fn queue_pushes(&self, pushes: Vec<NewPush>) -> StoreResult<()> {
        self.accounts()
            .write(|tx| {
                let pushes = pushes.clone();
                Box::pin(async move {
                    for p in &pushes {
                        let (sender, text) = match &p.preview {
                            Some((s, t)) => (Some(s.as_str()), Some(t.as_str())),
                            None => (None, None),
                        };
                        // A device whose channel vanished meanwhile is skipped
                        // (the foreign key would refuse the row).
                        execute(
                            tx,
                            "INSERT INTO push_outbox AS o (device_id, user_id, chat_id, count,
                           since_seq, last_seq, preview_sender, preview_text, queued_at)
                         SELECT $1, $2, $3, 1, $4::bigint - 1, $4::bigint, $5, $6, $7
                         WHERE EXISTS (SELECT 1 FROM push_channels WHERE device_id = $1)
                         ON CONFLICT (device_id) DO UPDATE SET
                           count = o.count + 1,
                           chat_id = CASE WHEN o.chat_id = excluded.chat_id
                                          THEN o.chat_id ELSE NULL END,
                           since_seq = least(o.since_seq, excluded.since_seq),
                           last_seq = greatest(o.last_seq, excluded.last_seq),
                           preview_sender = excluded.preview_sender,
                           preview_text = excluded.preview_text,
                           version = o.version + 1",
                            &[
                                p.device_id.as_uuid(),
                                p.user_id.as_uuid(),
                                p.chat_id.as_uuid(),
                                &p.seq,
                                &sender,
                                &text,
                                &p.now.0,
                            ],
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .await
    }

    async fn next_push_due(&self, window_ms: i64) -> StoreResult<Option<Timestamp>> {
        let due = self
            .accounts()
            .read(
                &format!("SELECT min({DUE}) FROM push_outbox"),
                &[&window_ms],
            )
            .await?;
        Ok(due
            .first()
            .and_then(|row| row.get::<_, Option<i64>>(0))
            .map(Timestamp))
    }

    async fn claim_pushes(
        &self,
        now: Timestamp,
        window_ms: i64,
        lease_until: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<PendingPush>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.accounts()
            .write(|tx| {
                Box::pin(async move {
                    // Rows another node is claiming right now are skipped, not
                    // waited for: they are that node's.
                    let claimed = rows(
                        tx,
                        &format!(
                            "WITH due AS (
                           SELECT device_id, {DUE} AS due_at FROM push_outbox
                           WHERE {DUE} <= $2 ORDER BY {DUE} LIMIT $3
                           FOR UPDATE SKIP LOCKED)
                         UPDATE push_outbox o SET retry_at = $4
                         FROM due, push_channels p
                         WHERE o.device_id = due.device_id AND p.device_id = o.device_id
                         RETURNING o.device_id, o.user_id, o.chat_id, o.count, o.since_seq,
                           o.last_seq, o.preview_sender, o.preview_text, o.attempts,
                           o.version, p.kind, p.endpoint, p.p256dh, p.auth, p.created_at,
                           p.environment, due.due_at"
                        ),
                        &[&window_ms, &now.0, &limit, &lease_until.0],
                    )
                    .await?;
                    let mut pending: Vec<(i64, PendingPush)> = claimed
                        .iter()
                        .map(|row| (row.get("due_at"), pending_from_row(row)))
                        .collect();
                    // Due order, as claimed (UPDATE … RETURNING keeps none).
                    pending.sort_by_key(|(due, p)| (*due, *p.device_id.as_uuid()));
                    Ok(pending.into_iter().map(|(_, p)| p).collect())
                })
            })
            .await
    }

    async fn finish_push(&self, device: DeviceId, outcome: PushFinished) -> StoreResult<()> {
        self.accounts()
            .write(|tx| {
                let outcome = outcome.clone();
                Box::pin(async move {
                    let id = device.as_uuid();
                    match outcome {
                        PushFinished::Settled {
                            version,
                            count,
                            last_seq,
                            now,
                        } => {
                            let removed = execute(
                                tx,
                                "DELETE FROM push_outbox WHERE device_id = $1 AND version = $2",
                                &[id, &version],
                            )
                            .await?;
                            if removed == 0 {
                                // More arrived while sending: they are a new burst.
                                execute(
                                    tx,
                                    "UPDATE push_outbox SET count = greatest(count - $2, 1),
                                   since_seq = $3, queued_at = $4, retry_at = NULL,
                                   attempts = 0
                                 WHERE device_id = $1",
                                    &[id, &count, &last_seq, &now.0],
                                )
                                .await?;
                            }
                        }
                        PushFinished::Retry { at } => {
                            execute(
                                tx,
                                "UPDATE push_outbox SET attempts = attempts + 1, retry_at = $2
                             WHERE device_id = $1",
                                &[id, &at.0],
                            )
                            .await?;
                        }
                        PushFinished::Drop => {
                            execute(tx, "DELETE FROM push_outbox WHERE device_id = $1", &[id])
                                .await?;
                        }
                        PushFinished::Gone { endpoint } => {
                            // Only if the device did not register a new endpoint meanwhile.
                            execute(
                                tx,
                                "DELETE FROM push_channels WHERE device_id = $1 AND endpoint = $2",
                                &[id, &endpoint],
                            )
                            .await?;
                            execute(tx, "DELETE FROM push_outbox WHERE device_id = $1", &[id])
                                .await?;
                        }
                    }
                    Ok(())
                })
            })
            .await
    }

    async fn cancel_push(&self, device: DeviceId) -> StoreResult<bool> {
        self.accounts()
            .execute_one(
                "DELETE FROM push_outbox WHERE device_id = $1",
                &[device.as_uuid()],
            )
            .await
            .map(|n| n > 0)
    }
}
