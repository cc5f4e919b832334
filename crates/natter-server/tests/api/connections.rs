//! The listener's protections: header-read timeout and connections per address.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{TestApp, WAIT};

const HEALTH: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n";

/// Sends a health check on an open connection and reads the answer.
async fn health_on(stream: &mut TcpStream) -> String {
    stream.write_all(HEALTH).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Whether the server closes `stream` (EOF or reset) within `WAIT`.
async fn is_closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(WAIT, stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

fn addr(app: &TestApp) -> String {
    app.base.trim_start_matches("http://").to_owned()
}

#[tokio::test]
async fn a_client_that_does_not_finish_its_headers_is_disconnected() {
    let app = TestApp::start_with(|c| c.limits.header_read_timeout_secs = 1).await;
    // In time: served.
    let mut prompt = TcpStream::connect(addr(&app)).await.unwrap();
    assert!(health_on(&mut prompt).await.starts_with("HTTP/1.1 200"));
    // Never finishing the headers: closed.
    let mut slow = TcpStream::connect(addr(&app)).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: te")
        .await
        .unwrap();
    assert!(
        is_closed(&mut slow).await,
        "a slow-loris connection stays open"
    );
    // An idle keep-alive connection is closed too.
    assert!(
        is_closed(&mut prompt).await,
        "an idle keep-alive connection stays open"
    );
}

#[tokio::test]
async fn connections_per_address_are_limited_at_n() {
    let app = TestApp::start_with(|c| c.limits.max_connections_per_ip = 3).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr(&app)).await.unwrap();
        assert!(health_on(&mut s).await.starts_with("HTTP/1.1 200"));
        open.push(s);
    }
    let mut fourth = TcpStream::connect(addr(&app)).await.unwrap();
    let _ = fourth.write_all(HEALTH).await;
    assert!(
        is_closed(&mut fourth).await,
        "the fourth connection was served"
    );

    // Closing one frees its slot.
    drop(open.pop());
    let served = tokio::time::timeout(WAIT, async {
        loop {
            let mut s = TcpStream::connect(addr(&app)).await.unwrap();
            if s.write_all(HEALTH).await.is_ok() {
                let mut buf = vec![0u8; 1024];
                if let Ok(n) = s.read(&mut buf).await
                    && String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200")
                {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(served.is_ok(), "a freed slot was not given back");
}

#[tokio::test]
async fn websockets_count_against_the_per_address_limit_until_they_close() {
    // Three: the test's HTTP client keeps one connection open, plus two sockets.
    let app = TestApp::start_with(|c| c.limits.max_connections_per_ip = 3).await;
    let alice = app.signup("+14155550620", "Alice").await;
    let first = alice.connect(&app).await;
    let _second = alice.connect(&app).await;
    let third = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(app.ws_url()))
        .await
        .unwrap();
    assert!(
        third.is_err(),
        "a third socket from the same address opened"
    );
    first.close().await;
    let reopened = tokio::time::timeout(WAIT, async {
        loop {
            if tokio_tungstenite::connect_async(app.ws_url()).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        reopened.is_ok(),
        "the closed socket's slot was not given back"
    );
}
