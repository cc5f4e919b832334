//! End-to-end encryption: what the server keeps for MLS (RFC 9420) clients.
//!
//! The server is the MLS *delivery service*. It links no MLS cryptography and
//! holds no key that could decrypt anything. It keeps:
//! - each user's **identity key** (Ed25519 public key) and each device's
//!   **credential**: its MLS signature key, its link key (an HPKE X25519
//!   public key for handovers between a user's own devices) and the
//!   **certificate**, the identity key's signature over
//!   [`device_certificate_message`];
//! - a **KeyPackage directory**: one-time KeyPackages and one last-resort
//!   KeyPackage per device; a claim hands each one-time package to exactly one
//!   claimer;
//! - the **total order of handshake messages** per chat: an encrypted chat has
//!   an epoch (`Chat::epoch`); a commit is accepted only for the current
//!   epoch, the first one wins and moves the epoch on, a later one gets 409
//!   `stale_epoch`; application messages are accepted for the current epoch
//!   and the [`PAST_EPOCHS`] before it;
//! - **device inboxes**: a Welcome (and a handover from one of the user's
//!   devices) waits in the addressed device's inbox until that device
//!   acknowledges it.
//!
//! An encrypted chat's MLS group id is the chat id's 16 bytes. Every binary
//! field is standard base64 with padding.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::chats::Message;
use crate::ids::{ChatId, DeviceId, UserId};

/// How many epochs before the current one an application message may still
/// be encrypted for (clients keep as many past epochs' secrets).
pub const PAST_EPOCHS: u64 = 3;

/// The MLS cipher suite every Natter client supports:
/// `MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519`.
pub const SUITE_CLASSIC: u16 = 0x0001;

/// The feature-gated post-quantum hybrid suite:
/// `MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519` (draft code point).
pub const SUITE_PQ_HYBRID: u16 = 0x004F;

/// The suites the server's directory accepts KeyPackages for.
pub const SUITES: [u16; 2] = [SUITE_CLASSIC, SUITE_PQ_HYBRID];

/// The bytes a user's identity key signs to certify one of their devices:
/// a domain-separation label, the user id, the device id (16 bytes each) and
/// the device's MLS signature key. Clients refuse a KeyPackage or a group
/// member whose device certificate does not verify against the user's
/// identity key, so the server cannot add a reader.
#[must_use]
pub fn device_certificate_message(user: UserId, device: DeviceId, signature_key: &[u8]) -> Vec<u8> {
    const LABEL: &[u8] = b"natter device certificate v1\0";
    let mut m = Vec::with_capacity(LABEL.len() + 32 + signature_key.len());
    m.extend_from_slice(LABEL);
    m.extend_from_slice(user.as_uuid().as_bytes());
    m.extend_from_slice(device.as_uuid().as_bytes());
    m.extend_from_slice(signature_key);
    m
}

/// The MLS credential identity of a device: `"{user_id}/{device_id}"`.
#[must_use]
pub fn credential_identity(user: UserId, device: DeviceId) -> String {
    format!("{user}/{device}")
}

/// `PUT /api/v1/users/me/identity`: sets (or replaces) the user's identity
/// key. Replacing it voids every certificate of the user's devices and their
/// KeyPackages; contacts' clients show the change.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetIdentity {
    /// Base64 Ed25519 public key (32 bytes).
    pub identity_key: String,
}

/// `PUT /api/v1/devices/{device_id}/credential` (`me` or one of the caller's
/// own devices). A device sets its keys once; the certificate may come in the
/// same request (the user's first device signs itself) or later, from another
/// device of the same user that holds the identity key (linking).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetDeviceCredential {
    /// Base64 MLS signature public key of the device (Ed25519, 32 bytes).
    pub signature_key: String,
    /// Base64 HPKE (X25519) public key, for handovers from the user's other devices.
    pub link_key: String,
    /// Base64 Ed25519 signature (64 bytes) by the user's identity key over
    /// [`device_certificate_message`].
    #[serde(default)]
    pub certificate: Option<String>,
}

/// A device's public keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeviceKeys {
    /// The device.
    pub device_id: DeviceId,
    /// Base64 MLS signature public key.
    pub signature_key: String,
    /// Base64 HPKE public key for handovers.
    pub link_key: String,
    /// Base64 certificate; `null` while no device of the user has certified it.
    pub certificate: Option<String>,
}

/// `GET /api/v1/users/{user_id}/devices`: a user's identity key and device
/// keys. Others see certified devices only; the user sees all of theirs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UserDevices {
    /// The user.
    pub user_id: UserId,
    /// Base64 identity key; `null` if the user never set one.
    pub identity_key: Option<String>,
    /// Their devices with keys.
    pub devices: Vec<DeviceKeys>,
}

/// `POST /api/v1/devices/me/key-packages`: publishes one-time KeyPackages
/// and, optionally, replaces the last-resort one. Each is a base64
/// `MLSMessage` of wire format `mls_key_package` whose credential is this
/// device's and whose signature key is the device's registered one. The
/// device must be certified first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishKeyPackages {
    /// One-time KeyPackages (at most `e2ee.key_package_batch_max`).
    #[serde(default)]
    pub key_packages: Vec<String>,
    /// A KeyPackage handed out when no one-time package is left (kept until replaced).
    #[serde(default)]
    pub last_resort: Option<String>,
}

/// `GET /api/v1/devices/me/key-packages` and the answer to a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeyPackageStock {
    /// One-time packages not yet claimed.
    pub available: u32,
    /// Whether a last-resort package is on file.
    pub last_resort: bool,
    /// Below this many, the server asks the device to publish more (`key_packages_low`).
    pub low_water: u32,
}

/// `POST /api/v1/key-packages/claim`: one KeyPackage per certified device of
/// each user (the caller's own device excluded), each one-time package to
/// exactly one claimer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimKeyPackages {
    /// Whose (at most `limits.max_group_members`).
    pub user_ids: Vec<UserId>,
}

/// The answer to a claim.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClaimedKeyPackages {
    /// One entry per user asked for, in order.
    pub users: Vec<UserKeyPackages>,
}

/// One user's claimed packages.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UserKeyPackages {
    /// The user.
    pub user_id: UserId,
    /// Base64 identity key (`null`: the user has none, so no device either).
    pub identity_key: Option<String>,
    /// One per device that had a package.
    pub devices: Vec<ClaimedKeyPackage>,
}

/// One device's claimed package.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClaimedKeyPackage {
    /// The device.
    pub device_id: DeviceId,
    /// Base64 MLS signature key of the device.
    pub signature_key: String,
    /// Base64 certificate of the device.
    pub certificate: String,
    /// Base64 `MLSMessage` holding the KeyPackage.
    pub key_package: String,
    /// True when the one-time packages had run out.
    pub last_resort: bool,
}

/// `POST /api/v1/chats/{chat_id}/commits`: a handshake message for the
/// chat's current epoch, and the Welcome for the devices it adds.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitCommit {
    /// Base64 `MLSMessage` (public or private message) of content type commit,
    /// for this chat's group and current epoch.
    pub commit: String,
    /// Base64 `MLSMessage` of wire format `mls_welcome`, if the commit adds devices.
    #[serde(default)]
    pub welcome: Option<String>,
    /// The devices the Welcome is for (each a device of a current participant).
    #[serde(default)]
    pub welcome_devices: Vec<DeviceId>,
    /// Makes retries idempotent, as for messages.
    #[serde(default)]
    pub client_message_id: Option<String>,
}

/// `201` to a commit: it is in the chat log.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CommitAccepted {
    /// The chat's epoch now (the commit's epoch plus one).
    pub epoch: u64,
    /// The log entry (type `commit`).
    pub message: Message,
}

/// What an inbox item carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InboxKind {
    /// An MLS Welcome into `chat_id`, made by the commit at `seq`: join,
    /// then process the chat's log from `seq + 1`.
    Welcome,
    /// An HPKE-sealed payload from another device of the same user
    /// (identity key, history), sealed to this device's link key.
    Handover,
}

/// One payload waiting for a device.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InboxItem {
    /// Its id (acknowledge with `DELETE /api/v1/devices/me/inbox/{id}`).
    pub id: i64,
    /// What it is.
    pub kind: InboxKind,
    /// Welcomes: the chat.
    pub chat_id: Option<ChatId>,
    /// Welcomes: the seq of the commit that made it.
    pub seq: Option<i64>,
    /// Who sent it.
    pub from_user: UserId,
    /// From which device.
    pub from_device: DeviceId,
    /// Base64 payload.
    pub payload: String,
    /// When it was stored.
    #[serde(with = "crate::timefmt")]
    pub created_at: OffsetDateTime,
}

/// `GET /api/v1/devices/me/inbox`: everything not yet acknowledged, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Inbox {
    /// The items.
    pub items: Vec<InboxItem>,
}

/// `POST /api/v1/devices/{device_id}/handover`: a sealed payload for another
/// device of the caller's own account.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendHandover {
    /// Base64 sealed payload (at most `e2ee.handover_max_bytes`).
    pub payload: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_message_binds_user_device_and_key() {
        let user = UserId::new();
        let device = DeviceId::new();
        let a = device_certificate_message(user, device, &[1; 32]);
        assert_ne!(
            a,
            device_certificate_message(user, DeviceId::new(), &[1; 32])
        );
        assert_ne!(
            a,
            device_certificate_message(UserId::new(), device, &[1; 32])
        );
        assert_ne!(a, device_certificate_message(user, device, &[2; 32]));
        assert_eq!(a.len(), 29 + 32 + 32);
    }
}
