//! Safety numbers, as Signal defines them (fingerprint version 0): for each
//! of the two users, SHA-512 iterated 5200 times — the first input is
//! `version (2 bytes, 0) ‖ identity key ‖ stable id`, every round hashes
//! `previous ‖ identity key` — and the first 30 bytes of the result read as
//! six 5-byte big-endian numbers, each mod 100000, printed as five digits.
//! The two 30-digit halves are shown with the user of the lower id first,
//! so both sides see the same 60 digits.
//!
//! Natter's stable id is the user id's 16 bytes and the identity key is the
//! raw 32-byte Ed25519 key (Signal uses its service id and a 33-byte
//! Curve25519 key), so the numbers are Signal's construction over Natter's
//! identities, not interchangeable with Signal's.
//!
//! The QR payload is `"NSN" ‖ 0x00 ‖ 32 bytes of the scanner-side
//! fingerprint ‖ 32 bytes of the other side's`; a device that scans the
//! other's code checks that the halves are its own, swapped.

use natter_proto::UserId;
use sha2::{Digest as _, Sha512};

/// Signal's fingerprint version 0.
const FINGERPRINT_VERSION: u16 = 0;
/// Signal's iteration count.
const ITERATIONS: usize = 5200;
/// Leading bytes of a QR payload, with its version.
const QR_MAGIC: &[u8; 4] = b"NSN\x00";
/// Bytes of each side's fingerprint in the QR payload.
const QR_FINGERPRINT_BYTES: usize = 32;

/// The safety number of a pair of users, as one of them computes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetyNumber {
    /// 60 digits, lower user id's half first.
    digits: String,
    /// The QR payload (this side's fingerprint first).
    qr: Vec<u8>,
}

/// A scanned QR payload that is not a safety-number code of this version.
#[derive(Debug, thiserror::Error)]
#[error("the scanned code is not a Natter safety number (or of another version)")]
pub struct NotASafetyNumber;

impl SafetyNumber {
    /// The safety number between `me` (with my identity key) and `them`.
    #[must_use]
    pub fn new(me: UserId, my_key: &[u8], them: UserId, their_key: &[u8]) -> Self {
        let mine = fingerprint(me, my_key);
        let theirs = fingerprint(them, their_key);
        let (first, second) = if me.as_uuid().as_bytes() <= them.as_uuid().as_bytes() {
            (&mine, &theirs)
        } else {
            (&theirs, &mine)
        };
        let mut digits = digits(first);
        digits.push_str(&self::digits(second));
        let mut qr = Vec::with_capacity(QR_MAGIC.len() + 2 * QR_FINGERPRINT_BYTES);
        qr.extend_from_slice(QR_MAGIC);
        qr.extend_from_slice(&mine[..QR_FINGERPRINT_BYTES]);
        qr.extend_from_slice(&theirs[..QR_FINGERPRINT_BYTES]);
        Self { digits, qr }
    }

    /// The 60 digits.
    #[must_use]
    pub fn digits(&self) -> &str {
        &self.digits
    }

    /// The digits in 12 groups of five, for display.
    #[must_use]
    pub fn grouped(&self) -> String {
        self.digits
            .as_bytes()
            .chunks(5)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// What this side's QR code shows.
    #[must_use]
    pub fn qr_payload(&self) -> &[u8] {
        &self.qr
    }

    /// Whether a code scanned from the other user's screen shows the same
    /// pair of keys (its halves are ours, swapped).
    ///
    /// # Errors
    /// [`NotASafetyNumber`] if the payload is not such a code.
    pub fn matches_scanned(&self, scanned: &[u8]) -> Result<bool, NotASafetyNumber> {
        let body = scanned
            .strip_prefix(QR_MAGIC.as_slice())
            .ok_or(NotASafetyNumber)?;
        if body.len() != 2 * QR_FINGERPRINT_BYTES {
            return Err(NotASafetyNumber);
        }
        let (their_local, their_remote) = body.split_at(QR_FINGERPRINT_BYTES);
        let ours = &self.qr[QR_MAGIC.len()..];
        let (our_local, our_remote) = ours.split_at(QR_FINGERPRINT_BYTES);
        Ok(their_local == our_remote && their_remote == our_local)
    }
}

/// One side's iterated hash.
fn fingerprint(user: UserId, key: &[u8]) -> [u8; 64] {
    let mut hash = Vec::with_capacity(2 + key.len() + 16);
    hash.extend_from_slice(&FINGERPRINT_VERSION.to_be_bytes());
    hash.extend_from_slice(key);
    hash.extend_from_slice(user.as_uuid().as_bytes());
    let mut out = [0u8; 64];
    for _ in 0..ITERATIONS {
        let mut d = Sha512::new();
        d.update(&hash);
        d.update(key);
        out = d.finalize().into();
        hash.clear();
        hash.extend_from_slice(&out);
    }
    out
}

/// Six five-digit groups from the first 30 bytes.
fn digits(hash: &[u8; 64]) -> String {
    let mut s = String::with_capacity(30);
    for chunk in hash[..30].chunks(5) {
        let n = chunk.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        s.push_str(&format!("{:05}", n % 100_000));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_see_the_same_number_and_their_codes_match() {
        let (alice, bob) = (UserId::new(), UserId::new());
        let (ka, kb) = ([1u8; 32], [2u8; 32]);
        let on_alice = SafetyNumber::new(alice, &ka, bob, &kb);
        let on_bob = SafetyNumber::new(bob, &kb, alice, &ka);
        assert_eq!(on_alice.digits(), on_bob.digits());
        assert_eq!(on_alice.digits().len(), 60);
        assert!(on_alice.digits().bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(on_alice.grouped().split(' ').count(), 12);
        assert!(on_alice.matches_scanned(on_bob.qr_payload()).unwrap());
        assert!(on_bob.matches_scanned(on_alice.qr_payload()).unwrap());
        // Scanning one's own code is not a match.
        assert!(!on_alice.matches_scanned(on_alice.qr_payload()).unwrap());
        assert!(on_alice.matches_scanned(b"hello").is_err());
    }

    #[test]
    fn a_different_key_gives_a_different_number() {
        let (alice, bob) = (UserId::new(), UserId::new());
        let honest = SafetyNumber::new(alice, &[1; 32], bob, &[2; 32]);
        let substituted = SafetyNumber::new(alice, &[1; 32], bob, &[3; 32]);
        assert_ne!(honest.digits(), substituted.digits());
        let on_bob = SafetyNumber::new(bob, &[2; 32], alice, &[1; 32]);
        assert!(!substituted.matches_scanned(on_bob.qr_payload()).unwrap());
    }

    #[test]
    fn the_fingerprint_is_signals_iteration() {
        // First round by hand: SHA-512(version ‖ key ‖ id ‖ key).
        let user = UserId::new();
        let key = [9u8; 32];
        let mut d = Sha512::new();
        d.update(0u16.to_be_bytes());
        d.update(key);
        d.update(user.as_uuid().as_bytes());
        d.update(key);
        let mut h: [u8; 64] = d.finalize().into();
        for _ in 1..ITERATIONS {
            let mut d = Sha512::new();
            d.update(h);
            d.update(key);
            h = d.finalize().into();
        }
        assert_eq!(fingerprint(user, &key), h);
    }
}
