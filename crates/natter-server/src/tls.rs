//! TLS termination (`tls.cert_file`, `tls.key_file`): rustls with the ring
//! provider (the one TLS stack of the workspace), HTTP/2 and HTTP/1.1
//! offered by ALPN. The listener runs the handshake per connection, after
//! the per-address slot is taken and within the header-read timeout, so
//! slow handshakes are bounded like slow headers.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

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

/// The configured certificate and key, reloadable: the handshake of every
/// new connection takes the pair loaded last, so a renewed certificate is
/// served from the next connection on without a restart (`natter serve`
/// reloads on SIGHUP).
#[derive(Debug)]
pub struct Certificates {
    /// `tls.cert_file`.
    cert_file: PathBuf,
    /// `tls.key_file`.
    key_file: PathBuf,
    /// What handshakes use; replaced whole by [`Certificates::reload`].
    current: RwLock<Arc<CertifiedKey>>,
}

impl Certificates {
    fn load(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, TlsError> {
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
        CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
            error(
                "tls.key_file",
                key_file,
                format!("does not fit the certificate: {e}"),
            )
        })
    }

    /// Reads the files again and, if they hold a valid pair, serves it from
    /// the next handshake on. On error the pair in use stays.
    ///
    /// # Errors
    /// As at start: a file unreadable, empty, or a key that does not fit.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = Arc::new(Self::load(&self.cert_file, &self.key_file)?);
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
        Ok(())
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        )
    }
}

fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The acceptor for the configured certificate and key, and the handle that
/// reloads them, or `None` when TLS is off (neither is set;
/// `Config::validate` refuses one without the other).
///
/// # Errors
/// A file that cannot be read, holds no certificate or key, or a key that
/// does not match the certificate.
pub fn acceptor(config: &TlsConfig) -> Result<Option<(TlsAcceptor, Arc<Certificates>)>, TlsError> {
    let (Some(cert_file), Some(key_file)) = (&config.cert_file, &config.key_file) else {
        return Ok(None);
    };
    let certificates = Arc::new(Certificates {
        current: RwLock::new(Arc::new(Certificates::load(cert_file, key_file)?)),
        cert_file: cert_file.clone(),
        key_file: key_file.clone(),
    });
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| error("tls.cert_file", cert_file, e))?
        .with_no_client_auth()
        .with_cert_resolver(certificates.clone());
    // HTTP/2 first; HTTP/1.1 for WebSocket clients and older tools.
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some((TlsAcceptor::from(Arc::new(server)), certificates)))
}
