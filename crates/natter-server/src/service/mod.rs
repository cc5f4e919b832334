//! Domain services: the rules of the product, with no HTTP types. Handlers
//! call one function here; these call the engines (`store`, `bus`, `sms`,
//! `ratelimit`, `push`) through their traits.
//!
//! Identity comes only from a [`Principal`], which only
//! [`Services::authenticate`] can make (DESIGN.md §4 rules 1 and 2).

mod accounts;
mod admin;
mod chats;
mod contacts;
mod delivery;
mod e2ee;
mod export;
mod invitations;
mod media;
mod profiles;
mod push;
mod realtime;
pub mod render;
mod search;
mod search_indexer;
mod text;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use natter_proto::{DeviceId, UserId};

pub use self::accounts::{CodeSent, LoginCodeIssued, NewSession};
pub use self::admin::{BlobCheck, CreatedInvite, CreatedUser};
pub use self::chats::{Adds, ChatView, HistoryRequest, MessageView};
pub use self::contacts::{ContactView, Discovered, Discovery};
pub use self::delivery::{DeliveryCursor, Live};
pub use self::e2ee::{CommitView, UserDevicesView, inbox_item};
pub use self::export::AccountData;
pub use self::media::{Staging, UploadInfo, sha256_hex};
pub use self::profiles::ProfileView;
pub use self::realtime::LiveConnection;
pub use self::search::{Hit, MessageSearch};
use crate::blobs::Blobs;
use crate::bus::Bus;
use crate::clock::Timestamp;
use crate::config::Config;
use crate::phone::{InvalidPhone, Phone};
use crate::push::PushGateway;
use crate::ratelimit::{Denied, Limit, RateLimiter};
use crate::secret::CodeKey;
use crate::sms::{SmsError, SmsGateway};
use crate::store::{Store, StoreError};

/// Everything a service call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The phone number is not valid.
    #[error(transparent)]
    InvalidPhone(#[from] InvalidPhone),
    /// Wrong, expired, used or unknown code (or unknown number at login).
    #[error("The verification code is wrong or no longer valid.")]
    InvalidCode,
    /// No valid access token.
    #[error("A valid access token is required.")]
    Unauthorized,
    /// The invite cannot be used (unknown, revoked, expired, used up).
    #[error("The invite is wrong or no longer valid; ask the server's operator for a new one.")]
    InvalidInvite,
    /// Sign-up mode `invite`: no codes are sent.
    #[error(
        "This server sends no verification codes: register with an invite from its operator; \
         log a new device in with a code made on one of your devices (POST /api/v1/devices/login-code)."
    )]
    SmsDisabled,
    /// Registering a number that has an account.
    #[error("A user with this phone number already exists; log in instead.")]
    PhoneTaken,
    /// Too many devices.
    #[error("This account has {0} devices, the most allowed; log one out first.")]
    DeviceLimit(usize),
    /// Too many contacts.
    #[error("The contact list holds {0} entries, the most allowed.")]
    ContactLimit(usize),
    /// No such user (or one the caller may not see).
    #[error("No such user.")]
    UserNotFound,
    /// No such device of the caller's.
    #[error("No such device.")]
    DeviceNotFound,
    /// No such contact in the caller's list.
    #[error("No such contact.")]
    ContactNotFound,
    /// No such chat (or one the caller is not in).
    #[error("No such chat.")]
    ChatNotFound,
    /// No such message (or one the caller may not see).
    #[error("No such message.")]
    MessageNotFound,
    /// A participant lacks the right; the message says which.
    #[error("{0}")]
    Forbidden(String),
    /// The group is full.
    #[error("A group holds at most {0} participants.")]
    GroupFull(usize),
    /// No such pending invitation of the caller's.
    #[error("No such invitation.")]
    InvitationNotFound,
    /// Too many pending invitations (for an invited user, or for the group).
    #[error(
        "Too many pending invitations: a user may hold {0} and a group {1}; \
         try again once some are accepted, declined or expired."
    )]
    InvitationLimit(usize, usize),
    /// The inviter may no longer add people to the group.
    #[error(
        "This invitation can no longer be accepted: whoever sent it may no longer add people \
         to the group. It has been removed."
    )]
    InvitationNoLongerValid,
    /// The change would leave the group without an admin.
    #[error("A group needs an admin: make someone else admin first.")]
    LastAdmin,
    /// The message can no longer be edited.
    #[error("The message can no longer be changed (too old, or deleted).")]
    EditWindowClosed,
    /// A field is out of bounds or malformed; the message names it.
    #[error("{0}")]
    Validation(String),
    /// A destructive request's confirmation does not match the account.
    #[error("{0}")]
    ConfirmationMismatch(String),
    /// A query parameter is out of bounds; the message names it.
    #[error("{0}")]
    InvalidParameter(String),
    /// Push notifications are off on this server.
    #[error("This server does not send push notifications.")]
    PushDisabled,
    /// The push endpoint may not be used; the message says why.
    #[error("{0}")]
    InvalidPushEndpoint(String),
    /// The device has no push channel.
    #[error("This device has no push channel.")]
    PushChannelNotFound,
    /// A rate limit refused the request.
    #[error("Too many requests; try again in {} seconds.", .0.retry_after.as_secs())]
    RateLimited(Denied),
    /// The SMS gateway failed.
    #[error("The verification code could not be sent; try again later.")]
    Sms(#[from] SmsError),
    /// The store failed.
    #[error("The server could not complete the request.")]
    Store(#[from] StoreError),
    /// No such media (or one the caller may not fetch).
    #[error("No such media.")]
    MediaNotFound,
    /// No such resumable upload in progress of the caller's.
    #[error("No such upload in progress.")]
    UploadNotFound,
    /// An upload is larger than allowed; the message says what the limit is.
    #[error("{0}")]
    TooLarge(String),
    /// An upload would pass the user's storage quota.
    #[error(
        "This upload would take your stored media past {0} bytes, your quota. Uploads no \
         message or profile uses are deleted a while after upload, which frees space; so \
         does terminating resumable uploads in progress."
    )]
    QuotaExceeded(u64),
    /// The user has as many resumable uploads in progress as allowed.
    #[error("You have {0} uploads in progress, the most allowed; finish or terminate one first.")]
    TooManyUploads(u64),
    /// The bytes are not of the declared type; the message says what they are.
    #[error("{0}")]
    MediaTypeMismatch(String),
    /// An image the server refuses to decode; the message says why.
    #[error("{0}")]
    ImageRejected(String),
    /// A resumable upload's offset is not where the request says.
    #[error("{0}")]
    OffsetMismatch(String),
    /// A commit for an epoch that is not the chat's current one.
    #[error("The chat is at epoch {0}: process the log's new commits and commit again.")]
    StaleEpoch(u64),
    /// The device has registered no keys.
    #[error("This device has no keys yet: PUT /api/v1/devices/me/credential first.")]
    DeviceKeysMissing,
    /// The device's keys are set and differ.
    #[error("This device's keys are already set; a device's keys never change.")]
    CredentialExists,
    /// A device inbox is full.
    #[error("The device's inbox holds {0} items, the most allowed.")]
    InboxFull(u64),
    /// The server requires end-to-end encryption.
    #[error("This server requires end-to-end encryption: create the chat with `encrypted: true`.")]
    EncryptionRequired,
    /// Not the MLS message expected; the message says why.
    #[error("{0}")]
    InvalidMlsMessage(String),
    /// A KeyPackage the directory refuses; the message says why.
    #[error("{0}")]
    InvalidKeyPackage(String),
    /// A device certificate that does not verify.
    #[error("The certificate does not verify with the user's identity key.")]
    InvalidCertificate,
    /// A failure inside the server (files, blobs); logged, never shown.
    #[error("The server could not complete the request.")]
    Internal(String),
}

/// Shorthand for service results.
pub type ServiceResult<T> = Result<T, ServiceError>;

/// The authenticated caller: a user and the device they are using. Only
/// [`Services::authenticate`] makes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal {
    user: UserId,
    device: DeviceId,
}

impl Principal {
    /// The calling user.
    #[must_use]
    pub fn user(&self) -> UserId {
        self.user
    }

    /// The calling device.
    #[must_use]
    pub fn device(&self) -> DeviceId {
        self.device
    }
}

/// The services, cheap to clone (one `Arc`).
#[derive(Debug, Clone)]
pub struct Services {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The storage engine.
    store: Arc<dyn Store>,
    /// Routes updates and signals to live connections.
    bus: Arc<dyn Bus>,
    /// Where verification codes go.
    sms: Arc<dyn SmsGateway>,
    /// The rate-limit table.
    limiter: Arc<dyn RateLimiter>,
    /// The validated configuration.
    config: Arc<Config>,
    /// Key for hashing verification codes.
    code_key: CodeKey,
    /// Blobs, staging files and thumbnail workers.
    media: media::MediaEngine,
    /// Push channels, planning and delivery.
    push: self::push::PushState,
}

/// How long a device's `last_active_at` may lag: at most one write per
/// device per minute for activity tracking.
const ACTIVITY_RESOLUTION: Duration = Duration::from_secs(60);

impl Services {
    /// Wires the services to their engines; loads (or creates) the code key
    /// and prepares the upload staging directory (`uploads/` in the data dir).
    /// `push` is `None` when push notifications are off.
    ///
    /// # Errors
    /// When the store cannot provide the key or the staging directory
    /// cannot be prepared.
    pub async fn new(
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        sms: Arc<dyn SmsGateway>,
        limiter: Arc<dyn RateLimiter>,
        blobs: Blobs,
        config: Arc<Config>,
        push: Option<Arc<dyn PushGateway>>,
    ) -> Result<Self, StoreError> {
        let bytes = store
            .server_secret(
                "verification_code_key",
                Box::new(|| CodeKey::generate().as_bytes().to_vec()),
            )
            .await?;
        let code_key = CodeKey::from_bytes(&bytes)
            .ok_or_else(|| StoreError::internal("the stored verification key is malformed"))?;
        let staging = config.data_dir.join("uploads");
        let workers = usize::try_from(config.media.thumbnail_workers).unwrap_or(1);
        let media = media::MediaEngine::new(blobs, staging.clone(), workers).map_err(|e| {
            StoreError::internal(format!(
                "cannot prepare the upload directory {}: {e}",
                staging.display()
            ))
        })?;
        let push = self::push::PushState::new(push, config.limits.push_queue_depth);
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                bus,
                sms,
                limiter,
                config,
                code_key,
                media,
                push,
            }),
        })
    }

    /// The configuration the services run with.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Whether the store answers.
    ///
    /// # Errors
    /// The store's failure.
    pub async fn ready(&self) -> ServiceResult<()> {
        Ok(self.inner.store.ping().await?)
    }

    /// Periodic housekeeping: expired codes, idle rate-limit keys, expired
    /// and unreferenced uploads.
    pub async fn sweep(&self) {
        self.inner.limiter.sweep();
        self.collect_media().await;
        match self
            .inner
            .store
            .delete_expired_verification_codes(Timestamp::now())
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::debug!(deleted = n, "expired verification codes removed"),
            Err(e) => tracing::warn!(error = %e, "could not remove expired verification codes"),
        }
        match self
            .inner
            .store
            .delete_expired_invitations(Timestamp::now())
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::debug!(deleted = n, "expired invitations removed"),
            Err(e) => tracing::warn!(error = %e, "could not remove expired invitations"),
        }
    }

    /// Resolves an access token to the caller.
    ///
    /// # Errors
    /// [`ServiceError::Unauthorized`] for a malformed, unknown or revoked token.
    pub async fn authenticate(&self, token: &str) -> ServiceResult<Principal> {
        let token =
            crate::secret::PlainToken::from_client(token).ok_or(ServiceError::Unauthorized)?;
        let device = self
            .inner
            .store
            .device_by_token(&token.hash())
            .await?
            .ok_or(ServiceError::Unauthorized)?;
        let now = Timestamp::now();
        let resolution = i64::try_from(ACTIVITY_RESOLUTION.as_millis()).unwrap_or(i64::MAX);
        if now.millis_since(device.last_active_at) >= resolution {
            // Activity is bookkeeping: record it without making the request wait.
            let store = Arc::clone(&self.inner.store);
            tokio::spawn(async move {
                if let Err(e) = store.touch_device(device.user_id, device.id, now).await {
                    tracing::debug!(error = %e, "could not record device activity");
                }
            });
        }
        Ok(Principal {
            user: device.user_id,
            device: device.id,
        })
    }

    fn parse_phone(&self, input: &str) -> ServiceResult<Phone> {
        Ok(Phone::parse(input, self.inner.config.phone_validation)?)
    }

    async fn limit(&self, limit: Limit, key: &str) -> ServiceResult<()> {
        self.inner
            .limiter
            .check(limit, key)
            .await
            .map_err(ServiceError::RateLimited)
    }

    /// A per-address limit: an IPv4 address, or an IPv6 /64.
    async fn limit_ip(&self, limit: Limit, ip: IpAddr) -> ServiceResult<()> {
        self.limit(limit, &crate::ratelimit::address_key(ip)).await
    }
}

/// Checks a user-supplied text field: trimmed, no control or invisible
/// characters (the rules are in [`text`]), at most `max` characters, and with
/// something visible in it unless `may_be_empty`.
fn clean_text(field: &str, value: &str, max: usize, may_be_empty: bool) -> ServiceResult<String> {
    let value = value.trim();
    if text::find_hidden(value).is_some() {
        return Err(ServiceError::Validation(format!(
            "`{field}` must not contain control or invisible formatting characters."
        )));
    }
    if !may_be_empty && !text::has_visible(value) {
        return Err(ServiceError::Validation(format!(
            "`{field}` must not be empty."
        )));
    }
    let len = value.chars().count();
    if len > max {
        return Err(ServiceError::Validation(format!(
            "`{field}` is {len} characters long; the most allowed is {max}."
        )));
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_text_bounds_at_n_and_n_plus_one() {
        assert_eq!(clean_text("name", "  abc ", 3, false).unwrap(), "abc");
        assert!(clean_text("name", "abcd", 3, false).is_err());
        assert_eq!(clean_text("name", "ééé", 3, false).unwrap(), "ééé");
        assert!(clean_text("name", "   ", 3, false).is_err());
        assert_eq!(clean_text("about", "", 3, true).unwrap(), "");
        assert!(clean_text("name", "a\u{0}b", 3, false).is_err());
    }

    #[test]
    fn invisible_and_direction_changing_characters_are_refused() {
        assert!(clean_text("name", "\u{200B}", 10, false).is_err());
        assert!(clean_text("name", "a\u{202E}b", 10, false).is_err());
        assert!(
            clean_text("name", "\u{200D}", 10, false).is_err(),
            "nothing visible"
        );
        // Emoji sequences keep their joiner.
        assert!(clean_text("name", "👩\u{200D}💻", 10, false).is_ok());
    }
}
