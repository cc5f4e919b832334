//! TLS termination: a self-signed certificate made in the test, HTTPS over
//! HTTP/2 and HTTP/1.1 (ALPN), the seed's sign-up over it, a WebSocket over
//! TLS, and certificate files that refuse to start naming their key.

use std::path::PathBuf;
use std::sync::Arc;

use futures_util::{SinkExt as _, StreamExt as _};
use natter_server::config::TlsConfig;
use natter_server::{Config, RunningServer};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{TestApp, WAIT};

/// A self-signed certificate for `localhost` and 127.0.0.1, written as PEM
/// files in a temporary directory.
struct TestCert {
    dir: tempfile::TempDir,
    pem: String,
    der: rustls_pki_types::CertificateDer<'static>,
}

impl TestCert {
    fn new() -> Self {
        let made = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cert.pem"), made.cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), made.signing_key.serialize_pem()).unwrap();
        Self {
            pem: made.cert.pem(),
            der: made.cert.der().clone(),
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn config(&self) -> TlsConfig {
        TlsConfig {
            cert_file: Some(self.path("cert.pem")),
            key_file: Some(self.path("key.pem")),
        }
    }

    /// An HTTPS client that trusts only this certificate.
    fn client(&self, base: &str, http1_only: bool) -> reqwest::Client {
        let port: u16 = base.rsplit(':').next().unwrap().parse().unwrap();
        let mut builder = reqwest::Client::builder()
            .timeout(WAIT)
            .resolve(
                "localhost",
                std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            )
            .https_only(true)
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.pem.as_bytes()).unwrap());
        if http1_only {
            builder = builder.http1_only();
        }
        builder.build().unwrap()
    }
}

async fn tls_app(cert: &TestCert) -> (TestApp, String) {
    let tls = cert.config();
    let app = TestApp::start_with(move |c| c.tls = tls).await;
    let base = app.base.clone();
    assert!(base.starts_with("https://localhost:"), "{base}");
    (app, base)
}

#[tokio::test]
async fn https_speaks_http2_and_http1_by_alpn_and_the_seed_sign_up_works() {
    let cert = TestCert::new();
    let (app, base) = tls_app(&cert).await;

    let h2 = cert.client(&base, false);
    let res = h2.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), reqwest::Version::HTTP_2, "h2 by ALPN");

    let h1 = cert.client(&base, true);
    let res = h1.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), reqwest::Version::HTTP_11);

    // The seed's bodies, over HTTPS.
    let res = h2
        .post(format!("{base}/api/v1/users/verification"))
        .json(&json!({"phone": "+1234567890"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let code = app.sms.wait_for("+1234567890", WAIT).await.unwrap();
    let res = h1
        .post(format!("{base}/api/v1/users/register"))
        .json(&json!({"phone": "+1234567890", "name": "John Doe", "verification_code": code}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let session: Value = res.json().await.unwrap();
    let me = h2
        .get(format!("{base}/api/v1/users/me"))
        .bearer_auth(session["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);

    // Plain HTTP on the TLS port gets no answer.
    let plain = reqwest::Client::builder().timeout(WAIT).build().unwrap();
    assert!(
        plain
            .get(format!("{}/healthz", app.base))
            .send()
            .await
            .is_err()
    );
    // A client that does not trust the certificate is refused.
    let untrusting = reqwest::Client::builder()
        .timeout(WAIT)
        .tls_built_in_root_certs(false)
        .build()
        .unwrap();
    assert!(
        untrusting
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_websocket_works_over_tls() {
    let cert = TestCert::new();
    let (app, _base) = tls_app(&cert).await;
    let alice = app.signup("+14155554400", "Alice").await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der.clone()).unwrap();
    let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    let port = app.base.rsplit(':').next().unwrap().to_owned();
    let addr = format!("127.0.0.1:{port}");
    let tcp = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(&addr))
        .await
        .unwrap()
        .unwrap();
    let tls = tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(Arc::new(client)).connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        ),
    )
    .await
    .unwrap()
    .unwrap();
    let (mut ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async(format!("wss://localhost:{port}/api/v1/ws"), tls),
    )
    .await
    .unwrap()
    .unwrap();
    ws.send(Message::text(
        json!({"type": "auth", "token": alice.token}).to_string(),
    ))
    .await
    .unwrap();
    let frame = loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => break serde_json::from_str::<Value>(&t).unwrap(),
            Some(Ok(_)) => {}
            other => panic!("the socket ended: {other:?}"),
        }
    };
    assert_eq!(frame["type"], "connected", "{frame}");
    assert_eq!(frame["user_id"], alice.user_id.as_str());
}

/// Starts a server with `tls`; returns the start-up error's text.
async fn start_error(tls: TlsConfig) -> String {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("data"),
        tls,
        ..Config::default()
    };
    config.validate().unwrap();
    let err = tokio::time::timeout(WAIT, RunningServer::start(config))
        .await
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(
        !dir.path().join("data").exists(),
        "nothing is created with a bad certificate"
    );
    err
}

#[tokio::test]
async fn unusable_certificate_files_refuse_to_start_naming_the_key() {
    let cert = TestCert::new();
    let other = TestCert::new();

    let mut tls = cert.config();
    tls.cert_file = Some(cert.path("missing.pem"));
    let e = start_error(tls).await;
    assert!(
        e.contains("`tls.cert_file`") && e.contains("missing.pem"),
        "{e}"
    );

    let mut tls = cert.config();
    tls.cert_file = Some(cert.path("key.pem"));
    let e = start_error(tls).await;
    assert!(e.contains("`tls.cert_file`"), "{e}");

    let mut tls = cert.config();
    tls.key_file = Some(cert.path("cert.pem"));
    let e = start_error(tls).await;
    assert!(e.contains("`tls.key_file`"), "{e}");

    let mut tls = cert.config();
    tls.key_file = other.config().key_file;
    let e = start_error(tls).await;
    assert!(e.contains("`tls.key_file`") && e.contains("fit"), "{e}");
}
