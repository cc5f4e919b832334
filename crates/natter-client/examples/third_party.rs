//! A third party for the browser client's end-to-end test (web/tests):
//! an SDK device that signs up, then reads every message of every chat it
//! is added to and answers each one once. It speaks JSON lines: on stdout
//! `{"type":"need_code"}`, `{"type":"ready","user_id":…}`,
//! `{"type":"message","chat_id":…,"text":…}`; on stdin the verification
//! code, then nothing (closing stdin ends it).
//!
//! Usage: `third_party BASE PHONE NAME`

#![allow(clippy::print_stdout)]

use std::io::BufRead as _;
use std::time::Duration;

use natter_client::e2ee::payload::Body;
use natter_client::{Client, Messenger, MessengerEvent, Store};
use natter_proto::accounts::RegisterRequest;

/// The whole run is bounded: a test that hangs must not keep this alive.
const LIFETIME: Duration = Duration::from_secs(300);
const ANSWER: &str = "Carol here, from the SDK";

fn say(value: &serde_json::Value) {
    println!("{value}");
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, base, phone, name] = args.as_slice() else {
        return Err("usage: third_party BASE PHONE NAME".into());
    };
    let (lines_tx, mut lines) = tokio::sync::mpsc::channel::<Option<String>>(4);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if lines_tx.blocking_send(Some(line)).is_err() {
                return;
            }
        }
        let _ = lines_tx.blocking_send(None);
    });
    let client = Client::new(base, Duration::from_secs(20))?;
    client.request_code(phone).await?;
    say(&serde_json::json!({"type": "need_code"}));
    let code = tokio::time::timeout(Duration::from_secs(60), lines.recv())
        .await?
        .flatten()
        .ok_or("no code on stdin")?;
    let session = client
        .register(&RegisterRequest {
            phone: phone.clone(),
            name: name.clone(),
            verification_code: Some(code.trim().to_owned()),
            invite: None,
            device_name: Some("SDK".to_owned()),
        })
        .await?;
    let dir = tempfile::tempdir()?;
    let store = Store::open(&dir.path().join("store"))?;
    let user = session.user_id();
    let mut messenger = Messenger::start(session, store).await?;
    say(&serde_json::json!({"type": "ready", "user_id": user}));
    let run = async {
        loop {
            tokio::select! {
                line = lines.recv() => {
                    if matches!(line, None | Some(None)) {
                        return Ok::<(), natter_client::ClientError>(());
                    }
                }
                event = messenger.next_event() => {
                    let event = event?;
                    if !matches!(event, MessengerEvent::Message(_)) {
                        // For the test's log: what else happened.
                        eprintln!("third_party: {event:?}");
                    }
                    if let MessengerEvent::Message(m) = event {
                        if m.sender == user {
                            continue;
                        }
                        if let Body::Text { text } = &m.body {
                            say(&serde_json::json!({"type": "message", "chat_id": m.chat_id, "text": text}));
                            if text != ANSWER {
                                messenger.send_text(m.chat_id, ANSWER).await?;
                            }
                        }
                    }
                }
            }
        }
    };
    tokio::time::timeout(LIFETIME, run).await??;
    Ok(())
}
