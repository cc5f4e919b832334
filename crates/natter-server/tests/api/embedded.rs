//! The embedded store's own mechanics, which a cluster does not have: the
//! data directory's lock, and the search indexer that follows the chat log
//! after the append commits (on PostgreSQL a message and its search entry
//! are written in one transaction, so there is no lag to catch up). The
//! cluster run of this suite leaves this module out by name (`embedded::`).

use natter_proto::chats::MessageType;
use natter_proto::{ChatId, DeviceId, MessageId, UserId};
use natter_server::clock::Timestamp;
use natter_server::store::sqlite::SqliteStore;
use natter_server::store::{
    ChatLog as _, MessageChange, NewContent, NewMessage, Posted, SearchIndex as _, Store as _,
};
use serde_json::json;

use crate::search::total;
use crate::support::{TestApp, TestUser, WAIT};

#[tokio::test]
async fn a_second_server_cannot_open_the_same_data_directory() {
    let app = TestApp::start().await;
    let mut config = natter_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: app.data_dir().to_owned(),
        ..natter_server::Config::default()
    };
    config.sms_webhook_url = Some("http://127.0.0.1:9/".to_owned());
    let err = natter_server::RunningServer::start(config)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("another natter process"), "{err}");
    // The first one is unaffected.
    app.post(
        "/api/v1/users/verification",
        json!({"phone": "+14155550710"}),
    )
    .await
    .ok(202);
}

#[tokio::test]
async fn the_indexer_catches_up_and_reports_its_lag() {
    let app = TestApp::start().await;
    let alice = app.signup("+14155551121", "Alice").await;
    let bob = app.signup("+14155551122", "Bob").await;
    let chat = alice.direct_chat_with(&app, &bob).await;
    for n in 0..30 {
        alice.sends(&app, &chat, &format!("catch word{n} up")).await;
    }
    assert_eq!(total(&bob, &app, "catch").await, 30);
    assert_eq!(total(&bob, &app, "word29").await, 1);
    // The metrics agree once the indexer's last pass is recorded.
    tokio::time::timeout(WAIT, async {
        while app.metric("natter_search_indexed_total").await < 30.0
            || app.metric("natter_search_index_lag_entries").await != 0.0
        {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the metrics show the index caught up");
    let text = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("natter_search_index_lag_entries 0"),
        "the lag gauge is exported"
    );
}

/// Writes to the store of a stopped server directly: the appends commit,
/// and no indexer runs, as when a server dies between an append and its
/// indexing.
struct Offline {
    store: SqliteStore,
    chat: ChatId,
    sender: UserId,
    device: DeviceId,
}

impl Offline {
    fn open(app: &TestApp, chat: &str, sender: &TestUser) -> Self {
        Self {
            store: SqliteStore::open(app.data_dir(), &app.config().store).unwrap(),
            chat: chat.parse().unwrap(),
            sender: sender.user_id.parse().unwrap(),
            device: sender.device_id.parse().unwrap(),
        }
    }

    async fn sends(&self, text: &str) -> MessageId {
        let id = MessageId::new();
        let posted = self
            .store
            .post(NewMessage {
                id,
                chat_id: self.chat,
                sender_id: self.sender,
                sender_device_id: self.device,
                message_type: MessageType::Text,
                content: Some(text.to_owned()),
                ciphertext: None,
                media_id: None,
                reply_to: None,
                client_message_id: None,
                client_timestamp: None,
                now: Timestamp::now(),
            })
            .await
            .unwrap();
        assert!(matches!(posted, Posted::Created(_)), "{posted:?}");
        id
    }

    async fn changes(&self, message: MessageId, edit: Option<&str>) {
        self.store
            .change_message(MessageChange {
                message,
                actor: self.sender,
                device: self.device,
                edit: edit.map(|text| NewContent {
                    content: Some(text.to_owned()),
                    ciphertext: None,
                    window_ms: i64::MAX,
                }),
                now: Timestamp::now(),
            })
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_crash_between_append_and_index_is_caught_up_once() {
    let mut app = TestApp::start().await;
    let alice = app.signup("+14155551123", "Alice").await;
    let bob = app.signup("+14155551124", "Bob").await;
    let chat = alice.direct_chat_with(&app, &bob).await;
    alice.sends(&app, &chat, "indexed before the crash").await;
    assert_eq!(total(&bob, &app, "crash").await, 1);

    app.stop().await;
    let offline = Offline::open(&app, &chat, &alice);
    offline.sends("committed, never indexed, crash").await;
    let edited = offline.sends("old wording").await;
    offline.changes(edited, Some("new wording")).await;
    let doomed = offline.sends("doomed words").await;
    offline.changes(doomed, None).await;
    assert_eq!(
        offline.store.search_index_lag().await.unwrap(),
        5,
        "three messages, an edit and a deletion wait for the indexer"
    );
    offline.store.close().await;
    drop(offline);

    app.start_again().await;
    assert_eq!(total(&bob, &app, "crash").await, 2, "caught up, once");
    assert_eq!(total(&bob, &app, "before").await, 1, "not again");
    assert_eq!(
        total(&bob, &app, "old").await,
        0,
        "an edit shows its new text"
    );
    assert_eq!(total(&bob, &app, "new").await, 1);
    assert_eq!(
        total(&bob, &app, "doomed").await,
        0,
        "deleted before indexing: never indexed"
    );
    app.restart().await;
    assert_eq!(
        total(&bob, &app, "crash").await,
        2,
        "a restart indexes nothing twice"
    );
    assert_eq!(total(&bob, &app, "wording").await, 1);
}
