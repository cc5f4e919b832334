//! Real-time delivery over the WebSocket: the seed's flows, sync with no gap
//! and no duplicate, receipts, typing, presence, multi-device, revocation,
//! back-pressure and abuse.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{TestApp, WAIT};

const QUIET: Duration = Duration::from_millis(300);

#[tokio::test]
async fn the_seed_flow_a_rest_message_reaches_the_other_side_live() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155551000", "Alice").await;
    let bob = app.signup("+14155551001", "Bob").await;
    let chat = alice.direct_chat_with(&app, &bob).await;
    let mut bob_ws = bob.connect(&app).await;

    let sent = alice.sends(&app, &chat, "Hello, how are you?").await;
    let frame = bob_ws.next_of("new_message").await;
    assert_eq!(frame["message"]["id"], sent["id"]);
    assert_eq!(frame["message"]["content"], "Hello, how are you?");
    assert_eq!(frame["message"]["sender_id"], alice.user_id.as_str());
    assert_eq!(frame["chat_id"], chat.as_str());
    assert_eq!(frame["seq"], sent["seq"]);
}

#[tokio::test]
async fn send_message_over_the_socket_confirms_to_the_sender_and_reaches_every_device() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155551002", "Alice").await;
    let alice_laptop = app.login("+14155551002", "Laptop").await;
    let bob = app.signup("+14155551003", "Bob").await;
    let bob_tablet = app.login("+14155551003", "Tablet").await;
    let chat = alice.direct_chat_with(&app, &bob).await;
    let mut a = alice.connect(&app).await;
    let mut a2 = alice_laptop.connect(&app).await;
    let mut b = bob.connect(&app).await;
    let mut b2 = bob_tablet.connect(&app).await;

    // The seed's frame: chat_id, content, message_type.
    a.send(
        json!({"type": "send_message", "chat_id": chat, "content": "hi", "message_type": "text",
                  "client_message_id": "k-1"}),
    )
    .await;
    let sent = a.next_of("message_sent").await;
    assert_eq!(sent["client_message_id"], "k-1");
    assert_eq!(sent["message"]["content"], "hi");
    let id = sent["message"]["id"].clone();
    assert!(sent["message"]["seq"].is_i64());
    for socket in [&mut a2, &mut b, &mut b2] {
        let frame = socket.next_of("new_message").await;
        assert_eq!(frame["message"]["id"], id);
        assert_eq!(
            frame["message"]["sender_device_id"],
            alice.device_id.as_str()
        );
    }
    // The sending connection does not also get it as new_message.
    a.nothing_of("new_message", QUIET).await;
    // A retry answers with the original, without a second message.
    a.send(json!({"type": "send_message", "chat_id": chat, "content": "hi", "client_message_id": "k-1"})).await;
    let retry = a.next_of("message_sent").await;
    assert_eq!(retry["message"]["id"], id);
    assert_eq!(retry["duplicate"], true);
    assert_eq!(sent["duplicate"], false);
    b.nothing_of("new_message", QUIET).await;
}

#[tokio::test]
async fn pipelined_sends_keep_their_order_and_a_bad_one_fails_alone() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155551040", "Alice").await;
    let bob = app.signup("+14155551041", "Bob").await;
    let chat = alice.direct_chat_with(&app, &bob).await;
    let mut a = alice.connect(&app).await;
    let mut b = bob.connect(&app).await;

    // Sent without waiting: the server takes them together.
    for i in 0..40 {
        let content = if i == 17 {
            String::new()
        } else {
            format!("m{i}")
        };
        a.send(
            json!({"type": "send_message", "chat_id": chat, "content": content,
                      "client_message_id": format!("k-{i}")}),
        )
        .await;
    }
    a.send(json!({"type": "ping"})).await;
    let mut last_seq = 0;
    for i in 0..40 {
        let mut frame = a.next().await;
        while frame["type"] == "presence" {
            frame = a.next().await;
        }
        if i == 17 {
            assert_eq!(frame["type"], "error", "{frame}");
            continue;
        }
        assert_eq!(frame["type"], "message_sent", "{frame}");
        assert_eq!(frame["client_message_id"], format!("k-{i}"));
        let seq = frame["message"]["seq"].as_i64().unwrap();
        assert!(seq > last_seq, "seq follows the order of sending");
        last_seq = seq;
    }
    assert_eq!(a.next().await["type"], "pong");
    for i in (0..40).filter(|i| *i != 17) {
        let frame = b.next_of("new_message").await;
        assert_eq!(frame["message"]["content"], format!("m{i}"));
    }
}

#[tokio::test]
async fn authentication_by_header_frame_or_not_at_all() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let app = TestApp::start_with(|c| c.limits.ws_auth_timeout_secs = 1).await;
    let alice = app.signup("+14155551004", "Alice").await;

    // A bearer header on the upgrade.
    let mut req = app.ws_url().into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", alice.token).parse().unwrap(),
    );
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let mut socket = crate::support::Socket::from_stream(ws);
    assert_eq!(socket.next().await["type"], "connected");

    // A bad header: 401 before upgrading.
    let mut req = app.ws_url().into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", "Bearer nat_nope".parse().unwrap());
    let err = tokio_tungstenite::connect_async(req).await.unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");

    // A bad token frame, a wrong first frame, or silence: closed with 4001.
    for first in [
        Some(json!({"type": "auth", "token": "nat_x"})),
        Some(json!({"type": "ping"})),
        None,
    ] {
        let (ws, _) = tokio_tungstenite::connect_async(app.ws_url())
            .await
            .unwrap();
        let mut socket = crate::support::Socket::from_stream(ws);
        if let Some(frame) = first {
            socket.send(frame).await;
        }
        assert_eq!(socket.next_or_close().await, Err(Some(4001)));
    }
}

#[tokio::test]
async fn bad_frames_get_error_frames_and_the_server_keeps_serving() {
    let app = TestApp::start_with(|c| c.limits.ws_max_message_bytes = 1024).await;
    let alice = app.signup("+14155551005", "Alice").await;
    let bob = app.signup("+14155551006", "Bob").await;
    let chat = alice.direct_chat_with(&app, &bob).await;
    let mut a = alice.connect(&app).await;
    let mut b = bob.connect(&app).await;

    a.send(json!({"type": "ping"})).await;
    a.next_of("pong").await;
    a.send_raw("{not json".to_owned()).await;
    assert_eq!(a.next_of("error").await["code"], "invalid_json");
    a.send(json!({"type": "teleport"})).await;
    assert_eq!(a.next_of("error").await["code"], "validation_failed");
    a.send(json!({"type": "send_message", "chat_id": chat, "content": ""}))
        .await;
    assert_eq!(a.next_of("error").await["code"], "validation_failed");
    a.send(json!({"type": "send_message", "chat_id": "01900000-0000-7000-8000-000000000000", "content": "x"})).await;
    assert_eq!(a.next_of("error").await["code"], "chat_not_found");
    // An oversized frame (N+1 bytes) closes that connection only.
    a.send_raw(format!(
        "{{\"type\":\"ping\",\"x\":\"{}\"}}",
        "y".repeat(1024)
    ))
    .await;
    assert_eq!(a.next_or_close().await, Err(Some(1009)));
    b.send(json!({"type": "ping"})).await;
    b.next_of("pong").await;
    // A frame of exactly N bytes is read and answered.
    let pad = 1024 - r#"{"type":"ping","x":""}"#.len();
    b.send_raw(format!(
        "{{\"type\":\"ping\",\"x\":\"{}\"}}",
        "y".repeat(pad)
    ))
    .await;
    b.next_of("pong").await;
}

/// Sends `sync` with these positions and collects frames until
/// `sync_done`; returns them and the positions `sync_done` reported.
async fn sync_from(
    socket: &mut crate::support::Socket,
    positions: &[(&str, i64)],
) -> (Vec<Value>, HashMap<String, i64>) {
    let chats: Vec<Value> = positions
        .iter()
        .map(|(chat, seq)| json!({"chat_id": chat, "seq": seq}))
        .collect();
    socket.send(json!({"type": "sync", "chats": chats})).await;
    let mut frames = Vec::new();
    loop {
        let frame = socket.next().await;
        match frame["type"].as_str().unwrap() {
            "sync_done" => {
                let done = frame["chats"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| {
                        (
                            p["chat_id"].as_str().unwrap().to_owned(),
                            p["seq"].as_i64().unwrap(),
                        )
                    })
                    .collect();
                return (frames, done);
            }
            "presence" | "typing" | "receipt" => {}
            _ => frames.push(frame),
        }
    }
}

/// `user` posts `count` messages (`{prefix}{n}`) to `chat` over REST, one
/// after another, in a task of their own.
fn sends_in_background(
    app: &TestApp,
    user: &crate::support::TestUser,
    chat: &str,
    prefix: &'static str,
    count: usize,
) -> tokio::task::JoinHandle<()> {
    let (base, token, chat) = (app.base.clone(), user.token.clone(), chat.to_owned());
    let http = app.http.clone();
    tokio::spawn(async move {
        for n in 0..count {
            let res = http
                .post(format!("{base}/api/v1/messages"))
                .bearer_auth(&token)
                .json(&json!({"chat_id": chat, "content": format!("{prefix}{n}")}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 201);
        }
    })
}

/// A chat's last seq, from its REST view.
async fn head(app: &TestApp, user: &crate::support::TestUser, chat: &str) -> i64 {
    user.get(app, &format!("/api/v1/chats/{chat}"))
        .await
        .ok(200)["last_seq"]
        .as_i64()
        .unwrap()
}

#[tokio::test]
async fn an_offline_device_catches_up_on_1000_messages_in_three_chats_exactly_once() {
    let app = TestApp::start().await;
    let bob = app.signup("+14155551007", "Bob").await;
    let senders = [
        app.signup("+14155551008", "S1").await,
        app.signup("+14155551009", "S2").await,
        app.signup("+14155551010", "S3").await,
    ];
    let mut chats = Vec::new();
    for s in &senders {
        chats.push(s.direct_chat_with(&app, &bob).await);
    }
    // Bob's device has seen each chat's `created` entry.
    let known: Vec<(&str, i64)> = chats.iter().map(|c| (c.as_str(), 1)).collect();

    // Bob is offline while 1,000 messages arrive.
    let mut sends = Vec::new();
    for (i, (s, chat)) in senders.iter().zip(&chats).enumerate() {
        let count = if i == 0 { 334 } else { 333 };
        for n in 0..count {
            sends.push((s.clone(), chat.clone(), format!("{i}-{n}")));
        }
    }
    for chunk in sends.chunks(50) {
        let posts = chunk
            .iter()
            .map(|(s, chat, text)| s.sends(&app, chat, text));
        futures_util::future::join_all(posts).await;
    }

    let mut b = bob.connect(&app).await;
    let (frames, done) = sync_from(&mut b, &known).await;
    for chat in &chats {
        assert_eq!(done[chat], head(&app, &bob, chat).await);
    }
    check_exactly_once_in_order(&frames, 1000, &chats);
    // Synced again from where it is: nothing.
    let now: Vec<(&str, i64)> = chats.iter().map(|c| (c.as_str(), done[c])).collect();
    let (again, _) = sync_from(&mut b, &now).await;
    assert!(again.is_empty(), "{again:?}");
}

/// Every message once, each chat in seq order, and the frame's own
/// position agreeing with the message.
fn check_exactly_once_in_order(frames: &[Value], expected: usize, chats: &[String]) {
    let mut seen = HashSet::new();
    let mut last_seq: HashMap<String, i64> = HashMap::new();
    let mut messages = 0;
    for f in frames {
        let chat = f["chat_id"].as_str().unwrap().to_owned();
        let seq = f["seq"].as_i64().unwrap();
        let prev = last_seq.insert(chat.clone(), seq).unwrap_or(0);
        assert!(seq > prev, "{chat}: seq {seq} after {prev}");
        if f["type"] != "new_message" {
            continue;
        }
        let m = &f["message"];
        assert_eq!(m["seq"], seq);
        assert!(
            seen.insert(m["id"].as_str().unwrap().to_owned()),
            "duplicate {m}"
        );
        assert!(chats.contains(&chat));
        messages += 1;
    }
    assert_eq!(messages, expected);
}

#[tokio::test]
async fn sync_while_messages_keep_arriving_has_no_gap_and_no_duplicate() {
    let app = TestApp::start_with(|c| c.limits.sync_page_size = 7).await;
    let bob = app.signup("+14155551011", "Bob").await;
    let alice = app.signup("+14155551012", "Alice").await;
    let chat = alice.direct_chat_with(&app, &bob).await;
    for n in 0..200 {
        alice.sends(&app, &chat, &format!("old {n}")).await;
    }
    let mut b = bob.connect(&app).await;
    // New messages race with the sync.
    let writer = sends_in_background(&app, &alice, &chat, "new ", 200);
    let (mut frames, _) = sync_from(&mut b, &[(chat.as_str(), 1)]).await;
    tokio::time::timeout(WAIT * 3, writer)
        .await
        .unwrap()
        .unwrap();
    // Then the live stream, until all 400 are in.
    let count = |frames: &[Value]| frames.iter().filter(|f| f["type"] == "new_message").count();
    while count(&frames) < 400 {
        frames.push(b.next_of("new_message").await);
    }
    b.nothing_of("new_message", QUIET).await;
    // Every message exactly once; the sync part and the live part are each
    // in seq order.
    let mut ids = HashSet::new();
    for f in frames.iter().filter(|f| f["type"] == "new_message") {
        assert!(
            ids.insert(f["message"]["id"].as_str().unwrap().to_owned()),
            "duplicate {f}"
        );
    }
    assert_eq!(ids.len(), 400);
    let texts: Vec<&str> = frames
        .iter()
        .filter(|f| f["type"] == "new_message")
        .map(|f| f["message"]["content"].as_str().unwrap())
        .collect();
    let olds: Vec<&str> = texts
        .iter()
        .copied()
        .filter(|t| t.starts_with("old"))
        .collect();
    let news: Vec<&str> = texts
        .iter()
        .copied()
        .filter(|t| t.starts_with("new"))
        .collect();
    assert_eq!(
        olds,
        (0..200).map(|n| format!("old {n}")).collect::<Vec<_>>()
    );
    assert_eq!(
        news,
        (0..200).map(|n| format!("new {n}")).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_device_too_far_behind_in_one_chat_is_told_to_reload_it() {
    let app = TestApp::start_with(|c| c.limits.max_sync_updates = 10).await;
    let bob = app.signup("+14155551013", "Bob").await;
    let alice = app.signup("+14155551014", "Alice").await;
    let carol = app.signup("+14155551044", "Carol").await;
    let chat = alice.direct_chat_with(&app, &bob).await;
    let quiet = carol.direct_chat_with(&app, &bob).await;
    carol.sends(&app, &quiet, "one").await;
    for n in 0..12 {
        alice.sends(&app, &chat, &format!("m{n}")).await;
    }
    let mut b = bob.connect(&app).await;
    let current = head(&app, &bob, &chat).await;
    let (frames, _) = sync_from(&mut b, &[(chat.as_str(), 0), (quiet.as_str(), 1)]).await;
    // 13 behind (created + 12) in one chat: reload it; the other syncs.
    let too_long: Vec<&Value> = frames.iter().filter(|f| f["type"] == "too_long").collect();
    assert_eq!(too_long.len(), 1, "{frames:?}");
    assert_eq!(too_long[0]["chat_id"], chat.as_str());
    assert_eq!(too_long[0]["seq"], current);
    let news: Vec<&Value> = frames
        .iter()
        .filter(|f| f["type"] == "new_message")
        .collect();
    assert_eq!(news.len(), 1);
    assert_eq!(news[0]["message"]["content"], "one");
    // Ten behind is fine (N), eleven is not (N+1).
    let quiet_head = head(&app, &bob, &quiet).await;
    let mut b = bob.connect(&app).await;
    let (frames, _) = sync_from(
        &mut b,
        &[(chat.as_str(), current - 10), (quiet.as_str(), quiet_head)],
    )
    .await;
    assert_eq!(frames.len(), 10);
    assert!(frames.iter().all(|f| f["type"] == "new_message"));
    let mut b = bob.connect(&app).await;
    let (frames, _) = sync_from(
        &mut b,
        &[(chat.as_str(), current - 11), (quiet.as_str(), quiet_head)],
    )
    .await;
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0]["type"], "too_long");
}

#[tokio::test]
async fn a_sync_lists_at_most_max_sync_chats() {
    let app = TestApp::start_with(|c| c.limits.max_sync_chats = 2).await;
    let bob = app.signup("+14155551045", "Bob").await;
    let alice = app.signup("+14155551046", "Alice").await;
    let chat = alice.direct_chat_with(&app, &bob).await;
    let mut b = bob.connect(&app).await;
    let (other, third) = (
        uuid::Uuid::now_v7().to_string(),
        uuid::Uuid::now_v7().to_string(),
    );
    // Chats the user was never in show nothing.
    let (frames, done) = sync_from(&mut b, &[(chat.as_str(), 1), (other.as_str(), 0)]).await;
    assert!(frames.is_empty(), "{frames:?}");
    assert_eq!(done.len(), 1);
    b.send(json!({"type": "sync", "chats": [
        {"chat_id": chat, "seq": 1}, {"chat_id": other, "seq": 0}, {"chat_id": third, "seq": 0}
    ]}))
    .await;
    assert_eq!(b.next_of("error").await["code"], "validation_failed");
}

#[tokio::test]
async fn a_new_device_gets_each_chat_from_the_users_join() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155551047", "Alice").await;
    let bob = app.signup("+14155551048", "Bob").await;
    let carol = app.signup("+14155551049", "Carol").await;
    let group = alice.group_with(&app, "G", &[&carol]).await;
    alice.sends(&app, &group, "before bob").await;
    alice
        .post(
            &app,
            &format!("/api/v1/chats/{group}/participants"),
            json!({"user_ids": [bob.user_id]}),
        )
        .await
        .ok(200);
    alice.sends(&app, &group, "after bob").await;
    let mut b = bob.connect(&app).await;
    let (frames, done) = sync_from(&mut b, &[]).await;
    let kinds: Vec<&str> = frames.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["chat_updated", "new_message"], "{frames:?}");
    assert_eq!(frames[0]["message"]["event"]["kind"], "member_added");
    assert_eq!(frames[1]["message"]["content"], "after bob");
    assert_eq!(done[&group], head(&app, &bob, &group).await);
}

#[tokio::test]
async fn a_chat_joined_while_connected_is_delivered_from_the_join() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155551050", "Alice").await;
    let bob = app.signup("+14155551051", "Bob").await;
    let mut b = bob.connect(&app).await;
    let group = alice.group_with(&app, "G", &[]).await;
    alice.sends(&app, &group, "not for bob").await;
    alice
        .post(
            &app,
            &format!("/api/v1/chats/{group}/participants"),
            json!({"user_ids": [bob.user_id]}),
        )
        .await
        .ok(200);
    let added = b.next_of("chat_updated").await;
    assert_eq!(added["message"]["event"]["kind"], "member_added");
    alice.sends(&app, &group, "for bob").await;
    assert_eq!(
        b.next_of("new_message").await["message"]["content"],
        "for bob"
    );
    // And Bob's own direct chat, created after he connected, too.
    let direct = alice.direct_chat_with(&app, &bob).await;
    let created = b.next_of("chat_updated").await;
    assert_eq!(created["chat_id"], direct.as_str());
    assert_eq!(created["seq"], 1);
}

#[tokio::test]
async fn acks_make_messages_delivered_and_read_frames_make_them_read() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155551015", "Alice").await;
    let bob = app.signup("+14155551016", "Bob").await;
    let chat = alice.direct_chat_with(&app, &bob).await;
    let mut a = alice.connect(&app).await;
    let mut b = bob.connect(&app).await;
    let sent = alice.sends(&app, &chat, "knock knock").await;
    let seq = sent["seq"].as_i64().unwrap();
    let got = b.next_of("new_message").await;
    // Sent over REST: Alice's own socket gets it too.
    a.next_of("new_message").await;
    let status = || async {
        let page = alice
            .get(&app, &format!("/api/v1/chats/{chat}/messages"))
            .await
            .ok(200);
        page["messages"][0]["status"].as_str().unwrap().to_owned()
    };
    assert_eq!(status().await, "sent");

    b.send(json!({"type": "ack", "chat_id": chat, "seq": got["seq"]}))
        .await;
    let receipt = a.next_of("receipt").await;
    assert_eq!(receipt["chat_id"], chat.as_str());
    assert_eq!(receipt["delivered_seq"], seq);
    assert_eq!(receipt["read_seq"], 0, "Bob has read nothing yet");
    assert_eq!(status().await, "delivered");

    b.send(json!({"type": "read", "chat_id": chat, "seq": seq}))
        .await;
    let receipt = a.next_of("receipt").await;
    assert_eq!(receipt["read_seq"], seq);
    assert_eq!(status().await, "read");
}

#[tokio::test]
async fn typing_reaches_online_members_only_and_is_rate_limited() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155551017", "Alice").await;
    let bob = app.signup("+14155551018", "Bob").await;
    let carol = app.signup("+14155551019", "Carol").await;
    let chat = alice.direct_chat_with(&app, &bob).await;
    let mut a = alice.connect(&app).await;
    let mut b = bob.connect(&app).await;
    let mut c = carol.connect(&app).await;
    a.send(json!({"type": "typing", "chat_id": chat})).await;
    let typing = b.next_of("typing").await;
    assert_eq!(typing["user_id"], alice.user_id.as_str());
    assert_eq!(typing["chat_id"], chat.as_str());
    c.nothing_of("typing", QUIET).await;
    // The default allows 3 at once per device and chat.
    for _ in 0..2 {
        a.send(json!({"type": "typing", "chat_id": chat})).await;
    }
    a.send(json!({"type": "typing", "chat_id": chat})).await;
    assert_eq!(a.next_of("error").await["code"], "rate_limited");
    // Not a member: refused.
    c.send(json!({"type": "typing", "chat_id": chat})).await;
    assert_eq!(c.next_of("error").await["code"], "chat_not_found");
}

#[tokio::test]
async fn presence_follows_connections_and_the_privacy_setting() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155551020", "Alice").await;
    let bob = app.signup("+14155551021", "Bob").await;
    alice.adds_contact(&app, &bob).await;
    bob.adds_contact(&app, &alice).await;
    let mut b = bob.connect(&app).await;

    let a = alice.connect(&app).await;
    let online = b.next_of("presence").await;
    assert_eq!(online["user_id"], alice.user_id.as_str());
    assert_eq!(online["status"], "online");
    let contacts = bob.get(&app, "/api/v1/users/contacts").await.ok(200);
    assert_eq!(contacts["contacts"][0]["status"], "online");

    a.close().await;
    let offline = b.next_of("presence").await;
    assert_eq!(offline["status"], "offline");
    assert!(offline["last_seen"].is_string());

    // Hidden from everyone: no presence at all.
    alice
        .patch(
            &app,
            "/api/v1/users/me",
            json!({"last_seen_visibility": "nobody"}),
        )
        .await
        .ok(200);
    let a = alice.connect(&app).await;
    b.nothing_of("presence", QUIET).await;
    let contacts = bob.get(&app, "/api/v1/users/contacts").await.ok(200);
    assert_eq!(contacts["contacts"][0]["status"], "offline");
    a.close().await;
}

/// A user whose socket closes as a new one opens: whatever order the
/// server's `offline` and `online` announcements race in, the last one a
/// viewer hears says `online`.
#[tokio::test]
async fn a_reconnect_at_once_leaves_the_user_online_for_viewers() {
    const RECONNECTS: usize = 8;
    let app = TestApp::start().await;
    let alice = app.signup("+14155551025", "Alice").await;
    let bob = app.signup("+14155551026", "Bob").await;
    alice.adds_contact(&app, &bob).await;
    bob.adds_contact(&app, &alice).await;
    let mut b = bob.connect(&app).await;
    let mut a = alice.connect(&app).await;
    assert_eq!(b.next_of("presence").await["status"], "online");
    for _ in 0..RECONNECTS {
        let ((), new) = tokio::join!(a.close(), alice.connect(&app));
        a = new;
    }
    let last = b.last_of("presence", QUIET).await.expect("presence frames");
    assert_eq!(last["user_id"], alice.user_id.as_str());
    assert_eq!(last["status"], "online", "{last}");
    a.close().await;
}

#[tokio::test]
async fn revoking_a_device_closes_its_sockets() {
    let app = TestApp::start().await;
    let phone = "+14155551022";
    let main = app.signup(phone, "Main").await;
    let other = app.login(phone, "Other").await;
    let mut o = other.connect(&app).await;
    main.delete(&app, &format!("/api/v1/devices/{}", other.device_id))
        .await
        .ok(204);
    assert_eq!(o.next_or_close().await, Err(Some(4003)));
}

#[tokio::test]
async fn a_connection_that_falls_behind_is_closed_and_resumes_with_sync() {
    let app = TestApp::start_with(|c| {
        c.limits.ws_queue_depth = 4;
        c.limits.max_message_chars = 60_000;
    })
    .await;
    let alice = app.signup("+14155551023", "Alice").await;
    let bob = app.signup("+14155551024", "Bob").await;
    let chat = alice.direct_chat_with(&app, &bob).await;
    let mut b = bob.connect(&app).await;
    // Bob does not read while ~30 MB arrive.
    let big = "x".repeat(59_000);
    for chunk in 0..25 {
        let posts = (0..20).map(|n| {
            alice.post(
                &app,
                "/api/v1/messages",
                json!({"chat_id": chat, "content": format!("{chunk}-{n} {big}")}),
            )
        });
        for answer in futures_util::future::join_all(posts).await {
            assert_eq!(answer.status, 201);
        }
    }
    // Reading now: some frames, then the close code for "behind".
    let code = loop {
        match b.next_or_close().await {
            Ok(_) => {}
            Err(code) => break code,
        }
    };
    assert_eq!(code, Some(4008));
    // Reconnect and sync: all 500 are there.
    let mut b = bob.connect(&app).await;
    let (frames, _) = sync_from(&mut b, &[(chat.as_str(), 1)]).await;
    assert_eq!(
        frames.iter().filter(|f| f["type"] == "new_message").count(),
        500
    );
}

#[tokio::test]
async fn join_chat_checks_membership() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155551025", "Alice").await;
    let bob = app.signup("+14155551026", "Bob").await;
    let eve = app.signup("+14155551027", "Eve").await;
    let chat = alice.direct_chat_with(&app, &bob).await;
    let mut a = alice.connect(&app).await;
    a.send(json!({"type": "join_chat", "chat_id": chat})).await;
    assert_eq!(a.next_of("joined").await["chat_id"], chat.as_str());
    let mut e = eve.connect(&app).await;
    e.send(json!({"type": "join_chat", "chat_id": chat})).await;
    assert_eq!(e.next_of("error").await["code"], "chat_not_found");
}

#[tokio::test]
async fn removed_members_and_outsiders_receive_nothing_live() {
    let app = TestApp::start().await;
    let admin = app.signup("+14155551028", "Admin").await;
    let member = app.signup("+14155551029", "Member").await;
    let outsider = app.signup("+14155551030", "Outsider").await;
    let group = admin.group_with(&app, "G", &[&member]).await;
    let mut m = member.connect(&app).await;
    let mut o = outsider.connect(&app).await;
    admin.sends(&app, &group, "before").await;
    assert_eq!(
        m.next_of("new_message").await["message"]["content"],
        "before"
    );

    admin
        .delete(
            &app,
            &format!("/api/v1/chats/{group}/participants/{}", member.user_id),
        )
        .await
        .ok(204);
    let removal = m.next_of("chat_updated").await;
    assert_eq!(removal["message"]["event"]["kind"], "member_removed");
    admin.sends(&app, &group, "after").await;
    m.nothing_of("new_message", QUIET).await;
    o.nothing_of("new_message", QUIET).await;
    // Nor by sync, even from the start: the history ends at the removal.
    let (frames, done) = sync_from(&mut m, &[(group.as_str(), 0)]).await;
    assert!(frames.iter().all(|f| f["message"]["content"] != "after"));
    assert_eq!(
        frames.last().unwrap()["message"]["event"]["kind"],
        "member_removed"
    );
    assert!(done.is_empty(), "no longer followed: {done:?}");
}

#[tokio::test]
async fn a_silent_socket_is_closed_after_the_idle_timeout() {
    let app = TestApp::start_with(|c| {
        c.limits.ws_ping_interval_secs = 1;
        c.limits.ws_idle_timeout_secs = 2;
    })
    .await;
    let alice = app.signup("+14155551031", "Alice").await;
    let mut a = alice.connect(&app).await;
    // Not reading means not answering the server's pings.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let code = loop {
        match a.next_or_close().await {
            Ok(_) => {}
            Err(code) => break code,
        }
    };
    // 4009, or a reset if the client's automatic pong hit the closed socket
    // first; either way the server closed it (a live socket would time out here).
    assert!(matches!(code, Some(4009) | None), "{code:?}");
}

#[tokio::test]
async fn an_overlong_message_over_the_socket_is_refused_at_n_plus_one() {
    let app = TestApp::start_with(|c| c.limits.max_message_chars = 20).await;
    let alice = app.signup("+14155551032", "Alice").await;
    let bob = app.signup("+14155551033", "Bob").await;
    let chat = alice.direct_chat_with(&app, &bob).await;
    let mut a = alice.connect(&app).await;
    a.send(json!({"type": "send_message", "chat_id": chat, "content": "x".repeat(21)}))
        .await;
    assert_eq!(a.next_of("error").await["code"], "validation_failed");
    a.send(json!({"type": "send_message", "chat_id": chat, "content": "x".repeat(20)}))
        .await;
    assert_eq!(
        a.next_of("message_sent").await["message"]["content"],
        "x".repeat(20)
    );
}

#[tokio::test]
async fn presence_changes_are_rate_limited_and_acks_checked() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155551034", "Alice").await;
    let mut a = alice.connect(&app).await;
    for status in ["away", "online", "away", "online", "away", "online"] {
        a.send(json!({"type": "presence", "status": status})).await;
    }
    a.send(json!({"type": "presence", "status": "away"})).await;
    assert_eq!(a.next_of("error").await["code"], "rate_limited");
    a.send(json!({"type": "ack", "chat_id": uuid::Uuid::now_v7(), "seq": -1}))
        .await;
    assert_eq!(a.next_of("error").await["code"], "validation_failed");
}

#[tokio::test]
async fn a_member_removed_during_a_burst_receives_everything_before_and_nothing_after() {
    let app = TestApp::start().await;
    let admin = app.signup("+14155551052", "Admin").await;
    let member = app.signup("+14155551053", "Member").await;
    let sender = app.signup("+14155551054", "Sender").await;
    let group = admin.group_with(&app, "G", &[&member, &sender]).await;
    let mut m = member.connect(&app).await;
    let burst = sends_in_background(&app, &sender, &group, "b", 150);
    // Remove the member once some of the burst has reached them.
    for _ in 0..20 {
        m.next_of("new_message").await;
    }
    admin
        .delete(
            &app,
            &format!("/api/v1/chats/{group}/participants/{}", member.user_id),
        )
        .await
        .ok(204);
    tokio::time::timeout(WAIT * 3, burst)
        .await
        .unwrap()
        .unwrap();
    // What the member got after those 20: the rest up to their removal, in
    // order, then nothing.
    let mut seqs = Vec::new();
    let removed_at = loop {
        let frame = m.next().await;
        if frame["chat_id"] != group.as_str() {
            continue;
        }
        let seq = frame["seq"].as_i64().unwrap();
        seqs.push(seq);
        if frame["message"]["event"]["kind"] == "member_removed" {
            break seq;
        }
    };
    m.nothing_of("new_message", QUIET).await;
    // 1 created, then 20 messages already taken: 22 onwards, gapless.
    assert_eq!(seqs, (22..=removed_at).collect::<Vec<_>>());
    assert!(
        removed_at < 1 + 150 + 1,
        "the removal landed inside the burst"
    );
}

#[tokio::test]
async fn presence_is_pushed_to_group_members_only_in_groups_up_to_the_limit() {
    let app = TestApp::start_with(|c| c.limits.presence_group_max_members = 3).await;
    let alice = app.signup("+14155551055", "Alice").await;
    let bob = app.signup("+14155551056", "Bob").await;
    let carol = app.signup("+14155551057", "Carol").await;
    let dan = app.signup("+14155551058", "Dan").await;
    // Three members (N): Bob hears that Alice came online.
    let small = alice.group_with(&app, "Small", &[&bob, &carol]).await;
    let mut b = bob.connect(&app).await;
    let a = alice.connect(&app).await;
    assert_eq!(
        b.next_of("presence").await["user_id"],
        alice.user_id.as_str()
    );
    a.close().await;
    assert_eq!(b.next_of("presence").await["status"], "offline");
    // Four members (N+1), and no other chat in common: nothing is pushed.
    alice
        .delete(
            &app,
            &format!("/api/v1/chats/{small}/participants/{}", bob.user_id),
        )
        .await
        .ok(204);
    let _large = alice.group_with(&app, "Large", &[&bob, &carol, &dan]).await;
    let a = alice.connect(&app).await;
    b.nothing_of("presence", QUIET).await;
    a.close().await;
}
