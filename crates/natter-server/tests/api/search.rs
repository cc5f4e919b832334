//! Message, chat and contact search: the seed's example, permissions,
//! maintenance on edit and delete, accents, CJK, ranking, filters, the query
//! language, snippets, bad queries, and edits and deletions through the
//! API (the embedded indexer's catching up is in `embedded`).

use serde_json::{Value, json};

use crate::support::{TestApp, TestUser, mls_private};

/// Searches once the index has caught up with everything sent so far, so
/// the answer is exact.
async fn search(user: &TestUser, app: &TestApp, query: &str) -> Value {
    app.search_caught_up().await;
    user.get(app, &format!("/api/v1/search/messages?{query}"))
        .await
        .ok(200)
}

fn contents(results: &Value) -> Vec<String> {
    results["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_seed_search_example_works() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155551100", "Alice").await;
    let bob = app.signup("+14155551101", "Bob").await;
    let carol = app.signup("+14155551102", "Carol").await;
    let chat = alice.direct_chat_with(&app, &bob).await;
    let other = alice.direct_chat_with(&app, &carol).await;
    bob.sends(&app, &chat, "Hello, how are you doing today?")
        .await;
    alice.sends(&app, &chat, "goodbye").await;
    alice.sends(&app, &chat, "hello again <script>").await;
    carol.sends(&app, &other, "hello from elsewhere").await;

    // The seed: query "hello", one chat, page 1, limit 10.
    let results = search(
        &alice,
        &app,
        &format!("q=hello&chat_id={chat}&page=1&limit=10"),
    )
    .await;
    assert_eq!(results["total"], 2);
    assert_eq!(results["page"], 1);
    assert_eq!(results["limit"], 10);
    assert_eq!(
        contents(&results),
        ["hello again <script>", "Hello, how are you doing today?"]
    );
    let hit = &results["messages"][0];
    assert_eq!(hit["snippet"], "<mark>hello</mark> again &lt;script&gt;");
    assert_eq!(hit["chat_id"], chat.as_str());
    assert!(hit["seq"].is_i64() && hit["sender_id"].is_string());
    // `query` is accepted too, and without chat_id every chat is searched.
    assert_eq!(search(&alice, &app, "query=hello").await["total"], 3);
    // Paging.
    let page2 = search(&alice, &app, "q=hello&page=2&limit=2").await;
    assert_eq!(page2["total"], 3);
    assert_eq!(page2["messages"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn users_find_only_what_they_could_read() {
    let app = TestApp::start().await;
    let ann = app.signup("+14155551103", "Ann").await;
    let ben = app.signup("+14155551104", "Ben").await;
    let eve = app.signup("+14155551105", "Eve").await;
    let group = ann.group_with(&app, "G", &[&ben]).await;
    ann.sends(&app, &group, "secret plan alpha").await;
    assert_eq!(
        search(&eve, &app, "q=secret").await["total"],
        0,
        "another chat's messages"
    );
    assert_eq!(
        search(&eve, &app, &format!("q=secret&chat_id={group}")).await["total"],
        0,
        "naming a chat one is not in changes nothing"
    );

    ann.delete(
        &app,
        &format!("/api/v1/chats/{group}/participants/{}", ben.user_id),
    )
    .await
    .ok(204);
    ann.sends(&app, &group, "secret plan beta").await;
    assert_eq!(
        contents(&search(&ben, &app, "q=secret").await),
        ["secret plan alpha"]
    );
    assert_eq!(search(&ann, &app, "q=secret").await["total"], 2);

    // Encrypted chats are never indexed.
    let sealed = ann
        .post(
            &app,
            "/api/v1/chats",
            json!({"type": "direct", "participants": [eve.user_id], "encrypted": true}),
        )
        .await
        .ok(201);
    ann.post(
        &app,
        "/api/v1/messages",
        json!({"chat_id": sealed["id"], "ciphertext": mls_private(sealed["id"].as_str().unwrap(), 0, 1, b"secret")}),
    )
    .await
    .ok(201);
    assert_eq!(search(&eve, &app, "q=secret").await["total"], 0);
}

#[tokio::test]
async fn edits_and_deletions_show_once_indexed() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155551106", "Alice").await;
    let bob = app.signup("+14155551107", "Bob").await;
    let chat = alice.direct_chat_with(&app, &bob).await;
    let m = alice.sends(&app, &chat, "meet at the station").await;
    let path = format!("/api/v1/messages/{}", m["id"].as_str().unwrap());
    alice
        .patch(&app, &path, json!({"content": "meet at the harbour"}))
        .await
        .ok(200);
    assert_eq!(search(&bob, &app, "q=station").await["total"], 0);
    assert_eq!(
        contents(&search(&bob, &app, "q=harbour").await),
        ["meet at the harbour"]
    );
    alice.delete(&app, &path).await.ok(204);
    assert_eq!(search(&bob, &app, "q=harbour").await["total"], 0);
    assert_eq!(search(&bob, &app, "q=meet").await["total"], 0);
}

#[tokio::test]
async fn accents_case_and_cjk_are_found() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155551108", "Alice").await;
    let bob = app.signup("+14155551109", "Bob").await;
    let chat = alice.direct_chat_with(&app, &bob).await;
    alice
        .sends(&app, &chat, "Un CAFÉ crème, s'il vous plaît")
        .await;
    alice.sends(&app, &chat, "我们明天去北京吧").await;
    alice.sends(&app, &chat, "こんにちは世界").await;
    alice.sends(&app, &chat, "안녕하세요 여러분").await;
    for (q, expected) in [
        ("q=cafe", "Un CAFÉ crème, s'il vous plaît"),
        ("q=Caf%C3%A9", "Un CAFÉ crème, s'il vous plaît"),
        ("q=creme", "Un CAFÉ crème, s'il vous plaît"),
        ("q=%E5%8C%97%E4%BA%AC", "我们明天去北京吧"), // 北京 (two characters)
        ("q=%E6%98%8E%E5%A4%A9%E5%8E%BB", "我们明天去北京吧"), // 明天去 (trigram)
        ("q=%E4%B8%96%E7%95%8C", "こんにちは世界"),   // 世界
        ("q=%EC%95%88%EB%85%95%ED%95%98", "안녕하세요 여러분"), // 안녕하
    ] {
        assert_eq!(contents(&search(&bob, &app, q).await), [expected], "{q}");
    }
    let hit = search(&bob, &app, "q=%E5%8C%97%E4%BA%AC").await;
    assert!(
        hit["messages"][0]["snippet"]
            .as_str()
            .unwrap()
            .contains("<mark>北京</mark>")
    );
}

#[tokio::test]
async fn relevance_sort_and_filters() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155551110", "Alice").await;
    let bob = app.signup("+14155551111", "Bob").await;
    let chat = alice.direct_chat_with(&app, &bob).await;
    alice.sends(&app, &chat, "pizza pizza pizza tonight").await;
    bob.sends(
        &app,
        &chat,
        "maybe pizza, or sushi, or tacos, or anything else really",
    )
    .await;
    let newest = search(&alice, &app, "q=pizza").await;
    assert_eq!(newest["messages"][0]["sender_id"], bob.user_id.as_str());
    let best = search(&alice, &app, "q=pizza&sort=relevance").await;
    assert_eq!(best["messages"][0]["content"], "pizza pizza pizza tonight");
    let from_alice = search(
        &alice,
        &app,
        &format!("q=pizza&sender_id={}", alice.user_id),
    )
    .await;
    assert_eq!(from_alice["total"], 1);
    assert_eq!(search(&alice, &app, "q=pizza&type=text").await["total"], 2);
    assert_eq!(search(&alice, &app, "q=pizza&type=image").await["total"], 0);
    assert_eq!(
        search(&alice, &app, "q=pizza&before=2000-01-01T00:00:00Z").await["total"],
        0
    );
    assert_eq!(
        search(&alice, &app, "q=pizza&after=2000-01-01T00:00:00Z").await["total"],
        2
    );
    // FTS syntax: phrases, prefixes, OR.
    assert_eq!(
        search(&alice, &app, "q=%22pizza+tonight%22").await["total"],
        1
    );
    assert_eq!(search(&alice, &app, "q=sus*").await["total"], 1);
    assert_eq!(search(&alice, &app, "q=tonight+OR+tacos").await["total"], 2);
}

#[tokio::test]
async fn malformed_searches_are_400_and_bounds_hold_at_n() {
    let app = TestApp::start_with(|c| {
        c.limits.max_search_query_chars = 10;
        c.limits.max_search_page_size = 5;
    })
    .await;
    let alice = app.signup("+14155551112", "Alice").await;
    for bad in [
        "q=AND",
        "q=(",
        "q=",
        "q=%20%20",
        "q=abcdefghijk",
        "limit=5",
        "q=a&limit=6",
        "q=a&limit=0",
        "q=a&page=0",
        "q=a&page=x",
        "q=a&sort=best",
        "q=a&type=system",
        "q=a&type=sticker",
        "q=a&before=yesterday",
        "q=a&chat_id=chat_789",
        "q=a&q=b",
        "q=a&color=red",
    ] {
        alice
            .get(&app, &format!("/api/v1/search/messages?{bad}"))
            .await
            .expect(400, "invalid_parameter");
    }
    search(&alice, &app, "q=abcdefghij&limit=5").await;
}

#[tokio::test]
async fn chats_and_contacts_are_found_by_name() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155551113", "Alice").await;
    let bob = app.signup("+14155551114", "Bob Marley").await;
    let carol = app.signup("+14155551115", "Carol").await;
    let direct = alice.direct_chat_with(&app, &bob).await;
    let group = alice.group_with(&app, "Weekend Hiking", &[&carol]).await;
    alice.adds_contact(&app, &bob).await;
    alice.adds_contact(&app, &carol).await;

    let chats = alice.get(&app, "/api/v1/search/chats?q=hik").await.ok(200);
    assert_eq!(chats["chats"].as_array().unwrap().len(), 1);
    assert_eq!(chats["chats"][0]["id"], group.as_str());
    let chats = alice
        .get(&app, "/api/v1/search/chats?q=marley")
        .await
        .ok(200);
    assert_eq!(chats["chats"][0]["id"], direct.as_str());
    let contacts = alice
        .get(&app, "/api/v1/search/contacts?q=CAR")
        .await
        .ok(200);
    assert_eq!(contacts["contacts"].as_array().unwrap().len(), 1);
    assert_eq!(contacts["contacts"][0]["user_id"], carol.user_id.as_str());
    alice
        .get(&app, "/api/v1/search/contacts?q=")
        .await
        .expect(400, "invalid_parameter");
    alice
        .get(&app, "/api/v1/search/chats")
        .await
        .expect(400, "invalid_parameter");
}

/// The total for `q` (URL-encoded here), as `user` sees it once caught up.
pub(crate) async fn total(user: &TestUser, app: &TestApp, q: &str) -> i64 {
    let q: String = form_urlencoded::byte_serialize(q.as_bytes()).collect();
    search(user, app, &format!("q={q}")).await["total"]
        .as_i64()
        .unwrap()
}

#[tokio::test]
async fn anything_a_person_types_is_a_query_or_a_clear_400() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155551116", "Alice").await;
    let bob = app.signup("+14155551117", "Bob").await;
    let chat = alice.direct_chat_with(&app, &bob).await;
    alice.sends(&app, &chat, "Hello, how are you?").await;
    alice.sends(&app, &chat, "I don't know").await;
    alice
        .sends(&app, &chat, "my e-mail is bob@example.com")
        .await;
    alice.sends(&app, &chat, "an e mail, spelt apart").await;
    for (q, expected) in [
        ("don't", vec!["I don't know"]),
        (
            "e-mail",
            vec!["an e mail, spelt apart", "my e-mail is bob@example.com"],
        ),
        ("Hello, how", vec!["Hello, how are you?"]),
        ("how are you?", vec!["Hello, how are you?"]),
        ("bob@example.com", vec!["my e-mail is bob@example.com"]),
        // A quote left open runs to the end.
        ("\"hello", vec!["Hello, how are you?"]),
        ("\"how are", vec!["Hello, how are you?"]),
        ("\"are how", vec![]),
        // Operators.
        (
            "know OR apart",
            vec!["I don't know", "an e mail, spelt apart"],
        ),
        ("mail -apart", vec!["my e-mail is bob@example.com"]),
        ("mail NOT bob", vec!["an e mail, spelt apart"]),
        ("exam*", vec!["my e-mail is bob@example.com"]),
        // Lower-case operators and FTS5's own syntax are just words.
        ("and", vec![]),
        ("NEAR(hello how)", vec![]),
        ("hello:how ^are", vec!["Hello, how are you?"]),
    ] {
        let encoded: String = form_urlencoded::byte_serialize(q.as_bytes()).collect();
        let found = search(&bob, &app, &format!("q={encoded}")).await;
        let mut got = contents(&found);
        got.sort();
        assert_eq!(got, expected, "{q}");
    }
    for (q, says) in [
        ("*", "`*`"),
        ("* hello", "`*`"),
        ("NOT", "`NOT`"),
        ("hello OR", "`OR`"),
        ("-hello", "excludes"),
        ("?!", "no words"),
    ] {
        let encoded: String = form_urlencoded::byte_serialize(q.as_bytes()).collect();
        let answer = bob
            .get(&app, &format!("/api/v1/search/messages?q={encoded}"))
            .await;
        answer.expect(400, "invalid_parameter");
        let message = answer.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{q}: {message}");
        assert!(
            !message.contains("fts5") && !message.contains("syntax error"),
            "{q}: engine text leaked: {message}"
        );
    }
}

#[tokio::test]
async fn the_term_limit_holds_at_n() {
    let app = TestApp::start_with(|c| c.limits.max_search_terms = 3).await;
    let alice = app.signup("+14155551118", "Alice").await;
    search(&alice, &app, "q=a+b+-c").await;
    search(&alice, &app, "q=a+OR+b+c").await;
    for bad in ["q=a+b+c+d", "q=a+OR+b+OR+c+-d", "q=%22a%22+b+c+d*"] {
        let answer = alice
            .get(&app, &format!("/api/v1/search/messages?{bad}"))
            .await;
        answer.expect(400, "invalid_parameter");
        assert!(
            answer.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("at most 3 words"),
            "{answer:?}"
        );
    }
}

#[tokio::test]
async fn message_text_cannot_forge_snippet_marks() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155551119", "Alice").await;
    let bob = app.signup("+14155551120", "Bob").await;
    let chat = alice.direct_chat_with(&app, &bob).await;
    // The characters the index uses as match markers, and literal markup.
    alice
        .sends(
            &app,
            &chat,
            "\u{E000}forged\u{E001} <mark>fake</mark> real words",
        )
        .await;
    for (q, marked) in [("real", "real"), ("forged", "forged"), ("fake", "fake")] {
        let found = search(&bob, &app, &format!("q={q}")).await;
        assert_eq!(found["total"], 1, "{q}");
        let snippet = found["messages"][0]["snippet"].as_str().unwrap();
        assert_eq!(
            snippet.matches("<mark>").count(),
            1,
            "{q}: one mark, the match: {snippet}"
        );
        assert_eq!(snippet.matches("</mark>").count(), 1, "{q}: {snippet}");
        assert!(
            snippet.contains(&format!("<mark>{marked}</mark>")),
            "{q}: {snippet}"
        );
        assert!(snippet.contains("&lt;mark&gt;"), "{q}: {snippet}");
        assert!(
            !snippet.contains('\u{E000}') && !snippet.contains('\u{E001}'),
            "{q}: {snippet}"
        );
        // The message itself is untouched.
        assert_eq!(
            found["messages"][0]["content"],
            "\u{E000}forged\u{E001} <mark>fake</mark> real words"
        );
    }
    // The same in the substring (CJK) path.
    alice.sends(&app, &chat, "\u{E000}北京\u{E001}<mark>").await;
    let found = search(&bob, &app, "q=%E5%8C%97%E4%BA%AC").await;
    let snippet = found["messages"][0]["snippet"].as_str().unwrap();
    assert_eq!(snippet.matches("<mark>").count(), 1, "{snippet}");
    assert!(snippet.contains("<mark>北京</mark>"), "{snippet}");
}

#[tokio::test]
async fn edits_and_deletions_through_the_api_reach_the_index() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155551125", "Alice").await;
    let bob = app.signup("+14155551126", "Bob").await;
    let chat = alice.direct_chat_with(&app, &bob).await;
    let m = alice.sends(&app, &chat, "first draft").await;
    let path = format!("/api/v1/messages/{}", m["id"].as_str().unwrap());
    // Edited twice and then deleted, possibly before the indexer ran at all.
    alice
        .patch(&app, &path, json!({"content": "second draft"}))
        .await
        .ok(200);
    alice
        .patch(&app, &path, json!({"content": "final text"}))
        .await
        .ok(200);
    assert_eq!(total(&bob, &app, "draft").await, 0);
    assert_eq!(total(&bob, &app, "final").await, 1);
    alice.delete(&app, &path).await.ok(204);
    assert_eq!(total(&bob, &app, "final").await, 0);
    let gone = alice.sends(&app, &chat, "gone at once").await;
    alice
        .delete(
            &app,
            &format!("/api/v1/messages/{}", gone["id"].as_str().unwrap()),
        )
        .await
        .ok(204);
    assert_eq!(total(&bob, &app, "gone").await, 0);
}
