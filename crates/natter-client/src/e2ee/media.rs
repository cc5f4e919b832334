//! Encrypted media (docs/e2ee.md, "Encrypted media"): a file is encrypted
//! by the sender with a fresh 256-bit key, XChaCha20-Poly1305 in the STREAM
//! construction (Hoang, Reyhanitabar, Rogaway, Vizár: a 19-byte nonce
//! prefix, a 32-bit big-endian chunk counter and a last-chunk flag in each
//! chunk's nonce), 64 KiB of plaintext per chunk. Each chunk is
//! authenticated and the last one is marked, so a truncated, reordered or
//! altered file fails to decrypt; memory use is two chunks whatever the
//! file's size.
//!
//! [`Sealer`] and [`Opener`] work chunk by chunk as bytes are fed, so the
//! SDK uploads a file in tus pieces and downloads it in ranges with a few
//! megabytes in memory whatever its size (`Messenger::send_file_from`,
//! `Messenger::fetch_file_to`); [`encrypt_stream`] and [`decrypt_stream`]
//! are the same over `Read` → `Write`.

use std::io::{self, Read, Write};

use chacha20poly1305::aead::stream::{DecryptorBE32, EncryptorBE32};
use chacha20poly1305::{KeyInit as _, XChaCha20Poly1305};
use openmls_rust_crypto::RustCrypto;
use openmls_traits::random::OpenMlsRand as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Plaintext bytes per chunk.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// The Poly1305 tag each chunk carries.
pub const TAG_BYTES: usize = 16;
/// Nonce prefix: XChaCha20's 24-byte nonce minus STREAM's 5 (counter, flag).
pub const NONCE_PREFIX_BYTES: usize = 19;

/// Everything needed to fetch-check and decrypt one encrypted file; it
/// travels inside the (MLS-encrypted) message that shares the file.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaKey {
    /// The file's own key.
    #[serde(with = "super::payload::b64_array")]
    pub key: [u8; 32],
    /// The STREAM nonce prefix.
    #[serde(with = "super::payload::b64_array")]
    pub nonce_prefix: [u8; NONCE_PREFIX_BYTES],
    /// SHA-256 of the whole ciphertext (what the server stores).
    #[serde(with = "super::payload::b64_array")]
    pub sha256: [u8; 32],
    /// Plaintext size in bytes.
    pub size: u64,
}

impl std::fmt::Debug for MediaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaKey")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl MediaKey {
    /// The ciphertext's size for a plaintext of `size` bytes.
    #[must_use]
    pub fn ciphertext_size(size: u64) -> u64 {
        let chunks = size.div_ceil(CHUNK_BYTES as u64).max(1);
        size + chunks * TAG_BYTES as u64
    }
}

/// Why a file did not encrypt or decrypt.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// Reading or writing failed.
    #[error("reading or writing the file failed: {0}")]
    Io(#[from] io::Error),
    /// A chunk did not authenticate: the file was altered, truncated,
    /// reordered, or this is the wrong key.
    #[error("the file was altered, truncated or reordered (or the key is wrong)")]
    Tampered,
    /// The ciphertext is not the one the message described.
    #[error("the file's hash or size is not the one the message gave")]
    Mismatch,
    /// No randomness.
    #[error("no randomness for a media key")]
    Random,
    /// A chunk of the wrong size was given to a [`Sealer`].
    #[error("a file chunk of the wrong size (all but the last hold {CHUNK_BYTES} bytes)")]
    ChunkSize,
}

/// Encrypts a file chunk by chunk as it is fed, for uploads that go out in
/// pieces: every chunk but the last is exactly [`CHUNK_BYTES`] of
/// plaintext, the last one 0 to [`CHUNK_BYTES`]; the caller knows which is
/// last (it knows the file's size, which the upload announces anyway).
pub struct Sealer {
    encryptor: EncryptorBE32<XChaCha20Poly1305>,
    key: [u8; 32],
    nonce_prefix: [u8; NONCE_PREFIX_BYTES],
    hash: Sha256,
    size: u64,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// A fresh key and nonce prefix.
    ///
    /// # Errors
    /// [`MediaError::Random`] without randomness.
    pub fn new() -> Result<Self, MediaError> {
        let rand = RustCrypto::default();
        let key: [u8; 32] = rand.random_array().map_err(|_| MediaError::Random)?;
        let nonce_prefix: [u8; NONCE_PREFIX_BYTES] =
            rand.random_array().map_err(|_| MediaError::Random)?;
        let aead = XChaCha20Poly1305::new(&key.into());
        Ok(Self {
            encryptor: EncryptorBE32::from_aead(aead, nonce_prefix.as_slice().into()),
            key,
            nonce_prefix,
            hash: Sha256::new(),
            size: 0,
        })
    }

    /// Seals a chunk that is not the last one, in place (it grows by
    /// [`TAG_BYTES`]).
    ///
    /// # Errors
    /// [`MediaError::ChunkSize`] unless it holds exactly [`CHUNK_BYTES`].
    pub fn seal(&mut self, chunk: &mut Vec<u8>) -> Result<(), MediaError> {
        if chunk.len() != CHUNK_BYTES {
            return Err(MediaError::ChunkSize);
        }
        self.size += chunk.len() as u64;
        self.encryptor
            .encrypt_next_in_place(b"", chunk)
            .map_err(|_| MediaError::Tampered)?;
        self.hash.update(chunk.as_slice());
        Ok(())
    }

    /// Seals the last chunk in place and gives the file's key.
    ///
    /// # Errors
    /// [`MediaError::ChunkSize`] if it holds more than [`CHUNK_BYTES`].
    pub fn finish(mut self, chunk: &mut Vec<u8>) -> Result<MediaKey, MediaError> {
        if chunk.len() > CHUNK_BYTES {
            return Err(MediaError::ChunkSize);
        }
        self.size += chunk.len() as u64;
        self.encryptor
            .encrypt_last_in_place(b"", chunk)
            .map_err(|_| MediaError::Tampered)?;
        self.hash.update(chunk.as_slice());
        Ok(MediaKey {
            key: self.key,
            nonce_prefix: self.nonce_prefix,
            sha256: self.hash.finalize().into(),
            size: self.size,
        })
    }
}

/// Decrypts a file chunk by chunk as it arrives: every sealed chunk but the
/// last is exactly [`CHUNK_BYTES`] + [`TAG_BYTES`]; the message's
/// [`MediaKey::size`] says how many there are.
pub struct Opener<'k> {
    decryptor: DecryptorBE32<XChaCha20Poly1305>,
    key: &'k MediaKey,
    hash: Sha256,
    size: u64,
}

impl std::fmt::Debug for Opener<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl<'k> Opener<'k> {
    /// An opener for the file `key` describes.
    #[must_use]
    pub fn new(key: &'k MediaKey) -> Self {
        let aead = XChaCha20Poly1305::new(&key.key.into());
        Self {
            decryptor: DecryptorBE32::from_aead(aead, key.nonce_prefix.as_slice().into()),
            key,
            hash: Sha256::new(),
            size: 0,
        }
    }

    /// The sealed chunks of the file and the size of the last one.
    #[must_use]
    pub fn layout(key: &MediaKey) -> (u64, usize) {
        let sealed = MediaKey::ciphertext_size(key.size);
        let full = (CHUNK_BYTES + TAG_BYTES) as u64;
        let chunks = sealed.div_ceil(full).max(1);
        let last = sealed - (chunks - 1) * full;
        (chunks, usize::try_from(last).unwrap_or(usize::MAX))
    }

    /// Opens a chunk that is not the last one, in place.
    ///
    /// # Errors
    /// [`MediaError::Tampered`] if it does not authenticate (a short chunk
    /// never does).
    pub fn open(&mut self, chunk: &mut Vec<u8>) -> Result<(), MediaError> {
        if chunk.len() != CHUNK_BYTES + TAG_BYTES {
            return Err(MediaError::Tampered);
        }
        self.hash.update(chunk.as_slice());
        self.decryptor
            .decrypt_next_in_place(b"", chunk)
            .map_err(|_| MediaError::Tampered)?;
        self.size += chunk.len() as u64;
        Ok(())
    }

    /// Opens the last chunk in place and checks the whole file against the
    /// message's hash and size.
    ///
    /// # Errors
    /// [`MediaError::Tampered`], or [`MediaError::Mismatch`] if the
    /// ciphertext is not the one the message described.
    pub fn finish(mut self, chunk: &mut Vec<u8>) -> Result<u64, MediaError> {
        self.hash.update(chunk.as_slice());
        self.decryptor
            .decrypt_last_in_place(b"", chunk)
            .map_err(|_| MediaError::Tampered)?;
        self.size += chunk.len() as u64;
        let digest: [u8; 32] = self.hash.finalize().into();
        if digest != self.key.sha256 || self.size != self.key.size {
            return Err(MediaError::Mismatch);
        }
        Ok(self.size)
    }
}

/// Encrypts everything `reader` yields into `writer`.
///
/// # Errors
/// [`MediaError::Io`] if reading or writing fails.
pub fn encrypt_stream(
    mut reader: impl Read,
    mut writer: impl Write,
) -> Result<MediaKey, MediaError> {
    let mut sealer = Sealer::new()?;
    let mut current = Vec::with_capacity(CHUNK_BYTES + TAG_BYTES);
    let mut next = Vec::with_capacity(CHUNK_BYTES + TAG_BYTES);
    read_chunk(&mut reader, &mut current, CHUNK_BYTES)?;
    loop {
        read_chunk(&mut reader, &mut next, CHUNK_BYTES)?;
        if next.is_empty() {
            let key = sealer.finish(&mut current)?;
            writer.write_all(&current)?;
            writer.flush()?;
            return Ok(key);
        }
        sealer.seal(&mut current)?;
        writer.write_all(&current)?;
        std::mem::swap(&mut current, &mut next);
    }
}

/// Decrypts a file encrypted by [`encrypt_stream`] into `writer` and
/// returns the plaintext size. Plaintext is written chunk by chunk as each
/// authenticates; on an error the caller must discard what was written.
///
/// # Errors
/// [`MediaError::Tampered`] for an altered, truncated or reordered file,
/// [`MediaError::Mismatch`] if the ciphertext's hash or size is not the
/// message's, [`MediaError::Io`].
pub fn decrypt_stream(
    key: &MediaKey,
    mut reader: impl Read,
    mut writer: impl Write,
) -> Result<u64, MediaError> {
    let mut opener = Opener::new(key);
    let sealed = CHUNK_BYTES + TAG_BYTES;
    let mut current = Vec::with_capacity(sealed);
    let mut next = Vec::with_capacity(sealed);
    read_chunk(&mut reader, &mut current, sealed)?;
    loop {
        read_chunk(&mut reader, &mut next, sealed)?;
        if next.is_empty() {
            let size = opener.finish(&mut current)?;
            writer.write_all(&current)?;
            writer.flush()?;
            return Ok(size);
        }
        opener.open(&mut current)?;
        writer.write_all(&current)?;
        std::mem::swap(&mut current, &mut next);
    }
}

/// Fills `buf` with up to `max` bytes (fewer only at the end of the input).
fn read_chunk(reader: &mut impl Read, buf: &mut Vec<u8>, max: usize) -> io::Result<()> {
    buf.clear();
    let mut limited = reader.take(max as u64);
    limited.read_to_end(buf)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(len: usize) {
        let plain: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        let mut sealed = Vec::new();
        let key = encrypt_stream(plain.as_slice(), &mut sealed).unwrap();
        assert_eq!(key.size, len as u64);
        assert_eq!(sealed.len() as u64, MediaKey::ciphertext_size(len as u64));
        let mut opened = Vec::new();
        assert_eq!(
            decrypt_stream(&key, sealed.as_slice(), &mut opened).unwrap(),
            len as u64
        );
        assert_eq!(opened, plain);
    }

    #[test]
    fn files_of_every_shape_round_trip() {
        for len in [
            0,
            1,
            CHUNK_BYTES - 1,
            CHUNK_BYTES,
            3 * CHUNK_BYTES,
            3 * CHUNK_BYTES + 7,
        ] {
            round_trip(len);
        }
    }

    fn sealed(len: usize) -> (MediaKey, Vec<u8>) {
        let plain = vec![7u8; len];
        let mut sealed = Vec::new();
        let key = encrypt_stream(plain.as_slice(), &mut sealed).unwrap();
        (key, sealed)
    }

    #[test]
    fn a_file_cut_at_a_chunk_boundary_fails() {
        let (key, sealed) = sealed(3 * CHUNK_BYTES);
        let cut = &sealed[..2 * (CHUNK_BYTES + TAG_BYTES)];
        assert!(matches!(
            decrypt_stream(&key, cut, io::sink()),
            Err(MediaError::Tampered)
        ));
        let cut = &sealed[..sealed.len() - 1];
        assert!(matches!(
            decrypt_stream(&key, cut, io::sink()),
            Err(MediaError::Tampered)
        ));
        assert!(matches!(
            decrypt_stream(&key, &[][..], io::sink()),
            Err(MediaError::Tampered)
        ));
    }

    #[test]
    fn reordered_or_altered_chunks_fail() {
        let (key, sealed) = sealed(3 * CHUNK_BYTES + 10);
        let n = CHUNK_BYTES + TAG_BYTES;
        let mut swapped = sealed.clone();
        swapped[..n].copy_from_slice(&sealed[n..2 * n]);
        swapped[n..2 * n].copy_from_slice(&sealed[..n]);
        assert!(matches!(
            decrypt_stream(&key, swapped.as_slice(), io::sink()),
            Err(MediaError::Tampered)
        ));
        let mut flipped = sealed.clone();
        flipped[n + 5] ^= 1;
        assert!(matches!(
            decrypt_stream(&key, flipped.as_slice(), io::sink()),
            Err(MediaError::Tampered)
        ));
        let mut wrong = key.clone();
        wrong.key[0] ^= 1;
        assert!(matches!(
            decrypt_stream(&wrong, sealed.as_slice(), io::sink()),
            Err(MediaError::Tampered)
        ));
        let mut other = key;
        other.size += 1;
        assert!(matches!(
            decrypt_stream(&other, sealed.as_slice(), io::sink()),
            Err(MediaError::Mismatch)
        ));
    }
}
