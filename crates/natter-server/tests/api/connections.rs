//! The listener's protections: header-read timeout and connections per address.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use serde_json::json;
use tokio_tungstenite::MaybeTlsStream;

use crate::support::{Socket, TestApp, TestUser, WAIT};

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

/// Node 0's own address: the listener's protections are each node's, and
/// on a cluster the balancer would spread these connections over nodes.
fn addr(app: &TestApp) -> String {
    app.node_addr(0).to_string()
}

/// An authenticated WebSocket of `user` to node 0, from the local address
/// `from` (so the test's other connections do not count against it), or
/// the refusal.
async fn socket_from(app: &TestApp, user: &TestUser, from: &str) -> Result<Socket, String> {
    let tcp = tokio::net::TcpSocket::new_v4().unwrap();
    tcp.bind(std::net::SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    let stream = tokio::time::timeout(WAIT, tcp.connect(app.node_addr(0)))
        .await
        .expect("connect in time")
        .map_err(|e| e.to_string())?;
    let url = format!("ws://{}/api/v1/ws", app.node_addr(0));
    let (ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream)),
    )
    .await
    .expect("the handshake ends in time")
    .map_err(|e| e.to_string())?;
    let mut socket = Socket::from_stream(ws);
    socket
        .send(json!({"type": "auth", "token": user.token}))
        .await;
    match socket.next_or_close().await {
        Ok(frame) if frame["type"] == "connected" => Ok(socket),
        other => Err(format!("{other:?}")),
    }
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
    const FROM: &str = "127.0.0.21";
    let app = TestApp::start_with(|c| c.limits.max_connections_per_ip = 2).await;
    let alice = app.signup("+14155550620", "Alice").await;
    let first = socket_from(&app, &alice, FROM).await.unwrap();
    let _second = socket_from(&app, &alice, FROM).await.unwrap();
    assert!(
        socket_from(&app, &alice, FROM).await.is_err(),
        "a third socket from the same address opened"
    );
    first.close().await;
    let reopened = tokio::time::timeout(WAIT, async {
        loop {
            if socket_from(&app, &alice, FROM).await.is_ok() {
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

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
const H2_EMPTY_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
/// How long a connection the server should close may take to be closed, with
/// its timers at one second: well under the 9.5 s the bug kept them open.
const CLOSE_BOUND: Duration = Duration::from_secs(5);

/// Whether the server closes `stream` (EOF or reset) within `bound`, reading
/// and discarding whatever it sends before that.
async fn closes_within(stream: &mut TcpStream, bound: Duration) -> bool {
    let mut buf = vec![0u8; 16 * 1024];
    tokio::time::timeout(bound, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// A HEADERS frame for `GET /healthz` on `stream_id` (HPACK without Huffman
/// or dynamic table: indexed :method GET and :scheme http, literal :path and
/// :authority with indexed names), ending the stream.
fn h2_get_healthz(stream_id: u8) -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x04, 8];
    block.extend_from_slice(b"/healthz");
    block.extend_from_slice(&[0x01, 4]);
    block.extend_from_slice(b"test");
    let len = u8::try_from(block.len()).unwrap();
    let mut frame = vec![0, 0, len, 1, 0x05, 0, 0, 0, stream_id];
    frame.extend_from_slice(&block);
    frame
}

/// Reads HTTP/2 frames until a HEADERS frame on `stream_id` arrives; false if
/// the connection ends or nothing comes within `WAIT`.
async fn h2_answer_on(stream: &mut TcpStream, stream_id: u8) -> bool {
    tokio::time::timeout(WAIT, async {
        loop {
            let mut head = [0u8; 9];
            if stream.read_exact(&mut head).await.is_err() {
                return false;
            }
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            if stream.read_exact(&mut payload).await.is_err() {
                return false;
            }
            if head[3] == 1 && head[8] == stream_id {
                return true;
            }
        }
    })
    .await
    .unwrap_or(false)
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
    let app = TestApp::start_with(|c| c.limits.header_read_timeout_secs = 1).await;
    let mut silent = TcpStream::connect(addr(&app)).await.unwrap();
    assert!(
        closes_within(&mut silent, CLOSE_BOUND).await,
        "a connection that never sent a byte stays open"
    );
}

#[tokio::test]
async fn half_an_http2_preface_is_closed_after_the_header_timeout() {
    let app = TestApp::start_with(|c| c.limits.header_read_timeout_secs = 1).await;
    let mut half = TcpStream::connect(addr(&app)).await.unwrap();
    half.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    assert!(
        closes_within(&mut half, CLOSE_BOUND).await,
        "protocol detection waits forever"
    );
}

#[tokio::test]
async fn an_http2_connection_without_a_request_is_closed_after_the_header_timeout() {
    let app = TestApp::start_with(|c| c.limits.header_read_timeout_secs = 1).await;
    let mut h2 = TcpStream::connect(addr(&app)).await.unwrap();
    h2.write_all(H2_PREFACE).await.unwrap();
    h2.write_all(H2_EMPTY_SETTINGS).await.unwrap();
    assert!(
        closes_within(&mut h2, CLOSE_BOUND).await,
        "an HTTP/2 connection with no stream stays open"
    );
}

#[tokio::test]
async fn an_idle_http2_connection_is_served_then_closed_after_the_idle_timeout() {
    let app = TestApp::start_with(|c| {
        c.limits.header_read_timeout_secs = 1;
        c.limits.idle_timeout_secs = 2;
    })
    .await;
    let mut h2 = TcpStream::connect(addr(&app)).await.unwrap();
    h2.write_all(H2_PREFACE).await.unwrap();
    h2.write_all(H2_EMPTY_SETTINGS).await.unwrap();
    h2.write_all(&h2_get_healthz(1)).await.unwrap();
    assert!(h2_answer_on(&mut h2, 1).await, "no answer over HTTP/2");
    // Past the header timeout but within the idle timeout: still served.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    h2.write_all(&h2_get_healthz(3)).await.unwrap();
    assert!(
        h2_answer_on(&mut h2, 3).await,
        "closed before the idle timeout"
    );
    assert!(
        closes_within(&mut h2, CLOSE_BOUND).await,
        "an idle HTTP/2 connection stays open"
    );
}

/// A request whose header fields (names and values) come to `size` bytes.
fn request_with_headers_of(size: usize) -> Vec<u8> {
    // "host" + "test" + "x-pad" = 13 bytes before the padding.
    let pad = "a".repeat(size - 13);
    format!("GET /healthz HTTP/1.1\r\nHost: test\r\nX-Pad: {pad}\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

/// Sends `request` on a new connection and reads the whole answer.
async fn raw_answer(app: &TestApp, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr(app)).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("the answer ends in time")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn header_fields_are_limited_at_n() {
    let app = TestApp::start_with(|c| c.limits.max_header_bytes = 1024).await;
    // "Connection: close" is counted too: 10 + 5 bytes.
    let at_limit = raw_answer(&app, &request_with_headers_of(1024 - 15)).await;
    assert!(at_limit.starts_with("HTTP/1.1 200"), "{at_limit}");
    let over = raw_answer(&app, &request_with_headers_of(1024 - 15 + 1)).await;
    assert!(over.starts_with("HTTP/1.1 431"), "{over}");
    assert!(over.contains(r#""code":"headers_too_large""#), "{over}");
}

#[tokio::test]
async fn a_100_kb_header_is_refused_with_the_default_limits() {
    let app = TestApp::start().await;
    let answer = raw_answer(&app, &request_with_headers_of(100_000)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(answer.contains(r#""code":"headers_too_large""#), "{answer}");
}

#[tokio::test]
async fn a_client_that_stops_reading_a_download_is_cut_off_after_the_write_timeout() {
    let app = TestApp::start_with(|c| c.limits.write_timeout_secs = 1).await;
    let alice = app.signup("+14155550680", "Alice").await;
    // More than the loopback socket buffers hold (4 MiB send, the small
    // receive buffer below), so the server's writes must wait for the client.
    let size = 24 * 1024 * 1024;
    let media = alice.uploaded(&app, vec![7u8; size], "file").await;

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr(&app).parse().unwrap()).await.unwrap();
    let request = format!(
        "GET /api/v1/media/{media} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {}\r\n\r\n",
        alice.token
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    // Read nothing for well past the write timeout.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut total = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the stalled download's connection stayed open"
    );
    assert!(total < size, "the whole body arrived: {total} bytes");
}

#[tokio::test]
async fn a_garbage_request_line_gets_hyper_s_400_and_the_connection_closes() {
    // The JSON envelope is not possible here: hyper answers before any
    // service runs (docs/security.md, known gaps).
    let app = TestApp::start().await;
    let answer = raw_answer(&app, b"\x16\x03 GARBAGE\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
}
