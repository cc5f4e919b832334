//! Keys: a user's **identity key** (Ed25519, held by the user's devices,
//! signs device certificates) and a device's own keys (its MLS signature key
//! and its HPKE link key, for handovers from the user's other devices).
//!
//! Signing and verification go through `openmls_basic_credential` and the
//! RustCrypto provider, so no second Ed25519 implementation is linked.

use natter_proto::e2ee::device_certificate_message;
use natter_proto::{DeviceId, UserId};
use openmls::prelude::SignatureScheme;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::RustCrypto;
use openmls_traits::crypto::OpenMlsCrypto as _;
use openmls_traits::random::OpenMlsRand as _;
use openmls_traits::types::{HpkeAeadType, HpkeConfig, HpkeKdfType, HpkeKemType};
use serde::{Deserialize, Serialize};

use super::E2eeError;

/// Length of an Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of an Ed25519 signature (a certificate).
pub const SIGNATURE_LEN: usize = 64;

/// The HPKE configuration of link keys: X25519, HKDF-SHA256, ChaCha20-Poly1305.
pub(crate) const LINK_HPKE: HpkeConfig = HpkeConfig(
    HpkeKemType::DhKem25519,
    HpkeKdfType::HkdfSha256,
    HpkeAeadType::ChaCha20Poly1305,
);

/// A user's identity key pair. Only devices of the user hold it (the first
/// device makes it; a handover copies it to a linked device). Raw Ed25519
/// halves, signed with through the RustCrypto provider (the same code as
/// `SignatureKeyPair`, whose private half is not readable outside tests,
/// and a handover has to carry it).
#[derive(Serialize, Deserialize)]
pub struct Identity {
    /// The private half (wiped on drop).
    private: Vec<u8>,
    /// The public half.
    public: Vec<u8>,
}

impl Drop for Identity {
    fn drop(&mut self) {
        self.private.fill(0);
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A fresh identity key.
    ///
    /// # Errors
    /// [`E2eeError::Crypto`] if the system randomness fails.
    pub fn generate() -> Result<Self, E2eeError> {
        let (private, public) = RustCrypto::default()
            .signature_key_gen(SignatureScheme::ED25519)
            .map_err(E2eeError::crypto)?;
        Ok(Self { private, public })
    }

    /// Rebuilds an identity from its private and public halves (a handover).
    ///
    /// # Errors
    /// [`E2eeError::InvalidKey`] if the halves do not belong together.
    pub fn from_parts(private: Vec<u8>, public: Vec<u8>) -> Result<Self, E2eeError> {
        let identity = Self { private, public };
        // Prove the halves match: sign and verify a probe.
        let probe = b"natter identity probe";
        let sig = identity.sign(probe).map_err(|_| E2eeError::InvalidKey)?;
        verify_ed25519(&identity.public, probe, &sig).map_err(|()| E2eeError::InvalidKey)?;
        Ok(identity)
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, E2eeError> {
        RustCrypto::default()
            .sign(SignatureScheme::ED25519, message, &self.private)
            .map_err(E2eeError::crypto)
    }

    /// The public key, as published with `PUT /api/v1/users/me/identity`.
    #[must_use]
    pub fn public_key(&self) -> &[u8] {
        &self.public
    }

    /// The private key (only for a sealed handover).
    pub(crate) fn private_key(&self) -> &[u8] {
        &self.private
    }

    /// Signs a device certificate over
    /// [`device_certificate_message`]`(user, device, signature_key)`.
    ///
    /// # Errors
    /// [`E2eeError::Crypto`] if signing fails.
    pub fn certify(
        &self,
        user: UserId,
        device: DeviceId,
        signature_key: &[u8],
    ) -> Result<Vec<u8>, E2eeError> {
        self.sign(&device_certificate_message(user, device, signature_key))
    }
}

/// Checks a device certificate against an identity key.
///
/// # Errors
/// [`E2eeError::BadCertificate`] if it does not verify.
pub fn verify_certificate(
    identity_key: &[u8],
    user: UserId,
    device: DeviceId,
    signature_key: &[u8],
    certificate: &[u8],
) -> Result<(), E2eeError> {
    let message = device_certificate_message(user, device, signature_key);
    verify_ed25519(identity_key, &message, certificate)
        .map_err(|()| E2eeError::BadCertificate { user, device })
}

fn verify_ed25519(public: &[u8], message: &[u8], signature: &[u8]) -> Result<(), ()> {
    if public.len() != PUBLIC_KEY_LEN || signature.len() != SIGNATURE_LEN {
        return Err(());
    }
    RustCrypto::default()
        .verify_signature(SignatureScheme::ED25519, message, public, signature)
        .map_err(|_| ())
}

/// A device's own long-lived keys.
#[derive(Serialize, Deserialize)]
pub(crate) struct DeviceKeys {
    /// The MLS signature key (Ed25519); its public half is in every leaf and
    /// KeyPackage of the device, and in its certificate.
    pub(crate) signer: SignatureKeyPair,
    /// The HPKE (X25519) link key's private half.
    pub(crate) link_private: Vec<u8>,
    /// The link key's public half, published with the device's credential.
    pub(crate) link_public: Vec<u8>,
}

impl std::fmt::Debug for DeviceKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceKeys")
            .field("signature_key", &self.signer.public())
            .field("link_key", &self.link_public)
            .finish_non_exhaustive()
    }
}

impl DeviceKeys {
    /// Fresh device keys.
    pub(crate) fn generate(crypto: &RustCrypto) -> Result<Self, E2eeError> {
        let signer = SignatureKeyPair::new(SignatureScheme::ED25519).map_err(E2eeError::crypto)?;
        let ikm = crypto.random_vec(32).map_err(E2eeError::crypto)?;
        let pair = crypto
            .derive_hpke_keypair(LINK_HPKE, &ikm)
            .map_err(E2eeError::crypto)?;
        Ok(Self {
            signer,
            link_private: pair.private.to_vec(),
            link_public: pair.public,
        })
    }
}
