//! Encrypted media (docs/e2ee.md, "Encrypted media"): a file is encrypted
//! by the sender with a fresh 256-bit key, XChaCha20-Poly1305 in the STREAM
//! construction (Hoang, Reyhanitabar, Rogaway, Vizár: a 19-byte nonce
//! prefix, a 32-bit big-endian chunk counter and a last-chunk flag in each
//! chunk's nonce), 64 KiB of plaintext per chunk. Each chunk is
//! authenticated and the last one is marked, so a truncated, reordered or
//! altered file fails to decrypt; memory use is two chunks whatever the
//! file's size.
//!
//! The functions are synchronous (`Read` → `Write`): the SDK runs them on a
//! blocking thread and feeds the upload through a bounded channel into a
//! streaming request body (reqwest's `Body::wrap_stream`), or reads a
//! download from a file.

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
}

/// Encrypts everything `reader` yields into `writer`.
///
/// # Errors
/// [`MediaError::Io`] if reading or writing fails.
pub fn encrypt_stream(
    mut reader: impl Read,
    mut writer: impl Write,
) -> Result<MediaKey, MediaError> {
    let rand = RustCrypto::default();
    let key: [u8; 32] = rand.random_array().map_err(|_| MediaError::Random)?;
    let nonce_prefix: [u8; NONCE_PREFIX_BYTES] =
        rand.random_array().map_err(|_| MediaError::Random)?;
    let aead = XChaCha20Poly1305::new(&key.into());
    let mut encryptor = EncryptorBE32::from_aead(aead, nonce_prefix.as_slice().into());
    let mut hash = Sha256::new();
    let mut size = 0u64;
    let mut current = Vec::with_capacity(CHUNK_BYTES + TAG_BYTES);
    let mut next = Vec::with_capacity(CHUNK_BYTES + TAG_BYTES);
    read_chunk(&mut reader, &mut current, CHUNK_BYTES)?;
    loop {
        read_chunk(&mut reader, &mut next, CHUNK_BYTES)?;
        size += current.len() as u64;
        if next.is_empty() {
            encryptor
                .encrypt_last_in_place(b"", &mut current)
                .map_err(|_| MediaError::Tampered)?;
            hash.update(&current);
            writer.write_all(&current)?;
            break;
        }
        encryptor
            .encrypt_next_in_place(b"", &mut current)
            .map_err(|_| MediaError::Tampered)?;
        hash.update(&current);
        writer.write_all(&current)?;
        std::mem::swap(&mut current, &mut next);
    }
    writer.flush()?;
    Ok(MediaKey {
        key,
        nonce_prefix,
        sha256: hash.finalize().into(),
        size,
    })
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
    let aead = XChaCha20Poly1305::new(&key.key.into());
    let mut decryptor = DecryptorBE32::from_aead(aead, key.nonce_prefix.as_slice().into());
    let mut hash = Sha256::new();
    let mut size = 0u64;
    let sealed = CHUNK_BYTES + TAG_BYTES;
    let mut current = Vec::with_capacity(sealed);
    let mut next = Vec::with_capacity(sealed);
    read_chunk(&mut reader, &mut current, sealed)?;
    loop {
        read_chunk(&mut reader, &mut next, sealed)?;
        hash.update(&current);
        if next.is_empty() {
            decryptor
                .decrypt_last_in_place(b"", &mut current)
                .map_err(|_| MediaError::Tampered)?;
            size += current.len() as u64;
            writer.write_all(&current)?;
            break;
        }
        decryptor
            .decrypt_next_in_place(b"", &mut current)
            .map_err(|_| MediaError::Tampered)?;
        size += current.len() as u64;
        writer.write_all(&current)?;
        std::mem::swap(&mut current, &mut next);
    }
    writer.flush()?;
    let digest: [u8; 32] = hash.finalize().into();
    if digest != key.sha256 || size != key.size {
        return Err(MediaError::Mismatch);
    }
    Ok(size)
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
