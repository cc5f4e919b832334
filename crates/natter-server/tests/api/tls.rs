//! TLS termination: a self-signed certificate made in the test, HTTPS over
//! HTTP/2 and HTTP/1.1 (ALPN), the seed's sign-up over it, a WebSocket over
//! TLS, and certificate files that refuse to start naming their key.

use std::path::PathBuf;
use std::sync::Arc;

use natter_client::{Event, MemoryState, NativeTransport};
use natter_server::config::TlsConfig;
use natter_server::{Config, RunningServer};
use serde_json::{Value, json};

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
async fn the_sdk_logs_in_over_https_and_syncs_over_wss() {
    let cert = TestCert::new();
    let (app, base) = tls_app(&cert).await;
    let alice = app.signup("+14155554400", "Alice").await;
    let bob = app.signup("+14155554401", "Bob").await;

    // Alice's second device: the SDK's own transport, trusting the
    // self-signed certificate, for REST (https) and the socket (wss).
    let transport = NativeTransport::with_roots(WAIT, &[cert.der.as_ref()]).unwrap();
    let client = natter_client::Client::with_transport(Arc::new(transport), &base);
    let laptop = natter_testkit::TestUser::log_in(&client, &app.sms, &alice.phone, Some("laptop"))
        .await
        .unwrap();
    let mut conn = laptop.session.connect(Arc::new(MemoryState::default()));
    match next(&mut conn).await {
        Event::Connected { user_id, .. } => assert_eq!(user_id, alice.id()),
        other => panic!("expected connected, got {other:?}"),
    }
    let chat = bob.direct_chat_with(&app, &alice).await;
    bob.sends(&app, &chat, "over TLS, all the way").await;
    loop {
        if let Event::Message { message, .. } = next(&mut conn).await {
            assert_eq!(message.chat_id.to_string(), chat);
            assert_eq!(message.content.as_deref(), Some("over TLS, all the way"));
            break;
        }
    }

    // A transport that does not trust the certificate is refused.
    let untrusting = natter_client::Client::new(&base, WAIT).unwrap();
    assert!(untrusting.request_code("+14155554402").await.is_err());
}

async fn next(conn: &mut natter_client::Connection) -> Event {
    tokio::time::timeout(WAIT, conn.next_event())
        .await
        .expect("an event in time")
        .unwrap()
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
