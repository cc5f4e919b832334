//! TLS termination (`tls.cert_file`, `tls.key_file`): rustls with the ring
//! provider (the one TLS stack of the workspace), HTTP/2 and HTTP/1.1
//! offered by ALPN. The listener runs the handshake per connection, after
//! the per-address slot is taken and within the header-read timeout, so
//! slow handshakes are bounded like slow headers.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// Why TLS could not be set up; names the configuration key at fault.
#[derive(Debug, thiserror::Error)]
#[error("`{key}` {problem}")]
pub struct TlsError {
    /// `tls.cert_file` or `tls.key_file`.
    key: &'static str,
    /// What is wrong, with the file's path.
    problem: String,
}

fn error(key: &'static str, path: &Path, what: impl std::fmt::Display) -> TlsError {
    TlsError {
        key,
        problem: format!("({}): {what}", path.display()),
    }
}

/// The acceptor for the configured certificate and key, or `None` when TLS
/// is off (neither is set; `Config::validate` refuses one without the other).
///
/// # Errors
/// A file that cannot be read, holds no certificate or key, or a key that
/// does not match the certificate.
pub fn acceptor(config: &TlsConfig) -> Result<Option<TlsAcceptor>, TlsError> {
    let (Some(cert_file), Some(key_file)) = (&config.cert_file, &config.key_file) else {
        return Ok(None);
    };
    let chain = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| error("tls.cert_file", cert_file, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error("tls.cert_file", cert_file, e))?;
    if chain.is_empty() {
        return Err(error(
            "tls.cert_file",
            cert_file,
            "holds no PEM certificate",
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
        error(
            "tls.key_file",
            key_file,
            format!("holds no usable PEM private key: {e}"),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| error("tls.cert_file", cert_file, e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            error(
                "tls.key_file",
                key_file,
                format!("does not fit the certificate: {e}"),
            )
        })?;
    // HTTP/2 first; HTTP/1.1 for WebSocket clients and older tools.
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(server))))
}
