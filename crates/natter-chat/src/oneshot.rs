//! `natter chat send` and `natter chat tail`: one message out, or incoming
//! messages as JSON lines, for scripts and tests.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use natter_client::e2ee::payload::Body;
use natter_client::{ClientError, Messenger, MessengerEvent};
use natter_proto::ChatId;
use natter_proto::chats::{ChatKind, CreateChat};
use natter_proto::users::DiscoverContacts;
use serde_json::json;

use crate::error::ChatError;

/// How long `send` waits for the server to store the message.
pub const SEND_WAIT: Duration = Duration::from_secs(30);
/// The largest file `send --file` reads (the server has its own limit).
pub const MAX_FILE_BYTES: u64 = 2 << 30;

/// Finds the chat `to` names: a chat id, or a phone number (the direct
/// chat with its user, made if needed; encrypted unless `plain`).
///
/// # Errors
/// No account has the number; the server refused or was unreachable.
pub async fn resolve_chat(
    m: &mut Messenger,
    to: &str,
    plain: bool,
    server: &str,
) -> Result<ChatId, ChatError> {
    let explain = |e: &ClientError| ChatError::client(e, server);
    if let Ok(chat) = to.parse::<ChatId>() {
        return Ok(chat);
    }
    let user = find_user(m, to, server).await?;
    if plain {
        let chat = m
            .session()
            .api()
            .create_chat(&CreateChat {
                kind: ChatKind::Direct,
                participants: vec![user],
                name: None,
                encrypted: false,
            })
            .await
            .map_err(|e| explain(&e))?;
        return Ok(chat.id);
    }
    m.create_chat(ChatKind::Direct, &[user], None)
        .await
        .map_err(|e| explain(&e))
}

/// The user with the phone number `phone`.
///
/// # Errors
/// No account has it; it is not a number; the server failed.
pub async fn find_user(
    m: &Messenger,
    phone: &str,
    server: &str,
) -> Result<natter_proto::UserId, ChatError> {
    let found = m
        .session()
        .api()
        .discover(&DiscoverContacts {
            phones: vec![phone.to_owned()],
        })
        .await
        .map_err(|e| ChatError::client(&e, server))?;
    if !found.invalid.is_empty() {
        return Err(ChatError::new(format!(
            "{phone:?} is not a phone number: write it in international format, e.g. +14155550123"
        )));
    }
    found
        .registered
        .first()
        .map(|u| u.user_id)
        .ok_or_else(|| ChatError::new(format!("no Natter account has the number {phone}")))
}

/// A file to send, opened: its name, type, size and the file, read as it
/// is encrypted and uploaded (never whole into memory).
#[derive(Debug)]
pub struct Outgoing {
    /// Its name (the last path component).
    pub name: String,
    /// Its type, from the extension.
    pub mime: String,
    /// Its size in bytes.
    pub size: u64,
    /// The open file.
    pub file: futures_util::io::AllowStdIo<std::fs::File>,
}

/// Opens a file to send, within [`MAX_FILE_BYTES`].
///
/// # Errors
/// Not a readable file, or too large.
pub fn open_file(path: &Path) -> Result<Outgoing, ChatError> {
    let cannot = |e: std::io::Error| ChatError::new(format!("cannot read {}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(cannot)?;
    let meta = file.metadata().map_err(cannot)?;
    if !meta.is_file() {
        return Err(ChatError::new(format!("{} is not a file", path.display())));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(ChatError::new(format!(
            "{} is larger than {} MiB",
            path.display(),
            MAX_FILE_BYTES >> 20
        )));
    }
    let name = path
        .file_name()
        .map_or_else(|| "file".to_owned(), |n| n.to_string_lossy().into_owned());
    Ok(Outgoing {
        name,
        mime: mime_of(path).to_owned(),
        size: meta.len(),
        file: futures_util::io::AllowStdIo::new(file),
    })
}

/// A file's type from its extension (the receiver only shows it).
#[must_use]
pub fn mime_of(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "txt" | "md" => "text/plain",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        _ => "application/octet-stream",
    }
}

/// `natter chat send`: sends one message and waits until the server has it.
///
/// # Errors
/// Anything on the way, explained.
pub async fn send(
    m: &mut Messenger,
    server: &str,
    to: &str,
    text: Option<&str>,
    file: Option<&Path>,
    plain: bool,
) -> Result<(), ChatError> {
    let explain = |e: &ClientError| ChatError::client(e, server);
    match (text, file) {
        (Some(text), None) if text.trim().is_empty() => {
            return Err(ChatError::new("the message is empty"));
        }
        (Some(_), None) | (None, Some(_)) => {}
        _ => return Err(ChatError::new("give either a text or --file PATH")),
    }
    let chat = resolve_chat(m, to, plain, server).await?;
    let encrypted = m.chat_is_encrypted(chat).await.map_err(|e| explain(&e))?;
    let id = match (text, file) {
        (Some(text), None) if encrypted => m.send_text(chat, text).await,
        (Some(text), None) => m.send_plain_text(chat, text).await,
        (None, Some(path)) if encrypted => {
            let f = open_file(path)?;
            m.send_file_from(chat, &f.name, &f.mime, f.size, f.file, &mut |_, _| {})
                .await
        }
        (None, Some(path)) => {
            let f = open_file(path)?;
            m.send_plain_file_from(chat, &f.name, &f.mime, f.size, f.file, &mut |_, _| {})
                .await
                .map(|(cmid, _media)| cmid)
        }
        _ => return Err(ChatError::new("give either a text or --file PATH")),
    }
    .map_err(|e| explain(&e))?;
    let seq = tokio::time::timeout(SEND_WAIT, async {
        loop {
            match m.next_event().await {
                Ok(MessengerEvent::Sent {
                    client_message_id,
                    seq,
                    ..
                }) if client_message_id == id => return Ok(seq),
                Ok(MessengerEvent::SendFailed {
                    client_message_id,
                    code,
                }) if client_message_id == id => {
                    return Err(ChatError::new(format!(
                        "the server refused the message ({})",
                        code.as_str()
                    )));
                }
                Ok(_) => {}
                Err(e) => return Err(explain(&e)),
            }
        }
    })
    .await
    .map_err(|_| {
        ChatError::new(format!(
            "the server did not take the message within {}s; it stays in this device's \
             outbox and is sent the next time `natter chat` runs",
            SEND_WAIT.as_secs()
        ))
    })??;
    let line = json!({"chat_id": chat, "seq": seq, "client_message_id": id});
    let _ = writeln!(std::io::stdout(), "{line}");
    Ok(())
}

/// One event as a JSON line, or `None` for events a script need not see.
#[must_use]
pub fn event_json(event: &MessengerEvent) -> Option<serde_json::Value> {
    Some(match event {
        MessengerEvent::Message(m) => {
            let mut line = json!({
                "type": "message",
                "chat_id": m.chat_id,
                "seq": m.seq,
                "message_id": m.message_id,
                "sender": m.sender,
                "reply_to": m.reply_to,
            });
            match &m.body {
                // A plaintext chat's file: its text is the name.
                Body::Text { text } if m.media_id.is_some() => {
                    line["kind"] = "file".into();
                    line["name"] = text.clone().into();
                    line["media_id"] = json!(m.media_id);
                }
                Body::Text { text } => {
                    line["kind"] = "text".into();
                    line["text"] = text.clone().into();
                }
                Body::File {
                    name, mime, key, ..
                } => {
                    line["kind"] = "file".into();
                    line["name"] = name.clone().into();
                    line["mime"] = mime.clone().into();
                    line["size"] = key.size.into();
                }
                Body::Edit { target, text } => {
                    line["kind"] = "edit".into();
                    line["target"] = json!(target);
                    line["text"] = text.clone().into();
                }
                Body::Delete { target } => {
                    line["kind"] = "delete".into();
                    line["target"] = json!(target);
                }
            }
            line
        }
        MessengerEvent::ChatChanged { chat_id, event } => {
            json!({"type": "chat_changed", "chat_id": chat_id, "event": event})
        }
        MessengerEvent::Joined { chat_id } => json!({"type": "joined", "chat_id": chat_id}),
        MessengerEvent::Removed { chat_id } => json!({"type": "removed", "chat_id": chat_id}),
        MessengerEvent::IdentityChanged { user_id } => {
            json!({"type": "identity_changed", "user_id": user_id})
        }
        MessengerEvent::Receipt {
            chat_id,
            delivered_seq,
            read_seq,
        } => json!({"type": "receipt", "chat_id": chat_id,
                    "delivered_seq": delivered_seq, "read_seq": read_seq}),
        MessengerEvent::Undecryptable {
            chat_id,
            seq,
            reason,
        } => json!({"type": "undecryptable", "chat_id": chat_id, "seq": seq, "reason": reason}),
        _ => return None,
    })
}

/// `natter chat tail`: prints incoming messages (and chat changes) as JSON
/// lines, until `count` messages were printed (or forever).
///
/// # Errors
/// The session ended; the store failed.
pub async fn tail(m: &mut Messenger, server: &str, count: Option<usize>) -> Result<(), ChatError> {
    let mut messages = 0;
    let mut said_offline = false;
    loop {
        if count.is_some_and(|c| messages >= c) {
            return Ok(());
        }
        let event = m
            .next_event()
            .await
            .map_err(|e| ChatError::client(&e, server))?;
        match &event {
            MessengerEvent::Disconnected { .. } if !said_offline => {
                said_offline = true;
                let _ = writeln!(
                    std::io::stderr(),
                    "natter chat: cannot reach the Natter server at {server}; retrying"
                );
            }
            MessengerEvent::Connected => said_offline = false,
            _ => {}
        }
        if let Some(line) = event_json(&event) {
            if matches!(event, MessengerEvent::Message(_)) {
                messages += 1;
            }
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }
}
