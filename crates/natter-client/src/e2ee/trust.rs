//! Whom to believe: the identity key pinned for each contact (trust on first
//! use), the device certificates checked against it, and whether the user
//! compared safety numbers with the contact.
//!
//! The engine asks only one question of a [`TrustStore`]: "is this device's
//! signature key certified by the identity key I pinned for its user?". The
//! SDK feeds [`PinnedKeys`] with what the server hands out (identity keys
//! and device certificates from `GET /users/{id}/devices`, claimed
//! KeyPackages); the server cannot make a key of its own pass, because it
//! cannot sign a certificate with a user's identity key.

use std::collections::HashMap;

use natter_proto::{DeviceId, UserId};
use serde::{Deserialize, Serialize};

use super::E2eeError;
use super::identity::verify_certificate;

/// The question the engine asks before it accepts a KeyPackage, a Welcome's
/// members or a commit's new leaves.
pub trait TrustStore {
    /// Whether `signature_key` is certified for `(user, device)` by the
    /// identity key pinned for `user`.
    fn is_certified(&self, user: UserId, device: DeviceId, signature_key: &[u8]) -> bool;
}

/// Something the user should be told about a contact's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustEvent {
    /// First key seen for this user: pinned.
    Pinned {
        /// The contact.
        user_id: UserId,
    },
    /// The contact's identity key is not the pinned one: the new key is
    /// pinned, every certificate under the old key is void, and the contact
    /// is no longer verified.
    IdentityChanged {
        /// The contact.
        user_id: UserId,
    },
}

/// One contact's pinned key and checked certificates.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Contact {
    /// The pinned identity key.
    identity_key: Vec<u8>,
    /// Set after comparing safety numbers; cleared when the key changes.
    verified: bool,
    /// Device → signature key whose certificate verified under `identity_key`.
    devices: HashMap<DeviceId, Vec<u8>>,
}

/// A trust-on-first-use store of identity keys and device certificates;
/// serializable, so the SDK can keep it with the engine's snapshot.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PinnedKeys {
    /// By user.
    contacts: HashMap<UserId, Contact>,
}

impl PinnedKeys {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the identity key the server reports for `user`: pins it if it
    /// is the first, reports a change (and re-pins, unverified) if it
    /// differs, says nothing if it is the pinned one.
    pub fn observe_identity(&mut self, user: UserId, identity_key: &[u8]) -> Option<TrustEvent> {
        match self.contacts.get_mut(&user) {
            Some(contact) if contact.identity_key == identity_key => None,
            Some(contact) => {
                contact.identity_key = identity_key.to_vec();
                contact.verified = false;
                contact.devices.clear();
                Some(TrustEvent::IdentityChanged { user_id: user })
            }
            None => {
                self.contacts.insert(
                    user,
                    Contact {
                        identity_key: identity_key.to_vec(),
                        verified: false,
                        devices: HashMap::new(),
                    },
                );
                Some(TrustEvent::Pinned { user_id: user })
            }
        }
    }

    /// Checks a device certificate against the pinned identity key of
    /// `user` and remembers the device's signature key if it verifies.
    ///
    /// # Errors
    /// [`E2eeError::UnknownIdentity`] if no key is pinned for `user`,
    /// [`E2eeError::BadCertificate`] if the certificate does not verify.
    pub fn add_certificate(
        &mut self,
        user: UserId,
        device: DeviceId,
        signature_key: &[u8],
        certificate: &[u8],
    ) -> Result<(), E2eeError> {
        let contact = self
            .contacts
            .get_mut(&user)
            .ok_or(E2eeError::UnknownIdentity { user })?;
        verify_certificate(
            &contact.identity_key,
            user,
            device,
            signature_key,
            certificate,
        )?;
        contact.devices.insert(device, signature_key.to_vec());
        Ok(())
    }

    /// Forgets a device (revoked, or logged out).
    pub fn forget_device(&mut self, user: UserId, device: DeviceId) {
        if let Some(contact) = self.contacts.get_mut(&user) {
            contact.devices.remove(&device);
        }
    }

    /// The identity key pinned for `user`.
    #[must_use]
    pub fn identity_key(&self, user: UserId) -> Option<&[u8]> {
        self.contacts.get(&user).map(|c| c.identity_key.as_slice())
    }

    /// Marks the contact verified (safety numbers compared) or not.
    ///
    /// # Errors
    /// [`E2eeError::UnknownIdentity`] if no key is pinned for `user`.
    pub fn set_verified(&mut self, user: UserId, verified: bool) -> Result<(), E2eeError> {
        let contact = self
            .contacts
            .get_mut(&user)
            .ok_or(E2eeError::UnknownIdentity { user })?;
        contact.verified = verified;
        Ok(())
    }

    /// Whether the user compared safety numbers with this contact since
    /// their key was last pinned.
    #[must_use]
    pub fn is_verified(&self, user: UserId) -> bool {
        self.contacts.get(&user).is_some_and(|c| c.verified)
    }

    /// Serializes the store (JSON) for the SDK's local store.
    ///
    /// # Errors
    /// [`E2eeError::Snapshot`] if serialization fails.
    pub fn to_bytes(&self) -> Result<Vec<u8>, E2eeError> {
        serde_json::to_vec(self).map_err(|e| E2eeError::Snapshot(e.to_string()))
    }

    /// Reads a store written by [`PinnedKeys::to_bytes`].
    ///
    /// # Errors
    /// [`E2eeError::Snapshot`] if the bytes are not such a store.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, E2eeError> {
        serde_json::from_slice(bytes).map_err(|e| E2eeError::Snapshot(e.to_string()))
    }
}

impl TrustStore for PinnedKeys {
    fn is_certified(&self, user: UserId, device: DeviceId, signature_key: &[u8]) -> bool {
        self.contacts
            .get(&user)
            .and_then(|c| c.devices.get(&device))
            .is_some_and(|key| key.as_slice() == signature_key)
    }
}
