//! WebSocket frame budgets: every kind of client frame has a budget per
//! connection and (except `send_message` and `ack`, limited otherwise) per
//! user; over it a frame is answered `rate_limited`, and a connection that
//! goes on after being told too often is closed with 1008.

use std::time::Duration;

use natter_server::Config;
use natter_server::config::{Rate, RateLimits};
use serde_json::{Value, json};

use crate::support::{Socket, TestApp, TestUser};

const QUIET: Duration = Duration::from_millis(300);

/// A budget of `burst` that does not refill during a test.
const fn tight(burst: u32) -> Rate {
    Rate {
        burst,
        per_secs: 3600,
    }
}

/// One kind of frame: its name, how to build one (given a chat with a
/// message at seq 1), and where its budgets are set.
struct Kind {
    name: &'static str,
    frame: fn(&str) -> Value,
    per_connection: fn(&mut RateLimits, Rate),
    per_user: Option<fn(&mut RateLimits, Rate)>,
}

fn kinds() -> Vec<Kind> {
    vec![
        Kind {
            name: "sync",
            frame: |_| json!({"type": "sync", "chats": []}),
            per_connection: |r, rate| r.ws_sync_per_connection = rate,
            per_user: Some(|r, rate| r.ws_sync_per_user = rate),
        },
        Kind {
            name: "send_message",
            frame: |chat| json!({"type": "send_message", "chat_id": chat, "content": "hi"}),
            per_connection: |r, rate| r.ws_send_per_connection = rate,
            per_user: Some(|r, rate| r.messages_per_user = rate),
        },
        Kind {
            name: "ack",
            frame: |chat| json!({"type": "ack", "chat_id": chat, "seq": 1}),
            per_connection: |r, rate| r.ws_ack_per_connection = rate,
            // Per store write, at the end of a batch: see its own test.
            per_user: None,
        },
        Kind {
            name: "read",
            frame: |chat| json!({"type": "read", "chat_id": chat, "seq": 1}),
            per_connection: |r, rate| r.ws_read_per_connection = rate,
            per_user: Some(|r, rate| r.ws_read_per_user = rate),
        },
        Kind {
            name: "typing",
            frame: |chat| json!({"type": "typing", "chat_id": chat}),
            per_connection: |r, rate| r.ws_typing_per_connection = rate,
            per_user: Some(|r, rate| r.ws_typing_per_user = rate),
        },
        Kind {
            name: "presence",
            frame: |_| json!({"type": "presence", "status": "online"}),
            per_connection: |r, rate| r.ws_presence_per_connection = rate,
            per_user: Some(|r, rate| r.ws_presence_per_user = rate),
        },
        Kind {
            name: "join_chat",
            frame: |chat| json!({"type": "join_chat", "chat_id": chat}),
            per_connection: |r, rate| r.ws_join_chat_per_connection = rate,
            per_user: Some(|r, rate| r.ws_join_chat_per_user = rate),
        },
        Kind {
            name: "ping",
            frame: |_| json!({"type": "ping"}),
            per_connection: |r, rate| r.ws_ping_per_connection = rate,
            per_user: Some(|r, rate| r.ws_ping_per_user = rate),
        },
        Kind {
            name: "malformed",
            frame: |_| json!({"type": "no_such_frame"}),
            per_connection: |r, rate| r.ws_malformed_per_connection = rate,
            per_user: Some(|r, rate| r.ws_malformed_per_user = rate),
        },
    ]
}

/// Alice (two devices) and Bob, a direct chat with one message from Bob.
async fn setup(adjust: impl FnOnce(&mut Config)) -> (TestApp, TestUser, TestUser, String) {
    let app = TestApp::start_with(adjust).await;
    let alice = app.signup("+14155552001", "Alice").await;
    let bob = app.signup("+14155552002", "Bob").await;
    let chat = alice.direct_chat_with(&app, &bob).await;
    bob.sends(&app, &chat, "hello").await;
    let second = app.login("+14155552001", "Second").await;
    (app, alice, second, chat)
}

/// The frames that answer `frame`: everything up to the `pong` of a ping
/// sent after it (for a `ping` itself: its pong, or the error instead),
/// without presence, typing and receipt signals.
async fn answers(socket: &mut Socket, frame: Value) -> Vec<Value> {
    let is_ping = frame["type"] == "ping";
    socket.send(frame).await;
    if !is_ping {
        socket.send(json!({"type": "ping"})).await;
    }
    let mut got = Vec::new();
    loop {
        let next = socket.next().await;
        match next["type"].as_str().unwrap_or("") {
            "pong" => return got,
            "presence" | "typing" | "receipt" => {}
            "error" if is_ping => {
                got.push(next);
                return got;
            }
            _ => got.push(next),
        }
    }
}

fn rate_limited(answers: &[Value]) -> bool {
    answers
        .iter()
        .any(|f| f["type"] == "error" && f["code"] == "rate_limited")
}

#[tokio::test]
async fn every_kind_of_frame_has_a_budget_per_connection() {
    for kind in kinds() {
        let (app, alice, second, chat) = setup(|c| {
            (kind.per_connection)(&mut c.rate_limits, tight(2));
        })
        .await;
        let mut a = alice.connect(&app).await;
        for n in 1..=2 {
            let got = answers(&mut a, (kind.frame)(&chat)).await;
            assert!(
                !rate_limited(&got),
                "{} #{n} is allowed: {got:?}",
                kind.name
            );
        }
        let got = answers(&mut a, (kind.frame)(&chat)).await;
        assert!(rate_limited(&got), "{} #3 is refused: {got:?}", kind.name);
        let refusal = got.iter().find(|f| f["code"] == "rate_limited").unwrap();
        let message = refusal["message"].as_str().unwrap_or("");
        assert!(message.contains("try again"), "{message}");
        // Another connection of the same user has its own budget.
        let mut b = second.connect(&app).await;
        let got = answers(&mut b, (kind.frame)(&chat)).await;
        assert!(
            !rate_limited(&got),
            "{} on another connection: {got:?}",
            kind.name
        );
    }
}

#[tokio::test]
async fn frames_are_limited_per_user_across_connections() {
    for kind in kinds() {
        let Some(per_user) = kind.per_user else {
            continue;
        };
        let (app, alice, second, chat) = setup(|c| per_user(&mut c.rate_limits, tight(2))).await;
        let mut a = alice.connect(&app).await;
        let mut b = second.connect(&app).await;
        let got = answers(&mut a, (kind.frame)(&chat)).await;
        assert!(!rate_limited(&got), "{} #1: {got:?}", kind.name);
        let got = answers(&mut b, (kind.frame)(&chat)).await;
        assert!(!rate_limited(&got), "{} #2: {got:?}", kind.name);
        let got = answers(&mut a, (kind.frame)(&chat)).await;
        assert!(rate_limited(&got), "{} #3 is refused: {got:?}", kind.name);
    }
}

#[tokio::test]
async fn ack_writes_are_limited_per_user() {
    let (app, alice, second, chat) = setup(|c| {
        c.rate_limits.ws_ack_writes_per_user = tight(2);
    })
    .await;
    let mut a = alice.connect(&app).await;
    let mut b = second.connect(&app).await;
    let ack = json!({"type": "ack", "chat_id": chat, "seq": 1});
    a.send(ack.clone()).await;
    a.nothing_of("error", QUIET).await;
    b.send(ack.clone()).await;
    b.nothing_of("error", QUIET).await;
    a.send(ack).await;
    assert_eq!(a.next_of("error").await["code"], "rate_limited");
}

#[tokio::test]
async fn a_connection_told_too_often_is_closed_with_1008() {
    let (app, alice, _, _) = setup(|c| {
        c.rate_limits.ws_sync_per_connection = tight(3);
        c.rate_limits.ws_refusals_per_connection = tight(2);
    })
    .await;
    let mut a = alice.connect(&app).await;
    let sync = json!({"type": "sync", "chats": []});
    for _ in 0..3 {
        let got = answers(&mut a, sync.clone()).await;
        assert!(got.iter().any(|f| f["type"] == "sync_done"), "{got:?}");
    }
    // Two refusals are answered (N)...
    for _ in 0..2 {
        let got = answers(&mut a, sync.clone()).await;
        assert!(rate_limited(&got), "{got:?}");
    }
    // ...the third (N+1) closes the connection.
    a.send(sync).await;
    let end = loop {
        match a.next_or_close().await {
            Ok(frame) => {
                let kind = frame["type"].as_str().unwrap_or("");
                assert!(["presence", "typing", "receipt"].contains(&kind), "{frame}");
            }
            Err(close) => break close,
        }
    };
    assert_eq!(end, Some(natter_proto::ws::close::POLICY_VIOLATION));
    // Other connections of the user are not affected.
    let mut again = alice.connect(&app).await;
    let got = answers(&mut again, json!({"type": "ping"})).await;
    assert!(!rate_limited(&got), "{got:?}");
}

#[tokio::test]
async fn a_flood_of_sync_frames_with_the_defaults_ends_in_a_close() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155552003", "Alice").await;
    let mut a = alice.connect(&app).await;
    let sync = json!({"type": "sync", "chats": []}).to_string();
    for _ in 0..1000 {
        // The server may close mid-flood: a failed write is expected.
        a.send_raw(sync.clone()).await;
    }
    let (mut done, mut refused) = (0, 0);
    let end = loop {
        match a.next_or_close().await {
            Ok(frame) if frame["type"] == "sync_done" => done += 1,
            Ok(frame) if frame["code"] == "rate_limited" => refused += 1,
            Ok(_) => {}
            Err(close) => break close,
        }
    };
    let defaults = RateLimits::default();
    // Refills during the test are a few at most (one `sync` every 6 s).
    assert!(
        done < 100 && done >= defaults.ws_sync_per_connection.burst,
        "{done} syncs answered"
    );
    assert!(refused <= 100, "{refused} refusals answered");
    // The close frame may be lost to a reset when frames were left unread.
    assert!(matches!(end, Some(1008) | None), "closed with {end:?}");
}
