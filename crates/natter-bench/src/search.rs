//! The search scenario: M messages of words from a skewed synthetic
//! vocabulary, sent over WebSockets by S senders into S direct chats with
//! one viewer, then Q searches per word class (common, medium, rare) by the
//! viewer over REST. Reports the fill rate (durable messages/s), how long
//! the search index took to catch up after the fill, and query latency.

use std::sync::Arc;

use clap::Args;
use futures_util::SinkExt as _;
use natter_client::{Client, SocketReader};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::accounts::{BenchCalls as _, SmsInbox, sign_up};
use crate::load::{
    connect_all, histogram, latency_json, latency_line, now_us, parse, progress, record,
};
use crate::report::{Report, thousands};
use crate::target::{Target, with_natter};
use crate::{BenchError, BenchResult, Common, STEP_TIMEOUT};

/// A word only each sender's last message holds. The index follows the log
/// in commit order, so once every sender's last message is found, every
/// message before it is indexed too.
const LAST_WORD: &str = "lastwordofthefill";
/// How long the index may take to catch up after the fill.
const CATCH_UP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);
/// How often the catch-up is checked.
const CATCH_UP_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// Words in the vocabulary.
const VOCABULARY: u64 = 20_000;
/// Word classes searched: name and index range (lower indexes are drawn more often).
const CLASSES: [(&str, u64, u64); 3] = [
    ("common", 0, 10),
    ("medium", 150, 250),
    ("rare", 12_000, 16_000),
];

/// Options of `search`.
#[derive(Debug, Clone, Args)]
pub struct SearchArgs {
    /// Messages in the store.
    #[arg(long, short = 'm', default_value_t = 100_000)]
    pub messages: u64,
    /// Searches per word class.
    #[arg(long, short = 'q', default_value_t = 200)]
    pub queries: usize,
    /// Senders (each in a direct chat with the viewer).
    #[arg(long, default_value_t = 16)]
    pub senders: usize,
    /// Messages in flight per sender while filling.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 200)]
    pub size: usize,
}

/// A small deterministic generator (xorshift64*), so runs fill alike.
struct Words(u64);

impl Words {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A word index, skewed: P(index < k) = (k / V)^(1/4).
    fn word(&mut self) -> u64 {
        let r = self.next_f64();
        ((r * r * r * r) * VOCABULARY as f64) as u64
    }

    fn text(&mut self, size: usize) -> String {
        let mut text = String::with_capacity(size + 12);
        while text.len() + 10 < size {
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(&format!("word{}", self.word()));
        }
        text
    }
}

/// Runs `search`.
///
/// # Errors
/// Setup failures, lost connections, refused searches.
pub(crate) async fn run(common: &Common, args: &SearchArgs) -> BenchResult<Report> {
    with_natter(common, async |inbox, target| {
        drive(common, args, inbox, target).await
    })
    .await
}

async fn drive(
    common: &Common,
    args: &SearchArgs,
    inbox: &SmsInbox,
    target: &Target,
) -> BenchResult<Report> {
    let quiet = common.json;
    let senders = args.senders.max(1);
    let client = Client::new(&target.http, STEP_TIMEOUT)?;
    let users = sign_up(&client, inbox, "search", senders + 1, quiet).await?;
    let viewer = &users[0];
    let mut chats = Vec::new();
    for u in &users[1..] {
        chats.push(client.direct_chat(&u.token, viewer.id).await?.to_string());
    }
    let tokens: Vec<String> = users[1..].iter().map(|u| u.token.clone()).collect();
    let bar = progress(tokens.len() as u64, "connecting", quiet);
    let sockets = connect_all(
        target.addr,
        &tokens,
        16,
        common.source_addrs,
        natter_client::BUFFER_BYTES,
        &bar,
    )
    .await?;
    bar.finish_and_clear();

    let per_sender = args.messages.div_ceil(senders as u64);
    let bar = progress(per_sender * senders as u64, "filling", quiet);
    let start = now_us();
    let mut tasks = Vec::new();
    for (i, (socket, chat)) in sockets.into_iter().zip(chats).enumerate() {
        let (mut writer, reader) = socket.split();
        let window = Arc::new(Semaphore::new(args.window.max(1)));
        let confirm = tokio::spawn(confirm(
            reader,
            per_sender,
            Arc::clone(&window),
            bar.clone(),
        ));
        let size = args.size;
        tasks.push(tokio::spawn(async move {
            let mut words = Words(0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1));
            for n in 0..per_sender {
                let permit = tokio::time::timeout(STEP_TIMEOUT, window.acquire())
                    .await
                    .map_err(|_| BenchError::Other("no confirmation in time".to_owned()))?;
                if let Ok(p) = permit {
                    p.forget();
                }
                let mut text = words.text(size);
                if n + 1 == per_sender {
                    text.push(' ');
                    text.push_str(LAST_WORD);
                }
                let frame =
                    format!(r#"{{"type":"send_message","chat_id":"{chat}","content":"{text}"}}"#);
                writer
                    .send(WsMessage::text(frame))
                    .await
                    .map_err(natter_client::ClientError::from)?;
            }
            confirm
                .await
                .map_err(|e| BenchError::Other(e.to_string()))??;
            Ok::<_, BenchError>(writer)
        }));
    }
    let mut keep = Vec::new();
    for t in tasks {
        keep.push(t.await.map_err(|e| BenchError::Other(e.to_string()))??);
    }
    let fill_secs = (now_us() - start) as f64 / 1e6;
    bar.finish_and_clear();
    let stored = per_sender * senders as u64;
    let caught_up = tokio::time::timeout(CATCH_UP_TIMEOUT, async {
        while client.search_messages(&viewer.token, LAST_WORD).await? < senders as u64 {
            tokio::time::sleep(CATCH_UP_POLL).await;
        }
        Ok::<_, BenchError>(())
    });
    caught_up
        .await
        .map_err(|_| BenchError::Other("the search index did not catch up in time".to_owned()))??;
    let index_lag_secs = (now_us() - start) as f64 / 1e6 - fill_secs;

    let mut report = Report::new("search");
    report.set(
        "params",
        json!({"messages": stored, "queries": args.queries, "senders": senders, "size": args.size}),
    );
    report.set("fill_per_sec", json!(stored as f64 / fill_secs.max(1e-9)));
    report.set("index_catch_up_secs", json!(index_lag_secs));
    report.line(
        "store filled",
        &format!(
            "{} messages in {fill_secs:.1} s ({}/s over WebSockets, durable)",
            thousands(stored as f64),
            thousands(stored as f64 / fill_secs.max(1e-9))
        ),
    );
    report.line(
        "index caught up",
        &format!("{index_lag_secs:.1} s after the last send was acknowledged"),
    );
    let mut pick = Words(42);
    let mut classes = serde_json::Map::new();
    for (name, lo, hi) in CLASSES {
        let mut latency = histogram()?;
        let mut hits = 0u64;
        let bar = progress(
            args.queries as u64,
            &format!("searching {name} words"),
            quiet,
        );
        for _ in 0..args.queries {
            let word = lo + (pick.next_f64() * (hi - lo) as f64) as u64;
            let t = now_us();
            hits += client
                .search_messages(&viewer.token, &format!("word{word}"))
                .await?;
            record(&mut latency, now_us() - t);
            bar.inc(1);
        }
        bar.finish_and_clear();
        let mean = hits as f64 / args.queries.max(1) as f64;
        let mut j = latency_json(&latency);
        j["mean_hits"] = json!(mean);
        classes.insert(name.to_owned(), j);
        report.line(
            &format!("{name} word ({} hits)", thousands(mean)),
            &latency_line(&latency),
        );
    }
    report.set("queries", serde_json::Value::Object(classes));
    drop(keep);
    Ok(report)
}

/// Counts confirmations, freeing a window slot for each.
async fn confirm(
    mut reader: SocketReader,
    total: u64,
    window: Arc<Semaphore>,
    bar: indicatif::ProgressBar,
) -> BenchResult<SocketReader> {
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
            Some("error") => return Err(BenchError::Other(format!("send refused: {text}"))),
            _ => {}
        }
    }
    Ok(reader)
}
