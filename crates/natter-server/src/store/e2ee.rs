//! The store's side of end-to-end encryption: the key directory (identity
//! keys, device credentials, KeyPackages), device inboxes, and the records
//! of commits. The bytes are opaque here; the services check them
//! (`mls_framing`, certificate signatures) before they reach the store, and
//! the engine checks, in its transaction, what depends on the state at
//! that moment (membership, epoch, certification, stock).

use async_trait::async_trait;
use natter_proto::e2ee::InboxKind;
use natter_proto::{ChatId, DeviceId, UserId};

use super::{Appended, LogEntry, NewMessage, StoreResult};
use crate::clock::Timestamp;

/// A device's public keys, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCredential {
    /// The device.
    pub device_id: DeviceId,
    /// Its MLS signature public key.
    pub signature_key: Vec<u8>,
    /// Its HPKE public key for handovers.
    pub link_key: Vec<u8>,
    /// The identity key's signature over the device certificate message.
    pub certificate: Option<Vec<u8>>,
}

/// What became of setting a device's credential.
#[derive(Debug, Clone)]
pub enum CredentialSet {
    /// Stored (or unchanged); the `devices_changed` entries appended if the
    /// device became certified.
    Stored(Vec<Appended>),
    /// The device is not the user's.
    NoDevice,
    /// The device has other keys already.
    Exists,
}

/// What became of a publish of KeyPackages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Stored: the device's stock now (one-time packages, last resort on file).
    Stock(u32, bool),
    /// The device has registered no keys.
    NoKeys,
    /// The device would keep more one-time packages than allowed.
    TooMany,
}

/// One device's claimed package.
#[derive(Debug, Clone)]
pub struct ClaimedPackage {
    /// The device.
    pub device_id: DeviceId,
    /// Its signature key.
    pub signature_key: Vec<u8>,
    /// Its certificate.
    pub certificate: Vec<u8>,
    /// The KeyPackage's bytes.
    pub key_package: Vec<u8>,
    /// Whether it is the last-resort package (kept on file).
    pub last_resort: bool,
    /// One-time packages the device has left.
    pub left: u32,
}

/// One user's claimed packages.
#[derive(Debug, Clone)]
pub struct ClaimedUser {
    /// The user.
    pub user_id: UserId,
    /// Their identity key.
    pub identity_key: Option<Vec<u8>>,
    /// One per certified device that had a package.
    pub devices: Vec<ClaimedPackage>,
}

/// An inbox item, as stored.
#[derive(Debug, Clone)]
pub struct InboxRecord {
    /// Its id.
    pub id: i64,
    /// The device it waits for.
    pub device_id: DeviceId,
    /// Welcome or handover.
    pub kind: InboxKind,
    /// Welcomes: the chat.
    pub chat_id: Option<ChatId>,
    /// Welcomes: the commit's seq.
    pub seq: Option<i64>,
    /// Sender.
    pub from_user: UserId,
    /// Sending device.
    pub from_device: DeviceId,
    /// The bytes.
    pub payload: Vec<u8>,
    /// When stored.
    pub created_at: Timestamp,
}

/// A handover for one device of the sender's own account.
#[derive(Debug, Clone)]
pub struct NewHandover {
    /// The sender.
    pub from_user: UserId,
    /// The sending device.
    pub from_device: DeviceId,
    /// The receiving device (must be `from_user`'s, not `from_device`).
    pub to_device: DeviceId,
    /// The sealed bytes.
    pub payload: Vec<u8>,
    /// Items the inbox may hold.
    pub max_items: u64,
    /// Time.
    pub now: Timestamp,
}

/// What became of a handover.
#[derive(Debug, Clone)]
pub enum HandedOver {
    /// In the inbox.
    Stored(InboxRecord),
    /// No such device of the sender's (or it is the sending one).
    NoDevice,
    /// The inbox is full.
    InboxFull,
}

/// A commit to append: a chat-log entry of type `commit` for `epoch`, and
/// the Welcome for the devices it adds.
#[derive(Debug, Clone)]
pub struct NewCommit {
    /// The entry (type commit, the commit's bytes as ciphertext).
    pub message: NewMessage,
    /// The epoch in the commit's framing.
    pub epoch: u64,
    /// The Welcome's bytes, if any.
    pub welcome: Option<Vec<u8>>,
    /// The devices it is for.
    pub welcome_devices: Vec<DeviceId>,
    /// Items an inbox may hold.
    pub inbox_max: u64,
}

/// What became of a commit.
#[derive(Debug, Clone)]
pub enum Committed {
    /// Appended: the entry, the epoch now and the Welcomes put in inboxes
    /// (with the owner of each device).
    Created(Box<Appended>, u64, Vec<(UserId, InboxRecord)>),
    /// A retry with the same `client_message_id`: the first commit, and the epoch now.
    Duplicate(Box<LogEntry>, u64),
    /// The sender is not a participant (or no such chat).
    NotMember,
    /// The chat is not end-to-end encrypted.
    NotEncrypted,
    /// Another commit won this epoch (or the commit is for a future one): the epoch now.
    StaleEpoch(u64),
    /// A Welcome device is not a device of a current participant.
    NotParticipantDevice(DeviceId),
    /// A Welcome device's inbox is full.
    InboxFull(DeviceId),
}

/// The store's key directory: identity keys, device credentials, KeyPackages.
#[async_trait]
pub trait KeyDirectory: Send + Sync {
    /// Sets the user's identity key. If it changed, every certificate of the
    /// user's devices and their KeyPackages go, and a `devices_changed`
    /// entry is appended to each encrypted chat the user is in (returned).
    async fn set_identity_key(
        &self,
        user: UserId,
        key: Vec<u8>,
        now: Timestamp,
    ) -> StoreResult<Vec<Appended>>;

    /// The user's identity key.
    async fn identity_key(&self, user: UserId) -> StoreResult<Option<Vec<u8>>>;

    /// Sets a device's keys (once; the same keys again are fine) and,
    /// with `certificate`, certifies it (then a `devices_changed` entry
    /// goes to each encrypted chat of the user).
    async fn set_device_credential(
        &self,
        user: UserId,
        credential: DeviceCredential,
        now: Timestamp,
    ) -> StoreResult<CredentialSet>;

    /// The keys of a user's devices, oldest device first.
    async fn device_credentials(&self, user: UserId) -> StoreResult<Vec<DeviceCredential>>;

    /// Stores one-time KeyPackages (and replaces the last-resort one) of a
    /// certified device, within `max_per_device`.
    async fn publish_key_packages(
        &self,
        device: DeviceId,
        packages: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
        max_per_device: u64,
        now: Timestamp,
    ) -> StoreResult<Published>;

    /// A device's stock: one-time packages left, last resort on file.
    async fn key_package_stock(&self, device: DeviceId) -> StoreResult<(u32, bool)>;

    /// Claims, atomically, one package per certified device of each user
    /// (but `except`): the oldest one-time package (removed), else the
    /// last-resort one (kept).
    async fn claim_key_packages(
        &self,
        users: Vec<UserId>,
        except: DeviceId,
    ) -> StoreResult<Vec<ClaimedUser>>;

    /// Appends a `devices_changed` entry for `user` to each encrypted chat
    /// they are in (after a certified device left).
    async fn devices_changed(&self, user: UserId, now: Timestamp) -> StoreResult<Vec<Appended>>;
}

/// The store's device inboxes and the commits that fill them.
#[async_trait]
pub trait DeviceInbox: Send + Sync {
    /// Appends a commit (see [`NewCommit`]): membership, epoch and the
    /// Welcome devices are checked, the epoch moves on and the Welcomes go
    /// to the inboxes, in one transaction.
    async fn commit(&self, commit: NewCommit) -> StoreResult<Committed>;

    /// Puts a handover in a device's inbox.
    async fn hand_over(&self, handover: NewHandover) -> StoreResult<HandedOver>;

    /// A device's inbox, oldest first, at most `limit` items.
    async fn inbox(&self, device: DeviceId, limit: u64) -> StoreResult<Vec<InboxRecord>>;

    /// Acknowledges (deletes) an item; false if the device has no such item.
    async fn ack_inbox(&self, device: DeviceId, id: i64) -> StoreResult<bool>;
}
