//! Storage: the [`Store`] trait every engine implements, and the records it
//! deals in. Everything above this module talks to `Arc<dyn Store>` and never
//! sees SQL; the embedded engine is [`sqlite::SqliteStore`], PostgreSQL comes
//! with the scale-out work.
//!
//! The trait speaks in domain operations, each one atomic ("consume this code
//! and create this user"), so an engine can run each in one transaction.

pub mod admin;
pub(crate) mod chat_state;
pub mod columns;
#[cfg(test)]
mod conformance;
pub mod e2ee;
pub mod postgres;
pub mod rules;
pub(crate) mod snippets;
pub mod sqlite;

use async_trait::async_trait;
use natter_proto::chats::{ChatEvent, ChatKind, MessageType, Role};
use natter_proto::media::MediaKind;
use natter_proto::users::{GroupAddPermission, LastSeenVisibility};
use natter_proto::{ChatId, DeviceId, InvitationId, MediaId, MessageId, UserId};

use crate::clock::Timestamp;
use crate::phone::Phone;
pub use crate::search_query::{Term, TextQuery};
use crate::secret::{CodeHash, TokenHash};

/// What kind of failure a [`StoreError`] is, so callers can decide whether
/// to retry, and engines can say so in their own terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// A write lost to a concurrent one (a serialization failure, a busy
    /// database): running the same operation again may succeed.
    Conflict,
    /// The engine cannot serve now (closed, disk full, unreachable).
    Unavailable,
    /// A record the operation relied on is gone (it was deleted meanwhile).
    NotFound,
    /// Anything else: a bug or corrupt data; retrying will not help.
    Internal,
}

/// A failure of the storage engine itself (not a domain outcome).
#[derive(Debug, Clone, thiserror::Error)]
#[error("storage failed: {message}")]
pub struct StoreError {
    /// What kind of failure.
    pub kind: StoreErrorKind,
    /// The engine's words, for the log (never sent to clients).
    pub message: String,
}

impl StoreError {
    /// A failure of `kind`.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// An internal failure (a bug or corrupt data).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Internal, message)
    }

    /// The engine cannot serve now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Unavailable, message)
    }

    /// Whether running the operation again may succeed.
    #[must_use]
    pub const fn is_retryable(&self) -> bool {
        matches!(self.kind, StoreErrorKind::Conflict)
    }
}

/// Shorthand for store results.
pub type StoreResult<T> = Result<T, StoreError>;

/// A user account.
#[derive(Debug, Clone)]
pub struct User {
    /// Its id.
    pub id: UserId,
    /// Its number, E.164.
    pub phone: Phone,
    /// Display name.
    pub name: String,
    /// Free text.
    pub about: String,
    /// Who may see `last_seen_at`.
    pub last_seen_visibility: LastSeenVisibility,
    /// Who may add them to groups (others invite).
    pub group_add_permission: GroupAddPermission,
    /// Last authenticated activity of any device.
    pub last_seen_at: Option<Timestamp>,
    /// Profile picture (an image the user uploaded).
    pub profile_pic: Option<MediaId>,
    /// Creation time.
    pub created_at: Timestamp,
}

/// A logged-in device.
#[derive(Debug, Clone)]
pub struct Device {
    /// Its id.
    pub id: DeviceId,
    /// Its owner.
    pub user_id: UserId,
    /// The name given at login.
    pub name: String,
    /// Login time.
    pub created_at: Timestamp,
    /// Last authenticated request, to the minute.
    pub last_active_at: Timestamp,
}

/// A device about to be created, with the hash of its new token.
#[derive(Debug, Clone)]
pub struct NewDevice {
    /// Its id.
    pub id: DeviceId,
    /// Its name.
    pub name: String,
    /// The hash of its access token.
    pub token_hash: TokenHash,
    /// Login time.
    pub created_at: Timestamp,
}

/// A verification code about to be stored (replacing any earlier one for the number).
#[derive(Debug, Clone)]
pub struct NewVerificationCode {
    /// The number it was sent to.
    pub phone: Phone,
    /// Its keyed hash.
    pub hash: CodeHash,
    /// When it was issued.
    pub created_at: Timestamp,
    /// When it stops working.
    pub expires_at: Timestamp,
    /// The code itself, kept only in sign-up mode `open` (development) so
    /// `natter admin codes` can show it; `None` otherwise.
    pub shown: Option<String>,
}

/// A new account: consume the code, create the user and its first device.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The verified code, consumed only if the account is created.
    pub code: CodeHash,
    /// The account.
    pub user: User,
    /// Its first device.
    pub device: NewDevice,
}

/// What became of a registration.
#[derive(Debug, Clone)]
pub enum Registered {
    /// The account exists now.
    Created(User),
    /// The number already has an account; nothing changed, the code still
    /// works and this try does not count against it.
    PhoneTaken,
    /// The code was consumed meanwhile (a concurrent attempt used it).
    CodeGone,
}

/// A login: consume the code and add a device to the number's account.
#[derive(Debug, Clone)]
pub struct Login {
    /// The number.
    pub phone: Phone,
    /// The verified code, consumed only if the device is created.
    pub code: CodeHash,
    /// The new device.
    pub device: NewDevice,
    /// Devices allowed per user.
    pub max_devices: usize,
}

/// What became of a login.
#[derive(Debug, Clone)]
pub enum LoggedIn {
    /// The device exists now.
    Created(User),
    /// No account has this number; nothing changed.
    UnknownPhone,
    /// The account has as many devices as allowed; nothing changed and this
    /// try does not count against the code.
    DeviceLimit,
    /// The code was consumed meanwhile.
    CodeGone,
}

/// What an account's deletion removed, for the services to finish the job
/// outside the store: tell the chats, close the devices' connections,
/// delete the media's bytes.
#[derive(Debug, Clone, Default)]
pub struct AccountDeleted {
    /// The `member_left` entries (and successors' `role_changed`) appended
    /// to the chats the user was in, to publish.
    pub left: Vec<Appended>,
    /// The devices logged out (their tokens are gone).
    pub devices: Vec<DeviceId>,
    /// Finished uploads whose blobs (and thumbnails) must go.
    pub media: Vec<MediaId>,
    /// Resumable uploads in progress whose staging files must go.
    pub uploads: Vec<MediaId>,
}

/// Profile fields to change; `None` keeps the current value.
#[derive(Debug, Clone, Default)]
pub struct ProfilePatch {
    /// New name.
    pub name: Option<String>,
    /// New about text.
    pub about: Option<String>,
    /// New last-seen visibility.
    pub last_seen_visibility: Option<LastSeenVisibility>,
    /// New setting of who may add them to groups.
    pub group_add_permission: Option<GroupAddPermission>,
    /// New profile picture (`Some(None)` removes it). The engine sets it only
    /// if the media is a finished image of the user's, atomically with that
    /// check, and clears it otherwise.
    pub profile_pic: Option<Option<MediaId>>,
}

/// What became of adding a contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContactAdded {
    /// A new entry.
    Added,
    /// It was already there (the entry is kept as it was, except that adding
    /// by number upgrades it to "knows the number").
    AlreadyThere,
    /// The list is full.
    LimitReached,
}

/// How two users relate, as far as privacy rules care.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Relation {
    /// The viewer has the target in their contacts.
    pub viewer_has_target: bool,
    /// The viewer added the target by phone number (so already knows it).
    pub viewer_knows_phone: bool,
    /// The target has the viewer in their contacts.
    pub target_has_viewer: bool,
}

/// One entry of a contact list, with the facts privacy rules need.
#[derive(Debug, Clone)]
pub struct ContactEntry {
    /// The contact.
    pub user: User,
    /// The relation from the owner's side.
    pub relation: Relation,
}

/// A chat.
#[derive(Debug, Clone)]
pub struct ChatRecord {
    /// Its id.
    pub id: ChatId,
    /// Direct or group.
    pub kind: ChatKind,
    /// Group name.
    pub name: Option<String>,
    /// End-to-end encrypted (ciphertext only).
    pub encrypted: bool,
    /// The MLS epoch the next commit must be for (0 for plaintext chats).
    pub epoch: u64,
    /// Creator.
    pub created_by: UserId,
    /// Creation time.
    pub created_at: Timestamp,
    /// The chat log's last seq.
    pub last_seq: i64,
    /// Time of the last event.
    pub last_activity_at: Timestamp,
}

/// A current participant.
#[derive(Debug, Clone)]
pub struct Member {
    /// The user.
    pub user_id: UserId,
    /// Their role.
    pub role: Role,
    /// When they joined.
    pub joined_at: Timestamp,
}

/// What a chat-log entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A message of a type.
    Message(MessageType),
    /// A membership change or rename.
    System(ChatEvent),
    /// An edit of the message with this id (the message itself is updated in place).
    Edit(MessageId),
    /// A deletion of the message with this id (its content is gone).
    Delete(MessageId),
}

/// One entry of a chat log.
#[derive(Debug, Clone)]
pub struct LogEntry {
    /// Its id.
    pub id: MessageId,
    /// Its chat.
    pub chat_id: ChatId,
    /// Its position.
    pub seq: i64,
    /// Who sent or acted.
    pub sender_id: UserId,
    /// From which device.
    pub sender_device_id: Option<DeviceId>,
    /// What it is.
    pub kind: EntryKind,
    /// Text (plaintext chats; for edits, the new text).
    pub content: Option<String>,
    /// Opaque ciphertext (encrypted chats; for edits, the new ciphertext).
    pub ciphertext: Option<Vec<u8>>,
    /// Attached media.
    pub media_id: Option<MediaId>,
    /// The message it answers.
    pub reply_to: Option<MessageId>,
    /// The sender's idempotency key.
    pub client_message_id: Option<String>,
    /// The sender's clock.
    pub client_timestamp: Option<Timestamp>,
    /// Server time.
    pub created_at: Timestamp,
    /// Last edit.
    pub edited_at: Option<Timestamp>,
    /// Deletion.
    pub deleted_at: Option<Timestamp>,
}

/// Who hears of an entry: the chat's members when it was appended (and a
/// member it removed). Shared by every entry until membership changes, so
/// appending costs no copy of the member list.
pub type Recipients = std::sync::Arc<[UserId]>;

/// An appended entry and who was told.
#[derive(Debug, Clone)]
pub struct Appended {
    /// The entry.
    pub entry: LogEntry,
    /// The users whose devices receive it.
    pub recipients: Recipients,
    /// The chat's receipt positions after the append.
    pub receipts: ReceiptState,
}

/// A user's relation to a chat: what they may see and do.
#[derive(Debug, Clone)]
pub struct ChatAccess {
    /// The chat.
    pub chat: ChatRecord,
    /// Their role if they are a participant now.
    pub role: Option<Role>,
}

/// A chat's receipt positions: every message up to `delivered_seq` reached
/// all of the chat's members, every one up to `read_seq` was read by all.
/// (Sending a message counts as reading the chat up to it, so a message's
/// status follows from comparing its seq with these.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiptState {
    /// Lowest delivered position of the current members.
    pub delivered_seq: i64,
    /// Lowest read position of the current members.
    pub read_seq: i64,
}

/// One chat in a user's chat list.
#[derive(Debug, Clone)]
pub struct ChatOverview {
    /// The chat.
    pub chat: ChatRecord,
    /// The user's role.
    pub role: Role,
    /// Messages from others after the user's read position.
    pub unread: i64,
    /// The last message the user may see.
    pub last_message: Option<LogEntry>,
    /// A direct chat's other person (also once they left or deleted
    /// their account); `None` for groups.
    pub other: Option<ChatPerson>,
    /// The current participants by join order, at most
    /// [`CHAT_LIST_PARTICIPANTS`].
    pub participants: Vec<ChatPerson>,
    /// How many participants the chat has now.
    pub participant_count: i64,
}

/// Participants listed per chat in a chat list: enough for a row's
/// avatars and "Ann, Bob and 8 others", bounded however big the group.
pub const CHAT_LIST_PARTICIPANTS: usize = 10;

/// Who someone in a chat is, for a chat list row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatPerson {
    /// The user.
    pub user_id: UserId,
    /// Their name ("Deleted account" for a deleted one).
    pub name: String,
    /// Their profile picture.
    pub profile_pic: Option<MediaId>,
}

/// A chat to create.
#[derive(Debug, Clone)]
pub struct NewChat {
    /// Its id (ignored when a direct chat for the pair exists).
    pub id: ChatId,
    /// Direct or group.
    pub kind: ChatKind,
    /// Group name.
    pub name: Option<String>,
    /// End-to-end encrypted.
    pub encrypted: bool,
    /// Creator (admin of a group).
    pub creator: UserId,
    /// The other participants (not the creator).
    pub others: Vec<UserId>,
    /// Time.
    pub now: Timestamp,
}

/// What became of a chat creation.
#[derive(Debug, Clone)]
pub enum ChatCreated {
    /// A new chat, with its `created` entry.
    Created(ChatRecord, Box<Appended>),
    /// The direct chat for this pair already existed.
    Existing(ChatRecord),
    /// A participant does not exist.
    UnknownUser(UserId),
}

/// A message to append.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Its id.
    pub id: MessageId,
    /// The chat.
    pub chat_id: ChatId,
    /// The sender (from the session).
    pub sender_id: UserId,
    /// The sending device (from the session).
    pub sender_device_id: DeviceId,
    /// Its type.
    pub message_type: MessageType,
    /// Text.
    pub content: Option<String>,
    /// Ciphertext.
    pub ciphertext: Option<Vec<u8>>,
    /// Media.
    pub media_id: Option<MediaId>,
    /// The message it answers.
    pub reply_to: Option<MessageId>,
    /// Idempotency key.
    pub client_message_id: Option<String>,
    /// Sender's clock.
    pub client_timestamp: Option<Timestamp>,
    /// Server time.
    pub now: Timestamp,
}

/// What became of a message.
#[derive(Debug, Clone)]
pub enum Posted {
    /// Appended.
    Created(Appended),
    /// A retry: the message first sent with this `client_message_id`.
    Duplicate(LogEntry),
    /// The sender is not a participant (now).
    NotMember,
    /// `reply_to` is not a message the sender may see in this chat.
    BadReply,
    /// `media_id` names no finished upload (it was collected meanwhile).
    MediaGone,
    /// The body does not suit the chat (plaintext or encrypted).
    WrongBody(rules::BodyRefusal),
}

/// An upload about to be recorded: a resumable one in progress (`finished`
/// is `None`) or a plain one whose bytes are already stored.
#[derive(Debug, Clone)]
pub struct NewMedia {
    /// Its id (also the blob key's).
    pub id: MediaId,
    /// The uploader.
    pub owner: UserId,
    /// The declared kind.
    pub kind: MediaKind,
    /// The chat named at upload.
    pub chat_id: Option<ChatId>,
    /// The client's file name (informational).
    pub filename: Option<String>,
    /// Declared length (in progress) or size (finished), in bytes.
    pub length: u64,
    /// Upload time.
    pub created_at: Timestamp,
    /// When an unfinished upload expires.
    pub expires_at: Option<Timestamp>,
    /// What the server found in the bytes, for a finished upload.
    pub finished: Option<FinishedMedia>,
}

impl NewMedia {
    /// The upload as it reads back once recorded.
    #[must_use]
    pub fn into_record(self) -> MediaRecord {
        MediaRecord {
            id: self.id,
            owner: self.owner,
            kind: self.kind,
            chat_id: self.chat_id,
            filename: self.filename,
            length: self.length,
            received: if self.finished.is_some() {
                self.length
            } else {
                0
            },
            created_at: self.created_at,
            expires_at: self.expires_at,
            finished: self.finished,
        }
    }
}

/// What the server found in a finished upload's bytes.
#[derive(Debug, Clone)]
pub struct FinishedMedia {
    /// The sniffed content type.
    pub content_type: String,
    /// SHA-256 of the bytes.
    pub sha256: [u8; 32],
    /// Pixel size, for decoded images.
    pub dimensions: Option<(u32, u32)>,
    /// Whether a thumbnail was stored.
    pub thumbnail: bool,
    /// Completion time.
    pub completed_at: Timestamp,
}

/// An upload as stored.
#[derive(Debug, Clone)]
pub struct MediaRecord {
    /// Its id.
    pub id: MediaId,
    /// The uploader.
    pub owner: UserId,
    /// The declared kind.
    pub kind: MediaKind,
    /// The chat named at upload.
    pub chat_id: Option<ChatId>,
    /// The client's file name.
    pub filename: Option<String>,
    /// Declared length (in progress) or size (finished).
    pub length: u64,
    /// Bytes durably received (in progress).
    pub received: u64,
    /// Upload start.
    pub created_at: Timestamp,
    /// When it expires, while in progress.
    pub expires_at: Option<Timestamp>,
    /// Set once finished.
    pub finished: Option<FinishedMedia>,
}

/// What became of recording an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaCreated {
    /// Recorded.
    Created,
    /// It would take the owner past their quota.
    QuotaExceeded,
    /// The owner has as many uploads in progress as allowed.
    TooManyPending,
}

/// The bytes `from..to` of a resumable upload, stored as one blob (`key`,
/// made by `blobs` from server ids only) by the request that received them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaSegment {
    /// The upload.
    pub media: MediaId,
    /// Offset of the segment's first byte.
    pub from: u64,
    /// Offset just past its last byte (`from < to`).
    pub to: u64,
    /// Its blob key.
    pub key: String,
}

/// Uploads removed by garbage collection, whose bytes must go too.
#[derive(Debug, Clone, Default)]
pub struct CollectedMedia {
    /// Unfinished uploads that expired (staging files to delete).
    pub expired: Vec<MediaId>,
    /// Finished uploads nothing referenced (blobs and thumbnails to delete).
    pub unreferenced: Vec<MediaId>,
}

/// A change to a chat's participants or name, by `actor`.
#[derive(Debug, Clone)]
pub enum ChatChange {
    /// Add users (admins).
    Add(Vec<UserId>),
    /// Remove a user (admins; anyone may remove themself).
    Remove(UserId),
    /// Rename (admins).
    Rename(String),
    /// Change a participant's role (admins).
    SetRole(UserId, Role),
}

/// What became of a chat change.
#[derive(Debug, Clone)]
pub enum ChatChanged {
    /// Done: the entries appended (none if nothing changed).
    Done(Vec<Appended>),
    /// The actor is not a participant.
    NotMember,
    /// The actor lacks the right.
    Forbidden,
    /// A user to add does not exist, or one to change is not a participant.
    UnknownUser(UserId),
    /// Adding would pass the group size limit.
    GroupFull,
    /// Demoting the group's only admin.
    LastAdmin,
    /// Direct chats have fixed participants and no name.
    NotAGroup,
}

/// What became of an edit or deletion.
#[derive(Debug, Clone)]
pub enum MessageChanged {
    /// Done: the edit/delete entry, and the message as it is now.
    Done(Box<Appended>, Box<LogEntry>),
    /// No such message visible to the actor (or not a message).
    NotFound,
    /// Only the sender may do this.
    NotSender,
    /// Outside the edit window, or already deleted.
    TooLate,
    /// The new body does not suit the chat (plaintext or encrypted, and for
    /// encrypted chats an MLS application message of its current epochs).
    WrongBody(rules::BodyRefusal),
}

/// An edit or deletion of a message.
#[derive(Debug, Clone)]
pub struct MessageChange {
    /// The message.
    pub message: MessageId,
    /// Who asks (must be the sender).
    pub actor: UserId,
    /// From which device.
    pub device: DeviceId,
    /// `Some` for an edit, `None` for a deletion.
    pub edit: Option<NewContent>,
    /// Time.
    pub now: Timestamp,
}

/// The new content of an edited message.
#[derive(Debug, Clone)]
pub struct NewContent {
    /// Text (plaintext chats).
    pub content: Option<String>,
    /// Ciphertext (encrypted chats).
    pub ciphertext: Option<Vec<u8>>,
    /// Edits are allowed this long after sending.
    pub window_ms: i64,
}

/// A chat whose receipt positions moved, and who must hear of it.
#[derive(Debug, Clone)]
pub struct ReceiptChange {
    /// The chat.
    pub chat_id: ChatId,
    /// Its positions now.
    pub receipts: ReceiptState,
    /// Its current members.
    pub recipients: Recipients,
}

/// A persisted event of a chat log as a device receives it: the entry at a
/// position, with edits and deletions carrying the message as it is now.
#[derive(Debug, Clone)]
pub struct LogEvent {
    /// Its position in the chat log.
    pub seq: i64,
    /// What it is.
    pub body: EventBody,
}

/// What a chat-log event carries.
#[derive(Debug, Clone)]
pub enum EventBody {
    /// A new message or system entry.
    Entry(LogEntry),
    /// A message was edited: the message as it is now.
    Edited(LogEntry),
    /// A message was deleted: its tombstone.
    Deleted(LogEntry),
}

/// A user's place in one of their chats, for sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatHead {
    /// The chat.
    pub chat_id: ChatId,
    /// The chat log's last seq.
    pub last_seq: i64,
    /// Where the user's current membership began (its join entry).
    pub from_seq: i64,
}

/// A message search, already checked by the service.
#[derive(Debug, Clone)]
pub struct SearchQuery {
    /// Whose view: only messages inside their membership periods.
    pub user: UserId,
    /// What to match, parsed; each engine compiles it into its own syntax.
    pub text: TextQuery,
    /// Only these chats (empty: all of the user's).
    pub chats: Vec<ChatId>,
    /// Only from this sender.
    pub sender: Option<UserId>,
    /// Only of this type.
    pub message_type: Option<MessageType>,
    /// Only sent before this time.
    pub before: Option<Timestamp>,
    /// Only sent after this time.
    pub after: Option<Timestamp>,
    /// Best matches first (BM25) instead of newest first, where the engine
    /// can rank the query.
    pub by_relevance: bool,
    /// Hits to skip.
    pub offset: i64,
    /// Hits to return.
    pub limit: i64,
}

/// One search hit.
#[derive(Debug, Clone)]
pub struct SearchHit {
    /// The message.
    pub entry: LogEntry,
    /// Where it matched.
    pub snippet: Snippet,
}

/// An excerpt of a message with its matches located by offsets, never by
/// markers inside the text (a message could contain any marker).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snippet {
    /// The excerpt, as plain text.
    pub text: String,
    /// Byte ranges of `text` that matched, in order, not overlapping, each
    /// on character boundaries.
    pub marks: Vec<std::ops::Range<usize>>,
}

/// A page of search hits.
#[derive(Debug, Clone)]
pub struct SearchPage {
    /// The hits on this page.
    pub hits: Vec<SearchHit>,
    /// How many hits there are in all.
    pub total: i64,
}

/// What one pass of the search indexer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexProgress {
    /// Log entries followed in this pass.
    pub processed: u64,
    /// Log entries still waiting after it.
    pub remaining: u64,
}

/// A device's push channel, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushChannelRecord {
    /// The device.
    pub device_id: DeviceId,
    /// The protocol and where to send.
    pub target: crate::push::PushTarget,
    /// When it was registered.
    pub created_at: Timestamp,
}

/// A push to queue for one device, coalescing with one already waiting.
#[derive(Debug, Clone)]
pub struct NewPush {
    /// The device.
    pub device_id: DeviceId,
    /// Its user.
    pub user_id: UserId,
    /// The chat of the new message.
    pub chat_id: ChatId,
    /// The new message's seq in that chat.
    pub seq: i64,
    /// Sender name and excerpt, only when previews are allowed for it.
    pub preview: Option<(String, String)>,
    /// Time.
    pub now: Timestamp,
}

/// A push claimed for sending.
#[derive(Debug, Clone)]
pub struct PendingPush {
    /// The device.
    pub device_id: DeviceId,
    /// Its user.
    pub user_id: UserId,
    /// The chat, or `None` when the messages are in several chats.
    pub chat_id: Option<ChatId>,
    /// Messages it stands for.
    pub count: i64,
    /// The seq in `chat_id` just before the first message it covers (sync
    /// from here); meaningless when `chat_id` is `None`.
    pub since_seq: i64,
    /// The seq of the latest message it covers.
    pub last_seq: i64,
    /// The latest message's preview, if allowed.
    pub preview: Option<(String, String)>,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Changes with each coalesced message; tells whether more arrived
    /// while this one was being sent.
    pub version: i64,
    /// Where it goes.
    pub channel: PushChannelRecord,
}

/// What became of a claimed push.
#[derive(Debug, Clone)]
pub enum PushFinished {
    /// Sent, or given up on: remove it, unless more messages arrived
    /// meanwhile (then keep those as a new burst starting `now`).
    Settled {
        /// The version that was claimed.
        version: i64,
        /// The count that was claimed.
        count: i64,
        /// The last seq that was claimed.
        last_seq: i64,
        /// Time.
        now: Timestamp,
    },
    /// Try again at `at`.
    Retry {
        /// When.
        at: Timestamp,
    },
    /// Remove it and anything that joined it (the device came online).
    Drop,
    /// The channel is gone: remove it (if it still has this endpoint) and the push.
    Gone {
        /// The endpoint that answered 404/410.
        endpoint: String,
    },
}

/// Which part of a history to read.
#[derive(Debug, Clone, Copy)]
pub struct HistoryQuery {
    /// Only entries with a seq below this, newest first.
    pub before_seq: Option<i64>,
    /// Only entries with a seq above this, oldest first.
    pub after_seq: Option<i64>,
    /// Entries to skip (page-based paging).
    pub offset: i64,
    /// Entries to return.
    pub limit: i64,
}

/// The storage engine: one trait per aggregate, each a narrow seam an
/// engine implements; [`Store`] is all of them, for the services that hold
/// one engine.
#[async_trait]
pub trait Store:
    Accounts
    + ChatLog
    + SearchIndex
    + MediaStore
    + PushOutbox
    + AccountsAcrossChats
    + admin::Invites
    + admin::Administration
    + e2ee::KeyDirectory
    + e2ee::DeviceInbox
    + GroupInvitations
    + Send
    + Sync
    + std::fmt::Debug
    + 'static
{
    /// Succeeds when the store can serve reads and writes.
    async fn ping(&self) -> StoreResult<()>;

    /// Flushes and closes: the writer commits what it has, then stops.
    async fn close(&self);
}

/// The store's accounts and devices: verification codes, users, devices, profiles, contacts, presence privacy.
#[async_trait]
pub trait Accounts: Send + Sync {
    /// Reads a named server secret, creating it with `make` on first use.
    async fn server_secret(
        &self,
        name: &'static str,
        make: Box<dyn FnOnce() -> Vec<u8> + Send>,
    ) -> StoreResult<Vec<u8>>;

    /// Stores a code for a number, replacing any earlier one.
    async fn put_verification_code(&self, code: NewVerificationCode) -> StoreResult<()>;

    /// Counts one attempt against the number's code and returns its hash if
    /// the code is still alive (not expired, fewer than `max_attempts` tries
    /// before this one).
    async fn attempt_verification_code(
        &self,
        phone: &Phone,
        now: Timestamp,
        max_attempts: u32,
    ) -> StoreResult<Option<CodeHash>>;

    /// Deletes codes that expired before `now`; returns how many.
    async fn delete_expired_verification_codes(&self, now: Timestamp) -> StoreResult<u64>;

    /// Creates an account (see [`Registration`]).
    async fn register(&self, registration: Registration) -> StoreResult<Registered>;

    /// Adds a device to an account (see [`Login`]).
    async fn login(&self, login: Login) -> StoreResult<LoggedIn>;

    /// The device holding this token.
    async fn device_by_token(&self, token: &TokenHash) -> StoreResult<Option<Device>>;

    /// Records activity of a device and its user.
    async fn touch_device(&self, user: UserId, device: DeviceId, now: Timestamp)
    -> StoreResult<()>;

    /// A user's devices, oldest first.
    async fn devices(&self, user: UserId) -> StoreResult<Vec<Device>>;

    /// Deletes one of a user's devices (and so its token). False if it was not theirs.
    async fn delete_device(&self, user: UserId, device: DeviceId) -> StoreResult<bool>;

    /// A user by id.
    async fn user(&self, id: UserId) -> StoreResult<Option<User>>;

    /// A user by number.
    async fn user_by_phone(&self, phone: &Phone) -> StoreResult<Option<User>>;

    /// Changes profile fields; the updated user, or `None` if there is no such user.
    async fn update_profile(
        &self,
        id: UserId,
        patch: ProfilePatch,
        now: Timestamp,
    ) -> StoreResult<Option<User>>;

    /// Adds `contact` to `owner`'s list.
    async fn add_contact(
        &self,
        owner: UserId,
        contact: UserId,
        by_phone: bool,
        max_contacts: usize,
        now: Timestamp,
    ) -> StoreResult<ContactAdded>;

    /// Removes a contact; false if it was not in the list.
    async fn remove_contact(&self, owner: UserId, contact: UserId) -> StoreResult<bool>;

    /// `owner`'s contact list, ordered by name.
    async fn contacts(&self, owner: UserId) -> StoreResult<Vec<ContactEntry>>;

    /// How `viewer` and `target` relate.
    async fn relation(&self, viewer: UserId, target: UserId) -> StoreResult<Relation>;

    /// Which of these numbers have accounts. The numbers are not stored.
    async fn users_by_phones(&self, phones: &[Phone]) -> StoreResult<Vec<(Phone, UserId)>>;

    /// Records when the user was last online.
    async fn set_last_seen(&self, user: UserId, at: Timestamp) -> StoreResult<()>;
}

/// The account operations that read or change chat membership as well as
/// the account: an engine whose chat logs live in other databases than its
/// accounts (PostgreSQL, partitioned by chat) spans them for these, so they
/// are a trait of their own rather than part of [`Accounts`].
#[async_trait]
pub trait AccountsAcrossChats: Send + Sync {
    /// Users allowed to see `user`'s presence: those who share a chat with
    /// them or have them as a contact, narrowed by `user`'s privacy setting.
    /// (Co-members are counted only in direct chats and in groups of at most
    /// `max_group_members`: a presence change is not pushed to every member
    /// of a large group.)
    async fn presence_audience(
        &self,
        user: UserId,
        max_group_members: usize,
    ) -> StoreResult<Vec<UserId>>;

    /// Deletes an account (atomically where the engine has one database;
    /// on PostgreSQL with chat databases of their own, one transaction per
    /// database, chats first, so a failure part-way leaves an account that
    /// can be deleted again): the user leaves every chat through
    /// the chat log's removal path (direct chats too), and their devices
    /// (with push channels and waiting pushes), contacts in both
    /// directions, verification codes, receipts, membership periods and
    /// upload records go. The account row stays as a tombstone with only
    /// its id (the author of the chats it created and the messages it
    /// sent, which stay); its number and profile are overwritten. Then the
    /// engine makes sure the old bytes leave its files (for SQLite: a WAL
    /// checkpoint). `None` if there is no such (undeleted) account.
    async fn delete_account(
        &self,
        user: UserId,
        now: Timestamp,
    ) -> StoreResult<Option<AccountDeleted>>;
}

/// The store's chats, membership and their logs: appends, history, receipts and the positions devices sync from.
#[async_trait]
pub trait ChatLog: Send + Sync {
    /// Creates a chat (or finds the pair's direct chat).
    async fn create_chat(&self, chat: NewChat) -> StoreResult<ChatCreated>;

    /// The chat and the user's current role, if they are or were a participant.
    async fn chat_access(&self, chat: ChatId, user: UserId) -> StoreResult<Option<ChatAccess>>;

    /// Current participants, by join time.
    async fn members(&self, chat: ChatId) -> StoreResult<Vec<Member>>;

    /// The chat's receipt positions (over its current members).
    async fn receipt_state(&self, chat: ChatId) -> StoreResult<ReceiptState>;

    /// The user's chats, most recent activity first.
    async fn chats_of(&self, user: UserId) -> StoreResult<Vec<ChatOverview>>;

    /// Appends a message after checking, in the same transaction, that the
    /// sender is a participant.
    async fn post(&self, message: NewMessage) -> StoreResult<Posted>;

    /// Appends messages in the order given (a connection's pipelined
    /// sends): in each chat, each takes a `seq` after those before it. One
    /// answer per message, in order. By default one after another; an
    /// engine whose writes keep their order hands them over together so
    /// they share commits.
    async fn post_in_order(&self, messages: Vec<NewMessage>) -> Vec<StoreResult<Posted>> {
        let mut out = Vec::with_capacity(messages.len());
        for message in messages {
            out.push(self.post(message).await);
        }
        out
    }

    /// Changes participants or name; each change is an entry of the chat log.
    async fn change_chat(
        &self,
        chat: ChatId,
        actor: UserId,
        change: ChatChange,
        max_members: usize,
        now: Timestamp,
    ) -> StoreResult<ChatChanged>;

    /// The entries `user` may see, within `query`, and whether more exist.
    async fn history(
        &self,
        chat: ChatId,
        user: UserId,
        query: HistoryQuery,
    ) -> StoreResult<(Vec<LogEntry>, bool)>;

    /// Edits a message (sender only, within the window) or deletes it for
    /// everyone (sender only: content gone, a tombstone stays).
    async fn change_message(&self, change: MessageChange) -> StoreResult<MessageChanged>;

    /// The chat a message belongs to.
    async fn chat_of_message(&self, message: MessageId) -> StoreResult<Option<ChatId>>;

    /// Moves the user's read (and delivered) position forward, never back;
    /// gives the user's read position now, and the chat's new positions if
    /// they moved.
    async fn mark_read(
        &self,
        chat: ChatId,
        user: UserId,
        seq: i64,
        now: Timestamp,
    ) -> StoreResult<(i64, Option<ReceiptChange>)>;

    /// Records that a device of `user` received each chat up to its seq (a
    /// chat the user is not in is ignored); the chats whose positions moved.
    async fn ack(
        &self,
        user: UserId,
        positions: Vec<(ChatId, i64)>,
        now: Timestamp,
    ) -> StoreResult<Vec<ReceiptChange>>;

    /// The user's current chats, with each log's last seq.
    async fn chat_heads(&self, user: UserId) -> StoreResult<Vec<ChatHead>>;

    /// One chat's head, if the user is in it now.
    async fn chat_head(&self, chat: ChatId, user: UserId) -> StoreResult<Option<ChatHead>>;

    /// The messages `user` sent that they can still see (inside their
    /// membership periods, not deleted), by chat then seq, at most `limit`
    /// (for the export of their data).
    async fn messages_sent_by(&self, user: UserId, limit: i64) -> StoreResult<Vec<LogEntry>>;

    /// The events of a chat after `after` (at most `limit`, in order) that
    /// `user` may see: those inside their membership periods.
    async fn events_after(
        &self,
        chat: ChatId,
        user: UserId,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<LogEvent>>;
}

/// The store's full-text search over plaintext messages, and the indexer that follows the chat logs.
#[async_trait]
pub trait SearchIndex: Send + Sync {
    /// Searches the plaintext messages `query.user` may see, as far as the
    /// index has followed the chat logs.
    async fn search_messages(&self, query: SearchQuery) -> StoreResult<SearchPage>;

    /// Brings the search index one step closer to the chat logs: follows at
    /// most `max_entries` log entries after the index's durable cursor, in
    /// commit order, and moves the cursor in the same transaction, so each
    /// entry is applied exactly once even across crashes.
    async fn index_search(&self, max_entries: usize) -> StoreResult<IndexProgress>;

    /// Log entries committed but not yet followed by the search index.
    async fn search_index_lag(&self) -> StoreResult<u64>;

    /// Woken after a commit that appended to a chat log, so the search
    /// indexer need not poll often. A wake-up with no waiter is kept for
    /// the next wait.
    fn log_appended(&self) -> &tokio::sync::Notify;
}

/// The store's media uploads: records, progress, access and garbage collection (the bytes live in `blobs`).
#[async_trait]
pub trait MediaStore: Send + Sync {
    /// Records an upload if the owner's stored bytes plus `media.length` stay
    /// within `quota` and, for one in progress, fewer than `max_pending` are.
    async fn create_media(
        &self,
        media: NewMedia,
        quota: u64,
        max_pending: u64,
    ) -> StoreResult<MediaCreated>;

    /// An upload, finished or not.
    async fn media(&self, id: MediaId) -> StoreResult<Option<MediaRecord>>;

    /// A user's finished uploads, oldest first.
    async fn media_of(&self, owner: UserId) -> StoreResult<Vec<MediaRecord>>;

    /// Moves an upload in progress from `from` to `to` received bytes,
    /// recording `segment.key` as the blob holding the bytes in between,
    /// only if it is still in progress and still at `from` (a
    /// compare-and-set: of two requests appending at one offset, on one
    /// node or two, exactly one wins); false otherwise, and nothing changed.
    async fn advance_media_received(&self, segment: MediaSegment) -> StoreResult<bool>;

    /// The segments recorded for an upload in progress, in offset order.
    async fn media_segments(&self, id: MediaId) -> StoreResult<Vec<MediaSegment>>;

    /// Marks an upload in progress finished, forgetting its segments; false
    /// if it is no longer in progress (finished by another request, or gone).
    async fn finish_media(&self, id: MediaId, finished: FinishedMedia) -> StoreResult<bool>;

    /// Deletes the record of an upload in progress (and its segments); false
    /// if there was none. A finished upload is never deleted here, so a
    /// request that lost the race to finish cannot remove the winner's.
    async fn delete_media(&self, id: MediaId) -> StoreResult<bool>;

    /// Whether `user` may fetch a finished upload: theirs, someone's profile
    /// picture, or attached to a message `user` can see.
    async fn media_visible(&self, id: MediaId, user: UserId) -> StoreResult<bool>;

    /// Deletes, up to `limit` of each, unfinished uploads expired by `now`
    /// and finished ones completed before `unreferenced_before` that no
    /// message or profile references; returns them so their bytes can go.
    async fn collect_media(
        &self,
        now: Timestamp,
        unreferenced_before: Timestamp,
        limit: usize,
    ) -> StoreResult<CollectedMedia>;
}

/// The store's push channels and the outbox of pushes waiting to be sent.
#[async_trait]
pub trait PushOutbox: Send + Sync {
    /// Sets a device's push channel, replacing any earlier one (pending
    /// pushes stay). `None` if the device is not `user`'s; otherwise whether
    /// the channel is new.
    async fn put_push_channel(
        &self,
        user: UserId,
        channel: PushChannelRecord,
    ) -> StoreResult<Option<bool>>;

    /// Removes a device's push channel and its pending push. False if it had none
    /// (or is not `user`'s).
    async fn delete_push_channel(&self, user: UserId, device: DeviceId) -> StoreResult<bool>;

    /// The devices of these users that have a push channel.
    async fn push_devices(&self, users: Vec<UserId>) -> StoreResult<Vec<(UserId, DeviceId)>>;

    /// Queues pushes, each coalescing into its device's waiting push (count
    /// plus one, chat kept only if the same, latest preview).
    async fn queue_pushes(&self, pushes: Vec<NewPush>) -> StoreResult<()>;

    /// When the earliest waiting push is due: `window_ms` after its burst
    /// began, or at its retry time.
    async fn next_push_due(&self, window_ms: i64) -> StoreResult<Option<Timestamp>>;

    /// Claims up to `limit` pushes due at `now`: each is leased until
    /// `lease_until` (after a crash it is retried then).
    async fn claim_pushes(
        &self,
        now: Timestamp,
        window_ms: i64,
        lease_until: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<PendingPush>>;

    /// Records what became of a claimed push.
    async fn finish_push(&self, device: DeviceId, outcome: PushFinished) -> StoreResult<()>;

    /// Removes a device's waiting push (it came online); true if there was one.
    async fn cancel_push(&self, device: DeviceId) -> StoreResult<bool>;
}

/// The bounds of invitations to groups (from `Limits`).
#[derive(Debug, Clone, Copy)]
pub struct InvitationRules {
    /// How long an invitation waits, in milliseconds.
    pub ttl_ms: i64,
    /// Pending invitations one user may hold.
    pub max_per_user: usize,
    /// Pending invitations to one group.
    pub max_per_chat: usize,
}

/// A pending invitation to a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvitationRecord {
    /// Its id.
    pub id: InvitationId,
    /// The group.
    pub chat_id: ChatId,
    /// The group's name.
    pub chat_name: Option<String>,
    /// The invited user.
    pub user_id: UserId,
    /// Who tried to add them.
    pub inviter_id: UserId,
    /// The inviter's display name.
    pub inviter_name: String,
    /// When it was made.
    pub created_at: Timestamp,
    /// When it goes away unless accepted.
    pub expires_at: Timestamp,
}

/// Who of the people of an add became members and who was invited.
#[derive(Debug, Clone, Default)]
pub struct AddOutcome {
    /// New members.
    pub added: Vec<UserId>,
    /// The invited users: invitations this add made (`fresh`), or ones
    /// pending from an earlier add.
    pub invited: Vec<UserId>,
    /// The invitations this add made (their users are told).
    pub fresh: Vec<InvitationRecord>,
}

/// What became of a group creation that respects privacy settings.
#[derive(Debug, Clone)]
pub enum GroupCreated {
    /// Created, with its entry, and who was added or invited.
    Created(ChatRecord, Box<Appended>, AddOutcome),
    /// A participant does not exist.
    UnknownUser(UserId),
    /// An invited user, or the group, has as many pending invitations as allowed.
    InvitationLimit,
}

/// What became of an add to a group that respects privacy settings.
#[derive(Debug, Clone)]
pub enum GroupAdded {
    /// Done: the entries appended, and who was added or invited.
    Done(Vec<Appended>, AddOutcome),
    /// Refused, as a chat change would be.
    Refused(ChatChanged),
    /// An invited user, or the group, has as many pending invitations as allowed.
    InvitationLimit,
}

/// What became of accepting an invitation.
#[derive(Debug, Clone)]
pub enum InvitationAccepted {
    /// The user is a member now: the entries appended (none if they already were).
    Joined(ChatId, Vec<Appended>),
    /// No such pending invitation of the user's (or it expired).
    NotFound,
    /// The group no longer exists (the invitation is removed).
    ChatGone,
    /// The inviter may no longer add people (the invitation is removed).
    NoLongerValid,
    /// The group is full (the invitation stays).
    GroupFull,
}

/// The store's invitations to groups: adds that respect the added users'
/// privacy settings (`group_add_permission`), and the invitations such adds
/// become. Each operation decides who is added and who is invited in the
/// same transaction as the add.
#[async_trait]
pub trait GroupInvitations: Send + Sync {
    /// Creates a group whose initial participants are added where their
    /// setting allows the creator to, and invited otherwise.
    async fn create_group(
        &self,
        chat: NewChat,
        rules: InvitationRules,
    ) -> StoreResult<GroupCreated>;

    /// Adds users to a group (as [`ChatLog::change_chat`] with
    /// [`ChatChange::Add`]) where their setting allows `actor` to, and
    /// invites the others.
    async fn add_to_group(
        &self,
        chat: ChatId,
        actor: UserId,
        users: Vec<UserId>,
        max_members: usize,
        rules: InvitationRules,
        now: Timestamp,
    ) -> StoreResult<GroupAdded>;

    /// A user's pending invitations, newest first.
    async fn invitations(&self, user: UserId, now: Timestamp)
    -> StoreResult<Vec<InvitationRecord>>;

    /// Accepts one of `user`'s pending invitations: re-checks the rules
    /// (the group exists, the inviter may still add people, the group has
    /// room) and adds the user as if the inviter added them now.
    async fn accept_invitation(
        &self,
        id: InvitationId,
        user: UserId,
        max_members: usize,
        now: Timestamp,
    ) -> StoreResult<InvitationAccepted>;

    /// Declines (deletes) one of `user`'s pending invitations; false if there was none.
    async fn decline_invitation(
        &self,
        id: InvitationId,
        user: UserId,
        now: Timestamp,
    ) -> StoreResult<bool>;

    /// Deletes invitations expired by `now`; returns how many.
    async fn delete_expired_invitations(&self, now: Timestamp) -> StoreResult<u64>;
}
