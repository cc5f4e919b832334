//! End-to-end encryption for the SDK: the MLS engine of one device
//! (docs/e2ee.md is the design). Network-free: every function takes and
//! returns wire bytes, and the SDK's session moves them.
//!
//! # Layout
//! - [`identity`]: the user's identity key, a device's keys, certificates.
//! - [`trust`]: pinned identity keys (trust on first use), checked
//!   certificates, the "verified" flag; the [`TrustStore`] question.
//! - [`engine`]: KeyPackages, groups (create, add, remove, self-update,
//!   pending commits and rebasing, joins, incoming messages), reconciling a
//!   group with the chat's devices, snapshot and restore.
//! - [`payload`]: what an application message carries.
//! - [`media`]: encrypted files, streamed in constant memory.
//! - [`handover`]: the sealed identity key (and history) for a linked device.
//! - [`safety`]: safety numbers and their QR payload.
//! - [`bench`]: the measurements behind `natter bench e2ee`.
//!
//! The engine depends on OpenMLS and RustCrypto only; no SQLite, no I/O, so
//! the same code builds for wasm32.

pub mod bench;
pub mod engine;
pub mod handover;
pub mod identity;
pub mod media;
pub mod payload;
mod provider;
pub mod safety;
pub mod trust;

#[cfg(test)]
mod tests;

use natter_proto::{DeviceId, UserId};
use openmls::prelude::Ciphersuite;

pub use engine::{
    CertifiedDevice, CommitIntent, CommitSummary, DeviceRef, Engine, GroupEvent, PendingCommit,
    PublishedKeyPackages, Reconciliation, ValidatedKeyPackage,
};
pub use identity::{Identity, verify_certificate};
pub use trust::{PinnedKeys, TrustEvent, TrustStore};

/// The MLS cipher suite of a group (and of the KeyPackages for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Suite {
    /// `MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519` (0x0001), every client's.
    #[default]
    Classic,
    /// `MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519` (0x004F, a draft
    /// code point): a group-creation option behind the `pq` feature.
    #[cfg(feature = "pq")]
    PqHybrid,
}

impl Suite {
    /// The code point on the wire (`natter_proto::e2ee::SUITE_*`).
    #[must_use]
    pub const fn code(self) -> u16 {
        match self {
            Self::Classic => natter_proto::e2ee::SUITE_CLASSIC,
            #[cfg(feature = "pq")]
            Self::PqHybrid => natter_proto::e2ee::SUITE_PQ_HYBRID,
        }
    }

    /// The suite with this code point, if this build supports it.
    #[must_use]
    pub const fn from_code(code: u16) -> Option<Self> {
        match code {
            natter_proto::e2ee::SUITE_CLASSIC => Some(Self::Classic),
            #[cfg(feature = "pq")]
            natter_proto::e2ee::SUITE_PQ_HYBRID => Some(Self::PqHybrid),
            _ => None,
        }
    }

    pub(crate) const fn ciphersuite(self) -> Ciphersuite {
        match self {
            Self::Classic => Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519,
            #[cfg(feature = "pq")]
            Self::PqHybrid => Ciphersuite::MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519,
        }
    }
}

/// What can go wrong in the engine. The refusals (`Uncertified`,
/// `CredentialMismatch`, `WrongSuite`, `BadKeyPackage`, `Forbidden`) are
/// the engine doing its job against a server that misbehaves.
#[derive(Debug, thiserror::Error)]
pub enum E2eeError {
    /// A device's signature key is not certified by its user's pinned identity key.
    #[error(
        "device {device} of user {user} is not certified by the identity key pinned for that user"
    )]
    Uncertified {
        /// The user.
        user: UserId,
        /// The device.
        device: DeviceId,
    },
    /// A certificate does not verify against the pinned identity key.
    #[error("the certificate of device {device} of user {user} does not verify")]
    BadCertificate {
        /// The user.
        user: UserId,
        /// The device.
        device: DeviceId,
    },
    /// No identity key is pinned for this user yet: fetch it first.
    #[error("no identity key is known for user {user}")]
    UnknownIdentity {
        /// The user.
        user: UserId,
    },
    /// A KeyPackage's credential names another device than the one it was claimed for.
    #[error("the KeyPackage's credential names another device than the one it was claimed for")]
    CredentialMismatch,
    /// A KeyPackage for another cipher suite.
    #[error("the KeyPackage is for another cipher suite")]
    WrongSuite,
    /// A KeyPackage that does not parse or validate.
    #[error("the KeyPackage is invalid: {0}")]
    BadKeyPackage(String),
    /// A credential that is not a basic `"{user_id}/{device_id}"` credential.
    #[error("a credential is not of the form \"{{user_id}}/{{device_id}}\"")]
    BadCredential,
    /// A Welcome that does not parse or cannot be joined.
    #[error("the Welcome cannot be joined: {0}")]
    BadWelcome(String),
    /// A commit that breaks Natter's membership rules; it was not merged.
    #[error("the commit was refused: {0}")]
    Forbidden(&'static str),
    /// No group for this chat on this device.
    #[error("this device has no group for the chat")]
    NoGroup,
    /// The chat already has a group on this device.
    #[error("this device already has a group for the chat")]
    GroupExists,
    /// A removal names a device that has no leaf.
    #[error("device {device} of user {user} is not in the group")]
    NotAMember {
        /// The user.
        user: UserId,
        /// The device.
        device: DeviceId,
    },
    /// A commit with nothing in it.
    #[error("nothing to commit")]
    NothingToCommit,
    /// No commit is pending.
    #[error("no commit is pending")]
    NoPendingCommit,
    /// This device does not hold the user's identity key.
    #[error("this device does not hold the user's identity key")]
    NoIdentity,
    /// Key halves that do not belong together.
    #[error("the key is invalid")]
    InvalidKey,
    /// OpenMLS refused an operation (wrong epoch, bad signature, …).
    #[error("MLS: {0}")]
    Mls(String),
    /// A primitive failed.
    #[error("crypto: {0}")]
    Crypto(String),
    /// Snapshot bytes that cannot be read.
    #[error("engine state: {0}")]
    Snapshot(String),
    /// A lock was poisoned by a panic elsewhere.
    #[error("the engine's store lock was poisoned")]
    Poisoned,
}

impl E2eeError {
    pub(crate) fn mls(e: impl std::fmt::Display) -> Self {
        Self::Mls(e.to_string())
    }

    pub(crate) fn crypto(e: impl std::fmt::Debug) -> Self {
        Self::Crypto(format!("{e:?}"))
    }
}
