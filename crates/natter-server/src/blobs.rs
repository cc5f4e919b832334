//! Blobs: the bytes of media, behind the `object_store` crate so the same
//! code writes local files now and S3-compatible storage in the scale-out
//! mode. Keys are made here from server-generated ids only, never from
//! anything a client sent.
//!
//! Everything streams: a blob is written from a local staging file in
//! fixed-size parts and read back as a stream of chunks, so memory stays flat
//! whatever the size.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use natter_proto::MediaId;
use object_store::local::LocalFileSystem;
use object_store::path::Path as Key;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, WriteMultipart};
use tokio::io::AsyncReadExt;

mod s3;

/// Size of one part written to the object store (S3's smallest allowed
/// part): the most a blob write holds in memory per part in flight.
const PART_BYTES: usize = 5 * 1024 * 1024;

/// One read from the staging file.
const READ_BYTES: usize = 1024 * 1024;

/// Parts in flight at once while writing one blob (bounds memory per upload
/// to `PART_BYTES * PARTS_IN_FLIGHT`).
const PARTS_IN_FLIGHT: usize = 2;

/// A blob engine failure.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The object store failed.
    #[error("blob store: {0}")]
    Store(#[from] object_store::Error),
    /// A local file could not be read or synced.
    #[error("blob file: {0}")]
    Io(#[from] std::io::Error),
}

/// Which blob of a media object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobKind {
    /// The uploaded bytes.
    Original,
    /// The server-made thumbnail (JPEG).
    Thumbnail,
}

/// The blob store.
#[derive(Clone)]
pub struct Blobs {
    /// The engine.
    store: Arc<dyn ObjectStore>,
    /// For local files: the root, so finished blobs can be synced to disk
    /// (object_store's local engine renames into place but does not fsync).
    local_root: Option<PathBuf>,
}

impl fmt::Debug for Blobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Blobs")
            .field("local_root", &self.local_root)
            .finish_non_exhaustive()
    }
}

fn key(id: MediaId, kind: BlobKind) -> Key {
    let dir = match kind {
        BlobKind::Original => "media",
        BlobKind::Thumbnail => "thumbnails",
    };
    Key::from(format!("{dir}/{id}"))
}

/// Where the segments of a resumable upload live: one prefix per upload, so
/// they can be listed and deleted together on any backend.
fn segments_prefix(id: MediaId) -> Key {
    Key::from(format!("{SEGMENTS_DIR}/{id}"))
}

/// Top directory (key prefix) of resumable uploads' segments.
const SEGMENTS_DIR: &str = "uploads";

impl Blobs {
    /// Blobs as local files under `root` (created if needed).
    ///
    /// # Errors
    /// When the directory cannot be created.
    pub fn local(root: &Path) -> Result<Self, BlobError> {
        crate::perms::private_dir_all(root)?;
        for dir in ["media", "thumbnails", SEGMENTS_DIR] {
            crate::perms::private_dir_all(&root.join(dir))?;
        }
        let store = LocalFileSystem::new_with_prefix(root)?;
        Ok(Self {
            store: Arc::new(store),
            local_root: Some(root.to_path_buf()),
        })
    }

    /// Blobs in the S3-compatible bucket of `blobs = "s3://bucket"` and
    /// `[s3]`, written in multipart uploads of `PART_BYTES` parts.
    ///
    /// # Errors
    /// A configuration the S3 engine refuses.
    pub fn s3(config: &crate::config::Config) -> Result<Self, BlobError> {
        Ok(Self {
            store: Arc::new(s3::store(config)?),
            local_root: None,
        })
    }

    /// The blob store the configuration names: S3 when `blobs` is set,
    /// else files under `local_root`.
    ///
    /// # Errors
    /// As [`Blobs::s3`] and [`Blobs::local`].
    pub fn for_config(
        config: &crate::config::Config,
        local_root: &Path,
    ) -> Result<Self, BlobError> {
        if config.blobs.is_some() {
            Self::s3(config)
        } else {
            Self::local(local_root)
        }
    }

    /// Checks that the store answers (a start-up check: a wrong endpoint,
    /// bucket or key fails here, not at the first upload).
    ///
    /// # Errors
    /// The store's failure.
    pub async fn check(&self) -> Result<(), BlobError> {
        // A listing of a prefix that holds nothing: cheap on any bucket,
        // and unlike a HEAD it tells a missing bucket from a missing key.
        self.store
            .list_with_delimiter(Some(&Key::from("natter-start-check")))
            .await?;
        Ok(())
    }

    /// Streams a local file into a blob, durably.
    ///
    /// # Errors
    /// When the file cannot be read or the store refuses the write.
    pub async fn put_file(
        &self,
        id: MediaId,
        kind: BlobKind,
        file: &Path,
    ) -> Result<(), BlobError> {
        self.put_file_at(&key(id, kind), file).await
    }

    /// A new key for the segment of upload `id` that starts at `from`: the
    /// offset zero-padded (keys sort in offset order) and a random nonce, so
    /// two requests racing at one offset never write the same object.
    #[must_use]
    pub fn segment_key(id: MediaId, from: u64) -> String {
        let nonce: u128 = rand::random();
        format!("{SEGMENTS_DIR}/{id}/{from:020}-{nonce:032x}")
    }

    /// The key of a segment of upload `id`, if `key` is one (a key read back
    /// from the store is checked before it is used).
    fn segment(id: MediaId, key: &str) -> Result<Key, BlobError> {
        let prefix = format!("{SEGMENTS_DIR}/{id}/");
        match key.strip_prefix(&prefix) {
            Some(rest)
                if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') =>
            {
                Ok(Key::from(key))
            }
            _ => Err(BlobError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not a segment key of this upload",
            ))),
        }
    }

    /// Streams a local file into a segment of upload `id` (`key` from
    /// [`Blobs::segment_key`]), durably.
    ///
    /// # Errors
    /// A key that is not one of the upload's; as [`Blobs::put_file`].
    pub async fn put_segment(&self, id: MediaId, key: &str, file: &Path) -> Result<(), BlobError> {
        let key = Self::segment(id, key)?;
        if let Some(root) = &self.local_root {
            // object_store would make the upload's directory with the
            // umask's mode: 0700 first, like every directory of ours.
            let dir = root.join(SEGMENTS_DIR).join(id.to_string());
            tokio::task::spawn_blocking(move || crate::perms::private_dir_all(&dir))
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))??;
        }
        self.put_file_at(&key, file).await
    }

    /// Streams a segment of upload `id`.
    ///
    /// # Errors
    /// A key that is not one of the upload's; a missing or unreadable blob.
    pub async fn get_segment(
        &self,
        id: MediaId,
        key: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, BlobError>>, BlobError> {
        let result = self.store.get(&Self::segment(id, key)?).await?;
        Ok(result
            .into_stream()
            .map(|r| r.map_err(BlobError::from))
            .boxed())
    }

    /// Deletes one segment of upload `id`; a missing one is not an error.
    ///
    /// # Errors
    /// A key that is not one of the upload's; when the store fails.
    pub async fn delete_segment(&self, id: MediaId, key: &str) -> Result<(), BlobError> {
        match self.store.delete(&Self::segment(id, key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes every segment of upload `id`, recorded or not (a request
    /// that stored one and then lost its race or its node leaves one
    /// unrecorded): everything under the upload's prefix.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn delete_segments(&self, id: MediaId) -> Result<(), BlobError> {
        let prefix = segments_prefix(id);
        let keys: Vec<Key> = self
            .store
            .list(Some(&prefix))
            .map(|meta| meta.map(|m| m.location))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        for key in keys {
            match self.store.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(root) = &self.local_root {
            // object_store leaves the emptied directory behind. Best effort:
            // a segment stored meanwhile keeps it, and a later call takes it.
            tokio::fs::remove_dir(root.join(prefix.as_ref())).await.ok();
        }
        Ok(())
    }

    /// Streams a local file into the blob at `key`, durably.
    async fn put_file_at(&self, key: &Key, file: &Path) -> Result<(), BlobError> {
        let upload = self.store.put_multipart(key).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut source = tokio::fs::File::open(file).await?;
        let mut buf = vec![0u8; READ_BYTES];
        loop {
            let n = match source.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    writer.abort().await.ok();
                    return Err(e.into());
                }
            };
            if n == 0 {
                break;
            }
            if let Err(e) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                writer.abort().await.ok();
                return Err(e.into());
            }
            writer.write(&buf[..n]);
        }
        writer.finish().await?;
        self.sync(key).await
    }

    /// Stores a small blob held in memory (a thumbnail), durably.
    ///
    /// # Errors
    /// When the store refuses the write.
    pub async fn put_bytes(
        &self,
        id: MediaId,
        kind: BlobKind,
        bytes: Bytes,
    ) -> Result<(), BlobError> {
        let key = key(id, kind);
        self.store.put(&key, bytes.into()).await?;
        self.sync(&key).await
    }

    /// Makes a finished local blob survive a power cut: the file, then its
    /// directory entry.
    async fn sync(&self, key: &Key) -> Result<(), BlobError> {
        let Some(root) = &self.local_root else {
            return Ok(());
        };
        let path = root.join(key.as_ref());
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            // object_store creates files with the umask's mode: 0600 before
            // the upload is acknowledged (perms.rs).
            crate::perms::restrict(&path)?;
            std::fs::File::open(&path)?.sync_all()?;
            if let Some(dir) = path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))??;
        Ok(())
    }

    /// Streams a blob, or the byte `range` of it.
    ///
    /// # Errors
    /// When the blob is missing or unreadable.
    pub async fn get(
        &self,
        id: MediaId,
        kind: BlobKind,
        range: Option<Range<u64>>,
    ) -> Result<BoxStream<'static, Result<Bytes, BlobError>>, BlobError> {
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        let result = self.store.get_opts(&key(id, kind), options).await?;
        Ok(result
            .into_stream()
            .map(|r| r.map_err(BlobError::from))
            .boxed())
    }

    /// Whether a blob exists (`natter admin check`).
    ///
    /// # Errors
    /// When the store fails for another reason than absence.
    pub async fn exists(&self, id: MediaId, kind: BlobKind) -> Result<bool, BlobError> {
        match self.store.head(&key(id, kind)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes a media object's blobs; missing ones are not an error.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn delete(&self, id: MediaId) -> Result<(), BlobError> {
        for kind in [BlobKind::Original, BlobKind::Thumbnail] {
            match self.store.delete(&key(id, kind)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_round_trips_whole_and_by_range() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::local(&dir.path().join("blobs")).unwrap();
        let source = dir.path().join("source");
        // More than one part, not a multiple of the part size.
        let data: Vec<u8> = (0..PART_BYTES * 2 + 12_345)
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&source, &data).unwrap();
        let id = MediaId::new();
        blobs
            .put_file(id, BlobKind::Original, &source)
            .await
            .unwrap();

        let read = |range| {
            let blobs = blobs.clone();
            async move {
                let mut out = Vec::new();
                let mut s = blobs.get(id, BlobKind::Original, range).await.unwrap();
                while let Some(chunk) = s.next().await {
                    out.extend_from_slice(&chunk.unwrap());
                }
                out
            }
        };
        assert_eq!(read(None).await, data);
        assert_eq!(read(Some(10..20)).await, data[10..20]);
        blobs.delete(id).await.unwrap();
        assert!(blobs.get(id, BlobKind::Original, None).await.is_err());
        blobs.delete(id).await.unwrap();
    }

    #[tokio::test]
    async fn segments_sort_by_offset_read_back_and_go_together() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("blobs");
        let blobs = Blobs::local(&root).unwrap();
        let id = MediaId::new();
        let (first, second) = (Blobs::segment_key(id, 0), Blobs::segment_key(id, 900));
        assert!(first < second, "{first} sorts before {second}");
        assert_ne!(Blobs::segment_key(id, 0), first, "a nonce each time");
        let source = dir.path().join("source");
        std::fs::write(&source, b"segment bytes").unwrap();
        blobs.put_segment(id, &first, &source).await.unwrap();
        blobs.put_segment(id, &second, &source).await.unwrap();
        let mut out = Vec::new();
        let mut s = blobs.get_segment(id, &second).await.unwrap();
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(out, b"segment bytes");
        // Only the upload's own keys are used, whatever the store says.
        let other = MediaId::new();
        for key in [
            Blobs::segment_key(other, 0),
            format!("media/{id}"),
            format!("uploads/{id}/../../media/{id}"),
        ] {
            assert!(blobs.get_segment(id, &key).await.is_err(), "{key}");
        }
        blobs.delete_segment(id, &first).await.unwrap();
        assert!(blobs.get_segment(id, &first).await.is_err());
        blobs.delete_segments(id).await.unwrap();
        assert!(blobs.get_segment(id, &second).await.is_err());
        assert!(!root.join("uploads").join(id.to_string()).exists());
        blobs.delete_segments(id).await.unwrap();
    }
}
