//! Chats, their participants and the messages of their chat log.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::ids::{ChatId, DeviceId, MediaId, MessageId, UserId};

/// Whether a chat is between two users or a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChatKind {
    /// Exactly two users; one chat per pair.
    Direct,
    /// Up to `limits.max_group_members` users, with admins.
    Group,
}

/// A participant's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// May rename, add and remove members and change roles.
    Admin,
    /// May send and leave.
    Member,
}

/// `POST /api/v1/chats`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateChat {
    /// `direct` or `group`.
    #[serde(rename = "type")]
    pub kind: ChatKind,
    /// The other users (the caller may be listed or not).
    pub participants: Vec<UserId>,
    /// Group name (groups only).
    #[serde(default)]
    pub name: Option<String>,
    /// End-to-end encrypted: the chat accepts only opaque `ciphertext`.
    #[serde(default)]
    pub encrypted: bool,
}

/// `PATCH /api/v1/chats/{chat_id}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateChat {
    /// The new group name.
    pub name: String,
}

/// `POST /api/v1/chats/{chat_id}/participants`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddParticipants {
    /// Users to add.
    pub user_ids: Vec<UserId>,
}

/// `PATCH /api/v1/chats/{chat_id}/participants/{user_id}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeRole {
    /// The new role.
    pub role: Role,
}

/// A current participant of a chat.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Participant {
    /// The user.
    pub user_id: UserId,
    /// Their role.
    pub role: Role,
    /// When they joined (this time).
    #[serde(with = "crate::timefmt")]
    pub joined_at: OffsetDateTime,
}

/// A chat as its participants see it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Chat {
    /// Its id.
    pub id: ChatId,
    /// `direct` or `group`.
    #[serde(rename = "type")]
    pub kind: ChatKind,
    /// Group name; `null` for direct chats.
    pub name: Option<String>,
    /// Whether content is end-to-end encrypted.
    pub encrypted: bool,
    /// Encrypted chats: the MLS epoch the next commit must be for (0 until
    /// the group's first commit); 0 for plaintext chats.
    #[serde(default)]
    pub epoch: u64,
    /// Who created it.
    pub created_by: UserId,
    /// When.
    #[serde(with = "crate::timefmt")]
    pub created_at: OffsetDateTime,
    /// The chat log's last `seq`.
    pub last_seq: i64,
    /// The caller's role; `null` if they are no longer a participant.
    pub my_role: Option<Role>,
    /// Current participants.
    pub participants: Vec<Participant>,
    /// Answers that add people (creating a group, adding participants):
    /// the users who became members by this request. Absent elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added: Option<Vec<UserId>>,
    /// Answers that add people: the users whose privacy setting turned the
    /// add into an invitation (they are not members until they accept).
    /// Absent elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invited: Option<Vec<UserId>>,
}

/// One entry of `GET /api/v1/chats`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChatSummary {
    /// Its id.
    pub id: ChatId,
    /// `direct` or `group`.
    #[serde(rename = "type")]
    pub kind: ChatKind,
    /// Group name; for direct chats, `null`.
    pub name: Option<String>,
    /// Whether content is end-to-end encrypted.
    pub encrypted: bool,
    /// The caller's role.
    pub my_role: Role,
    /// Messages from others after the caller's read position.
    pub unread_count: i64,
    /// The last message (content only for plaintext chats; never for deleted ones).
    pub last_message: Option<Message>,
    /// Time of the last event in the chat.
    #[serde(with = "crate::timefmt")]
    pub last_activity_at: OffsetDateTime,
    /// Direct chats: the other person, also once they left or deleted
    /// their account (then named "Deleted account"); `null` for groups.
    #[serde(default)]
    pub other_user: Option<ChatPerson>,
    /// The participants now, by join order, at most 10 (see `participant_count`).
    #[serde(default)]
    pub participants: Vec<ChatPerson>,
    /// How many participants the chat has now.
    #[serde(default)]
    pub participant_count: i64,
}

/// Who someone in a chat is, for a row of the chat list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChatPerson {
    /// The user.
    pub user_id: UserId,
    /// Their display name.
    pub name: String,
    /// Their profile picture (download at `/api/v1/media/{id}`), if any.
    pub profile_pic_media_id: Option<MediaId>,
}

/// `GET /api/v1/chats`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChatList {
    /// Most recent activity first.
    pub chats: Vec<ChatSummary>,
}

/// What a message holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageType {
    /// Text.
    Text,
    /// An image (with `media_id`).
    Image,
    /// A video (with `media_id`).
    Video,
    /// Any other file (with `media_id`).
    File,
    /// An event of the chat itself (membership, rename), described in `event`.
    System,
    /// An MLS commit of an encrypted chat (in `ciphertext`): membership of
    /// the group's devices and key rotation. Never counted as unread, never pushed.
    Commit,
}

/// A message's delivery state as its sender sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    /// Stored by the server.
    Sent,
    /// Every other participant has a device that received it.
    Delivered,
    /// Every other participant has read it.
    Read,
}

/// What a system entry of the chat log records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChatEvent {
    /// The chat was created.
    Created,
    /// `user_id` joined (added by the message's sender).
    MemberAdded {
        /// Who joined.
        user_id: UserId,
    },
    /// `user_id` was removed by the sender.
    MemberRemoved {
        /// Who was removed.
        user_id: UserId,
    },
    /// `user_id` left.
    MemberLeft {
        /// Who left.
        user_id: UserId,
    },
    /// The group was renamed.
    Renamed {
        /// The new name.
        name: String,
    },
    /// `user_id`'s role changed.
    RoleChanged {
        /// Whose.
        user_id: UserId,
        /// To what.
        role: Role,
    },
    /// Encrypted chats: `user_id`'s identity key or set of certified devices
    /// changed (a device certified or revoked, a new identity key). Members'
    /// clients bring the MLS group in line with a commit.
    DevicesChanged {
        /// Whose.
        user_id: UserId,
    },
}

/// `POST /api/v1/messages`: the message body plus optional fields. Sender,
/// device, server time, id and `seq` come from the server; fields the server
/// sets are ignored if sent.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SendMessage {
    /// The chat.
    pub chat_id: ChatId,
    /// Text or caption (plaintext chats).
    #[serde(default)]
    pub content: Option<String>,
    /// Opaque base64 ciphertext (encrypted chats only).
    #[serde(default)]
    pub ciphertext: Option<String>,
    /// `text` (default), `image`, `video` or `file`.
    #[serde(rename = "type", default = "text_type")]
    pub message_type: MessageType,
    /// The client's clock when the user sent it (kept as `client_timestamp`).
    #[serde(default, with = "crate::timefmt::option")]
    pub timestamp: Option<OffsetDateTime>,
    /// Makes retries idempotent: a second send with the same id returns the first message.
    #[serde(default)]
    pub client_message_id: Option<String>,
    /// The message this one answers.
    #[serde(default)]
    pub reply_to: Option<MessageId>,
    /// An uploaded media object (image, video, file).
    #[serde(default)]
    pub media_id: Option<String>,
}

const fn text_type() -> MessageType {
    MessageType::Text
}

/// `PATCH /api/v1/messages/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditMessage {
    /// New text (plaintext chats).
    #[serde(default)]
    pub content: Option<String>,
    /// New ciphertext (encrypted chats).
    #[serde(default)]
    pub ciphertext: Option<String>,
}

/// An entry of a chat log as clients see it: a message, or a system event.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Message {
    /// Its id.
    pub id: MessageId,
    /// Its chat.
    pub chat_id: ChatId,
    /// Its position in the chat log (gapless, from 1).
    pub seq: i64,
    /// Who sent it (for system events: who acted).
    pub sender_id: UserId,
    /// From which device; `null` for system events made by the server.
    pub sender_device_id: Option<DeviceId>,
    /// What it holds.
    #[serde(rename = "type")]
    pub message_type: MessageType,
    /// Text (plaintext chats); `null` once deleted.
    pub content: Option<String>,
    /// Base64 ciphertext (encrypted chats); `null` once deleted.
    pub ciphertext: Option<String>,
    /// Attached media.
    pub media_id: Option<String>,
    /// The message this one answers.
    pub reply_to: Option<MessageId>,
    /// The sender's idempotency key.
    pub client_message_id: Option<String>,
    /// Server time of sending.
    #[serde(with = "crate::timefmt")]
    pub timestamp: OffsetDateTime,
    /// The sender's clock, as they sent it.
    #[serde(with = "crate::timefmt::option")]
    pub client_timestamp: Option<OffsetDateTime>,
    /// When last edited.
    #[serde(with = "crate::timefmt::option")]
    pub edited_at: Option<OffsetDateTime>,
    /// Deleted for everyone (content gone; the entry stays).
    pub deleted: bool,
    /// For system entries: what happened.
    pub event: Option<ChatEvent>,
    /// Delivery state as the sender sees it.
    pub status: MessageStatus,
}

/// `GET /api/v1/chats/{chat_id}/messages`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MessagePage {
    /// Newest first.
    pub messages: Vec<Message>,
    /// Whether older entries exist beyond this page.
    pub has_more: bool,
}

/// `POST /api/v1/chats/{chat_id}/read`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MarkRead {
    /// Everything up to this `seq` is read.
    pub seq: i64,
}

/// The caller's read position after `POST /api/v1/chats/{chat_id}/read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReadPosition {
    /// The chat.
    pub chat_id: ChatId,
    /// Read up to here (never moves back).
    pub read_seq: i64,
}
