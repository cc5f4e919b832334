//! The catch-up scenario: a device is offline while K messages arrive (each
//! durably stored), then reconnects, authenticates and sends `sync` from its
//! last position in the chat. Measured: the time from starting to connect to the last
//! message, and to `sync_done`.

use std::sync::Arc;

use clap::Args;
use futures_util::SinkExt as _;
use natter_client::{Client, Socket};
use natter_proto::ws::ClientFrame;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::accounts::{BenchCalls as _, SmsInbox, sign_up};
use crate::load::{content, now_us, parse, progress, source_ip};
use crate::report::{Report, thousands};
use crate::target::{Target, with_natter};
use crate::{BenchError, BenchResult, Common, STEP_TIMEOUT};

/// Options of `catchup`.
#[derive(Debug, Clone, Args)]
pub struct CatchupArgs {
    /// Messages queued while the device is offline (the server syncs at
    /// most `limits.max_sync_updates`, 10,000 by default).
    #[arg(long, short = 'k', default_value_t = 10_000)]
    pub messages: u64,
    /// Times to repeat (offline, K messages, reconnect).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Messages in flight while filling.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 200)]
    pub size: usize,
}

/// Runs `catchup`.
///
/// # Errors
/// Setup failures, a lost connection, or a sync that misses messages.
pub(crate) async fn run(common: &Common, args: &CatchupArgs) -> BenchResult<Report> {
    with_natter(common, async |inbox, target| {
        drive(common, args, inbox, target).await
    })
    .await
}

async fn drive(
    common: &Common,
    args: &CatchupArgs,
    inbox: &SmsInbox,
    target: &Target,
) -> BenchResult<Report> {
    let quiet = common.json;
    let client = Client::new(&target.http, STEP_TIMEOUT)?;
    let users = sign_up(&client, inbox, "catchup", 2, quiet).await?;
    let (alice, bob) = (&users[0], &users[1]);
    let chat = client.direct_chat(&alice.token, bob.id).await?.to_string();
    let from = Some(source_ip(0, common.source_addrs));
    let sender = Socket::connect(target.addr, from, &alice.token, STEP_TIMEOUT).await?;
    let (mut writer, mut reader) = sender.split();
    // Bob's device: where it left off.
    let chat_id: natter_proto::ChatId = chat
        .parse()
        .map_err(|_| BenchError::Other(format!("the server gave a bad chat id: {chat}")))?;
    // Bob's device: where it left off in the chat (its `created` entry).
    let bob_socket = Socket::connect(target.addr, from, &bob.token, STEP_TIMEOUT).await?;
    bob_socket.close().await;
    let mut bob_seq = 1i64;

    let mut rounds = Vec::new();
    for round in 0..args.rounds {
        let bar = progress(
            args.messages,
            &format!("round {}: queueing", round + 1),
            quiet,
        );
        // Fill while Bob is offline, `window` in flight, every send confirmed durable.
        let window = Arc::new(Semaphore::new(args.window.max(1)));
        let confirm = {
            let window = Arc::clone(&window);
            let bar = bar.clone();
            let total = args.messages;
            tokio::spawn(async move {
                let mut confirmed = 0u64;
                while confirmed < total {
                    let text = tokio::time::timeout(STEP_TIMEOUT, reader.next_text())
                        .await
                        .map_err(|_| BenchError::Other("no confirmation in time".to_owned()))??;
                    match parse(&text).map(|f| f.kind.into_owned()).as_deref() {
                        Some("message_sent") => {
                            confirmed += 1;
                            bar.inc(1);
                            window.add_permits(1);
                        }
                        Some("error") => {
                            return Err(BenchError::Other(format!("send refused: {text}")));
                        }
                        _ => {}
                    }
                }
                Ok::<_, BenchError>(reader)
            })
        };
        for _ in 0..args.messages {
            let permit = tokio::time::timeout(STEP_TIMEOUT, window.acquire())
                .await
                .map_err(|_| BenchError::Other("no confirmation in time".to_owned()))?;
            if let Ok(p) = permit {
                p.forget();
            }
            let text = content(now_us(), args.size);
            let frame =
                format!(r#"{{"type":"send_message","chat_id":"{chat}","content":"{text}"}}"#);
            writer
                .send(WsMessage::text(frame))
                .await
                .map_err(natter_client::ClientError::from)?;
        }
        reader = confirm
            .await
            .map_err(|e| BenchError::Other(e.to_string()))??;
        bar.finish_and_clear();

        // Bob comes back.
        let start = now_us();
        let mut socket = Socket::connect(target.addr, from, &bob.token, STEP_TIMEOUT).await?;
        let connected_us = now_us() - start;
        let position = natter_proto::ws::ChatPosition {
            chat_id,
            seq: bob_seq,
        };
        socket
            .send(&ClientFrame::Sync {
                chats: vec![position],
            })
            .await?;
        let mut got = 0u64;
        let mut last_message_us = 0u64;
        let done_us = loop {
            let text = tokio::time::timeout(STEP_TIMEOUT, socket.next_text())
                .await
                .map_err(|_| BenchError::Other("sync did not finish in time".to_owned()))??;
            let Some(frame) = parse(&text) else { continue };
            match frame.kind.as_ref() {
                "new_message" => {
                    got += 1;
                    last_message_us = now_us() - start;
                    bob_seq = frame.seq.unwrap_or(bob_seq);
                }
                "sync_done" => break now_us() - start,
                "too_long" => {
                    return Err(BenchError::Other(format!(
                        "the server answered too_long: raise limits.max_sync_updates above {}",
                        args.messages
                    )));
                }
                _ => {}
            }
        };
        socket.close().await;
        if got != args.messages {
            return Err(BenchError::Other(format!(
                "sync delivered {got} of {} messages",
                args.messages
            )));
        }
        rounds.push((connected_us, last_message_us, done_us, got));
    }

    let mut report = Report::new("catchup");
    report.set(
        "params",
        json!({"messages": args.messages, "rounds": args.rounds, "size": args.size}),
    );
    report.line("queued messages", &thousands(args.messages as f64));
    let mut out = Vec::new();
    for (i, (connected, last, done, got)) in rounds.iter().enumerate() {
        let ms = |us: &u64| *us as f64 / 1000.0;
        out.push(
            json!({"connect_ms": ms(connected), "last_message_ms": ms(last),
                        "sync_done_ms": ms(done), "messages": got}),
        );
        report.line(
            &format!("round {}", i + 1),
            &format!(
                "connect+auth {:.1} ms, last message at {:.1} ms, sync_done at {:.1} ms ({} msgs/s)",
                ms(connected),
                ms(last),
                ms(done),
                thousands(*got as f64 / (ms(last) / 1000.0).max(1e-9))
            ),
        );
    }
    let best = rounds.iter().map(|r| r.1).min().unwrap_or(0) as f64 / 1000.0;
    report.set("rounds", json!(out));
    report.set("best_last_message_ms", json!(best));
    report.line("best time to last message", &format!("{best:.1} ms"));
    Ok(report)
}
