//! Turns chat-log entries and updates into wire types (`natter-proto`), the
//! same way for REST answers, live frames and sync.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use natter_proto::chats::{Message, MessageStatus, MessageType};
use natter_proto::ws::ServerFrame;

use crate::store::{EntryKind, LogEntry, StoredUpdate, UpdateBody};

/// An entry as clients see it.
#[must_use]
pub fn message(e: &LogEntry, status: MessageStatus) -> Message {
    let (message_type, event) = match &e.kind {
        EntryKind::Message(t) => (*t, None),
        EntryKind::System(event) => (MessageType::System, Some(event.clone())),
        // Edits and deletions are rendered as the message they target.
        EntryKind::Edit(_) | EntryKind::Delete(_) => (MessageType::System, None),
    };
    Message {
        id: e.id,
        chat_id: e.chat_id,
        seq: e.seq,
        sender_id: e.sender_id,
        sender_device_id: e.sender_device_id,
        message_type,
        content: e.content.clone(),
        ciphertext: e.ciphertext.as_ref().map(|c| BASE64.encode(c)),
        media_id: e.media_id.clone(),
        reply_to: e.reply_to,
        client_message_id: e.client_message_id.clone(),
        timestamp: e.created_at.to_datetime(),
        client_timestamp: e.client_timestamp.map(|t| t.to_datetime()),
        edited_at: e.edited_at.map(|t| t.to_datetime()),
        deleted: e.deleted_at.is_some(),
        event,
        status,
    }
}

/// The frame that carries an update with its pts.
#[must_use]
pub fn update_frame(pts: i64, body: &UpdateBody) -> ServerFrame {
    match body {
        UpdateBody::Entry(e) => match e.kind {
            EntryKind::System(_) => ServerFrame::ChatUpdated {
                pts,
                chat_id: e.chat_id,
                message: message(e, MessageStatus::Sent),
            },
            _ => ServerFrame::NewMessage {
                pts,
                message: message(e, MessageStatus::Sent),
            },
        },
        UpdateBody::Edited(e) => ServerFrame::MessageUpdated {
            pts,
            message: message(e, MessageStatus::Sent),
        },
        UpdateBody::Deleted(e) => ServerFrame::MessageDeleted {
            pts,
            message: message(e, MessageStatus::Sent),
        },
        UpdateBody::Receipt {
            chat_id,
            user_id,
            delivered_seq,
            read_seq,
        } => ServerFrame::Receipt {
            pts,
            chat_id: *chat_id,
            user_id: *user_id,
            delivered_seq: *delivered_seq,
            read_seq: *read_seq,
        },
    }
}

/// A frame as JSON text.
#[must_use]
pub fn text(frame: &ServerFrame) -> Arc<str> {
    // Serialising these types cannot fail (string keys, no maps of non-strings).
    Arc::from(serde_json::to_string(frame).unwrap_or_default())
}

/// A stored update as JSON text.
#[must_use]
pub fn stored(update: &StoredUpdate) -> Arc<str> {
    text(&update_frame(update.pts, &update.body))
}
