//! The SDK against a real server: in-process (the server library), real
//! sockets on ephemeral ports, temporary directories. Each test reads as a
//! device's session: sign up, connect, send, lose the server, come back.
//!
//! One test binary; new SDK tests go here.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use natter_client::api::HistoryQuery;
use natter_client::{Client, ClientError, Connection, ConnectionConfig, Event, Store};
use natter_proto::accounts::LoginRequest;
use natter_proto::chats::{ChatKind, CreateChat};
use natter_proto::{ChatId, ErrorCode};
use natter_server::{Config, RunningServer};
use natter_testkit::{SmsInbox, TestUser};
use tempfile::TempDir;

/// How long a test waits for anything.
const WAIT: Duration = Duration::from_secs(20);

/// Quick reconnects, so the tests do not sit in backoff.
const FAST: ConnectionConfig = ConnectionConfig {
    connect_timeout: Duration::from_secs(5),
    heartbeat: Duration::from_secs(5),
    backoff_min: Duration::from_millis(50),
    backoff_max: Duration::from_millis(400),
};

/// A server that can be stopped and started again on the same port and data.
struct TestServer {
    sms: SmsInbox,
    config: Config,
    server: Option<RunningServer>,
    client: Client,
    dir: TempDir,
}

impl TestServer {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let sms = SmsInbox::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: dir.path().join("server"),
            sms_webhook_url: Some(sms.url().to_owned()),
            ..Config::default()
        };
        config.sms.timeout_secs = 5;
        adjust(&mut config);
        config.validate().unwrap();
        let server = tokio::time::timeout(WAIT, RunningServer::start(config.clone()))
            .await
            .unwrap()
            .unwrap();
        // Later starts reuse the port, so clients find the server where it was.
        config.listen = server.local_addr();
        let client = Client::new(&format!("http://{}", server.local_addr()), WAIT).unwrap();
        Self {
            sms,
            config,
            server: Some(server),
            client,
            dir,
        }
    }

    async fn stop(&mut self) {
        let server = self.server.take().expect("the server runs");
        tokio::time::timeout(WAIT, server.shutdown()).await.unwrap();
    }

    async fn start_again(&mut self) {
        let server = tokio::time::timeout(WAIT, RunningServer::start(self.config.clone()))
            .await
            .unwrap()
            .unwrap();
        self.server = Some(server);
    }

    async fn user(&self, phone: &str, name: &str) -> TestUser {
        TestUser::sign_up(&self.client, &self.sms, phone, name)
            .await
            .unwrap()
    }

    fn store(&self, name: &str) -> Store {
        Store::open(&self.dir.path().join(name)).unwrap()
    }
}

async fn direct_chat(a: &TestUser, b: &TestUser) -> ChatId {
    let body = CreateChat {
        kind: ChatKind::Direct,
        participants: vec![b.user_id()],
        name: None,
        encrypted: false,
    };
    a.session.api().create_chat(&body).await.unwrap().id
}

async fn send_rest(from: &TestUser, chat: ChatId, text: &str) {
    let body = natter_proto::chats::SendMessage {
        chat_id: chat,
        content: Some(text.to_owned()),
        ciphertext: None,
        message_type: natter_proto::chats::MessageType::Text,
        timestamp: None,
        client_message_id: None,
        reply_to: None,
        media_id: None,
    };
    from.session.api().send_message(&body).await.unwrap();
}

/// The next event that `pick` keeps, within WAIT.
async fn next_matching<T>(conn: &mut Connection, mut pick: impl FnMut(Event) -> Option<T>) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(t) = pick(conn.next_event().await.unwrap()) {
                return t;
            }
        }
    })
    .await
    .expect("the event within WAIT")
}

/// The next message of `chat`: (seq, text).
async fn next_message(conn: &mut Connection, chat: ChatId) -> (i64, String) {
    next_matching(conn, |e| match e {
        Event::Message {
            chat_id,
            seq,
            message,
        } if chat_id == chat => Some((seq, message.content.unwrap_or_default())),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn sign_up_log_in_send_and_receive_then_search_locally() {
    let server = TestServer::start().await;
    let alice = server.user("+14155550101", "Alice").await;
    let bob = server.user("+14155550102", "Bob").await;
    let chat = direct_chat(&alice, &bob).await;

    // Bob logs in a second device; the first one stays valid.
    let (_, code) = server
        .sms
        .code_for(&server.client, &bob.phone)
        .await
        .unwrap();
    let bob_laptop = server
        .client
        .login(&LoginRequest {
            phone: bob.phone.clone(),
            verification_code: code,
            device_name: Some("laptop".to_owned()),
        })
        .await
        .unwrap();
    assert_eq!(bob_laptop.user_id(), bob.user_id());
    assert_ne!(bob_laptop.device_id(), bob.device_id());
    assert_eq!(bob_laptop.api().devices().await.unwrap().devices.len(), 2);

    let store = server.store("bob");
    let mut bob_conn = bob.session.connect_with(Arc::new(store.clone()), FAST);
    next_matching(&mut bob_conn, |e| {
        matches!(e, Event::SyncDone { .. }).then_some(())
    })
    .await;

    let mut alice_conn = alice
        .session
        .connect_with(Arc::new(server.store("alice")), FAST);
    next_matching(&mut alice_conn, |e| {
        matches!(e, Event::SyncDone { .. }).then_some(())
    })
    .await;
    let texts = ["I don't know", "send me an e-mail", "how are you?"];
    let mut ids = Vec::new();
    for text in texts {
        ids.push(alice_conn.send_text(chat, text).await.unwrap());
    }
    for id in &ids {
        let sent = next_matching(&mut alice_conn, |e| match e {
            Event::Sent {
                client_message_id,
                message,
            } => Some((client_message_id, message)),
            _ => None,
        })
        .await;
        assert_eq!(&sent.0, id, "outbox entries are acknowledged in order");
        assert_eq!(sent.1.client_message_id.as_deref(), Some(id.as_str()));
    }
    let mut got = Vec::new();
    for _ in texts {
        got.push(next_message(&mut bob_conn, chat).await.1);
    }
    assert_eq!(got, texts);

    // Local search takes what a person types, punctuation and all.
    let found = |q: &str| -> Vec<String> {
        store
            .search_local(q)
            .unwrap()
            .into_iter()
            .map(|h| h.text)
            .collect()
    };
    assert_eq!(found("don't"), ["I don't know"]);
    assert_eq!(found("e-mail"), ["send me an e-mail"]);
    assert_eq!(found("how are you?"), ["how are you?"]);
    assert_eq!(found("\"unbalanced AND -(NEAR"), Vec::<String>::new());
    assert_eq!(found("?"), Vec::<String>::new());
    assert_eq!(store.history(chat).unwrap().len(), 3);
}

#[tokio::test]
async fn errors_are_typed() {
    let server = TestServer::start().await;
    let err = server
        .client
        .login(&LoginRequest {
            phone: "+14155550103".to_owned(),
            verification_code: "000000".to_owned(),
            device_name: None,
        })
        .await
        .unwrap_err();
    let ClientError::Api(api) = err else {
        panic!("expected an API error, got {err:?}");
    };
    assert_eq!(api.code, ErrorCode::InvalidVerificationCode);
    assert_eq!(api.status, ErrorCode::InvalidVerificationCode.http_status());
    assert!(!api.message.is_empty());

    let alice = server.user("+14155550104", "Alice").await;
    let err = alice.session.api().chat(ChatId::new()).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ChatNotFound));
}

#[tokio::test]
async fn a_restart_mid_stream_loses_nothing_and_repeats_nothing() {
    let mut server = TestServer::start().await;
    let alice = server.user("+14155550111", "Alice").await;
    let bob = server.user("+14155550112", "Bob").await;
    let chat = direct_chat(&alice, &bob).await;
    for i in 1..=20 {
        send_rest(&alice, chat, &format!("m{i}")).await;
    }

    let store = server.store("bob");
    let mut bob_conn = bob.session.connect_with(Arc::new(store.clone()), FAST);
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(next_message(&mut bob_conn, chat).await);
    }

    // The server goes away mid-stream and comes back; more messages arrive meanwhile.
    server.stop().await;
    server.start_again().await;
    for i in 21..=30 {
        send_rest(&alice, chat, &format!("m{i}")).await;
    }
    while seen.len() < 30 {
        seen.push(next_message(&mut bob_conn, chat).await);
    }

    // The device itself restarts: a new connection from the same store.
    drop(bob_conn);
    send_rest(&alice, chat, "m31").await;
    let mut bob_conn = bob.session.connect_with(Arc::new(store.clone()), FAST);
    seen.push(next_message(&mut bob_conn, chat).await);
    next_matching(&mut bob_conn, |e| {
        matches!(e, Event::SyncDone { .. }).then_some(())
    })
    .await;

    let texts: Vec<String> = seen.iter().map(|(_, t)| t.clone()).collect();
    let expected: Vec<String> = (1..=31).map(|i| format!("m{i}")).collect();
    assert_eq!(texts, expected, "every message once, in order");
    assert!(
        seen.windows(2).all(|w| w[1].0 == w[0].0 + 1),
        "no gap in seq: {seen:?}"
    );
    assert_eq!(store.history(chat).unwrap().len(), 31);
}

#[tokio::test]
async fn the_outbox_delivers_exactly_once_after_the_server_was_down() {
    let mut server = TestServer::start().await;
    let alice = server.user("+14155550121", "Alice").await;
    let bob = server.user("+14155550122", "Bob").await;
    let chat = direct_chat(&alice, &bob).await;

    let mut alice_conn = alice
        .session
        .connect_with(Arc::new(server.store("alice")), FAST);
    next_matching(&mut alice_conn, |e| {
        matches!(e, Event::SyncDone { .. }).then_some(())
    })
    .await;

    server.stop().await;
    let first = alice_conn
        .send_text(chat, "sent while the server was down")
        .await
        .unwrap();
    let second = alice_conn
        .send_text(chat, "and a second one")
        .await
        .unwrap();
    // Nothing went out; the connection notices and retries.
    next_matching(&mut alice_conn, |e| {
        matches!(e, Event::Disconnected { .. }).then_some(())
    })
    .await;
    server.start_again().await;

    let mut acked = Vec::new();
    while acked.len() < 2 {
        acked.push(
            next_matching(&mut alice_conn, |e| match e {
                Event::Sent {
                    client_message_id, ..
                } => Some(client_message_id),
                _ => None,
            })
            .await,
        );
    }
    assert_eq!(acked, [first, second], "in order");

    let page = bob
        .session
        .api()
        .history(chat, HistoryQuery::default())
        .await
        .unwrap();
    let texts: Vec<_> = page
        .messages
        .iter()
        .rev()
        .filter_map(|m| m.content.clone())
        .collect();
    assert_eq!(
        texts,
        ["sent while the server was down", "and a second one"],
        "exactly once"
    );

    // A send that can never succeed is dropped with a typed error.
    let doomed = alice_conn
        .send_text(ChatId::new(), "nowhere")
        .await
        .unwrap();
    let (id, error) = next_matching(&mut alice_conn, |e| match e {
        Event::SendFailed {
            client_message_id,
            error,
        } => Some((client_message_id, error)),
        _ => None,
    })
    .await;
    assert_eq!(id, doomed);
    assert_eq!(error.code, ErrorCode::ChatNotFound);
}

/// A sync the server refuses (`rate_limited`: the user's budget of `sync`
/// frames is spent, as when a flaky network reconnects often) is sent
/// again after a wait, so the socket still catches up and says
/// `sync_done`; a message sent meanwhile arrives.
#[tokio::test]
async fn a_refused_sync_is_sent_again_and_catches_up() {
    // One sync at once per user, refilled after two seconds.
    let server = TestServer::start_with(|c| {
        c.rate_limits.ws_sync_per_user =
            serde_json::from_value(serde_json::json!({"burst": 1, "per_secs": 2})).unwrap();
    })
    .await;
    let alice = server.user("+14155550151", "Alice").await;
    let bob = server.user("+14155550152", "Bob").await;
    let chat = direct_chat(&alice, &bob).await;
    let store = server.store("bob");
    let mut conn = bob.session.connect_with(Arc::new(store.clone()), FAST);
    next_matching(&mut conn, |e| {
        matches!(e, Event::SyncDone { .. }).then_some(())
    })
    .await;
    // At once a second socket: its sync is over the budget.
    conn.disconnect().await;
    send_rest(&alice, chat, "while you were away").await;
    let mut refused = false;
    let mut text = None;
    next_matching(&mut conn, |e| match e {
        Event::ServerError {
            code: ErrorCode::RateLimited,
            ..
        } => {
            refused = true;
            None
        }
        Event::Message { message, .. } => {
            text = message.content;
            None
        }
        Event::SyncDone { .. } => Some(()),
        _ => None,
    })
    .await;
    assert!(refused, "the second sync was refused first");
    assert_eq!(text.as_deref(), Some("while you were away"));
}
