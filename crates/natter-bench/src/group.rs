//! The group scenario: one group of G members, all online, K of them
//! sending at a fixed total rate (open loop). Every message must reach the
//! G-1 other members; latency runs from the scheduled send time to each
//! delivery.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Args;
use futures_util::SinkExt as _;
use natter_client::{Client, SocketReader};
use serde_json::json;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::accounts::{BenchCalls as _, SmsInbox, sign_up};
use crate::load::{
    connect_all, content, histogram, instant_at, latency_json, latency_line, now_us, parse,
    progress, record,
};
use crate::report::{Report, thousands};
use crate::target::{Target, with_natter};
use crate::{BenchError, BenchResult, Common, STEP_TIMEOUT};

/// How long members may take after the last send to receive everything.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Options of `group`.
#[derive(Debug, Clone, Args)]
pub struct GroupArgs {
    /// Members of the group, senders included.
    #[arg(long, short = 'g', default_value_t = 1024)]
    pub members: usize,
    /// Members who send.
    #[arg(long, short = 'k', default_value_t = 10)]
    pub senders: usize,
    /// Messages per second, over all senders.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Most messages in all.
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,
    /// Message size in bytes.
    #[arg(long, default_value_t = 200)]
    pub size: usize,
}

/// Runs `group`.
///
/// # Errors
/// Setup failures and lost connections.
pub(crate) async fn run(common: &Common, args: &GroupArgs) -> BenchResult<Report> {
    if args.members < 2 || args.senders == 0 || args.senders > args.members {
        return Err(BenchError::Other(
            "need at least 2 members and 1 to members senders".to_owned(),
        ));
    }
    let quiet = common.json;
    with_natter(common, async |inbox, target| {
        drive(common, args, inbox, target, quiet).await
    })
    .await
}

async fn drive(
    common: &Common,
    args: &GroupArgs,
    inbox: &SmsInbox,
    target: &Target,
    quiet: bool,
) -> BenchResult<Report> {
    let client = Client::new(&target.http, STEP_TIMEOUT)?;
    let users = sign_up(&client, inbox, "member", args.members, quiet).await?;
    let others: Vec<_> = users[1..].iter().map(|u| u.id).collect();
    let chat = client
        .group_chat(&users[0].token, "bench", &others)
        .await?
        .to_string();
    let tokens: Vec<String> = users.iter().map(|u| u.token.clone()).collect();
    let bar = progress(tokens.len() as u64, "connecting", quiet);
    let sockets = connect_all(
        target.addr,
        &tokens,
        64,
        common.source_addrs,
        natter_client::SMALL_BUFFER_BYTES,
        &bar,
    )
    .await?;
    bar.finish_and_clear();

    let sent: Arc<Vec<AtomicU64>> =
        Arc::new((0..args.senders).map(|_| AtomicU64::new(0)).collect());
    let (done_tx, done_rx) = watch::channel(false);
    let per_sender = args.rate / args.senders as f64;
    let from_us = now_us() + 100_000;
    let until_us = from_us + (args.duration * 1e6) as u64;
    let cap = args.messages.div_ceil(args.senders as u64);

    let mut readers = Vec::with_capacity(sockets.len());
    let mut writers = Vec::new();
    for (i, socket) in sockets.into_iter().enumerate() {
        let (writer, reader) = socket.split();
        if i < args.senders {
            writers.push(writer);
        }
        let own = (i < args.senders).then_some(i);
        readers.push(tokio::spawn(member(
            reader,
            own,
            Arc::clone(&sent),
            done_rx.clone(),
        )));
    }
    let bar = progress(args.duration.ceil() as u64, "sending", quiet);
    let mut senders = Vec::new();
    for (k, mut writer) in writers.into_iter().enumerate() {
        let chat = chat.clone();
        let sent = Arc::clone(&sent);
        let size = args.size;
        let count = args.senders;
        senders.push(tokio::spawn(async move {
            let interval = 1e6 / per_sender.max(0.001);
            let offset = interval * k as f64 / count as f64;
            let mut i = 0u64;
            loop {
                let due = from_us + (offset + interval * i as f64) as u64;
                if due >= until_us || i >= cap {
                    break;
                }
                if due > now_us() {
                    tokio::time::sleep_until(instant_at(due)).await;
                }
                let text = content(due, size);
                let frame =
                    format!(r#"{{"type":"send_message","chat_id":"{chat}","content":"{text}"}}"#);
                if writer.send(WsMessage::text(frame)).await.is_err() {
                    break;
                }
                i += 1;
                sent[k].store(i, Ordering::Release);
            }
            writer
        }));
    }
    let ticker = {
        let bar = bar.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.tick().await;
            loop {
                every.tick().await;
                bar.inc(1);
            }
        })
    };
    let mut keep = Vec::new();
    for s in senders {
        keep.push(s.await.map_err(|e| BenchError::Other(e.to_string()))?);
    }
    let _ = done_tx.send(true);
    ticker.abort();
    bar.finish_and_clear();

    let mut latency = histogram()?;
    let mut delivered = 0u64;
    let mut last = from_us;
    let mut complete = 0usize;
    for r in readers {
        let (count, expected, h, last_at) =
            r.await.map_err(|e| BenchError::Other(e.to_string()))??;
        delivered += count;
        if count >= expected {
            complete += 1;
        }
        last = last.max(last_at);
        let _ = latency.add(&h);
    }
    drop(keep);
    let total_sent: u64 = sent.iter().map(|s| s.load(Ordering::Acquire)).sum();
    let expected = total_sent * (args.members as u64 - 1);
    let secs = (last.saturating_sub(from_us)) as f64 / 1e6;

    let mut report = Report::new("group");
    report.set(
        "params",
        json!({"members": args.members, "senders": args.senders, "rate": args.rate,
               "duration": args.duration, "size": args.size}),
    );
    report.set("sent", json!(total_sent));
    report.set("expected_deliveries", json!(expected));
    report.set("delivered", json!(delivered));
    report.set("members_complete", json!(complete));
    report.set(
        "deliveries_per_sec",
        json!(delivered as f64 / secs.max(1e-9)),
    );
    report.set("latency", latency_json(&latency));
    report.line(
        "group / senders / rate",
        &format!(
            "{} members / {} senders / {}/s",
            args.members,
            args.senders,
            thousands(args.rate)
        ),
    );
    report.line(
        "messages sent",
        &format!("{total_sent} in {:.1} s", args.duration),
    );
    report.line(
        "deliveries",
        &format!(
            "{delivered} of {expected} ({} members got everything), {}/s",
            complete,
            thousands(delivered as f64 / secs.max(1e-9))
        ),
    );
    report.line("latency from schedule", &latency_line(&latency));
    Ok(report)
}

/// One member's socket: counts `new_message` frames with their latency
/// until it has every message the others sent, or the drain times out.
async fn member(
    mut reader: SocketReader,
    own: Option<usize>,
    sent: Arc<Vec<AtomicU64>>,
    mut done: watch::Receiver<bool>,
) -> BenchResult<(u64, u64, hdrhistogram::Histogram<u64>, u64)> {
    let mut latency = histogram()?;
    let mut count = 0u64;
    let mut last = 0u64;
    let expected = |sent: &[AtomicU64]| -> u64 {
        sent.iter()
            .enumerate()
            .filter(|(k, _)| Some(*k) != own)
            .map(|(_, s)| s.load(Ordering::Acquire))
            .sum()
    };
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        if *done.borrow() {
            if count >= expected(&sent) {
                break;
            }
            let d = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + DRAIN_TIMEOUT);
            if tokio::time::Instant::now() >= d {
                break;
            }
        }
        let wait = deadline
            .map(|d| d.saturating_duration_since(tokio::time::Instant::now()))
            .unwrap_or(STEP_TIMEOUT * 10);
        tokio::select! {
            text = tokio::time::timeout(wait, reader.next_text()) => match text {
                Ok(Ok(text)) => {
                    if let Some(frame) = parse(&text)
                        && frame.kind == "new_message"
                    {
                        let now = now_us();
                        if let Some(stamp) = frame.stamp() {
                            record(&mut latency, now.saturating_sub(stamp));
                        }
                        count += 1;
                        last = now;
                    }
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {}
            },
            _ = done.changed(), if !*done.borrow() => {}
        }
    }
    Ok((count, expected(&sent), latency, last))
}
