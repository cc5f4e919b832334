//! WebSocket frames (`/api/v1/ws`): JSON text frames tagged by `type`.
//!
//! Every frame that carries a persisted event names its chat and its `seq`
//! in that chat's log (the one numbering every member shares). A device keeps
//! the last `seq` it processed per chat; when it reconnects it sends `sync`
//! with those positions and gets every later event of each chat in order,
//! then `sync_done`, then the live stream, with no gap and no duplicate.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::chats::{Message, MessageType};
use crate::e2ee::InboxItem;
use crate::error::ErrorCode;
use crate::ids::{ChatId, DeviceId, MessageId, UserId};
use crate::invitations::Invitation;
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
    /// Sends a message (the same fields as `POST /api/v1/messages`).
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
        /// An upload to attach (types `image`, `video`, `file`), as over REST.
        #[serde(default)]
        media_id: Option<String>,
    },
    /// Answered by `pong`.
    Ping,
    /// Every event after the given positions, chat by chat, then `sync_done`.
    /// A chat of the user's that is not listed is sent from the start of the
    /// user's current membership (a new device lists nothing).
    Sync {
        /// The last `seq` this device processed in each chat it knows.
        #[serde(default)]
        chats: Vec<ChatPosition>,
    },
    /// This device processed every event of a chat up to `seq` (drives
    /// delivered receipts).
    Ack {
        /// The chat.
        chat_id: ChatId,
        /// The last seq processed.
        seq: i64,
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
    /// Checks membership; a device receives all its chats anyway.
    JoinChat {
        /// The chat.
        chat_id: ChatId,
    },
}

const fn text() -> MessageType {
    MessageType::Text
}

/// Where a device is in one chat's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatPosition {
    /// The chat.
    pub chat_id: ChatId,
    /// The last seq processed (0: none).
    pub seq: i64,
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
    },
    /// A new message in one of the user's chats.
    NewMessage {
        /// The chat.
        chat_id: ChatId,
        /// Its position in the chat log.
        seq: i64,
        /// The message.
        message: Message,
    },
    /// A message was edited (the message as it is now).
    MessageUpdated {
        /// The chat.
        chat_id: ChatId,
        /// The position of the edit in the chat log (the message keeps its own).
        seq: i64,
        /// The message.
        message: Message,
    },
    /// A message was deleted for everyone (the tombstone).
    MessageDeleted {
        /// The chat.
        chat_id: ChatId,
        /// The position of the deletion in the chat log.
        seq: i64,
        /// The tombstone.
        message: Message,
    },
    /// Membership or name changed (the system entry of the chat log).
    ChatUpdated {
        /// The chat.
        chat_id: ChatId,
        /// The entry's position in the chat log.
        seq: i64,
        /// The system entry.
        message: Message,
    },
    /// The chat's receipt positions moved: every message up to
    /// `delivered_seq` has reached, and every one up to `read_seq` has been
    /// read by, all of the chat's other members. State, not an event: a
    /// later frame supersedes an earlier one, and positions only grow.
    Receipt {
        /// The chat.
        chat_id: ChatId,
        /// Delivered to everyone up to here.
        delivered_seq: i64,
        /// Read by everyone up to here.
        read_seq: i64,
    },
    /// Confirms this connection's `send_message`, once it is durable.
    MessageSent {
        /// True for a retry of a message already stored (its `new_message`
        /// went out the first time); the message is the original.
        duplicate: bool,
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
    /// The end of a sync: live events follow.
    SyncDone {
        /// Each of the user's chats and the seq the device is now at in it.
        chats: Vec<ChatPosition>,
    },
    /// Too far behind in one chat to sync it: reload its recent history over
    /// REST, then carry on from `seq`. The other chats sync as usual.
    TooLong {
        /// The chat.
        chat_id: ChatId,
        /// The chat's current seq.
        seq: i64,
    },
    /// A payload for this device arrived in its inbox (an MLS Welcome, a
    /// handover); it stays there until acknowledged over REST.
    Inbox {
        /// The item.
        item: InboxItem,
    },
    /// Someone tried to add the user to a group and their privacy setting
    /// made it an invitation: accept it (`POST
    /// /api/v1/invitations/{id}/accept`) or ignore it.
    Invitation {
        /// The invitation.
        invitation: Invitation,
    },
    /// This device's one-time KeyPackages ran low: publish more.
    KeyPackagesLow {
        /// How many are left.
        available: u32,
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
    /// The store could not be reached to check the token (a PostgreSQL
    /// restart): the token may be fine, reconnect after a backoff.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The connection kept sending over its frame budgets after being
    /// answered `rate_limited` (see docs/websocket.md).
    pub const POLICY_VIOLATION: u16 = 1008;
}
