//! Turns chat-log entries and updates into wire types (`natter-proto`), the
//! same way for REST answers, live frames and sync.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use natter_proto::chats::{Message, MessageStatus, MessageType};
use natter_proto::ws::ServerFrame;

use natter_proto::ChatId;

use crate::store::{EntryKind, EventBody, LogEntry, LogEvent, ReceiptState};

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
        media_id: e.media_id.map(|m| m.to_string()),
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

/// The frame that carries a chat-log event.
#[must_use]
pub fn event_frame(seq: i64, body: &EventBody) -> ServerFrame {
    match body {
        EventBody::Entry(e) => match e.kind {
            EntryKind::System(_) => ServerFrame::ChatUpdated {
                chat_id: e.chat_id,
                seq,
                message: message(e, MessageStatus::Sent),
            },
            _ => ServerFrame::NewMessage {
                chat_id: e.chat_id,
                seq,
                message: message(e, MessageStatus::Sent),
            },
        },
        EventBody::Edited(e) => ServerFrame::MessageUpdated {
            chat_id: e.chat_id,
            seq,
            message: message(e, MessageStatus::Sent),
        },
        EventBody::Deleted(e) => ServerFrame::MessageDeleted {
            chat_id: e.chat_id,
            seq,
            message: message(e, MessageStatus::Sent),
        },
    }
}

/// An invitation to a group, as its user sees it (REST and WebSocket).
#[must_use]
pub fn invitation(i: &crate::store::InvitationRecord) -> natter_proto::invitations::Invitation {
    natter_proto::invitations::Invitation {
        id: i.id,
        chat_id: i.chat_id,
        chat_name: i.chat_name.clone(),
        inviter_id: i.inviter_id,
        inviter_name: i.inviter_name.clone(),
        created_at: i.created_at.to_datetime(),
        expires_at: i.expires_at.to_datetime(),
    }
}

/// The frame that tells a user of a new invitation to a group.
#[must_use]
pub fn invitation_frame(i: &crate::store::InvitationRecord) -> ServerFrame {
    ServerFrame::Invitation {
        invitation: invitation(i),
    }
}

/// The frame that carries a chat's receipt positions.
#[must_use]
pub fn receipt_frame(chat: ChatId, receipts: ReceiptState) -> ServerFrame {
    ServerFrame::Receipt {
        chat_id: chat,
        delivered_seq: receipts.delivered_seq,
        read_seq: receipts.read_seq,
    }
}

/// A frame as JSON text.
#[must_use]
pub fn text(frame: &ServerFrame) -> Arc<str> {
    // Serialising these types cannot fail (string keys, no maps of non-strings).
    Arc::from(serde_json::to_string(frame).unwrap_or_default())
}

/// A stored event as JSON text.
#[must_use]
pub fn stored(event: &LogEvent) -> Arc<str> {
    text(&event_frame(event.seq, &event.body))
}
