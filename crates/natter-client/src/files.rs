//! Encrypted files over the network in bounded memory: an upload is sealed
//! chunk by chunk ([`media::Sealer`]) and sent as tus `PATCH`es of
//! [`PIECE_BYTES`]; a download is fetched in ranges of the same size and
//! opened chunk by chunk ([`media::Opener`]). A 2 GB file costs a few
//! megabytes of memory either way. A piece that fails for a reason that may
//! pass (a dropped connection, a 5xx, a 408 or 429) is retried from where
//! the server says it stopped (tus `HEAD`), [`ATTEMPTS`] times.
//!
//! Files for plaintext chats ([`upload_plain`], [`download_plain`]) take the
//! same way without the encryption: the server sniffs and checks them.

use std::time::Duration;

use futures_util::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use natter_proto::media::MediaKind;
use natter_proto::{ChatId, MediaId};

use crate::api::Api;
use crate::e2ee::media::{self, CHUNK_BYTES, MediaKey, Opener, Sealer, TAG_BYTES};
use crate::{ClientError, ClientResult};

/// Sealed chunks per piece (a tus `PATCH` or a ranged `GET`).
const PIECE_CHUNKS: usize = 64;
/// Bytes of ciphertext per piece: 64 sealed chunks, about 4 MiB.
pub const PIECE_BYTES: usize = PIECE_CHUNKS * (CHUNK_BYTES + TAG_BYTES);
/// Tries per piece.
pub const ATTEMPTS: u32 = 5;
/// The first wait between tries; doubles each time.
const RETRY_WAIT: Duration = Duration::from_millis(200);

fn media_error(context: &str) -> impl FnOnce(media::MediaError) -> ClientError + '_ {
    move |e| ClientError::Protocol(format!("{context}: {e}"))
}

/// Whether a failed request may succeed if tried again.
fn may_pass(e: &ClientError) -> bool {
    match e {
        ClientError::Transport(_) | ClientError::Timeout(_) => true,
        ClientError::Api(api) => !api.is_permanent(),
        _ => false,
    }
}

/// Encrypts the `size` bytes `reader` yields with a fresh key and uploads
/// them as an `encrypted` blob (for `chat`, if given), telling `progress`
/// the ciphertext bytes the server holds and their total. An upload that
/// fails is deleted on the server.
///
/// # Errors
/// The reader failed or gave more or fewer than `size` bytes, the server
/// refused the upload, or a piece failed [`ATTEMPTS`] times.
pub async fn upload_encrypted(
    api: &Api,
    size: u64,
    reader: impl AsyncRead + Unpin,
    chat: Option<ChatId>,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> ClientResult<(MediaId, MediaKey)> {
    let total = MediaKey::ciphertext_size(size);
    let id = api
        .tus_create(total, MediaKind::Encrypted, chat, "encrypted")
        .await?;
    match upload_pieces(api, id, size, reader, progress).await {
        Ok(key) => Ok((id, key)),
        Err(e) => {
            // Best effort: the server also expires it (`media.upload_expiry_secs`).
            let _ = api.tus_delete(id).await;
            Err(e)
        }
    }
}

async fn upload_pieces(
    api: &Api,
    id: MediaId,
    size: u64,
    mut reader: impl AsyncRead + Unpin,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> ClientResult<MediaKey> {
    let total = MediaKey::ciphertext_size(size);
    let chunks = size.div_ceil(CHUNK_BYTES as u64).max(1);
    let mut sealer = Sealer::new().map_err(media_error("encrypting the file"))?;
    let mut piece = Vec::with_capacity(PIECE_BYTES);
    let mut chunk = Vec::with_capacity(CHUNK_BYTES + TAG_BYTES);
    let mut offset = 0u64;
    for _ in 1..chunks {
        read_chunk(&mut reader, &mut chunk, CHUNK_BYTES).await?;
        sealer
            .seal(&mut chunk)
            .map_err(media_error("encrypting the file"))?;
        piece.extend_from_slice(&chunk);
        if piece.len() >= PIECE_BYTES {
            offset = send_piece(api, id, offset, &piece).await?;
            piece.clear();
            progress(offset, total);
        }
    }
    let last = size - (chunks - 1) * CHUNK_BYTES as u64;
    read_chunk(
        &mut reader,
        &mut chunk,
        usize::try_from(last).unwrap_or(CHUNK_BYTES),
    )
    .await?;
    let mut extra = [0u8; 1];
    if reader.read(&mut extra).await.map_err(read_error)? != 0 {
        return Err(ClientError::Protocol(format!(
            "the file is longer than the {size} bytes announced (did it change while it was sent?)"
        )));
    }
    let key = sealer
        .finish(&mut chunk)
        .map_err(media_error("encrypting the file"))?;
    piece.extend_from_slice(&chunk);
    offset = send_piece(api, id, offset, &piece).await?;
    progress(offset, total);
    if offset != total {
        return Err(ClientError::Protocol(format!(
            "the server holds {offset} of the upload's {total} bytes"
        )));
    }
    Ok(key)
}

/// Uploads the `size` bytes `reader` yields as they are (plaintext chats),
/// declared as `kind` and named `name`, in pieces of [`PIECE_BYTES`];
/// `progress` hears the bytes the server holds and the total. An upload
/// that fails is deleted on the server.
///
/// # Errors
/// The reader gave more or fewer than `size` bytes, the server refused the
/// upload (too large, not the kind declared), or a piece failed
/// [`ATTEMPTS`] times.
pub async fn upload_plain(
    api: &Api,
    size: u64,
    mut reader: impl AsyncRead + Unpin,
    kind: MediaKind,
    chat: Option<ChatId>,
    name: &str,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> ClientResult<MediaId> {
    let id = api.tus_create(size, kind, chat, name).await?;
    let sent: ClientResult<()> = async {
        let mut offset = 0u64;
        let mut piece = Vec::with_capacity(PIECE_BYTES);
        while offset < size {
            let len = usize::try_from((size - offset).min(PIECE_BYTES as u64)).unwrap_or(PIECE_BYTES);
            read_chunk(&mut reader, &mut piece, len).await?;
            offset = send_piece(api, id, offset, &piece).await?;
            progress(offset, size);
        }
        let mut extra = [0u8; 1];
        if reader.read(&mut extra).await.map_err(read_error)? != 0 {
            return Err(ClientError::Protocol(format!(
                "the file is longer than the {size} bytes announced (did it change while it was sent?)"
            )));
        }
        Ok(())
    }
    .await;
    match sent {
        Ok(()) => Ok(id),
        Err(e) => {
            let _ = api.tus_delete(id).await;
            Err(e)
        }
    }
}

/// Downloads the plain upload `media` into `writer` in ranges of
/// [`PIECE_BYTES`] (plaintext chats); `progress` hears the bytes written
/// (the total is not known before the end: it is given as written so far,
/// plus one piece while more may come). Returns the size.
///
/// # Errors
/// Not visible to the caller, a writer failure, or a range that failed
/// [`ATTEMPTS`] times.
pub async fn download_plain(
    api: &Api,
    media: MediaId,
    mut writer: impl AsyncWrite + Unpin,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> ClientResult<u64> {
    let mut written = 0u64;
    loop {
        let end = written + PIECE_BYTES as u64;
        let piece = match fetch_range(api, media, written, end, false).await {
            Ok(piece) => piece,
            // The file ended exactly at a piece's end.
            Err(ClientError::Api(e)) if e.status == 416 && written > 0 => break,
            Err(e) => return Err(e),
        };
        writer.write_all(&piece).await.map_err(write_error)?;
        written += piece.len() as u64;
        if (piece.len() as u64) < PIECE_BYTES as u64 {
            break;
        }
        progress(written, written + PIECE_BYTES as u64);
    }
    progress(written, written);
    writer.flush().await.map_err(write_error)?;
    Ok(written)
}

fn read_error(e: std::io::Error) -> ClientError {
    ClientError::Protocol(format!("reading the file: {e}"))
}

/// Reads exactly `len` bytes into `chunk`.
async fn read_chunk(
    reader: &mut (impl AsyncRead + Unpin),
    chunk: &mut Vec<u8>,
    len: usize,
) -> ClientResult<()> {
    chunk.clear();
    chunk.resize(len, 0);
    reader.read_exact(chunk).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ClientError::Protocol(
                "the file is shorter than announced (did it change while it was sent?)".into(),
            )
        } else {
            read_error(e)
        }
    })
}

/// Sends `piece` at `offset`, resuming from the server's offset after a
/// failure that may pass; the new offset.
async fn send_piece(api: &Api, id: MediaId, offset: u64, piece: &[u8]) -> ClientResult<u64> {
    let end = offset + piece.len() as u64;
    let mut at = offset;
    let mut failures = 0;
    loop {
        let from = usize::try_from(at - offset).unwrap_or(piece.len());
        match api.tus_patch(id, at, piece[from..].to_vec()).await {
            Ok(o) if o == end => return Ok(end),
            Ok(o) if o > at && o < end => at = o,
            Ok(o) => {
                return Err(ClientError::Protocol(format!(
                    "the server moved the upload to {o}, not within {at}..{end}"
                )));
            }
            Err(e) if may_pass(&e) && failures + 1 < ATTEMPTS => {
                failures += 1;
                api.transport()
                    .sleep(RETRY_WAIT * 2u32.pow(failures - 1))
                    .await;
                // Where did it stop? A dropped PATCH keeps what arrived.
                if let Ok(o) = api.tus_offset(id).await {
                    if !(offset..=end).contains(&o) {
                        return Err(ClientError::Protocol(format!(
                            "the server holds {o} bytes of an upload at {offset}..{end}"
                        )));
                    }
                    if o == end {
                        return Ok(end);
                    }
                    at = o;
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Downloads the encrypted blob `media`, checks it against `key` and writes
/// the plaintext to `writer` as each chunk authenticates, telling
/// `progress` the plaintext bytes written and their total. On an error,
/// what was written must be discarded.
///
/// # Errors
/// Not visible, altered or truncated ([`media::MediaError`] as a protocol
/// error), a writer failure, or a range that failed [`ATTEMPTS`] times.
pub async fn download_decrypted(
    api: &Api,
    media: MediaId,
    key: &MediaKey,
    mut writer: impl AsyncWrite + Unpin,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> ClientResult<u64> {
    let total = MediaKey::ciphertext_size(key.size);
    let (chunks, _) = Opener::layout(key);
    let mut opener = Some(Opener::new(key));
    let sealed = CHUNK_BYTES + TAG_BYTES;
    let mut index = 0u64;
    let mut start = 0u64;
    let mut written = 0u64;
    let mut chunk = Vec::with_capacity(sealed);
    while start < total {
        let end = (start + PIECE_BYTES as u64).min(total);
        let piece = fetch_range(api, media, start, end, true).await?;
        for part in piece.chunks(sealed) {
            chunk.clear();
            chunk.extend_from_slice(part);
            let too_long = || ClientError::Protocol("the file is longer than its key says".into());
            if index + 1 < chunks {
                opener.as_mut().ok_or_else(too_long)?.open(&mut chunk)
            } else {
                opener
                    .take()
                    .ok_or_else(too_long)?
                    .finish(&mut chunk)
                    .map(|_| ())
            }
            .map_err(media_error("the file does not decrypt"))?;
            writer.write_all(&chunk).await.map_err(write_error)?;
            written += chunk.len() as u64;
            index += 1;
        }
        progress(written, key.size);
        start = end;
    }
    writer.flush().await.map_err(write_error)?;
    Ok(written)
}

fn write_error(e: std::io::Error) -> ClientError {
    ClientError::Protocol(format!("writing the file: {e}"))
}

/// Bytes `start..end` of `media` (`exact`: all of them; otherwise fewer at
/// the file's end, or the whole of a small file from 0), retried while the
/// failure may pass.
async fn fetch_range(
    api: &Api,
    media: MediaId,
    start: u64,
    end: u64,
    exact: bool,
) -> ClientResult<Vec<u8>> {
    let mut failures = 0;
    loop {
        match api.download_range(media, start, end - 1).await {
            Ok(d) if d.bytes.len() as u64 == end - start && d.status == 206 => return Ok(d.bytes),
            Ok(d) if !exact && d.status == 206 && d.bytes.len() as u64 <= end - start => {
                return Ok(d.bytes);
            }
            Ok(d) if !exact && d.status == 200 && start == 0 && d.bytes.len() as u64 <= end => {
                return Ok(d.bytes);
            }
            Ok(d) => {
                return Err(ClientError::Protocol(format!(
                    "the server sent {} bytes (status {}) for bytes {start}..{end}",
                    d.bytes.len(),
                    d.status
                )));
            }
            Err(e) if may_pass(&e) && failures + 1 < ATTEMPTS => {
                failures += 1;
                api.transport()
                    .sleep(RETRY_WAIT * 2u32.pow(failures - 1))
                    .await;
            }
            Err(e) => return Err(e),
        }
    }
}
