//! Message encryption for Web Push (RFC 8291) in the `aes128gcm` content
//! coding (RFC 8188), composed from `ring`'s ECDH P-256, HKDF-SHA-256 and
//! AES-128-GCM. One record, so a push is `header || ciphertext || tag`.

use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::agreement::{ECDH_P256, EphemeralPrivateKey, UnparsedPublicKey, agree_ephemeral};
use ring::hkdf::{HKDF_SHA256, KeyType, Salt};
use ring::rand::{SecureRandom, SystemRandom};

/// Length of an uncompressed P-256 point.
pub const PUBLIC_KEY_LEN: usize = 65;
/// Length of a subscription's authentication secret.
pub const AUTH_LEN: usize = 16;
/// The record size written in the header. Push services accept 4096-byte
/// bodies, so one record of this size holds any payload we send.
const RECORD_SIZE: u32 = 4096;
/// Header: salt (16) || rs (4) || idlen (1) || keyid (65).
const HEADER_LEN: usize = 16 + 4 + 1 + PUBLIC_KEY_LEN;
/// AES-GCM tag length.
const TAG_LEN: usize = 16;
/// Payloads are padded to a multiple of this (RFC 8291 §4 recommends
/// padding): every content-free push is then the same size on the wire, and
/// a preview shows the push service only its length in steps of this.
const PAD_BLOCK: usize = 256;

/// Why a payload could not be encrypted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EceError {
    /// The subscription's public key is not a P-256 point.
    #[error("the subscription key is not a valid P-256 public key")]
    BadPublicKey,
    /// The authentication secret has the wrong length.
    #[error("the subscription auth secret must be 16 bytes")]
    BadAuth,
    /// The payload does not fit in one record.
    #[error("the payload is too large for one push")]
    TooLarge,
    /// The system random generator or a primitive failed.
    #[error("a cryptographic operation failed")]
    Crypto,
}

/// Checks that `p256dh` is a usable P-256 public key and `auth` a 16-byte
/// secret, by doing the key agreement a push would do.
///
/// # Errors
/// [`EceError::BadPublicKey`] or [`EceError::BadAuth`].
pub fn check_keys(p256dh: &[u8], auth: &[u8]) -> Result<(), EceError> {
    if auth.len() != AUTH_LEN {
        return Err(EceError::BadAuth);
    }
    let rng = SystemRandom::new();
    let private = EphemeralPrivateKey::generate(&ECDH_P256, &rng).map_err(|_| EceError::Crypto)?;
    if p256dh.len() != PUBLIC_KEY_LEN {
        return Err(EceError::BadPublicKey);
    }
    agree_ephemeral(private, &UnparsedPublicKey::new(&ECDH_P256, p256dh), |_| ())
        .map_err(|_| EceError::BadPublicKey)
}

/// Encrypts `plaintext` to a subscription (`ua_public`, `auth`) with a fresh
/// ephemeral key and salt, as RFC 8291 §3 says.
///
/// # Errors
/// An [`EceError`] for bad keys or an oversized payload.
pub fn encrypt(ua_public: &[u8], auth: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, EceError> {
    if auth.len() != AUTH_LEN {
        return Err(EceError::BadAuth);
    }
    let rng = SystemRandom::new();
    let mut salt = [0u8; 16];
    rng.fill(&mut salt).map_err(|_| EceError::Crypto)?;
    let private = EphemeralPrivateKey::generate(&ECDH_P256, &rng).map_err(|_| EceError::Crypto)?;
    let as_public = private
        .compute_public_key()
        .map_err(|_| EceError::Crypto)?
        .as_ref()
        .to_vec();
    let ecdh_secret = agree_ephemeral(
        private,
        &UnparsedPublicKey::new(&ECDH_P256, ua_public),
        <[u8]>::to_vec,
    )
    .map_err(|_| EceError::BadPublicKey)?;
    let padded = (plaintext.len() + 1).next_multiple_of(PAD_BLOCK);
    let max = RECORD_SIZE as usize - HEADER_LEN - TAG_LEN;
    let pad = padded.min(max).saturating_sub(plaintext.len() + 1);
    seal(
        &ecdh_secret,
        ua_public,
        &as_public,
        auth,
        &salt,
        plaintext,
        pad,
    )
}

/// An HKDF output length.
struct Len(usize);

impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn hkdf(salt: &[u8], ikm: &[u8], info: &[&[u8]], out: &mut [u8]) -> Result<(), EceError> {
    Salt::new(HKDF_SHA256, salt)
        .extract(ikm)
        .expand(info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .map_err(|_| EceError::Crypto)
}

/// The deterministic part of RFC 8291 §3.4 and RFC 8188 §2, from the ECDH
/// secret on: key derivation, delimiter and `pad` zero bytes, AES-128-GCM,
/// header. Separate so the RFC's example can test it byte for byte.
fn seal(
    ecdh_secret: &[u8],
    ua_public: &[u8],
    as_public: &[u8],
    auth: &[u8],
    salt: &[u8; 16],
    plaintext: &[u8],
    pad: usize,
) -> Result<Vec<u8>, EceError> {
    if ua_public.len() != PUBLIC_KEY_LEN || as_public.len() != PUBLIC_KEY_LEN {
        return Err(EceError::BadPublicKey);
    }
    // One record: the plaintext, the last-record delimiter, padding, the tag.
    let record_len = plaintext.len() + 1 + pad + TAG_LEN;
    if record_len > RECORD_SIZE as usize || HEADER_LEN + record_len > RECORD_SIZE as usize {
        return Err(EceError::TooLarge);
    }
    // IKM = HKDF(auth, ecdh_secret, "WebPush: info" || 0x00 || ua_public || as_public, 32)
    let mut ikm = [0u8; 32];
    hkdf(
        auth,
        ecdh_secret,
        &[b"WebPush: info\0", ua_public, as_public],
        &mut ikm,
    )?;
    let mut cek = [0u8; 16];
    hkdf(salt, &ikm, &[b"Content-Encoding: aes128gcm\0"], &mut cek)?;
    let mut nonce = [0u8; 12];
    hkdf(salt, &ikm, &[b"Content-Encoding: nonce\0"], &mut nonce)?;

    let mut record = Vec::with_capacity(record_len);
    record.extend_from_slice(plaintext);
    record.push(2); // the last (and only) record's delimiter
    record.resize(record.len() + pad, 0);
    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &cek).map_err(|_| EceError::Crypto)?);
    // Record sequence number 0: the nonce is used as derived.
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::empty(),
        &mut record,
    )
    .map_err(|_| EceError::Crypto)?;

    let mut body = Vec::with_capacity(HEADER_LEN + record.len());
    body.extend_from_slice(salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(PUBLIC_KEY_LEN as u8);
    body.extend_from_slice(as_public);
    body.extend_from_slice(&record);
    Ok(body)
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

    use super::*;

    fn d(s: &str) -> Vec<u8> {
        B64.decode(s).unwrap()
    }

    /// The example of RFC 8291 Appendix A, with an independent ECDH (RustCrypto's p256).
    #[test]
    fn the_rfc_8291_example_encrypts_byte_for_byte() {
        let as_private = d("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw");
        let as_public = d(
            "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8",
        );
        let ua_public = d(
            "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
        );
        let auth = d("BTBZMqHH6r4Tts7J_aSIgg");
        let salt: [u8; 16] = d("DGv6ra1nlYgDCS1FRnbzlw").try_into().unwrap();
        let expected = d(concat!(
            "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27ml",
            "mlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPT",
            "pK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
        ));
        let secret = p256::SecretKey::from_slice(&as_private).unwrap();
        assert_eq!(
            secret.public_key().to_sec1_bytes().to_vec(),
            as_public,
            "the vector's key pair"
        );
        let ua = p256::PublicKey::from_sec1_bytes(&ua_public).unwrap();
        let shared = p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), ua.as_affine());
        assert_eq!(
            shared.raw_secret_bytes().to_vec(),
            d("kyrL1jIIOHEzg3sM2ZWRHDRB62YACZhhSlknJ672kSs"),
            "the vector's ecdh_secret"
        );
        let body = seal(
            shared.raw_secret_bytes(),
            &ua_public,
            &as_public,
            &auth,
            &salt,
            b"When I grow up, I want to be a watermelon",
            0,
        )
        .unwrap();
        assert_eq!(B64.encode(&body), B64.encode(&expected));
    }

    #[test]
    fn keys_are_checked_and_payloads_bounded() {
        let ua_public = d(
            "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
        );
        let auth = [7u8; 16];
        assert_eq!(check_keys(&ua_public, &auth), Ok(()));
        assert_eq!(check_keys(&ua_public, &auth[..15]), Err(EceError::BadAuth));
        let mut off_curve = ua_public.clone();
        off_curve[64] ^= 1;
        assert_eq!(check_keys(&off_curve, &auth), Err(EceError::BadPublicKey));
        assert_eq!(
            check_keys(&ua_public[..64], &auth),
            Err(EceError::BadPublicKey)
        );
        // Padded to 256-byte steps: short payloads look alike on the wire.
        let short = encrypt(&ua_public, &auth, b"{}").unwrap().len();
        let longer = encrypt(&ua_public, &auth, &[b'a'; 200]).unwrap().len();
        assert_eq!((short, longer), (HEADER_LEN + 256 + TAG_LEN, short));
        // The largest payload that fits the 4096-byte body, and one more byte.
        let max = 4096 - HEADER_LEN - 1 - TAG_LEN;
        assert_eq!(
            encrypt(&ua_public, &auth, &vec![b'a'; max]).unwrap().len(),
            4096
        );
        assert_eq!(
            encrypt(&ua_public, &auth, &vec![b'a'; max + 1]),
            Err(EceError::TooLarge)
        );
    }
}
