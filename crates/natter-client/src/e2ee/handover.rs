//! The handover from an approving device to a newly linked device of the
//! same user (docs/e2ee.md, "Linking a new device"): the identity private
//! key and, if the user chose to hand over history, a reference to an
//! encrypted history export. Sealed with HPKE (base mode, X25519,
//! HKDF-SHA256, ChaCha20-Poly1305, from the OpenMLS crypto provider) to the
//! new device's link key; the HPKE `info` binds the user and the target
//! device, so a handover cannot be replayed to another device.
//!
//! Wire format: `"NHO" ‖ 0x01 ‖ u16 length ‖ KEM output ‖ ciphertext`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use natter_proto::{DeviceId, MediaId, UserId};
use openmls_rust_crypto::RustCrypto;
use openmls_traits::OpenMlsProvider as _;
use openmls_traits::crypto::OpenMlsCrypto as _;
use openmls_traits::types::HpkeCiphertext;
use serde::{Deserialize, Serialize};

use super::identity::{Identity, LINK_HPKE};
use super::media::MediaKey;
use super::{E2eeError, Engine};

/// Leading bytes of a sealed handover, with its version.
const MAGIC: &[u8; 4] = b"NHO\x01";

/// Where the approving device put the encrypted history export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRef {
    /// The uploaded export.
    pub media_id: MediaId,
    /// Its key.
    pub key: MediaKey,
}

/// An opened handover.
#[derive(Debug)]
pub struct Handover {
    /// The user's identity key pair.
    pub identity: Identity,
    /// The history export, if one was handed over.
    pub history: Option<HistoryRef>,
}

#[derive(Serialize, Deserialize)]
struct Plain {
    v: u32,
    identity_private: String,
    identity_public: String,
    history: Option<HistoryRef>,
}

fn info(user: UserId, device: DeviceId) -> Vec<u8> {
    let mut info = b"natter handover v1\0".to_vec();
    info.extend_from_slice(user.as_uuid().as_bytes());
    info.extend_from_slice(device.as_uuid().as_bytes());
    info
}

/// Seals a handover for `target` (a device of `user`) to its link key.
///
/// # Errors
/// [`E2eeError::Crypto`] if the link key is not a valid X25519 key.
pub fn seal(
    user: UserId,
    target: DeviceId,
    target_link_key: &[u8],
    identity: &Identity,
    history: Option<HistoryRef>,
) -> Result<Vec<u8>, E2eeError> {
    let plain = serde_json::to_vec(&Plain {
        v: 1,
        identity_private: STANDARD.encode(identity.private_key()),
        identity_public: STANDARD.encode(identity.public_key()),
        history,
    })
    .map_err(|e| E2eeError::Crypto(e.to_string()))?;
    let sealed = RustCrypto::default()
        .hpke_seal(LINK_HPKE, target_link_key, &info(user, target), b"", &plain)
        .map_err(E2eeError::crypto)?;
    let kem = sealed.kem_output.as_slice();
    let kem_len = u16::try_from(kem.len()).map_err(|_| E2eeError::InvalidKey)?;
    let mut out =
        Vec::with_capacity(MAGIC.len() + 2 + kem.len() + sealed.ciphertext.as_slice().len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&kem_len.to_be_bytes());
    out.extend_from_slice(kem);
    out.extend_from_slice(sealed.ciphertext.as_slice());
    Ok(out)
}

/// Opens a handover sealed to this engine's device.
///
/// # Errors
/// [`E2eeError::Crypto`] if it is not sealed to this device (or altered),
/// [`E2eeError::InvalidKey`] if the identity key inside is broken.
pub fn open(engine: &Engine, sealed: &[u8]) -> Result<Handover, E2eeError> {
    let bad = || E2eeError::Crypto("not a handover for this device".into());
    let body = sealed.strip_prefix(MAGIC.as_slice()).ok_or_else(bad)?;
    let (len, body) = body.split_first_chunk::<2>().ok_or_else(bad)?;
    let len = usize::from(u16::from_be_bytes(*len));
    if body.len() < len {
        return Err(bad());
    }
    let (kem, ciphertext) = body.split_at(len);
    let input = HpkeCiphertext {
        kem_output: kem.to_vec().into(),
        ciphertext: ciphertext.to_vec().into(),
    };
    let me = engine.device_ref();
    let plain = engine
        .provider()
        .crypto()
        .hpke_open(
            LINK_HPKE,
            &input,
            engine.link_private(),
            &info(me.user, me.device),
            b"",
        )
        .map_err(|_| bad())?;
    let plain: Plain = serde_json::from_slice(&plain).map_err(|_| bad())?;
    if plain.v != 1 {
        return Err(bad());
    }
    let private = STANDARD
        .decode(plain.identity_private)
        .map_err(|_| E2eeError::InvalidKey)?;
    let public = STANDARD
        .decode(plain.identity_public)
        .map_err(|_| E2eeError::InvalidKey)?;
    Ok(Handover {
        identity: Identity::from_parts(private, public)?,
        history: plain.history,
    })
}
