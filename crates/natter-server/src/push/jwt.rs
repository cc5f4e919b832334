//! The JSON Web Tokens the mobile push services want (RFC 7519, compact
//! form): RS256 for Google's OAuth 2 service-account grant, ES256 for APNs
//! provider tokens. Signed with `ring`; nothing here parses tokens.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject as _;

/// `base64url(header) . base64url(claims)`, what is signed.
fn signing_input(header: &serde_json::Value, claims: &serde_json::Value) -> String {
    format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    )
}

/// An RS256 (RSASSA-PKCS1-v1_5 with SHA-256) token.
///
/// # Errors
/// When signing fails.
pub fn sign_rs256(
    key: &RsaKeyPair,
    header: &serde_json::Value,
    claims: &serde_json::Value,
) -> Result<String, ring::error::Unspecified> {
    let input = signing_input(header, claims);
    let mut signature = vec![0; key.public().modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        input.as_bytes(),
        &mut signature,
    )?;
    Ok(format!("{input}.{}", B64.encode(signature)))
}

/// An ES256 (ECDSA P-256 with SHA-256, fixed-width `r || s`) token.
///
/// # Errors
/// When signing fails.
pub fn sign_es256(
    key: &EcdsaKeyPair,
    header: &serde_json::Value,
    claims: &serde_json::Value,
) -> Result<String, ring::error::Unspecified> {
    let input = signing_input(header, claims);
    let signature = key.sign(&SystemRandom::new(), input.as_bytes())?;
    Ok(format!("{input}.{}", B64.encode(signature.as_ref())))
}

/// The DER of a PKCS#8 private key in PEM (`-----BEGIN PRIVATE KEY-----`),
/// as Google service-account files and Apple `.p8` files hold it.
///
/// # Errors
/// When the text holds no PKCS#8 PEM block.
pub fn pkcs8_from_pem(pem: &[u8]) -> Result<Vec<u8>, String> {
    PrivatePkcs8KeyDer::from_pem_slice(pem)
        .map(|der| der.secret_pkcs8_der().to_vec())
        .map_err(|e| format!("not a PKCS#8 PEM private key ({e})"))
}

/// Seconds since the Unix epoch, for `iat` and `exp`.
pub(crate) fn now_secs() -> i64 {
    crate::clock::Timestamp::now().0 / 1000
}

#[cfg(test)]
mod tests {
    use ring::signature::{
        ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, KeyPair as _, UnparsedPublicKey,
    };

    use super::*;

    #[test]
    fn an_es256_token_verifies_with_the_public_key() {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
            &SystemRandom::new(),
        )
        .unwrap();
        let token = sign_es256(
            &key,
            &serde_json::json!({"alg": "ES256", "kid": "K"}),
            &serde_json::json!({"iss": "T", "iat": 1}),
        )
        .unwrap();
        let (input, sig) = token.rsplit_once('.').unwrap();
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key.public_key().as_ref())
            .verify(input.as_bytes(), &B64.decode(sig).unwrap())
            .unwrap();
        let header: serde_json::Value =
            serde_json::from_slice(&B64.decode(input.split_once('.').unwrap().0).unwrap()).unwrap();
        assert_eq!(header["kid"], "K");
    }

    #[test]
    fn pem_blocks_are_read_and_other_text_refused() {
        let der = [0x30u8, 0x03, 0x02, 0x01, 0x00];
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(der)
        );
        assert_eq!(pkcs8_from_pem(pem.as_bytes()).unwrap(), der);
        assert!(pkcs8_from_pem(b"not a key").is_err());
    }
}
