//! Message, chat and contact search: the seed's example, permissions,
//! maintenance on edit and delete, accents, CJK, ranking, filters, bad queries.

use serde_json::{Value, json};

use crate::support::{TestApp, TestUser};

async fn search(user: &TestUser, app: &TestApp, query: &str) -> Value {
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
        json!({"chat_id": sealed["id"], "ciphertext": "c2VjcmV0"}),
    )
    .await
    .ok(201);
    assert_eq!(search(&eve, &app, "q=secret").await["total"], 0);
}

#[tokio::test]
async fn edits_and_deletions_show_at_once() {
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
        "q=%22unbalanced",
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
