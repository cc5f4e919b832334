//! Storage: the [`Store`] trait every engine implements, and the records it
//! deals in. Everything above this module talks to `Arc<dyn Store>` and never
//! sees SQL; the embedded engine is [`sqlite::SqliteStore`], PostgreSQL comes
//! with the scale-out work.
//!
//! The trait speaks in domain operations, each one atomic ("consume this code
//! and create this user"), so an engine can run each in one transaction.

pub mod sqlite;

use async_trait::async_trait;
use natter_proto::users::LastSeenVisibility;
use natter_proto::{DeviceId, UserId};

use crate::clock::Timestamp;
use crate::phone::Phone;
use crate::secret::{CodeHash, TokenHash};

/// A failure of the storage engine itself (not a domain outcome).
#[derive(Debug, Clone, thiserror::Error)]
#[error("storage failed: {0}")]
pub struct StoreError(pub String);

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
    /// Last authenticated activity of any device.
    pub last_seen_at: Option<Timestamp>,
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

/// Profile fields to change; `None` keeps the current value.
#[derive(Debug, Clone, Default)]
pub struct ProfilePatch {
    /// New name.
    pub name: Option<String>,
    /// New about text.
    pub about: Option<String>,
    /// New last-seen visibility.
    pub last_seen_visibility: Option<LastSeenVisibility>,
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

/// The storage engine.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Succeeds when the store can serve reads and writes.
    async fn ping(&self) -> StoreResult<()>;

    /// Flushes and closes: the writer commits what it has, then stops.
    async fn close(&self);

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
}
