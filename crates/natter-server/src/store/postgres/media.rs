//! [`MediaStore`] on PostgreSQL: upload records, the progress of resumable
//! uploads (durable in the database, so any node can continue an upload
//! another began), who may fetch what, and garbage collection.
//!
//! Recording an upload locks its owner's row, so uploads started on
//! several nodes at once cannot pass the quota or the pending limit
//! together.

use async_trait::async_trait;
use natter_proto::media::MediaKind;
use natter_proto::{ChatId, MediaId, UserId};
use uuid::Uuid;

use super::{Postgres, execute, rows};
use crate::clock::Timestamp;
use crate::store::{
    CollectedMedia, FinishedMedia, MediaCreated, MediaRecord, MediaSegment, MediaStore, NewMedia,
    StoreResult,
};

const MEDIA_COLUMNS: &str = "id, owner_id, kind, chat_id, filename, length, received, ready, \
     content_type, sha256, width, height, thumbnail, created_at, completed_at, expires_at";

/// Lengths are u64 in Rust and bigint in PostgreSQL; every length is
/// bounded by configuration far below `i64::MAX`.
fn to_sql_len(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn from_sql_len(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn dimension(n: Option<i32>) -> Option<u32> {
    n.and_then(|n| u32::try_from(n).ok())
}

fn to_sql_dimension(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn media_from_row(row: &tokio_postgres::Row) -> MediaRecord {
    let finished = row.get::<_, bool>("ready").then(|| {
        let sha: Vec<u8> = row.get::<_, Option<Vec<u8>>>("sha256").unwrap_or_default();
        FinishedMedia {
            content_type: row
                .get::<_, Option<String>>("content_type")
                .unwrap_or_else(|| "application/octet-stream".to_owned()),
            sha256: <[u8; 32]>::try_from(sha.as_slice()).unwrap_or([0; 32]),
            dimensions: dimension(row.get("width")).zip(dimension(row.get("height"))),
            thumbnail: row.get("thumbnail"),
            completed_at: Timestamp(row.get::<_, Option<i64>>("completed_at").unwrap_or(0)),
        }
    });
    MediaRecord {
        id: MediaId::from_uuid(row.get("id")),
        owner: UserId::from_uuid(row.get("owner_id")),
        // The column's CHECK admits only the four names.
        kind: MediaKind::parse(row.get("kind")).unwrap_or(MediaKind::File),
        chat_id: row.get::<_, Option<Uuid>>("chat_id").map(ChatId::from_uuid),
        filename: row.get("filename"),
        length: from_sql_len(row.get("length")),
        received: from_sql_len(row.get("received")),
        created_at: Timestamp(row.get("created_at")),
        expires_at: row.get::<_, Option<i64>>("expires_at").map(Timestamp),
        finished,
    }
}

fn ids(found: &[tokio_postgres::Row]) -> Vec<MediaId> {
    found.iter().map(|r| MediaId::from_uuid(r.get(0))).collect()
}

#[async_trait]
impl MediaStore for Postgres {
    async fn create_media(
        &self,
        media: NewMedia,
        quota: u64,
        max_pending: u64,
    ) -> StoreResult<MediaCreated> {
        self.accounts().write(|tx| {
            let m = media.clone();
            Box::pin(async move {
                let owner = m.owner.as_uuid();
                rows(tx, "SELECT 1 FROM users WHERE id = $1 FOR UPDATE", &[owner]).await?;
                let usage = rows(
                    tx,
                    "SELECT coalesce(sum(length), 0)::bigint, count(*) FILTER (WHERE NOT ready)
                     FROM media WHERE owner_id = $1",
                    &[owner],
                )
                .await?;
                let (used, pending) = usage.first().map_or((0, 0), |r| {
                    (from_sql_len(r.get(0)), from_sql_len(r.get(1)))
                });
                if used.saturating_add(m.length) > quota {
                    return Ok(MediaCreated::QuotaExceeded);
                }
                if m.finished.is_none() && pending >= max_pending {
                    return Ok(MediaCreated::TooManyPending);
                }
                let f = m.finished.as_ref();
                execute(
                    tx,
                    "INSERT INTO media (id, owner_id, kind, chat_id, filename, length, received,
                       ready, content_type, sha256, width, height, thumbnail, created_at,
                       completed_at, expires_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
                    &[
                        m.id.as_uuid(),
                        owner,
                        &m.kind.as_str(),
                        &m.chat_id.map(|c| *c.as_uuid()),
                        &m.filename,
                        &to_sql_len(m.length),
                        &if f.is_some() { to_sql_len(m.length) } else { 0 },
                        &f.is_some(),
                        &f.map(|f| f.content_type.clone()),
                        &f.map(|f| f.sha256.to_vec()),
                        &f.and_then(|f| f.dimensions).map(|d| to_sql_dimension(d.0)),
                        &f.and_then(|f| f.dimensions).map(|d| to_sql_dimension(d.1)),
                        &f.is_some_and(|f| f.thumbnail),
                        &m.created_at.0,
                        &f.map(|f| f.completed_at.0),
                        &m.expires_at.map(|t| t.0),
                    ],
                )
                .await?;
                Ok(MediaCreated::Created)
            })
        })
        .await
    }

    async fn media(&self, id: MediaId) -> StoreResult<Option<MediaRecord>> {
        let found = self
            .accounts()
            .read(
                &format!("SELECT {MEDIA_COLUMNS} FROM media WHERE id = $1"),
                &[id.as_uuid()],
            )
            .await?;
        Ok(found.first().map(media_from_row))
    }

    async fn media_of(&self, owner: UserId) -> StoreResult<Vec<MediaRecord>> {
        let found = self
            .accounts()
            .read(
                &format!(
                    "SELECT {MEDIA_COLUMNS} FROM media WHERE owner_id = $1 AND ready
                     ORDER BY created_at, id"
                ),
                &[owner.as_uuid()],
            )
            .await?;
        Ok(found.iter().map(media_from_row).collect())
    }

    async fn advance_media_received(&self, segment: MediaSegment) -> StoreResult<bool> {
        self.accounts()
            .write(|tx| {
                let segment = segment.clone();
                Box::pin(async move {
                    let (from, to) = (to_sql_len(segment.from), to_sql_len(segment.to));
                    // The row lock taken by the UPDATE holds a second node's
                    // UPDATE until this commits; it then finds `received` moved.
                    let moved = execute(
                        tx,
                        "UPDATE media SET received = $3
                     WHERE id = $1 AND NOT ready AND received = $2",
                        &[segment.media.as_uuid(), &from, &to],
                    )
                    .await?;
                    if moved != 1 {
                        return Ok(false);
                    }
                    execute(
                        tx,
                        "INSERT INTO media_segments (media_id, start_offset, end_offset, blob_key)
                     VALUES ($1, $2, $3, $4)",
                        &[segment.media.as_uuid(), &from, &to, &segment.key],
                    )
                    .await?;
                    Ok(true)
                })
            })
            .await
    }

    async fn media_segments(&self, id: MediaId) -> StoreResult<Vec<MediaSegment>> {
        let found = self
            .accounts()
            .read(
                "SELECT start_offset, end_offset, blob_key FROM media_segments
                 WHERE media_id = $1 ORDER BY start_offset",
                &[id.as_uuid()],
            )
            .await?;
        Ok(found
            .iter()
            .map(|r| MediaSegment {
                media: id,
                from: from_sql_len(r.get(0)),
                to: from_sql_len(r.get(1)),
                key: r.get(2),
            })
            .collect())
    }

    async fn finish_media(&self, id: MediaId, finished: FinishedMedia) -> StoreResult<bool> {
        self.accounts()
            .write(|tx| {
                let f = finished.clone();
                Box::pin(async move {
                    let n = execute(
                        tx,
                        "UPDATE media SET ready = true, length = received, content_type = $2,
                       sha256 = $3, width = $4, height = $5, thumbnail = $6, completed_at = $7,
                       expires_at = NULL
                     WHERE id = $1 AND NOT ready",
                        &[
                            id.as_uuid(),
                            &f.content_type,
                            &f.sha256.to_vec(),
                            &f.dimensions.map(|d| to_sql_dimension(d.0)),
                            &f.dimensions.map(|d| to_sql_dimension(d.1)),
                            &f.thumbnail,
                            &f.completed_at.0,
                        ],
                    )
                    .await?;
                    let finished = n == 1;
                    execute(
                        tx,
                        "DELETE FROM media_segments WHERE media_id = $1",
                        &[id.as_uuid()],
                    )
                    .await?;
                    Ok(finished)
                })
            })
            .await
    }

    async fn delete_media(&self, id: MediaId) -> StoreResult<bool> {
        self.accounts()
            .write(|tx| {
                Box::pin(async move {
                    execute(
                        tx,
                        "DELETE FROM media WHERE id = $1 AND NOT ready",
                        &[id.as_uuid()],
                    )
                    .await
                    .map(|n| n == 1)
                })
            })
            .await
    }

    async fn media_visible(&self, id: MediaId, user: UserId) -> StoreResult<bool> {
        let found = self
            .accounts()
            .read(
                "SELECT owner_id = $2 OR EXISTS (SELECT 1 FROM users u WHERE u.profile_pic = $1)
                 FROM media WHERE id = $1 AND ready",
                &[id.as_uuid(), user.as_uuid()],
            )
            .await?;
        match found.first().map(|r| r.get::<_, bool>(0)) {
            None => return Ok(false),
            Some(true) => return Ok(true),
            Some(false) => {}
        }
        for db in self.chat_dbs() {
            let attached = db
                .read(
                    "SELECT 1 FROM chat_log l JOIN memberships m
                       ON m.chat_id = l.chat_id AND m.user_id = $2
                      AND l.seq >= m.from_seq AND (m.to_seq IS NULL OR l.seq <= m.to_seq)
                     WHERE l.media_id = $1::uuid::text AND l.kind = 'message'
                       AND l.deleted_at IS NULL
                     LIMIT 1",
                    &[id.as_uuid(), user.as_uuid()],
                )
                .await?;
            if !attached.is_empty() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn collect_media(
        &self,
        now: Timestamp,
        unreferenced_before: Timestamp,
        limit: usize,
    ) -> StoreResult<CollectedMedia> {
        let max = i64::try_from(limit).unwrap_or(i64::MAX);
        let expired = self
            .accounts()
            .write(|tx| {
                Box::pin(async move {
                    rows(
                        tx,
                        "DELETE FROM media WHERE id IN (
                           SELECT id FROM media WHERE NOT ready AND expires_at <= $1
                           ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)
                         RETURNING id",
                        &[&now.0, &max],
                    )
                    .await
                })
            })
            .await?;
        let unreferenced = self
            .collect_unreferenced(unreferenced_before, limit)
            .await?;
        Ok(CollectedMedia {
            expired: ids(&expired),
            unreferenced,
        })
    }
}

/// How many finished uploads one collection looks at, at most, per one it
/// may delete: the oldest are looked at first, and those still attached
/// to a message stay candidates.
const CANDIDATES_PER_COLLECTED: usize = 16;

impl Postgres {
    /// Deletes up to `limit` finished uploads completed before `before`
    /// that no profile and no message in any chat database references.
    async fn collect_unreferenced(
        &self,
        before: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<MediaId>> {
        let scan =
            i64::try_from(limit.saturating_mul(CANDIDATES_PER_COLLECTED)).unwrap_or(i64::MAX);
        let candidates: Vec<Uuid> = self
            .accounts()
            .read(
                "SELECT m.id FROM media m WHERE m.ready AND m.completed_at < $1
                   AND NOT EXISTS (SELECT 1 FROM users u WHERE u.profile_pic = m.id)
                 ORDER BY m.completed_at, m.id LIMIT $2",
                &[&before.0, &scan],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        // Messages hold the id in its text form (hyphenated, lower case).
        let texts: Vec<String> = candidates.iter().map(Uuid::to_string).collect();
        let mut referenced = std::collections::HashSet::new();
        for db in self.chat_dbs() {
            let found = db
                .read(
                    "SELECT DISTINCT media_id FROM chat_log WHERE media_id = ANY($1)",
                    &[&texts],
                )
                .await?;
            referenced.extend(found.iter().map(|r| r.get::<_, String>(0)));
        }
        let unreferenced: Vec<Uuid> = candidates
            .into_iter()
            .filter(|id| !referenced.contains(&id.to_string()))
            .take(limit)
            .collect();
        let deleted = self
            .accounts()
            .write(|tx| {
                let unreferenced = unreferenced.clone();
                Box::pin(async move {
                    // Checked again under the rows' locks: a profile may
                    // have taken one meanwhile.
                    rows(
                        tx,
                        "DELETE FROM media WHERE id IN (
                           SELECT m.id FROM media m WHERE m.id = ANY($1) AND m.ready
                             AND NOT EXISTS (SELECT 1 FROM users u WHERE u.profile_pic = m.id)
                           FOR UPDATE SKIP LOCKED)
                         RETURNING id",
                        &[&unreferenced],
                    )
                    .await
                })
            })
            .await?;
        Ok(ids(&deleted))
    }
}
