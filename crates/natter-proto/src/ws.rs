//! WebSocket frames (`/api/v1/ws`): JSON text frames tagged by `type`.
//!
//! Every frame that carries a persisted update has the receiving user's
//! `pts`; a device that reconnects sends `sync {"since": pts}` and gets every
//! later update in order, then `sync_done`, then the live stream, with no
//! gap and no duplicate.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::chats::{Message, MessageType};
use crate::error::ErrorCode;
use crate::ids::{ChatId, DeviceId, MessageId, UserId};
use crate::users::PresenceStatus;

/// What a client may send.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// First frame, unless the upgrade carried `Authorization: Bearer`.
    Auth {
        /// The access token.
        token: String,
    },
    /// Sends a message (the seed's shape, plus optional fields).
    SendMessage {
        /// The chat.
        chat_id: ChatId,
        /// Text (plaintext chats).
        #[serde(default)]
        content: Option<String>,
        /// Base64 ciphertext (encrypted chats).
        #[serde(default)]
        ciphertext: Option<String>,
        /// `text` (default).
        #[serde(default = "text")]
        message_type: MessageType,
        /// Idempotency key, echoed in `message_sent`.
        #[serde(default)]
        client_message_id: Option<String>,
        /// The message this one answers.
        #[serde(default)]
        reply_to: Option<MessageId>,
        /// The client's clock.
        #[serde(default, with = "crate::timefmt::option")]
        timestamp: Option<OffsetDateTime>,
    },
    /// Answered by `pong`.
    Ping,
    /// Every update after `since`, then `sync_done`.
    Sync {
        /// The last pts this device processed (0 for all).
        since: i64,
    },
    /// This device processed every update up to `pts` (drives delivered receipts).
    Ack {
        /// The last pts processed.
        pts: i64,
    },
    /// Everything up to `seq` in the chat is read.
    Read {
        /// The chat.
        chat_id: ChatId,
        /// Read up to here.
        seq: i64,
    },
    /// The user is typing in the chat (ephemeral).
    Typing {
        /// The chat.
        chat_id: ChatId,
    },
    /// The user is online or away (ephemeral).
    Presence {
        /// `online` or `away`.
        status: PresenceStatus,
    },
    /// The seed's frame: checks membership; a device receives all its chats anyway.
    JoinChat {
        /// The chat.
        chat_id: ChatId,
    },
}

const fn text() -> MessageType {
    MessageType::Text
}

/// What the server sends.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Authenticated.
    Connected {
        /// The user.
        user_id: UserId,
        /// This device.
        device_id: DeviceId,
        /// The user's current pts.
        pts: i64,
    },
    /// A new message in one of the user's chats.
    NewMessage {
        /// The receiving user's update number.
        pts: i64,
        /// The message.
        message: Message,
    },
    /// A message was edited (the message as it is now).
    MessageUpdated {
        /// Update number.
        pts: i64,
        /// The message.
        message: Message,
    },
    /// A message was deleted for everyone (the tombstone).
    MessageDeleted {
        /// Update number.
        pts: i64,
        /// The tombstone.
        message: Message,
    },
    /// Membership or name changed (the system entry of the chat log).
    ChatUpdated {
        /// Update number.
        pts: i64,
        /// The chat.
        chat_id: ChatId,
        /// The system entry.
        message: Message,
    },
    /// A participant's delivery or read position moved.
    Receipt {
        /// Update number.
        pts: i64,
        /// The chat.
        chat_id: ChatId,
        /// Whose position.
        user_id: UserId,
        /// Highest seq received by one of their devices.
        delivered_seq: i64,
        /// Highest seq read.
        read_seq: i64,
    },
    /// Confirms this connection's `send_message`, once it is durable.
    MessageSent {
        /// The sender's update number for it; `null` for a retry of a message
        /// already stored (its update went out the first time).
        pts: Option<i64>,
        /// The key the client sent, if any.
        client_message_id: Option<String>,
        /// The stored message (server id and seq).
        message: Message,
    },
    /// Someone is typing (never stored).
    Typing {
        /// The chat.
        chat_id: ChatId,
        /// Who.
        user_id: UserId,
    },
    /// Someone's presence changed.
    Presence {
        /// Who.
        user_id: UserId,
        /// Now.
        status: PresenceStatus,
        /// When last online, if they let you see it.
        #[serde(with = "crate::timefmt::option")]
        last_seen: Option<OffsetDateTime>,
    },
    /// Answer to `join_chat`.
    Joined {
        /// The chat.
        chat_id: ChatId,
    },
    /// Answer to `ping`.
    Pong,
    /// The end of a sync: live updates follow.
    SyncDone {
        /// The pts the device is now at.
        pts: i64,
    },
    /// Too far behind to sync: reload over REST, then sync from `pts`.
    TooLong {
        /// The current pts.
        pts: i64,
    },
    /// A frame could not be processed; the connection stays open.
    Error {
        /// Stable code.
        code: ErrorCode,
        /// A sentence.
        message: String,
    },
}

/// Close codes the server uses.
pub mod close {
    /// Authentication failed or did not arrive in time.
    pub const UNAUTHORIZED: u16 = 4001;
    /// The device was logged out or revoked.
    pub const REVOKED: u16 = 4003;
    /// The connection fell behind; reconnect and `sync`.
    pub const BEHIND: u16 = 4008;
    /// No frame (not even a pong) within the heartbeat timeout.
    pub const TIMEOUT: u16 = 4009;
    /// The server is shutting down; reconnect.
    pub const GOING_AWAY: u16 = 1001;
}
