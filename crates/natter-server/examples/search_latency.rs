//! Search latency over a store of M messages: fills a fresh store through
//! the `Store` trait (the same appends the API makes: chat log and updates
//! in one transaction), lets the search indexer catch up (timed apart), then
//! times message searches.
//!
//! ```text
//! cargo run --release -p natter-server --example search_latency -- [messages] [queries]
//! ```
//! Two viewers: one in all 50 chats (sees every message) and one in a single
//! chat. Query words are rare, medium or common (by how many messages hold
//! them). Prints p50/p95/max per case, in milliseconds.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use natter_proto::chats::{ChatKind, MessageType};
use natter_proto::users::LastSeenVisibility;
use natter_proto::{ChatId, DeviceId, MessageId, UserId};
use natter_server::clock::Timestamp;
use natter_server::config::StoreConfig;
use natter_server::phone::Phone;
use natter_server::secret::{CodeHash, PlainToken};
use natter_server::store::sqlite::SqliteStore;
use natter_server::store::{
    Accounts as _, ChatCreated, ChatLog as _, NewChat, NewDevice, NewMessage, NewVerificationCode,
    Registered, Registration, SearchIndex as _, SearchQuery, Store as _, Term, TextQuery, User,
};

const CHATS: usize = 50;
const WRITERS: usize = 256;

/// A deterministic generator (xorshift), so every run indexes the same text.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Word `i` of a synthetic vocabulary; lower `i` is more frequent (Zipf-like draw below).
fn word(i: u64) -> String {
    format!("w{i}x")
}

fn message_text(rng: &mut Rng) -> String {
    (0..12)
        .map(|_| {
            // Squaring a uniform draw skews towards small indexes.
            let u = (rng.next() % 10_000) as f64 / 10_000.0;
            word((u * u * 20_000.0) as u64)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

async fn user(store: &SqliteStore, n: usize) -> UserId {
    let phone = Phone::from_stored(format!("+1415{n:07}"));
    let now = Timestamp::now();
    store
        .put_verification_code(NewVerificationCode {
            phone: phone.clone(),
            hash: CodeHash([1; 32]),
            created_at: now,
            expires_at: now.plus(Duration::from_secs(60)),
            shown: None,
        })
        .await
        .unwrap();
    let user = User {
        id: UserId::new(),
        phone,
        name: format!("user {n}"),
        about: String::new(),
        last_seen_visibility: LastSeenVisibility::Everyone,
        group_add_permission: natter_proto::users::GroupAddPermission::Everyone,
        last_seen_at: None,
        profile_pic: None,
        created_at: now,
    };
    let device = NewDevice {
        id: DeviceId::new(),
        name: "bench".into(),
        token_hash: PlainToken::generate().hash(),
        created_at: now,
    };
    match store
        .register(Registration {
            code: CodeHash([1; 32]),
            user,
            device,
        })
        .await
        .unwrap()
    {
        Registered::Created(u) => u.id,
        other => panic!("{other:?}"),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let total: usize = args.next().map_or(1_000_000, |a| a.parse().unwrap());
    let queries: usize = args.next().map_or(200, |a| a.parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path(), &StoreConfig::default()).unwrap());

    let everywhere = user(&store, 0).await;
    let mut chats = Vec::new();
    for n in 1..=CHATS {
        let other = user(&store, n).await;
        let created = store
            .create_chat(NewChat {
                id: ChatId::new(),
                kind: ChatKind::Direct,
                name: None,
                encrypted: false,
                creator: everywhere,
                others: vec![other],
                now: Timestamp::now(),
            })
            .await
            .unwrap();
        let ChatCreated::Created(chat, _) = created else {
            panic!("exists")
        };
        chats.push((chat.id, other));
    }
    let single_chat_user = chats[0].1;

    let start = Instant::now();
    let per_writer = total / WRITERS;
    let chats = Arc::new(chats);
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (store, chats) = (Arc::clone(&store), Arc::clone(&chats));
            tokio::spawn(async move {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (w as u64 + 1));
                for i in 0..per_writer {
                    let (chat, other) = chats[(w * per_writer + i) % CHATS];
                    let sender = if i % 2 == 0 { everywhere } else { other };
                    store
                        .post(NewMessage {
                            id: MessageId::new(),
                            chat_id: chat,
                            sender_id: sender,
                            sender_device_id: DeviceId::new(),
                            message_type: MessageType::Text,
                            content: Some(message_text(&mut rng)),
                            ciphertext: None,
                            media_id: None,
                            reply_to: None,
                            client_message_id: None,
                            client_timestamp: None,
                            now: Timestamp::now(),
                        })
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let filled = per_writer * WRITERS;
    let fill = start.elapsed();
    println!(
        "filled {filled} messages in {:.1}s ({:.0} messages/s)",
        fill.as_secs_f64(),
        filled as f64 / fill.as_secs_f64()
    );
    // What the server's indexer task does, in its default batches.
    let start = Instant::now();
    while store.index_search(500).await.unwrap().remaining > 0 {}
    let index = start.elapsed();
    println!(
        "indexed them in {:.1}s ({:.0} messages/s)",
        index.as_secs_f64(),
        filled as f64 / index.as_secs_f64()
    );

    // Word frequency ranks: w0x is in most messages, w19000x in few.
    let cases = [
        ("rare", 19_000u64..19_900),
        ("medium", 2_000..2_900),
        ("common", 10..40),
    ];
    println!(
        "{:<18} {:<8} {:>8} {:>8} {:>8} {:>10}",
        "viewer", "word", "p50 ms", "p95 ms", "max ms", "mean hits"
    );
    for (viewer_name, viewer) in [("all 50 chats", everywhere), ("one chat", single_chat_user)] {
        for (label, range) in cases.clone() {
            let mut times = Vec::with_capacity(queries);
            let mut hits = 0i64;
            let mut rng = Rng(42);
            for _ in 0..queries {
                let w = range.start + rng.next() % (range.end - range.start);
                let q = SearchQuery {
                    user: viewer,
                    text: TextQuery {
                        required: vec![vec![Term {
                            text: word(w),
                            phrase: false,
                            prefix: false,
                        }]],
                        excluded: Vec::new(),
                    },
                    chats: Vec::new(),
                    sender: None,
                    message_type: None,
                    before: None,
                    after: None,
                    by_relevance: false,
                    offset: 0,
                    limit: 20,
                };
                let t = Instant::now();
                let total = store.search_messages(q).await.unwrap().total;
                times.push(t.elapsed());
                hits += total;
            }
            times.sort();
            println!(
                "{viewer_name:<18} {label:<8} {:>8.2} {:>8.2} {:>8.2} {:>10}",
                percentile(&times, 0.5),
                percentile(&times, 0.95),
                percentile(&times, 1.0),
                hits / queries as i64
            );
        }
    }
    store.close().await;
}
