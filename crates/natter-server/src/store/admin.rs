//! The operator's side of the store: invites (sign-up mode `invite`) and
//! the administration `natter admin` does on a data directory (accounts,
//! devices, counts, integrity). Two narrow traits every engine implements
//! beside [`super::Store`], which requires them.

use async_trait::async_trait;
use natter_proto::{DeviceId, MediaId, UserId};
use uuid::Uuid;

use super::{Device, NewDevice, StoreResult, User};
use crate::clock::Timestamp;
use crate::secret::TokenHash;

/// An invite about to be stored: only the hash of its token.
#[derive(Debug, Clone)]
pub struct NewInvite {
    /// Its id, for listing and revoking.
    pub id: Uuid,
    /// The SHA-256 of the invite token.
    pub token_hash: TokenHash,
    /// How many accounts it may create (1: single use).
    pub max_uses: u32,
    /// When it stops working; `None`: never.
    pub expires_at: Option<Timestamp>,
    /// When it was made.
    pub created_at: Timestamp,
}

/// A stored invite, as the operator sees it.
#[derive(Debug, Clone)]
pub struct InviteRecord {
    /// Its id.
    pub id: Uuid,
    /// Accounts it may create.
    pub max_uses: u32,
    /// Accounts it has created.
    pub uses: u32,
    /// When it stops working.
    pub expires_at: Option<Timestamp>,
    /// When it was made.
    pub created_at: Timestamp,
    /// When the operator revoked it.
    pub revoked_at: Option<Timestamp>,
}

impl InviteRecord {
    /// Whether it can still create an account at `now`.
    #[must_use]
    pub fn usable(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none()
            && self.uses < self.max_uses
            && self.expires_at.is_none_or(|t| t > now)
    }
}

/// A registration with an invite: use it once and create the account with
/// its first device, atomically.
#[derive(Debug, Clone)]
pub struct InviteRegistration {
    /// The hash of the invite the client sent.
    pub invite: TokenHash,
    /// Now, to check expiry.
    pub now: Timestamp,
    /// The account.
    pub user: User,
    /// Its first device.
    pub device: NewDevice,
}

/// What became of a registration with an invite.
#[derive(Debug, Clone)]
pub enum RegisteredByInvite {
    /// The account exists now; the invite has one use fewer.
    Created(User),
    /// The number already has an account; the invite is untouched.
    PhoneTaken,
    /// No such invite, or revoked, expired or used up; nothing changed.
    InviteInvalid,
}

/// Invites: made and revoked by the operator, used by registrations.
#[async_trait]
pub trait Invites: Send + Sync {
    /// Stores a new invite.
    async fn create_invite(&self, invite: NewInvite) -> StoreResult<()>;
    /// Every invite, newest first.
    async fn invites(&self) -> StoreResult<Vec<InviteRecord>>;
    /// Revokes an invite; `false` if there is no such (unrevoked) invite.
    async fn revoke_invite(&self, id: Uuid, now: Timestamp) -> StoreResult<bool>;
    /// Uses an invite and creates the account, or changes nothing.
    async fn register_by_invite(&self, r: InviteRegistration) -> StoreResult<RegisteredByInvite>;
}

/// An account in the operator's list.
#[derive(Debug, Clone)]
pub struct UserSummary {
    /// The account.
    pub user: User,
    /// Its logged-in devices.
    pub devices: u64,
    /// When the operator deactivated it.
    pub deactivated_at: Option<Timestamp>,
}

/// Counts for `natter admin stats`.
#[derive(Debug, Clone, Default)]
pub struct StoreStats {
    /// Accounts, deactivated included.
    pub users: u64,
    /// Deactivated accounts.
    pub deactivated_users: u64,
    /// Logged-in devices.
    pub devices: u64,
    /// Chats.
    pub chats: u64,
    /// Chat-log entries (messages, edits, deletions, membership events).
    pub log_entries: u64,
    /// Finished media.
    pub media: u64,
    /// Bytes of finished media.
    pub media_bytes: u64,
    /// Invites that can still be used.
    pub usable_invites: u64,
}

/// A finished upload whose blob must exist.
#[derive(Debug, Clone, Copy)]
pub struct ReferencedBlob {
    /// The media.
    pub id: MediaId,
    /// Whether a thumbnail blob belongs to it too.
    pub thumbnail: bool,
}

/// What the operator can do to accounts and the store as a whole.
#[derive(Debug, Clone)]
pub enum Deactivated {
    /// The account is deactivated; these devices were logged out.
    Done(Vec<DeviceId>),
    /// It was deactivated already.
    Already,
    /// No such account.
    NoSuchUser,
}

/// Administration of accounts and the store, for `natter admin`.
#[async_trait]
pub trait Administration: Send + Sync {
    /// Creates an account without a device; `false` if the number is taken.
    async fn create_user(&self, user: User) -> StoreResult<bool>;
    /// Every account, oldest first.
    async fn users_summary(&self) -> StoreResult<Vec<UserSummary>>;
    /// Whether the account is deactivated (`None`: no such account).
    async fn deactivated_at(&self, user: UserId) -> StoreResult<Option<Option<Timestamp>>>;
    /// Deactivates an account: logs out every device; logins are refused.
    async fn deactivate_user(&self, user: UserId, now: Timestamp) -> StoreResult<Deactivated>;
    /// A device by id, whoever owns it.
    async fn device_by_id(&self, device: DeviceId) -> StoreResult<Option<Device>>;
    /// Counts.
    async fn stats(&self) -> StoreResult<StoreStats>;
    /// The engine's own consistency check; empty when all is well.
    async fn integrity_problems(&self) -> StoreResult<Vec<String>>;
    /// Every finished upload, whose blobs must exist.
    async fn referenced_blobs(&self) -> StoreResult<Vec<ReferencedBlob>>;
}
