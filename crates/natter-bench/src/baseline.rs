//! The bare relay: the least a WebSocket messaging server can do, so a
//! report can say how close Natter comes to this machine's limit. It
//! speaks the subset of Natter's protocol the load generator uses, with no
//! authentication (the `auth` token is the connection's name), no storage
//! and no ordering guarantees beyond TCP's: `send_message {chat_id,
//! content}` goes to the connection named `chat_id` as `new_message` (a
//! frame shaped like Natter's), and the sender gets `message_sent`.
//! Buffers are sized like Natter's defaults, so idle memory compares.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Frames queued for one connection; beyond, frames to it are dropped
/// (Natter closes such a connection; the relay keeps the comparison simple).
const QUEUE: usize = 1024;
/// Largest frame accepted, as Natter's default `limits.ws_max_message_bytes`.
const MAX_MESSAGE: usize = 64 * 1024;
/// Read and write buffers, as Natter's defaults.
const BUFFER: usize = 4096;

/// Open connections by name.
type Registry = Arc<Mutex<HashMap<String, mpsc::Sender<String>>>>;

#[derive(serde::Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    chat_id: Option<String>,
    #[serde(default)]
    content: Option<String>,
}

/// Runs the relay on `listen` until the process is killed; prints
/// `listening on ADDR` to stderr once bound.
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(listen: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    eprintln!("baseline relay listening on {}", listener.local_addr()?);
    let registry: Registry = Arc::default();
    let counter = Arc::new(AtomicI64::new(0));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, typically: let some close.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let registry = Arc::clone(&registry);
        let counter = Arc::clone(&counter);
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            connection(stream, registry, counter).await;
        });
    }
}

async fn connection(stream: TcpStream, registry: Registry, counter: Arc<AtomicI64>) {
    let mut config = WebSocketConfig::default();
    config.max_message_size = Some(MAX_MESSAGE);
    config.max_frame_size = Some(MAX_MESSAGE);
    config.read_buffer_size = BUFFER;
    config.write_buffer_size = BUFFER;
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    let name = match stream.next().await {
        Some(Ok(WsMessage::Text(text))) => match serde_json::from_str::<Frame<'_>>(&text) {
            Ok(Frame {
                kind: "auth",
                token: Some(token),
                ..
            }) => token,
            _ => return,
        },
        _ => return,
    };
    let (tx, mut rx) = mpsc::channel::<String>(QUEUE);
    registry
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(name.clone(), tx);
    let connected = format!(r#"{{"type":"connected","user_id":"{name}","device_id":"{name}"}}"#);
    if sink.send(WsMessage::text(connected)).await.is_ok() {
        loop {
            tokio::select! {
                incoming = stream.next() => match incoming {
                    Some(Ok(WsMessage::Text(text))) => {
                        let Some(reply) = relay(&text, &name, &registry, &counter) else { continue };
                        if sink.send(WsMessage::text(reply)).await.is_err() {
                            break;
                        }
                    }
                    Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                },
                out = rx.recv() => match out {
                    Some(text) => {
                        if sink.send(WsMessage::text(text)).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                },
            }
        }
    }
    registry
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&name);
}

/// Forwards a `send_message` and answers the sender; ignores other frames.
fn relay(text: &str, from: &str, registry: &Registry, counter: &AtomicI64) -> Option<String> {
    let frame: Frame<'_> = serde_json::from_str(text).ok()?;
    if frame.kind != "send_message" {
        return None;
    }
    let chat = frame.chat_id?;
    let content = serde_json::to_string(&frame.content.unwrap_or_default()).ok()?;
    let seq = counter.fetch_add(1, Ordering::Relaxed) + 1;
    let id = uuid::Uuid::now_v7();
    let message = format!(
        r#"{{"id":"{id}","chat_id":"{chat}","seq":{seq},"sender_id":"{from}","sender_device_id":"{from}","type":"text","content":{content},"ciphertext":null,"media_id":null,"reply_to":null,"client_message_id":null,"timestamp":"2026-01-01T00:00:00.000Z","client_timestamp":null,"edited_at":null,"deleted":false,"event":null,"status":"sent"}}"#
    );
    let peer = registry
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&chat)
        .cloned();
    if let Some(peer) = peer {
        let _ = peer.try_send(format!(
            r#"{{"type":"new_message","chat_id":"{chat}","seq":{seq},"message":{message}}}"#
        ));
    }
    Some(format!(
        r#"{{"type":"message_sent","duplicate":false,"client_message_id":null,"message":{message}}}"#
    ))
}
