//! Media: plain and resumable uploads, what may be fetched by whom,
//! thumbnails, and garbage collection.
//!
//! Bytes arrive into a staging file in the data directory (`uploads/`),
//! hashed as they come, bounded by the declared kind's size limit. A finished
//! upload is checked against its declared kind (magic bytes; `encrypted` is
//! never looked into), thumbnailed if it is a plaintext image the server
//! decodes, copied into the blob store, and only then recorded as ready. A
//! resumable (tus) upload records its durable offset after each request, so
//! a dropped connection resumes where the disk says it stopped.

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
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use super::{Principal, ServiceError, ServiceResult, Services, clean_text};
use crate::blobs::{BlobError, BlobKind, Blobs};
use crate::clock::Timestamp;
use crate::ratelimit::Limit;
use crate::store::{FinishedMedia, MediaCreated, MediaRecord, NewMedia};
use crate::thumbnail::{self, ThumbnailError};

/// Bytes of the start of a file kept for sniffing its type (`infer` needs
/// at most a few KiB for every format it knows).
const SNIFF_BYTES: usize = 8192;

/// Buffer for hashing a staging file.
const HASH_BUFFER_BYTES: usize = 1024 * 1024;

/// Uploads collected per housekeeping round; the rest wait for the next.
const COLLECT_BATCH: usize = 1000;

/// Subdirectory of `uploads/` for plain (multipart) uploads: none survives
/// a restart, so it is emptied at start.
const PLAIN_DIR: &str = "plain";
/// Subdirectory of `uploads/` for resumable uploads, one file per upload id.
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
    /// Resumable uploads a request is writing right now (one at a time each).
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
        let plain = staging.join(PLAIN_DIR);
        match std::fs::remove_dir_all(&plain) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        crate::perms::private_dir_all(&staging)?;
        crate::perms::private_dir_all(&plain)?;
        crate::perms::private_dir_all(&staging.join(RESUMABLE_DIR))?;
        Ok(Self {
            blobs,
            staging,
            thumbnail_permits: Arc::new(Semaphore::new(thumbnail_workers.max(1))),
            writing: Mutex::new(HashSet::new()),
        })
    }

    fn resumable_path(&self, id: MediaId) -> PathBuf {
        self.staging.join(RESUMABLE_DIR).join(id.to_string())
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
        let finished = self
            .store_blob((media.id, media.kind), &staging.path, &staging.head, sha256)
            .await?;
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
    /// thumbnail, and copies both into the blob store.
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
            let stored = blobs
                .put_bytes(media.0, BlobKind::Thumbnail, Bytes::from(t.jpeg.clone()))
                .await;
            if let Err(e) = stored {
                self.forget_blobs(media.0).await;
                return Err(e.into());
            }
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
        // The file first: a record always has its file.
        let path = self.media_engine().resumable_path(media.id);
        private_staging_file(&path).await?.sync_all().await?;
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
            remove_file(&path).await;
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
    /// must be where the upload is), recording what became durable even if
    /// the body breaks off; finishes the upload when it is complete. Returns
    /// the upload (finished once `received == length`).
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
            return Err(ServiceError::OffsetMismatch(format!(
                "The upload is at offset {}.",
                record.received
            )));
        }
        let path = engine.resumable_path(id);
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .await?;
        // Bytes past the durable offset are from a request that broke off
        // before recording them: overwrite them.
        file.set_len(offset).await?;
        file.seek(io::SeekFrom::Start(offset)).await?;
        let idle = self.transfer_idle_timeout();
        let mut received = offset;
        let mut too_much = false;
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
                too_much = true;
                break;
            }
        }
        if too_much {
            // A refused request keeps none of its bytes: the upload stays
            // where it was, and the client can retry from there.
            received = offset;
            file.set_len(offset).await?;
        }
        file.flush().await?;
        file.sync_data().await?;
        drop(file);
        if !self.inner.store.set_media_received(id, received).await? {
            return Err(ServiceError::UploadNotFound);
        }
        if too_much {
            return Err(ServiceError::TooLarge(format!(
                "The body goes past the declared length of {} bytes.",
                record.length
            )));
        }
        let record = MediaRecord { received, ..record };
        if received < record.length {
            return Ok(record);
        }
        self.finish_resumable(record).await
    }

    /// Checks and stores a complete resumable upload; on refusal the upload
    /// is deleted (its quota returns).
    async fn finish_resumable(&self, record: MediaRecord) -> ServiceResult<MediaRecord> {
        let path = self.media_engine().resumable_path(record.id);
        let (head, sha256) = hash_file(&path).await?;
        let finished = match self
            .store_blob((record.id, record.kind), &path, &head, sha256)
            .await
        {
            Ok(f) => f,
            Err(e) => {
                self.inner.store.delete_media(record.id).await?;
                remove_file(&path).await;
                return Err(e);
            }
        };
        if !self
            .inner
            .store
            .finish_media(record.id, finished.clone())
            .await?
        {
            // Terminated or expired meanwhile.
            self.forget_blobs(record.id).await;
            return Err(ServiceError::UploadNotFound);
        }
        remove_file(&path).await;
        metrics::counter!("natter_media_uploads_total", "kind" => record.kind.as_str())
            .increment(1);
        metrics::counter!("natter_media_upload_bytes_total").increment(record.length);
        Ok(MediaRecord {
            expires_at: None,
            finished: Some(finished),
            ..record
        })
    }

    /// Terminates a resumable upload in progress.
    ///
    /// # Errors
    /// [`ServiceError::UploadNotFound`] if it is not one of the caller's in progress.
    pub async fn terminate_resumable(&self, who: &Principal, id: MediaId) -> ServiceResult<()> {
        let record = self.resumable(who, id).await?;
        if record.finished.is_some() {
            return Err(ServiceError::UploadNotFound);
        }
        self.inner.store.delete_media(id).await?;
        remove_file(&self.media_engine().resumable_path(id)).await;
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
    /// account's): finished blobs with their thumbnails, staging files of
    /// uploads in progress.
    pub(super) async fn delete_media_files(&self, finished: &[MediaId], in_progress: &[MediaId]) {
        for id in in_progress {
            remove_file(&self.media_engine().resumable_path(*id)).await;
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
            remove_file(&self.media_engine().resumable_path(*id)).await;
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

async fn remove_file(path: &std::path::Path) {
    if let Err(e) = tokio::fs::remove_file(path).await
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(error = %e, path = %path.display(), "could not remove a staging file");
    }
}

/// Reads a staging file once: its first bytes (for sniffing) and its SHA-256.
async fn hash_file(path: &std::path::Path) -> io::Result<(Vec<u8>, [u8; 32])> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut file = std::fs::File::open(path)?;
        let mut hasher = Sha256::new();
        let mut head = Vec::with_capacity(SNIFF_BYTES);
        let mut buf = vec![0u8; HASH_BUFFER_BYTES];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            if head.len() < SNIFF_BYTES {
                let take = (SNIFF_BYTES - head.len()).min(n);
                head.extend_from_slice(&buf[..take]);
            }
            hasher.update(&buf[..n]);
        }
        Ok((head, hasher.finalize().into()))
    })
    .await
    .map_err(|e| io::Error::other(e.to_string()))?
}
