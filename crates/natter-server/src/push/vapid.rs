//! VAPID (RFC 8292): the server's P-256 key pair, and the ES256-signed JWT
//! that identifies the server to push services.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};

/// How long a VAPID token is valid. RFC 8292 allows up to 24 hours; push
/// services reject tokens near that edge, so stay well inside it.
const TOKEN_LIFETIME_SECS: i64 = 12 * 3600;

/// The server's VAPID key pair.
pub struct VapidKey {
    /// The signing key.
    pair: EcdsaKeyPair,
    /// The public key, uncompressed point, base64url.
    public_b64: String,
}

impl std::fmt::Debug for VapidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key.
        f.debug_struct("VapidKey")
            .field("public_key", &self.public_b64)
            .finish()
    }
}

/// Why a VAPID key could not be made, read or used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("VAPID key: {0}")]
pub struct VapidError(&'static str);

impl VapidKey {
    /// A new key pair as PKCS#8 bytes, to be stored and read back with
    /// [`VapidKey::from_pkcs8`].
    ///
    /// # Errors
    /// When the system random generator fails.
    pub fn generate_pkcs8() -> Result<Vec<u8>, VapidError> {
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map(|doc| doc.as_ref().to_vec())
            .map_err(|_| VapidError("could not generate a key pair"))
    }

    /// Reads a stored key pair.
    ///
    /// # Errors
    /// When the bytes are not a P-256 PKCS#8 key.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, VapidError> {
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8,
            &SystemRandom::new(),
        )
        .map_err(|_| VapidError("the stored key is not a P-256 PKCS#8 key"))?;
        let public_b64 = B64.encode(pair.public_key().as_ref());
        Ok(Self { pair, public_b64 })
    }

    /// The public key as browsers' `applicationServerKey` wants it:
    /// uncompressed point, base64url without padding.
    #[must_use]
    pub fn public_key(&self) -> &str {
        &self.public_b64
    }

    /// The `Authorization` header value for a request to `audience` (the
    /// endpoint's origin): `vapid t=<jwt>, k=<public key>`.
    ///
    /// # Errors
    /// When signing fails.
    pub fn authorization(
        &self,
        audience: &str,
        subject: &str,
        now_secs: i64,
    ) -> Result<String, VapidError> {
        let header = B64.encode(br#"{"typ":"JWT","alg":"ES256"}"#);
        let claims = serde_json::json!({
            "aud": audience,
            "exp": now_secs + TOKEN_LIFETIME_SECS,
            "sub": subject,
        });
        let claims = B64.encode(claims.to_string());
        let signing_input = format!("{header}.{claims}");
        let signature = self
            .pair
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .map_err(|_| VapidError("signing failed"))?;
        Ok(format!(
            "vapid t={signing_input}.{}, k={}",
            B64.encode(signature.as_ref()),
            self.public_b64
        ))
    }
}

#[cfg(test)]
mod tests {
    use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};

    use super::*;

    #[test]
    fn a_token_verifies_with_the_published_key_and_names_its_audience() {
        let key = VapidKey::from_pkcs8(&VapidKey::generate_pkcs8().unwrap()).unwrap();
        let header = key
            .authorization("https://push.example.net", "mailto:ops@example.org", 1000)
            .unwrap();
        let rest = header.strip_prefix("vapid t=").unwrap();
        let (token, k) = rest.split_once(", k=").unwrap();
        assert_eq!(k, key.public_key());
        let public = B64.decode(k).unwrap();
        assert_eq!(public.len(), 65);
        assert_eq!(public[0], 4, "uncompressed point");
        let (input, sig) = token.rsplit_once('.').unwrap();
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &public)
            .verify(input.as_bytes(), &B64.decode(sig).unwrap())
            .unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&B64.decode(input.split_once('.').unwrap().1).unwrap()).unwrap();
        assert_eq!(claims["aud"], "https://push.example.net");
        assert_eq!(claims["exp"], 1000 + TOKEN_LIFETIME_SECS);
        assert_eq!(claims["sub"], "mailto:ops@example.org");
        assert!(VapidKey::from_pkcs8(b"not a key").is_err());
    }
}
