//! Secrets: access tokens and verification codes. Plain values exist only on
//! their way to the client; the store keeps hashes. `Debug` never prints them.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand::{Rng as _, RngCore as _};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::phone::Phone;

/// Every access token starts with this, so leaked tokens are easy to spot
/// (secret scanners, logs).
pub const TOKEN_PREFIX: &str = "nat_";
/// Random bytes in a token: 256 bits.
const TOKEN_BYTES: usize = 32;

/// A fresh `prefix` + base64url of `N` bytes from a CSPRNG
/// (`rand::rng()`: ChaCha12 seeded and reseeded from the OS).
fn random_secret<const N: usize>(prefix: &str) -> String {
    let mut bytes = [0u8; N];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// `text` if it is `prefix` + base64url of exactly `len` bytes.
fn prefixed_secret(text: &str, prefix: &str, len: usize) -> Option<String> {
    let body = text.strip_prefix(prefix)?;
    let decoded = URL_SAFE_NO_PAD.decode(body).ok()?;
    (decoded.len() == len).then(|| text.to_owned())
}

/// The SHA-256 of a secret's text, as stored.
fn hash_of(text: &str) -> TokenHash {
    TokenHash(Sha256::digest(text.as_bytes()).into())
}

/// An access token as handed to the client, once.
pub struct PlainToken(String);

/// The SHA-256 of an access token: what the store keeps and looks up.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenHash(pub [u8; 32]);

impl PlainToken {
    /// A fresh token from a CSPRNG (`rand::rng()`: ChaCha12 seeded and reseeded from the OS).
    #[must_use]
    pub fn generate() -> Self {
        Self(random_secret::<TOKEN_BYTES>(TOKEN_PREFIX))
    }

    /// Wraps a token sent by a client, if it has the right shape.
    #[must_use]
    pub fn from_client(token: &str) -> Option<Self> {
        prefixed_secret(token, TOKEN_PREFIX, TOKEN_BYTES).map(Self)
    }

    /// Its hash, for storage and lookup.
    #[must_use]
    pub fn hash(&self) -> TokenHash {
        hash_of(&self.0)
    }

    /// The text to send to the client.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PlainToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PlainToken(<redacted>)")
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash(<redacted>)")
    }
}

/// Every invite starts with this, so one pasted into the wrong field (or a
/// log) is recognised.
pub const INVITE_PREFIX: &str = "inv_";
/// Random bytes in an invite: 128 bits, short enough to paste in a chat,
/// far beyond guessing under the per-address attempt limit.
const INVITE_BYTES: usize = 16;

/// An invite (sign-up mode `invite`) as handed to the operator, once. The
/// store keeps only its SHA-256, like an access token's.
pub struct PlainInvite(String);

impl PlainInvite {
    /// A fresh invite from a CSPRNG.
    #[must_use]
    pub fn generate() -> Self {
        Self(random_secret::<INVITE_BYTES>(INVITE_PREFIX))
    }

    /// Wraps an invite sent by a client, if it has the right shape.
    #[must_use]
    pub fn from_client(invite: &str) -> Option<Self> {
        prefixed_secret(invite.trim(), INVITE_PREFIX, INVITE_BYTES).map(Self)
    }

    /// Its hash, for storage and lookup.
    #[must_use]
    pub fn hash(&self) -> TokenHash {
        hash_of(&self.0)
    }

    /// The text to give to the invitee.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PlainInvite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PlainInvite(<redacted>)")
    }
}

/// A 6-digit verification code.
pub struct VerificationCode(String);

impl VerificationCode {
    /// A fresh, uniformly drawn code from a CSPRNG.
    #[must_use]
    pub fn generate() -> Self {
        let n: u32 = rand::rng().random_range(0..1_000_000);
        Self(format!("{n:06}"))
    }

    /// A code typed by a user, if it is six ASCII digits.
    #[must_use]
    pub fn from_client(code: &str) -> Option<Self> {
        let code = code.trim();
        (code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit())).then(|| Self(code.to_owned()))
    }

    /// The digits, for the SMS.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for VerificationCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VerificationCode(<redacted>)")
    }
}

/// The keyed hash of a code, bound to its phone number. Keyed, so a copy of
/// the database alone does not give codes away by brute force.
#[derive(Clone)]
pub struct CodeHash(pub [u8; 32]);

impl CodeHash {
    /// Compares in constant time.
    #[must_use]
    pub fn matches(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for CodeHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CodeHash(<redacted>)")
    }
}

/// The server's key for hashing verification codes (kept in the store, so
/// every node of a cluster shares it).
#[derive(Clone)]
pub struct CodeKey([u8; 32]);

impl CodeKey {
    /// A fresh random key.
    #[must_use]
    pub fn generate() -> Self {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Self(key)
    }

    /// Reads a stored key.
    #[must_use]
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self)
    }

    /// The raw key, for storage.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// HMAC-SHA256 over the number and the code.
    #[must_use]
    pub fn hash(&self, phone: &Phone, code: &VerificationCode) -> CodeHash {
        // A 32-byte key is always accepted by HMAC; the fallback is unreachable.
        let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(&self.0) else {
            return CodeHash([0; 32]);
        };
        mac.update(phone.as_str().as_bytes());
        mac.update(b":");
        mac.update(code.0.as_bytes());
        CodeHash(mac.finalize().into_bytes().into())
    }
}

impl fmt::Debug for CodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CodeKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phone::PhoneValidation;

    #[test]
    fn tokens_are_prefixed_256_bit_and_hash_stably() {
        let t = PlainToken::generate();
        assert!(t.expose().starts_with("nat_"));
        assert_eq!(t.expose().len(), 4 + 43);
        let again = PlainToken::from_client(t.expose()).unwrap();
        assert!(again.hash() == t.hash());
        assert!(PlainToken::generate().hash() != t.hash());
        assert_eq!(format!("{t:?}"), "PlainToken(<redacted>)");
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for bad in [
            "",
            "nat_",
            "abc",
            "nat_short",
            &format!("xyz_{}", "A".repeat(43)),
        ] {
            assert!(PlainToken::from_client(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn invites_are_prefixed_128_bit_and_hash_stably() {
        let i = PlainInvite::generate();
        assert!(i.expose().starts_with("inv_"));
        assert_eq!(i.expose().len(), 4 + 22);
        assert!(PlainInvite::from_client(i.expose()).unwrap().hash() == i.hash());
        assert!(PlainInvite::from_client("inv_short").is_none());
        assert!(PlainInvite::from_client(PlainToken::generate().expose()).is_none());
        assert_eq!(format!("{i:?}"), "PlainInvite(<redacted>)");
    }

    #[test]
    fn codes_are_six_digits() {
        for _ in 0..100 {
            let c = VerificationCode::generate();
            assert!(VerificationCode::from_client(c.expose()).is_some());
        }
        assert!(VerificationCode::from_client("12345").is_none());
        assert!(VerificationCode::from_client("1234567").is_none());
        assert!(VerificationCode::from_client("12a456").is_none());
    }

    #[test]
    fn code_hash_binds_phone_and_key() {
        let key = CodeKey::generate();
        let a = Phone::parse("+14155550123", PhoneValidation::Parse).unwrap();
        let b = Phone::parse("+14155550124", PhoneValidation::Parse).unwrap();
        let code = VerificationCode::from_client("123456").unwrap();
        assert!(key.hash(&a, &code).matches(&key.hash(&a, &code)));
        assert!(!key.hash(&a, &code).matches(&key.hash(&b, &code)));
        assert!(
            !CodeKey::generate()
                .hash(&a, &code)
                .matches(&key.hash(&a, &code))
        );
    }
}
