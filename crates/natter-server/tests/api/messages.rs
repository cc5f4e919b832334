//! Messages: sending (the seed's body), history and paging, idempotency,
//! encrypted chats, edits, deletions, receipts, and visibility by membership.

use serde_json::json;

use crate::support::{TestApp, mls_app, mls_private};

#[tokio::test]
async fn the_seed_message_and_history_bodies_work_verbatim() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155550900", "Alice").await;
    let bob = app.signup("+14155550901", "Bob").await;
    let chat = alice.direct_chat_with(&app, &bob).await;

    let sent = alice
        .post(
            &app,
            "/api/v1/messages",
            json!({
                "chat_id": chat,
                "content": "Hello, how are you?",
                "type": "text",
                "timestamp": "2024-01-01T10:00:00Z"
            }),
        )
        .await
        .ok(201);
    assert_eq!(sent["chat_id"], chat.as_str());
    assert_eq!(sent["sender_id"], alice.user_id.as_str());
    assert_eq!(sent["sender_device_id"], alice.device_id.as_str());
    assert_eq!(sent["content"], "Hello, how are you?");
    assert_eq!(sent["type"], "text");
    assert_eq!(sent["client_timestamp"], "2024-01-01T10:00:00.000Z");
    assert_ne!(
        sent["timestamp"], "2024-01-01T10:00:00.000Z",
        "server time, not the client's"
    );
    assert_eq!(sent["seq"], 2, "after the `created` entry");
    assert_eq!(sent["status"], "sent");

    // GET /api/v1/chats/{chat_id}/messages?page=1&limit=50
    let page = bob
        .get(
            &app,
            &format!("/api/v1/chats/{chat}/messages?page=1&limit=50"),
        )
        .await
        .ok(200);
    assert_eq!(page["has_more"], false);
    let messages = page["messages"].as_array().unwrap();
    assert_eq!(messages[0]["id"], sent["id"]);
    assert_eq!(messages[0]["content"], "Hello, how are you?");
    for key in ["id", "sender_id", "content", "type", "timestamp", "status"] {
        assert!(
            messages[0].get(key).is_some(),
            "history entries carry `{key}`"
        );
    }
}

#[tokio::test]
async fn a_forged_sender_has_no_effect() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155550902", "Alice").await;
    let bob = app.signup("+14155550903", "Bob").await;
    let chat = alice.direct_chat_with(&app, &bob).await;
    let sent = alice
        .post(
            &app,
            "/api/v1/messages",
            json!({"chat_id": chat, "content": "hi", "type": "text", "sender_id": bob.user_id,
                   "sender_device_id": bob.device_id, "seq": 99, "id": "01900000-0000-7000-8000-000000000000"}),
        )
        .await
        .ok(201);
    assert_eq!(sent["sender_id"], alice.user_id.as_str());
    assert_eq!(sent["sender_device_id"], alice.device_id.as_str());
    assert_ne!(sent["seq"], 99);
    assert_ne!(sent["id"], "01900000-0000-7000-8000-000000000000");
}

#[tokio::test]
async fn history_pages_newest_first_with_has_more_and_cursors() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155550904", "Alice").await;
    let bob = app.signup("+14155550905", "Bob").await;
    let chat = alice.direct_chat_with(&app, &bob).await;
    for i in 1..=7 {
        alice.sends(&app, &chat, &format!("m{i}")).await;
    }
    let texts = |page: &serde_json::Value| -> Vec<String> {
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["content"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    let base = format!("/api/v1/chats/{chat}/messages");
    let p1 = bob
        .get(&app, &format!("{base}?page=1&limit=3"))
        .await
        .ok(200);
    assert_eq!(texts(&p1), ["m7", "m6", "m5"]);
    assert_eq!(p1["has_more"], true);
    let p3 = bob
        .get(&app, &format!("{base}?page=3&limit=3"))
        .await
        .ok(200);
    assert_eq!(
        texts(&p3),
        ["m1", ""],
        "the last page ends with the `created` entry"
    );
    assert_eq!(p3["has_more"], false);
    // Cursors: seq of m5 is 6 (m1 is seq 2).
    let before = bob
        .get(&app, &format!("{base}?before_seq=6&limit=2"))
        .await
        .ok(200);
    assert_eq!(texts(&before), ["m4", "m3"]);
    let after = bob
        .get(&app, &format!("{base}?after_seq=6&limit=10"))
        .await
        .ok(200);
    assert_eq!(texts(&after), ["m6", "m7"], "after a cursor: oldest first");
    assert_eq!(after["has_more"], false);
}

#[tokio::test]
async fn history_paging_is_bounded_at_n_and_malformed_paging_is_400() {
    let app = TestApp::start_with(|c| c.limits.max_page_size = 5).await;
    let alice = app.signup("+14155550906", "Alice").await;
    let bob = app.signup("+14155550907", "Bob").await;
    let chat = alice.direct_chat_with(&app, &bob).await;
    let base = format!("/api/v1/chats/{chat}/messages");
    alice.get(&app, &format!("{base}?limit=5")).await.ok(200);
    alice
        .get(&app, &format!("{base}?limit=6"))
        .await
        .expect(400, "invalid_parameter");
    for bad in [
        "limit=0",
        "page=0",
        "limit=abc",
        "page=-1",
        "before_seq=0",
        "unknown=1",
        "limit=99999999999999999999",
    ] {
        alice
            .get(&app, &format!("{base}?{bad}"))
            .await
            .expect(400, "invalid_parameter");
    }
    // The default page is 50, capped by the limit.
    alice.get(&app, &base).await.ok(200);
}

#[tokio::test]
async fn a_retry_with_the_same_client_message_id_returns_the_original() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155550908", "Alice").await;
    let bob = app.signup("+14155550909", "Bob").await;
    let chat = alice.direct_chat_with(&app, &bob).await;
    let body =
        json!({"chat_id": chat, "content": "once", "type": "text", "client_message_id": "c-1"});
    let first = alice
        .post(&app, "/api/v1/messages", body.clone())
        .await
        .ok(201);
    let retry = alice.post(&app, "/api/v1/messages", body).await.ok(200);
    assert_eq!(first["id"], retry["id"]);
    assert_eq!(first["seq"], retry["seq"]);
    assert_eq!(retry["client_message_id"], "c-1");
    assert_eq!(bob.texts(&app, &chat).await, ["once"]);
    // The same key from another sender is another message.
    bob.post(
        &app,
        "/api/v1/messages",
        json!({"chat_id": chat, "content": "mine", "type": "text", "client_message_id": "c-1"}),
    )
    .await
    .ok(201);
}

#[tokio::test]
async fn message_fields_are_bounded_at_n_and_n_plus_one() {
    let app = TestApp::start_with(|c| {
        c.limits.max_message_chars = 10;
        c.limits.max_client_message_id_chars = 4;
    })
    .await;
    let alice = app.signup("+14155550910", "Alice").await;
    let bob = app.signup("+14155550911", "Bob").await;
    let chat = alice.direct_chat_with(&app, &bob).await;
    let send = |body: serde_json::Value| alice.post(&app, "/api/v1/messages", body);
    send(json!({"chat_id": chat, "content": "éééééééééé"}))
        .await
        .ok(201);
    send(json!({"chat_id": chat, "content": "ééééééééééé"}))
        .await
        .expect(422, "validation_failed");
    send(json!({"chat_id": chat, "content": "   "}))
        .await
        .expect(422, "validation_failed");
    send(json!({"chat_id": chat}))
        .await
        .expect(422, "validation_failed");
    send(json!({"chat_id": chat, "content": "x", "client_message_id": "abcd"}))
        .await
        .ok(201);
    send(json!({"chat_id": chat, "content": "x", "client_message_id": "abcde"}))
        .await
        .expect(422, "validation_failed");
    send(json!({"chat_id": chat, "content": "x", "type": "system"}))
        .await
        .expect(422, "validation_failed");
    send(json!({"chat_id": chat, "content": "x", "type": "image"}))
        .await
        .expect(422, "validation_failed");
    send(json!({"chat_id": chat, "content": "x", "type": "sticker"}))
        .await
        .expect(422, "validation_failed");
    send(json!({"chat_id": chat, "ciphertext": "aGk="}))
        .await
        .expect(422, "validation_failed");
    send(json!({"chat_id": chat, "content": "x", "reply_to": "01900000-0000-7000-8000-000000000000"}))
        .await
        .expect(422, "validation_failed");
}

#[tokio::test]
async fn encrypted_chats_take_only_ciphertext_and_return_it_untouched() {
    // An MLS application message of the tests is 36 bytes.
    let app = TestApp::start_with(|c| c.limits.max_ciphertext_bytes = 36).await;
    let alice = app.signup("+14155550912", "Alice").await;
    let bob = app.signup("+14155550913", "Bob").await;
    let chat = alice
        .post(
            &app,
            "/api/v1/chats",
            json!({"type": "direct", "participants": [bob.user_id], "encrypted": true}),
        )
        .await
        .ok(201);
    assert_eq!(chat["encrypted"], true);
    let chat = chat["id"].as_str().unwrap();
    let sealed = mls_app(chat, 0);
    let send = |body: serde_json::Value| alice.post(&app, "/api/v1/messages", body);
    send(json!({"chat_id": chat, "content": "plain"}))
        .await
        .expect(422, "validation_failed");
    send(json!({"chat_id": chat, "ciphertext": sealed, "content": "x"}))
        .await
        .expect(422, "validation_failed");
    send(json!({"chat_id": chat, "ciphertext": "not base64!"}))
        .await
        .expect(422, "validation_failed");
    // 36 bytes pass, 37 do not.
    let sent = send(json!({"chat_id": chat, "ciphertext": sealed}))
        .await
        .ok(201);
    assert_eq!(sent["ciphertext"], sealed.as_str());
    assert_eq!(sent["content"], serde_json::Value::Null);
    send(json!({"chat_id": chat, "ciphertext": mls_private(chat, 0, 1, &[1, 2, 3, 4, 5])}))
        .await
        .expect(422, "validation_failed");
    let page = bob
        .get(&app, &format!("/api/v1/chats/{chat}/messages"))
        .await
        .ok(200);
    assert_eq!(page["messages"][0]["ciphertext"], sealed.as_str());
    // The chat list shows no plaintext preview for encrypted chats.
    let list = bob.get(&app, "/api/v1/chats").await.ok(200);
    assert_eq!(
        list["chats"][0]["last_message"]["content"],
        serde_json::Value::Null
    );
}

#[tokio::test]
async fn senders_edit_within_the_window_and_delete_for_everyone() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155550914", "Alice").await;
    let bob = app.signup("+14155550915", "Bob").await;
    let chat = alice.direct_chat_with(&app, &bob).await;
    let m = alice.sends(&app, &chat, "helo").await;
    let path = format!("/api/v1/messages/{}", m["id"].as_str().unwrap());

    bob.patch(&app, &path, json!({"content": "hacked"}))
        .await
        .expect(403, "forbidden");
    bob.delete(&app, &path).await.expect(403, "forbidden");
    let empty = alice.patch(&app, &path, json!({})).await;
    empty.expect(422, "validation_failed");
    assert!(
        empty.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`content` is required")
    );
    let edited = alice
        .patch(&app, &path, json!({"content": "hello"}))
        .await
        .ok(200);
    assert_eq!(edited["content"], "hello");
    assert!(edited["edited_at"].is_string());
    assert_eq!(bob.texts(&app, &chat).await, ["hello"]);

    alice.delete(&app, &path).await.ok(204);
    let page = bob
        .get(&app, &format!("/api/v1/chats/{chat}/messages"))
        .await
        .ok(200);
    let tomb = &page["messages"][0];
    assert_eq!(tomb["id"], m["id"]);
    assert_eq!(tomb["deleted"], true);
    assert_eq!(tomb["content"], serde_json::Value::Null);
    alice
        .patch(&app, &path, json!({"content": "again"}))
        .await
        .expect(409, "edit_window_closed");
    // Deleting it again is 409 too (declared in the OpenAPI document).
    alice
        .delete(&app, &path)
        .await
        .expect(409, "edit_window_closed");
    alice
        .delete(
            &app,
            "/api/v1/messages/01900000-0000-7000-8000-000000000000",
        )
        .await
        .expect(404, "message_not_found");

    // The deleted text is gone from the store, edits included: overwritten
    // in the database file (the write-ahead log is folded in at shutdown).
    let mut app = app;
    app.restart().await;
    let copies = app.stored_copies(&[b"helo", b"hello"]).await;
    assert!(copies.is_empty(), "deleted text still stored: {copies:?}");
}

#[tokio::test]
async fn edits_close_after_the_window() {
    let app = TestApp::start_with(|c| c.limits.edit_window_secs = 1).await;
    let alice = app.signup("+14155550916", "Alice").await;
    let bob = app.signup("+14155550917", "Bob").await;
    let chat = alice.direct_chat_with(&app, &bob).await;
    let m = alice.sends(&app, &chat, "typo").await;
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    alice
        .patch(
            &app,
            &format!("/api/v1/messages/{}", m["id"].as_str().unwrap()),
            json!({"content": "fixed"}),
        )
        .await
        .expect(409, "edit_window_closed");
}

#[tokio::test]
async fn status_moves_from_sent_to_read() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155550918", "Alice").await;
    let bob = app.signup("+14155550919", "Bob").await;
    let carol = app.signup("+14155550920", "Carol").await;
    let group = alice.group_with(&app, "G", &[&bob, &carol]).await;
    let m = alice.sends(&app, &group, "read me").await;
    let seq = m["seq"].as_i64().unwrap();
    let status = || async {
        let page = alice
            .get(&app, &format!("/api/v1/chats/{group}/messages"))
            .await
            .ok(200);
        page["messages"][0]["status"].as_str().unwrap().to_owned()
    };
    assert_eq!(status().await, "sent");
    let read = bob
        .post(
            &app,
            &format!("/api/v1/chats/{group}/read"),
            json!({"seq": seq}),
        )
        .await
        .ok(200);
    assert_eq!(read["read_seq"], seq);
    assert_eq!(
        status().await,
        "sent",
        "in a group, every other member must read"
    );
    carol
        .post(
            &app,
            &format!("/api/v1/chats/{group}/read"),
            json!({"seq": seq + 100}),
        )
        .await
        .ok(200);
    assert_eq!(status().await, "read");
    // Read positions never move back.
    let back = bob
        .post(
            &app,
            &format!("/api/v1/chats/{group}/read"),
            json!({"seq": 1}),
        )
        .await
        .ok(200);
    assert_eq!(back["read_seq"], seq);
}

#[tokio::test]
async fn members_see_history_from_joining_until_leaving() {
    let app = TestApp::start().await;
    let ann = app.signup("+14155550921", "Ann").await;
    let ben = app.signup("+14155550922", "Ben").await;
    let cy = app.signup("+14155550923", "Cy").await;
    let group = ann.group_with(&app, "G", &[&ben]).await;
    ann.sends(&app, &group, "before cy").await;
    ann.post(
        &app,
        &format!("/api/v1/chats/{group}/participants"),
        json!({"user_ids": [cy.user_id]}),
    )
    .await
    .ok(200);
    ann.sends(&app, &group, "with cy").await;
    ann.delete(
        &app,
        &format!("/api/v1/chats/{group}/participants/{}", cy.user_id),
    )
    .await
    .ok(204);
    ann.sends(&app, &group, "after cy").await;

    assert_eq!(
        ben.texts(&app, &group).await,
        ["before cy", "with cy", "after cy"]
    );
    assert_eq!(
        cy.texts(&app, &group).await,
        ["with cy"],
        "from joining until removal"
    );
    // Cy still sees the removal itself, and nothing after it.
    let page = cy
        .get(&app, &format!("/api/v1/chats/{group}/messages"))
        .await
        .ok(200);
    assert_eq!(page["messages"][0]["event"]["kind"], "member_removed");
    // Re-added later: the new period shows, the gap does not.
    ann.post(
        &app,
        &format!("/api/v1/chats/{group}/participants"),
        json!({"user_ids": [cy.user_id]}),
    )
    .await
    .ok(200);
    ann.sends(&app, &group, "cy again").await;
    assert_eq!(cy.texts(&app, &group).await, ["with cy", "cy again"]);
}

#[tokio::test]
async fn a_removal_racing_with_sends_never_lets_a_later_message_through() {
    let app = TestApp::start().await;
    let admin = app.signup("+14155550924", "Admin").await;
    let racer = app.signup("+14155550925", "Racer").await;
    for round in 0u64..10 {
        let group = admin
            .group_with(&app, &format!("race {round}"), &[&racer])
            .await;
        let sends = async {
            let mut accepted = Vec::new();
            for i in 0..20 {
                let answer = racer
                    .post(
                        &app,
                        "/api/v1/messages",
                        json!({"chat_id": group, "content": format!("r{i}")}),
                    )
                    .await;
                match answer.status.as_u16() {
                    201 => accepted.push(answer.body["seq"].as_i64().unwrap()),
                    404 => {}
                    other => panic!("unexpected {other}: {answer:?}"),
                }
            }
            accepted
        };
        let removal = async {
            tokio::time::sleep(std::time::Duration::from_millis(round * 3)).await;
            admin
                .delete(
                    &app,
                    &format!("/api/v1/chats/{group}/participants/{}", racer.user_id),
                )
                .await
                .ok(204);
        };
        let (accepted, ()) = tokio::join!(sends, removal);
        let page = admin
            .get(&app, &format!("/api/v1/chats/{group}/messages?limit=100"))
            .await
            .ok(200);
        let removed_at = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["event"]["kind"] == "member_removed")
            .and_then(|m| m["seq"].as_i64())
            .unwrap();
        assert!(
            accepted.iter().all(|seq| *seq < removed_at),
            "round {round}: {accepted:?} vs {removed_at}"
        );
        let after = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["seq"].as_i64().unwrap() > removed_at)
            .count();
        assert_eq!(
            after, 0,
            "round {round}: a message landed after the removal"
        );
    }
}

#[tokio::test]
async fn sends_per_user_are_rate_limited() {
    let app = TestApp::start_with(|c| {
        c.rate_limits.messages_per_user = natter_server::config::Rate {
            burst: 3,
            per_secs: 3600,
        };
    })
    .await;
    let alice = app.signup("+14155550930", "Alice").await;
    let bob = app.signup("+14155550931", "Bob").await;
    let chat = alice.direct_chat_with(&app, &bob).await;
    for n in 0..3 {
        alice.sends(&app, &chat, &format!("m{n}")).await;
    }
    let refused = alice
        .post(
            &app,
            "/api/v1/messages",
            json!({"chat_id": chat, "content": "one too many"}),
        )
        .await;
    refused.expect(429, "rate_limited");
    assert!(refused.headers.contains_key("retry-after"));
    // Per user: Bob still sends.
    bob.sends(&app, &chat, "fine").await;
}
