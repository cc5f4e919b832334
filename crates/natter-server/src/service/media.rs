//! Media: plain and resumable uploads, what may be fetched by whom,
//! thumbnails, and garbage collection.
//!
//! Bytes arrive into a staging file in the data directory (`uploads/`),
//! hashed as they come, bounded by the declared kind's size limit. A finished
//! upload is checked against its declared kind (magic bytes; `encrypted` is
//! never looked into), thumbnailed if it is a plaintext image the server
//! decodes, copied into the blob store, and only then recorded as ready.
//!
//! A resumable (tus) upload keeps nothing on the node that received it: each
//! request's bytes become one *segment* blob, and only then does the store
//! move the upload's offset, with a compare-and-set from the offset the
//! request started at. So any node can continue (or finish) an upload any
//! other began, a dropped connection resumes where the store says it
//! stopped, and of two requests at one offset, on one node or two, exactly
//! one is recorded; the other's segment is deleted and it gets a 409.

use std::collections::HashSet;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use natter_proto::chats::MessageType;
use natter_proto::media::MediaKind;
use natter_proto::{ChatId, MediaId};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

use super::{Principal, ServiceError, ServiceResult, Services, clean_text};
use crate::blobs::{BlobError, BlobKind, Blobs};
use crate::clock::Timestamp;
use crate::ratelimit::Limit;
use crate::store::{FinishedMedia, MediaCreated, MediaRecord, MediaSegment, NewMedia};
use crate::thumbnail::{self, ThumbnailError};

/// Bytes of the start of a file kept for sniffing its type (`infer` needs
/// at most a few KiB for every format it knows).
const SNIFF_BYTES: usize = 8192;

/// Uploads collected per housekeeping round; the rest wait for the next.
const COLLECT_BATCH: usize = 1000;

/// Subdirectory of `uploads/` for plain (multipart) uploads: none survives
/// a restart, so it is emptied at start.
const PLAIN_DIR: &str = "plain";
/// Subdirectory of `uploads/` for the files of resumable uploads' requests
/// (a body on its way to a segment, or segments joined to be checked): none
/// outlives its request, so it is emptied at start too.
const RESUMABLE_DIR: &str = "tus";

/// The media machinery the services hold.
#[derive(Debug)]
pub(super) struct MediaEngine {
    /// Where finished blobs live.
    blobs: Blobs,
    /// Staging files of uploads in progress.
    staging: PathBuf,
    /// Thumbnails decoded at once; a permit lives as long as its decode, even
    /// past the deadline, so timed-out decodes still count.
    thumbnail_permits: Arc<Semaphore>,
    /// Resumable uploads a request on this node is writing right now: a
    /// second request here gets its 409 before it streams a body that could
    /// not be recorded. Only a shortcut: the store's compare-and-set is what
    /// keeps two requests (on any nodes) from both appending at one offset.
    writing: Mutex<HashSet<MediaId>>,
}

/// Creates (truncating) a staging file, `0600` whatever the umask (perms.rs).
async fn private_staging_file(path: &std::path::Path) -> io::Result<tokio::fs::File> {
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(crate::perms::FILE_MODE);
    let file = options.open(path).await?;
    crate::perms::restrict(path)?;
    Ok(file)
}

impl MediaEngine {
    /// The blob store (for `natter admin check`).
    pub(super) fn blobs(&self) -> &Blobs {
        &self.blobs
    }

    /// Prepares the staging directories (emptying the plain one).
    pub(super) fn new(
        blobs: Blobs,
        staging: PathBuf,
        thumbnail_workers: usize,
    ) -> io::Result<Self> {
        crate::perms::private_dir_all(&staging)?;
        for dir in [PLAIN_DIR, RESUMABLE_DIR] {
            let dir = staging.join(dir);
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            crate::perms::private_dir_all(&dir)?;
        }
        Ok(Self {
            blobs,
            staging,
            thumbnail_permits: Arc::new(Semaphore::new(thumbnail_workers.max(1))),
            writing: Mutex::new(HashSet::new()),
        })
    }

    /// A new staging file for one request on resumable upload `id`.
    async fn request_file(&self, id: MediaId) -> io::Result<(RequestFile, tokio::fs::File)> {
        let nonce: u64 = rand::random();
        let path = self
            .staging
            .join(RESUMABLE_DIR)
            .join(format!("{id}-{nonce:016x}"));
        let file = private_staging_file(&path).await?;
        Ok((RequestFile { path }, file))
    }
}

/// The staging file of one request on a resumable upload; removed when
/// dropped, whatever became of the request.
#[derive(Debug)]
struct RequestFile {
    path: PathBuf,
}

impl Drop for RequestFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, "could not remove a staging file");
        }
    }
}

impl From<BlobError> for ServiceError {
    fn from(e: BlobError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<io::Error> for ServiceError {
    fn from(e: io::Error) -> Self {
        Self::Internal(format!("media file: {e}"))
    }
}

/// What a client says about an upload, checked by the service.
#[derive(Debug, Clone, Default)]
pub struct UploadInfo {
    /// The declared kind (`type`); required.
    pub kind: Option<String>,
    /// The chat it is for (`chat_id`), if any.
    pub chat_id: Option<String>,
    /// The client's file name, if any.
    pub filename: Option<String>,
}

/// An upload's declaration after checking.
#[derive(Debug, Clone)]
struct Declared {
    kind: MediaKind,
    chat_id: Option<ChatId>,
    filename: Option<String>,
}

/// A plain upload being received: a staging file, hashed as it is written.
/// Dropping it unfinished deletes the file.
#[derive(Debug)]
pub struct Staging {
    id: MediaId,
    path: PathBuf,
    file: Option<tokio::fs::File>,
    hasher: Sha256,
    head: Vec<u8>,
    written: u64,
    max: u64,
}

impl Staging {
    /// Appends a chunk.
    ///
    /// # Errors
    /// [`ServiceError::TooLarge`] past the limit; a disk failure.
    pub async fn write(&mut self, chunk: &[u8]) -> ServiceResult<()> {
        let len = chunk.len() as u64;
        if self.written.saturating_add(len) > self.max {
            return Err(ServiceError::TooLarge(format!(
                "The upload is larger than {} bytes, the most allowed.",
                self.max
            )));
        }
        if self.head.len() < SNIFF_BYTES {
            let take = (SNIFF_BYTES - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..take]);
        }
        self.hasher.update(chunk);
        if let Some(file) = &mut self.file {
            file.write_all(chunk).await?;
        }
        self.written += len;
        Ok(())
    }

    /// Lowers the limit (once the declared kind is known).
    pub fn limit_to(&mut self, max: u64) {
        self.max = self.max.min(max);
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // A staging file still here was not finished: remove it. Unlinking
        // is quick enough for an async thread.
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, "could not remove a staging file");
        }
    }
}

/// Releases a resumable upload's write lock.
struct Writing<'a> {
    engine: &'a MediaEngine,
    id: MediaId,
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.engine
            .writing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Lower-case hex of a SHA-256.
#[must_use]
pub fn sha256_hex(sha: &[u8; 32]) -> String {
    hex(sha)
}

impl Services {
    fn media_engine(&self) -> &MediaEngine {
        &self.inner.media
    }

    /// The size limit of a kind.
    fn kind_limit(&self, kind: MediaKind) -> u64 {
        let m = &self.inner.config.media;
        match kind {
            MediaKind::Image => m.max_image_bytes,
            MediaKind::Video => m.max_video_bytes,
            MediaKind::File => m.max_file_bytes,
            MediaKind::Encrypted => m.max_encrypted_bytes,
        }
    }

    /// How long a transfer may go without moving a byte.
    #[must_use]
    pub fn transfer_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.inner.config.media.transfer_idle_timeout_secs)
    }

    /// The largest upload of the kind named by `kind`, or of any kind if it
    /// is not (yet) known or not valid.
    #[must_use]
    pub fn upload_limit(&self, kind: Option<&str>) -> u64 {
        kind.and_then(MediaKind::parse).map_or_else(
            || self.inner.config.media.max_upload_bytes(),
            |k| self.kind_limit(k),
        )
    }

    async fn declared(&self, who: &Principal, info: UploadInfo) -> ServiceResult<Declared> {
        let kind = info.kind.ok_or_else(|| {
            ServiceError::Validation(
                "`type` is required: image, video, file or encrypted.".to_owned(),
            )
        })?;
        let kind = MediaKind::parse(kind.trim()).ok_or_else(|| {
            ServiceError::Validation("`type` must be image, video, file or encrypted.".to_owned())
        })?;
        let chat_id = match info.chat_id.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(raw) => {
                let id: ChatId = raw.parse().map_err(|_| {
                    ServiceError::Validation("`chat_id` is not a chat id.".to_owned())
                })?;
                let access = self.access(who, id).await?;
                if access.role.is_none() {
                    return Err(ServiceError::ChatNotFound);
                }
                Some(id)
            }
        };
        let filename = match info.filename {
            None => None,
            Some(name) => {
                let max = usize::try_from(self.inner.config.media.max_filename_chars)
                    .unwrap_or(usize::MAX);
                let name = clean_text("filename", &name, max, true)?;
                // Only the last path component: a name is a label, never a path.
                let name = name
                    .rsplit(['/', '\\'])
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                (!matches!(name.as_str(), "" | "." | "..")).then_some(name)
            }
        };
        Ok(Declared {
            kind,
            chat_id,
            filename,
        })
    }

    /// Starts receiving a plain upload, at most `max` bytes.
    ///
    /// # Errors
    /// Rate limited (429); a disk failure.
    pub async fn start_upload(&self, who: &Principal, max: u64) -> ServiceResult<Staging> {
        self.limit(Limit::UploadsPerUser, &who.user.to_string())
            .await?;
        let id = MediaId::new();
        let path = self
            .media_engine()
            .staging
            .join(PLAIN_DIR)
            .join(id.to_string());
        let file = private_staging_file(&path).await?;
        Ok(Staging {
            id,
            path,
            file: Some(file),
            hasher: Sha256::new(),
            head: Vec::with_capacity(SNIFF_BYTES),
            written: 0,
            max,
        })
    }

    /// Finishes a plain upload: checks the declaration against the bytes,
    /// stores them and records the upload.
    ///
    /// # Errors
    /// Bad declaration (422), unknown chat (404), too large or over quota
    /// (413), wrong type (415), image refused (422).
    pub async fn finish_upload(
        &self,
        who: &Principal,
        mut staging: Staging,
        info: UploadInfo,
    ) -> ServiceResult<MediaRecord> {
        let declared = self.declared(who, info).await?;
        let limit = self.kind_limit(declared.kind);
        if staging.written > limit {
            return Err(too_large(declared.kind, limit));
        }
        if let Some(mut file) = staging.file.take() {
            file.flush().await?;
            file.sync_data().await?;
        }
        let sha256: [u8; 32] = std::mem::take(&mut staging.hasher).finalize().into();
        let now = Timestamp::now();
        let media = NewMedia {
            id: staging.id,
            owner: who.user,
            kind: declared.kind,
            chat_id: declared.chat_id,
            filename: declared.filename,
            length: staging.written,
            created_at: now,
            expires_at: None,
            finished: None,
        };
        let finished = match self
            .store_blob((media.id, media.kind), &staging.path, &staging.head, sha256)
            .await
        {
            Ok(f) => f,
            Err(e) => {
                // A fresh id: whatever was stored under it is this request's.
                self.forget_blobs(media.id).await;
                return Err(e);
            }
        };
        let media = NewMedia {
            finished: Some(finished),
            ..media
        };
        let m = &self.inner.config.media;
        let outcome = self
            .inner
            .store
            .create_media(
                media.clone(),
                m.quota_bytes_per_user,
                m.max_pending_uploads_per_user,
            )
            .await;
        match outcome {
            Ok(MediaCreated::Created) => {}
            Ok(MediaCreated::QuotaExceeded) => {
                self.forget_blobs(media.id).await;
                return Err(self.quota_exceeded());
            }
            Ok(MediaCreated::TooManyPending) | Err(_) => {
                self.forget_blobs(media.id).await;
                return Err(outcome.err().map_or_else(
                    || ServiceError::Internal("a finished upload counted as pending".to_owned()),
                    ServiceError::Store,
                ));
            }
        }
        metrics::counter!("natter_media_uploads_total", "kind" => media.kind.as_str()).increment(1);
        metrics::counter!("natter_media_upload_bytes_total").increment(media.length);
        Ok(media.into_record())
    }

    fn quota_exceeded(&self) -> ServiceError {
        ServiceError::QuotaExceeded(self.inner.config.media.quota_bytes_per_user)
    }

    async fn forget_blobs(&self, id: MediaId) {
        if let Err(e) = self.media_engine().blobs.delete(id).await {
            tracing::warn!(error = %e, "could not delete the blobs of a refused upload");
        }
    }

    /// Checks the bytes at `path` against the declared kind, makes the
    /// thumbnail, and copies both into the blob store. On failure the caller
    /// decides what to delete (a resumable upload's blobs may be another
    /// request's, which finished the same bytes first).
    async fn store_blob(
        &self,
        media: (MediaId, MediaKind),
        path: &std::path::Path,
        head: &[u8],
        sha256: [u8; 32],
    ) -> ServiceResult<FinishedMedia> {
        let sniffed = (media.1 != MediaKind::Encrypted)
            .then(|| infer::get(head))
            .flatten();
        let content_type = match (media.1, sniffed) {
            (MediaKind::Encrypted, _) => "application/octet-stream".to_owned(),
            // Only formats the server decodes, so every image is checked
            // (pixels counted, decoded) before anyone is served it inline.
            (MediaKind::Image, Some(t))
                if t.matcher_type() == infer::MatcherType::Image
                    && thumbnail::format_of(t.mime_type()).is_some() =>
            {
                t.mime_type().to_owned()
            }
            (MediaKind::Image, Some(t)) if t.matcher_type() == infer::MatcherType::Image => {
                metrics::counter!("natter_media_images_refused_total", "reason" => "format")
                    .increment(1);
                return Err(ServiceError::MediaTypeMismatch(format!(
                    "{} is not an image format this server checks (JPEG, PNG, WebP, GIF); \
                     send it as `type=file`.",
                    t.mime_type()
                )));
            }
            (MediaKind::Video, Some(t)) if t.matcher_type() == infer::MatcherType::Video => {
                t.mime_type().to_owned()
            }
            (MediaKind::File, t) => t
                .map_or("application/octet-stream", |t| t.mime_type())
                .to_owned(),
            (kind, t) => {
                return Err(ServiceError::MediaTypeMismatch(format!(
                    "The upload was declared `{}` but its bytes are {}.",
                    kind.as_str(),
                    t.map_or_else(
                        || "of no known type".to_owned(),
                        |t| t.mime_type().to_owned()
                    )
                )));
            }
        };
        let thumbnail = match (media.1, thumbnail::format_of(&content_type)) {
            (MediaKind::Image, Some(format)) => Some(self.thumbnail(path, format).await?),
            _ => None,
        };
        let blobs = &self.media_engine().blobs;
        blobs.put_file(media.0, BlobKind::Original, path).await?;
        if let Some(t) = &thumbnail {
            blobs
                .put_bytes(media.0, BlobKind::Thumbnail, Bytes::from(t.jpeg.clone()))
                .await?;
        }
        Ok(FinishedMedia {
            content_type,
            sha256,
            dimensions: thumbnail.as_ref().map(|t| t.dimensions),
            thumbnail: thumbnail.is_some(),
            completed_at: Timestamp::now(),
        })
    }

    /// Decodes an image and makes its thumbnail on a blocking thread, a
    /// bounded number at a time, within the configured time.
    async fn thumbnail(
        &self,
        path: &std::path::Path,
        format: image::ImageFormat,
    ) -> ServiceResult<thumbnail::Thumbnail> {
        let m = &self.inner.config.media;
        let (max_pixels, max_side) = (m.max_image_pixels, m.thumbnail_max_side);
        let deadline = Duration::from_secs(m.thumbnail_timeout_secs);
        let permit = Arc::clone(&self.media_engine().thumbnail_permits)
            .acquire_owned()
            .await
            .map_err(|_| ServiceError::Internal("thumbnail workers closed".to_owned()))?;
        let path = path.to_path_buf();
        let work = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            thumbnail::make(&path, format, max_pixels, max_side)
        });
        match tokio::time::timeout(deadline, work).await {
            Err(_) => {
                metrics::counter!("natter_media_images_refused_total", "reason" => "timeout")
                    .increment(1);
                Err(ServiceError::ImageRejected(format!(
                    "The image took longer than {} seconds to decode.",
                    deadline.as_secs()
                )))
            }
            Ok(Err(e)) => Err(ServiceError::Internal(format!("thumbnail task: {e}"))),
            Ok(Ok(Err(e))) => {
                let reason = match e {
                    ThumbnailError::TooManyPixels { .. } => "pixels",
                    ThumbnailError::Undecodable(_) => "undecodable",
                };
                metrics::counter!("natter_media_images_refused_total", "reason" => reason)
                    .increment(1);
                Err(ServiceError::ImageRejected(format!("Image refused: {e}.")))
            }
            Ok(Ok(Ok(t))) => Ok(t),
        }
    }

    /// Creates a resumable upload of `length` bytes, reserving its quota.
    ///
    /// # Errors
    /// Bad declaration (422), unknown chat (404), too large or over quota
    /// (413), too many in progress (409), rate limited (429).
    pub async fn create_resumable(
        &self,
        who: &Principal,
        length: u64,
        info: UploadInfo,
    ) -> ServiceResult<MediaRecord> {
        let declared = self.declared(who, info).await?;
        let limit = self.kind_limit(declared.kind);
        if length > limit {
            return Err(too_large(declared.kind, limit));
        }
        self.limit(Limit::UploadsPerUser, &who.user.to_string())
            .await?;
        let m = &self.inner.config.media;
        let now = Timestamp::now();
        let expiry = i64::try_from(m.upload_expiry_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let media = NewMedia {
            id: MediaId::new(),
            owner: who.user,
            kind: declared.kind,
            chat_id: declared.chat_id,
            filename: declared.filename,
            length,
            created_at: now,
            expires_at: Some(Timestamp(now.0.saturating_add(expiry))),
            finished: None,
        };
        let created = self
            .inner
            .store
            .create_media(
                media.clone(),
                m.quota_bytes_per_user,
                m.max_pending_uploads_per_user,
            )
            .await;
        let refused = match created {
            Ok(MediaCreated::Created) => None,
            Ok(MediaCreated::QuotaExceeded) => Some(self.quota_exceeded()),
            Ok(MediaCreated::TooManyPending) => {
                Some(ServiceError::TooManyUploads(m.max_pending_uploads_per_user))
            }
            Err(e) => Some(e.into()),
        };
        if let Some(e) = refused {
            return Err(e);
        }
        let finished_empty = length == 0;
        let record = media.into_record();
        if finished_empty {
            // Nothing to PATCH: finish it now, as tus clients expect.
            return self.finish_resumable(record).await;
        }
        Ok(record)
    }

    /// A resumable upload of the caller's, in progress or finished.
    ///
    /// # Errors
    /// [`ServiceError::UploadNotFound`] for anything else (expired included).
    pub async fn resumable(&self, who: &Principal, id: MediaId) -> ServiceResult<MediaRecord> {
        let record = self
            .inner
            .store
            .media(id)
            .await?
            .filter(|m| m.owner == who.user)
            .ok_or(ServiceError::UploadNotFound)?;
        if record.finished.is_none() && record.expires_at.is_some_and(|t| t.0 <= Timestamp::now().0)
        {
            return Err(ServiceError::UploadNotFound);
        }
        Ok(record)
    }

    /// Appends the bytes of `body` to a resumable upload at `offset` (which
    /// must be where the upload is), recording what arrived even if the body
    /// breaks off; finishes the upload when it is complete. Returns the
    /// upload (finished once `received == length`).
    ///
    /// The body goes to a staging file, then into one segment blob, and
    /// only then is the offset moved in the store, from `offset` and only
    /// from there: a request that loses that race (another node appended
    /// first) deletes its segment and gets a 409.
    ///
    /// # Errors
    /// Unknown (404), busy or wrong offset (409), more than declared (413),
    /// and on completion the checks of a plain upload (415, 422).
    pub async fn append_resumable<S>(
        &self,
        who: &Principal,
        id: MediaId,
        offset: u64,
        body: S,
    ) -> ServiceResult<MediaRecord>
    where
        S: Stream<Item = Result<Bytes, io::Error>> + Send,
    {
        let engine = self.media_engine();
        // Someone else's upload does not exist for this caller, busy or not.
        self.resumable(who, id).await?;
        if !engine
            .writing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id)
        {
            return Err(ServiceError::OffsetMismatch(
                "Another request is writing this upload.".to_owned(),
            ));
        }
        let _writing = Writing { engine, id };
        let record = self.resumable(who, id).await?;
        if record.finished.is_some() || offset != record.received {
            return Err(offset_mismatch(record.received));
        }
        let (staged, mut file) = engine.request_file(id).await?;
        let idle = self.transfer_idle_timeout();
        let mut received = offset;
        let mut body = std::pin::pin!(body);
        loop {
            let chunk = match tokio::time::timeout(idle, body.next()).await {
                Ok(Some(Ok(chunk))) => chunk,
                // End of body, a broken connection, or a stalled client:
                // keep what arrived.
                Ok(None | Some(Err(_))) | Err(_) => break,
            };
            let room = record.length - received;
            let take = usize::try_from(room).unwrap_or(usize::MAX).min(chunk.len());
            file.write_all(&chunk[..take]).await?;
            received += take as u64;
            if take < chunk.len() {
                // A refused request keeps none of its bytes (the staging
                // file goes with `staged`): the upload stays where it was,
                // and the client can retry from there.
                return Err(ServiceError::TooLarge(format!(
                    "The body goes past the declared length of {} bytes.",
                    record.length
                )));
            }
        }
        file.flush().await?;
        drop(file);
        if received > offset {
            let segment = MediaSegment {
                media: id,
                from: offset,
                to: received,
                key: Blobs::segment_key(id, offset),
            };
            engine
                .blobs
                .put_segment(id, &segment.key, &staged.path)
                .await?;
            drop(staged);
            // A store failure leaves the segment: the offset may have moved
            // all the same, and an unrecorded segment goes with the upload's.
            if !self
                .inner
                .store
                .advance_media_received(segment.clone())
                .await?
            {
                if let Err(e) = engine.blobs.delete_segment(id, &segment.key).await {
                    tracing::warn!(error = %e, "could not delete the segment of a lost append");
                }
                metrics::counter!("natter_media_resumable_conflicts_total").increment(1);
                return Err(match self.inner.store.media(id).await? {
                    Some(now) => offset_mismatch(now.received),
                    None => ServiceError::UploadNotFound,
                });
            }
        }
        let record = MediaRecord { received, ..record };
        if received < record.length {
            return Ok(record);
        }
        // Complete: by this request, or by one whose finishing failed and
        // that this (empty) one retries.
        self.finish_resumable(record).await
    }

    /// Checks and stores a complete resumable upload; on refusal the upload
    /// is deleted (its quota returns). Two requests may finish one upload at
    /// once (a retry on another node): both write the same bytes to the same
    /// blob, the store records one, and the other answers with that one and
    /// deletes nothing.
    async fn finish_resumable(&self, record: MediaRecord) -> ServiceResult<MediaRecord> {
        let id = record.id;
        let (staged, head, sha256) = match self.join_segments(&record).await {
            Ok(joined) => joined,
            // The segments may be gone because another request finished it.
            Err(e) => return self.finished_meanwhile(id).await?.ok_or(e),
        };
        let stored = self
            .store_blob((id, record.kind), &staged.path, &head, sha256)
            .await;
        drop(staged);
        let finished = match stored {
            Ok(f) => f,
            Err(e) => {
                if !self.inner.store.delete_media(id).await?
                    && let Some(done) = self.finished_meanwhile(id).await?
                {
                    return Ok(done);
                }
                // The record is gone: no request can finish it any more, so
                // whatever is stored under its id is nobody's.
                self.forget_blobs(id).await;
                self.forget_segments(id).await;
                return Err(e);
            }
        };
        if !self.inner.store.finish_media(id, finished.clone()).await? {
            if let Some(done) = self.finished_meanwhile(id).await? {
                return Ok(done);
            }
            // Terminated or expired meanwhile.
            self.forget_blobs(id).await;
            self.forget_segments(id).await;
            return Err(ServiceError::UploadNotFound);
        }
        self.forget_segments(id).await;
        metrics::counter!("natter_media_uploads_total", "kind" => record.kind.as_str())
            .increment(1);
        metrics::counter!("natter_media_upload_bytes_total").increment(record.length);
        Ok(MediaRecord {
            expires_at: None,
            finished: Some(finished),
            ..record
        })
    }

    /// The upload, if another request finished it.
    async fn finished_meanwhile(&self, id: MediaId) -> ServiceResult<Option<MediaRecord>> {
        Ok(self
            .inner
            .store
            .media(id)
            .await?
            .filter(|m| m.finished.is_some()))
    }

    /// Reads a complete upload's segments in order into one staging file:
    /// its first bytes (for sniffing) and its SHA-256, as a plain upload's.
    async fn join_segments(
        &self,
        record: &MediaRecord,
    ) -> ServiceResult<(RequestFile, Vec<u8>, [u8; 32])> {
        let engine = self.media_engine();
        let segments = self.inner.store.media_segments(record.id).await?;
        let mut at = 0;
        for s in &segments {
            if s.from != at || s.to <= s.from {
                return Err(broken_segments(record.id));
            }
            at = s.to;
        }
        if at != record.length {
            return Err(broken_segments(record.id));
        }
        let (staged, mut file) = engine.request_file(record.id).await?;
        let mut hasher = Sha256::new();
        let mut head = Vec::with_capacity(SNIFF_BYTES);
        for s in &segments {
            let mut bytes = engine.blobs.get_segment(record.id, &s.key).await?;
            let mut left = s.to - s.from;
            while let Some(chunk) = bytes.next().await {
                let chunk = chunk?;
                let len = chunk.len() as u64;
                if len > left {
                    return Err(broken_segments(record.id));
                }
                left -= len;
                if head.len() < SNIFF_BYTES {
                    let take = (SNIFF_BYTES - head.len()).min(chunk.len());
                    head.extend_from_slice(&chunk[..take]);
                }
                hasher.update(&chunk);
                file.write_all(&chunk).await?;
            }
            if left != 0 {
                return Err(broken_segments(record.id));
            }
        }
        file.flush().await?;
        drop(file);
        Ok((staged, head, hasher.finalize().into()))
    }

    /// Deletes every segment of a resumable upload (recorded or not).
    async fn forget_segments(&self, id: MediaId) {
        if let Err(e) = self.media_engine().blobs.delete_segments(id).await {
            tracing::warn!(error = %e, "could not delete the segments of an upload");
        }
    }

    /// Terminates a resumable upload in progress.
    ///
    /// # Errors
    /// [`ServiceError::UploadNotFound`] if it is not one of the caller's in progress.
    pub async fn terminate_resumable(&self, who: &Principal, id: MediaId) -> ServiceResult<()> {
        let record = self.resumable(who, id).await?;
        if record.finished.is_some() || !self.inner.store.delete_media(id).await? {
            return Err(ServiceError::UploadNotFound);
        }
        self.forget_segments(id).await;
        Ok(())
    }

    /// A finished upload the caller may fetch.
    ///
    /// # Errors
    /// [`ServiceError::MediaNotFound`], exactly alike for missing and forbidden.
    pub async fn media_for(&self, who: &Principal, id: MediaId) -> ServiceResult<MediaRecord> {
        if !self.inner.store.media_visible(id, who.user).await? {
            return Err(ServiceError::MediaNotFound);
        }
        self.inner
            .store
            .media(id)
            .await?
            .filter(|m| m.finished.is_some())
            .ok_or(ServiceError::MediaNotFound)
    }

    /// Streams a blob of a media object the caller was allowed to fetch
    /// (through [`Services::media_for`]).
    ///
    /// # Errors
    /// When the blob store fails.
    pub async fn media_bytes(
        &self,
        media: &MediaRecord,
        kind: BlobKind,
        range: Option<std::ops::Range<u64>>,
    ) -> ServiceResult<futures_util::stream::BoxStream<'static, Result<Bytes, BlobError>>> {
        Ok(self.media_engine().blobs.get(media.id, kind, range).await?)
    }

    /// Checks that `raw` names a finished upload the sender may attach to a
    /// message of `message_type` in a chat that is `encrypted` or not.
    pub(super) async fn attachable(
        &self,
        who: &Principal,
        raw: &str,
        message_type: MessageType,
        encrypted: bool,
    ) -> ServiceResult<MediaId> {
        let unusable = || {
            ServiceError::Validation("`media_id` does not name an upload you may use.".to_owned())
        };
        let id: MediaId = raw.parse().map_err(|_| unusable())?;
        let media = self.media_for(who, id).await.map_err(|e| match e {
            ServiceError::MediaNotFound => unusable(),
            other => other,
        })?;
        let fits = match (encrypted, media.kind, message_type) {
            // End-to-end encrypted chats carry only blobs the server cannot read.
            (
                true,
                MediaKind::Encrypted,
                MessageType::Image | MessageType::Video | MessageType::File,
            ) => true,
            (false, MediaKind::Image, MessageType::Image)
            | (false, MediaKind::Video, MessageType::Video)
            | (false, MediaKind::File, MessageType::File) => true,
            _ => false,
        };
        if !fits {
            return Err(ServiceError::Validation(format!(
                "An upload of type `{}` cannot be attached to this message: {}.",
                media.kind.as_str(),
                if encrypted {
                    "an encrypted chat takes only `encrypted` uploads"
                } else {
                    "the message type must match the upload's type, and `encrypted` uploads belong in encrypted chats"
                }
            )));
        }
        Ok(id)
    }

    /// Checks a new profile picture: a finished image of the caller's.
    pub(super) async fn profile_picture(
        &self,
        who: &Principal,
        raw: &str,
    ) -> ServiceResult<MediaId> {
        let bad = || {
            ServiceError::Validation(
                "`profile_pic_media_id` must name a finished image upload of yours.".to_owned(),
            )
        };
        let id: MediaId = raw.parse().map_err(|_| bad())?;
        match self.inner.store.media(id).await? {
            Some(m)
                if m.owner == who.user && m.kind == MediaKind::Image && m.finished.is_some() =>
            {
                Ok(id)
            }
            _ => Err(bad()),
        }
    }

    /// Deletes the bytes of uploads whose records are gone (a deleted
    /// account's): finished blobs with their thumbnails, segments of
    /// uploads in progress.
    pub(super) async fn delete_media_files(&self, finished: &[MediaId], in_progress: &[MediaId]) {
        for id in in_progress {
            self.forget_segments(*id).await;
        }
        for id in finished {
            self.forget_blobs(*id).await;
        }
    }

    /// Deletes expired resumable uploads and finished uploads nothing uses.
    pub(super) async fn collect_media(&self) {
        let m = &self.inner.config.media;
        let now = Timestamp::now();
        let ttl = i64::try_from(m.unreferenced_ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let cutoff = Timestamp(now.0.saturating_sub(ttl));
        let collected = match self
            .inner
            .store
            .collect_media(now, cutoff, COLLECT_BATCH)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "could not collect media");
                return;
            }
        };
        for id in &collected.expired {
            self.forget_segments(*id).await;
        }
        for id in &collected.unreferenced {
            self.forget_blobs(*id).await;
        }
        let (expired, unreferenced) = (collected.expired.len(), collected.unreferenced.len());
        if expired + unreferenced > 0 {
            metrics::counter!("natter_media_collected_total", "reason" => "expired")
                .increment(expired as u64);
            metrics::counter!("natter_media_collected_total", "reason" => "unreferenced")
                .increment(unreferenced as u64);
            tracing::info!(expired, unreferenced, "media collected");
        }
    }
}

fn too_large(kind: MediaKind, limit: u64) -> ServiceError {
    ServiceError::TooLarge(format!(
        "An upload of type `{}` may have at most {limit} bytes.",
        kind.as_str()
    ))
}

fn offset_mismatch(received: u64) -> ServiceError {
    ServiceError::OffsetMismatch(format!("The upload is at offset {received}."))
}

/// Segments that do not join into the upload's declared bytes: never made
/// by this server, so an internal failure (logged, not shown).
fn broken_segments(id: MediaId) -> ServiceError {
    ServiceError::Internal(format!("the segments of upload {id} do not join up"))
}
