//! Upload records: quota-checked creation, progress of resumable uploads,
//! who may fetch what, and garbage collection. Runs inside the writer's or
//! a reader's connection; the bytes themselves live in the blob store.

use natter_proto::media::MediaKind;
use natter_proto::{ChatId, MediaId, UserId};
use rusqlite::{Connection, OptionalExtension, Result, Row, params};

use super::uuid_of;
use crate::clock::Timestamp;
use crate::store::{
    CollectedMedia, FinishedMedia, MediaCreated, MediaRecord, MediaSegment, NewMedia,
};

const MEDIA_COLUMNS: &str = "id, owner_id, kind, chat_id, filename, length, received, ready, \
     content_type, sha256, width, height, thumbnail, created_at, completed_at, expires_at";

fn kind_from_sql(s: &str) -> MediaKind {
    // The column's CHECK admits only the four names.
    MediaKind::parse(s).unwrap_or(MediaKind::File)
}

/// Lengths are u64 on the Rust side and INTEGER (i64) in SQLite; every
/// length is bounded by configuration far below i64::MAX.
fn to_sql_len(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn from_sql_len(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn media_from_row(row: &Row<'_>) -> Result<MediaRecord> {
    let ready: bool = row.get("ready")?;
    let finished = if ready {
        let sha: Vec<u8> = row.get::<_, Option<Vec<u8>>>("sha256")?.unwrap_or_default();
        let width: Option<u32> = row.get("width")?;
        let height: Option<u32> = row.get("height")?;
        Some(FinishedMedia {
            content_type: row
                .get::<_, Option<String>>("content_type")?
                .unwrap_or_else(|| "application/octet-stream".to_owned()),
            sha256: <[u8; 32]>::try_from(sha.as_slice()).unwrap_or([0; 32]),
            dimensions: width.zip(height),
            thumbnail: row.get("thumbnail")?,
            completed_at: Timestamp(row.get::<_, Option<i64>>("completed_at")?.unwrap_or(0)),
        })
    } else {
        None
    };
    let chat: Option<Vec<u8>> = row.get("chat_id")?;
    Ok(MediaRecord {
        id: MediaId::from_uuid(uuid_of(row, "id")?),
        owner: UserId::from_uuid(uuid_of(row, "owner_id")?),
        kind: kind_from_sql(&row.get::<_, String>("kind")?),
        chat_id: chat
            .and_then(|b| uuid::Uuid::from_slice(&b).ok())
            .map(ChatId::from_uuid),
        filename: row.get("filename")?,
        length: from_sql_len(row.get("length")?),
        received: from_sql_len(row.get("received")?),
        created_at: Timestamp(row.get("created_at")?),
        expires_at: row.get::<_, Option<i64>>("expires_at")?.map(Timestamp),
        finished,
    })
}

pub(super) fn of_owner(c: &Connection, owner: UserId) -> Result<Vec<MediaRecord>> {
    let mut s = c.prepare_cached(&format!(
        "SELECT {MEDIA_COLUMNS} FROM media WHERE owner_id = ?1 AND ready = 1
         ORDER BY created_at, id"
    ))?;
    let rows = s.query_map([owner.as_uuid().as_bytes()], media_from_row)?;
    rows.collect()
}

pub(super) fn create(
    c: &Connection,
    m: &NewMedia,
    quota: u64,
    max_pending: u64,
) -> Result<MediaCreated> {
    let owner = m.owner.as_uuid().as_bytes();
    let (used, pending): (i64, i64) = c
        .prepare_cached(
            "SELECT coalesce(sum(length), 0), coalesce(sum(ready = 0), 0)
             FROM media WHERE owner_id = ?1",
        )?
        .query_row([owner], |r| Ok((r.get(0)?, r.get(1)?)))?;
    if from_sql_len(used).saturating_add(m.length) > quota {
        return Ok(MediaCreated::QuotaExceeded);
    }
    if m.finished.is_none() && from_sql_len(pending) >= max_pending {
        return Ok(MediaCreated::TooManyPending);
    }
    let f = m.finished.as_ref();
    c.prepare_cached(
        "INSERT INTO media (id, owner_id, kind, chat_id, filename, length, received, ready,
           content_type, sha256, width, height, thumbnail, created_at, completed_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
    )?
    .execute(params![
        m.id.as_uuid().as_bytes(),
        owner,
        m.kind.as_str(),
        m.chat_id.map(|c| *c.as_uuid().as_bytes()),
        m.filename,
        to_sql_len(m.length),
        if f.is_some() { to_sql_len(m.length) } else { 0 },
        f.is_some(),
        f.map(|f| f.content_type.clone()),
        f.map(|f| f.sha256.to_vec()),
        f.and_then(|f| f.dimensions).map(|d| d.0),
        f.and_then(|f| f.dimensions).map(|d| d.1),
        f.is_some_and(|f| f.thumbnail),
        m.created_at.0,
        f.map(|f| f.completed_at.0),
        m.expires_at.map(|t| t.0),
    ])?;
    Ok(MediaCreated::Created)
}

pub(super) fn get(c: &Connection, id: MediaId) -> Result<Option<MediaRecord>> {
    c.prepare_cached(&format!("SELECT {MEDIA_COLUMNS} FROM media WHERE id = ?1"))?
        .query_row([id.as_uuid().as_bytes()], media_from_row)
        .optional()
}

/// The compare-and-set of a resumable upload's offset, with its segment
/// (one writer job: both or neither).
pub(super) fn advance(c: &Connection, segment: &MediaSegment) -> Result<bool> {
    let id = segment.media.as_uuid().as_bytes();
    let n = c
        .prepare_cached(
            "UPDATE media SET received = ?3 WHERE id = ?1 AND ready = 0 AND received = ?2",
        )?
        .execute(params![
            id,
            to_sql_len(segment.from),
            to_sql_len(segment.to)
        ])?;
    if n != 1 {
        return Ok(false);
    }
    c.prepare_cached(
        "INSERT INTO media_segments (media_id, start_offset, end_offset, blob_key)
         VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        id,
        to_sql_len(segment.from),
        to_sql_len(segment.to),
        segment.key
    ])?;
    Ok(true)
}

pub(super) fn segments(c: &Connection, id: MediaId) -> Result<Vec<MediaSegment>> {
    let mut s = c.prepare_cached(
        "SELECT start_offset, end_offset, blob_key FROM media_segments
         WHERE media_id = ?1 ORDER BY start_offset",
    )?;
    let rows = s.query_map([id.as_uuid().as_bytes()], |r| {
        Ok(MediaSegment {
            media: id,
            from: from_sql_len(r.get(0)?),
            to: from_sql_len(r.get(1)?),
            key: r.get(2)?,
        })
    })?;
    rows.collect()
}

pub(super) fn finish(c: &Connection, id: MediaId, f: &FinishedMedia) -> Result<bool> {
    let n = c
        .prepare_cached(
            "UPDATE media SET ready = 1, length = received, content_type = ?2, sha256 = ?3,
               width = ?4, height = ?5, thumbnail = ?6, completed_at = ?7, expires_at = NULL
             WHERE id = ?1 AND ready = 0",
        )?
        .execute(params![
            id.as_uuid().as_bytes(),
            f.content_type,
            f.sha256.to_vec(),
            f.dimensions.map(|d| d.0),
            f.dimensions.map(|d| d.1),
            f.thumbnail,
            f.completed_at.0,
        ])?;
    c.prepare_cached("DELETE FROM media_segments WHERE media_id = ?1")?
        .execute([id.as_uuid().as_bytes()])?;
    Ok(n == 1)
}

/// Only an upload in progress: its segments go with it (cascade).
pub(super) fn delete(c: &Connection, id: MediaId) -> Result<bool> {
    let n = c
        .prepare_cached("DELETE FROM media WHERE id = ?1 AND ready = 0")?
        .execute([id.as_uuid().as_bytes()])?;
    Ok(n == 1)
}

/// Whether a finished upload exists: a message may only reference one.
pub(super) fn is_ready(c: &Connection, id: MediaId) -> Result<bool> {
    c.prepare_cached("SELECT EXISTS (SELECT 1 FROM media WHERE id = ?1 AND ready = 1)")?
        .query_row([id.as_uuid().as_bytes()], |r| r.get(0))
}

pub(super) fn visible(c: &Connection, id: MediaId, user: UserId) -> Result<bool> {
    c.prepare_cached(
        "SELECT EXISTS (
           SELECT 1 FROM media WHERE id = ?1 AND ready = 1 AND (
             owner_id = ?2
             OR EXISTS (SELECT 1 FROM users u WHERE u.profile_pic = ?1)
             OR EXISTS (
               SELECT 1 FROM chat_log l JOIN memberships m
                 ON m.chat_id = l.chat_id AND m.user_id = ?2
                AND l.seq >= m.from_seq AND (m.to_seq IS NULL OR l.seq <= m.to_seq)
               WHERE l.media_id = ?3 AND l.kind = 'message' AND l.deleted_at IS NULL)))",
    )?
    .query_row(
        params![
            id.as_uuid().as_bytes(),
            user.as_uuid().as_bytes(),
            id.to_string()
        ],
        |r| r.get(0),
    )
}

pub(super) fn collect(
    c: &Connection,
    now: Timestamp,
    unreferenced_before: Timestamp,
    limit: usize,
) -> Result<CollectedMedia> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let expired = c
        .prepare_cached(
            "DELETE FROM media WHERE id IN (
               SELECT id FROM media WHERE ready = 0 AND expires_at <= ?1 LIMIT ?2)
             RETURNING id",
        )?
        .query_map(params![now.0, limit], |r| uuid_of(r, "id"))?
        .map(|r| r.map(MediaId::from_uuid))
        .collect::<Result<Vec<_>>>()?;
    // Messages hold the id in its text form (a hyphenated lower-case UUID):
    // the reference test is in the query, so referenced uploads never fill
    // the batch and starve the unreferenced ones behind them.
    let unreferenced = c
        .prepare_cached(
            "DELETE FROM media WHERE id IN (
               SELECT m.id FROM media m WHERE m.ready = 1 AND m.completed_at < ?1
                 AND NOT EXISTS (SELECT 1 FROM users u WHERE u.profile_pic = m.id)
                 AND NOT EXISTS (SELECT 1 FROM chat_log l WHERE l.media_id = lower(
                   substr(hex(m.id), 1, 8) || '-' || substr(hex(m.id), 9, 4) || '-' ||
                   substr(hex(m.id), 13, 4) || '-' || substr(hex(m.id), 17, 4) || '-' ||
                   substr(hex(m.id), 21)))
               ORDER BY m.completed_at LIMIT ?2)
             RETURNING id",
        )?
        .query_map(params![unreferenced_before.0, limit], |r| uuid_of(r, "id"))?
        .map(|r| r.map(MediaId::from_uuid))
        .collect::<Result<Vec<_>>>()?;
    Ok(CollectedMedia {
        expired,
        unreferenced,
    })
}
