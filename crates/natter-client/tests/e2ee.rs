//! End-to-end encryption with real SDK clients ([`Messenger`]) over a real
//! server (in-process, real sockets, temporary directories): every device
//! decrypts what was sent while it was a member, nobody else does, and the
//! server never holds a readable byte.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use natter_client::e2ee::payload::Body;
use natter_client::{Client, ClientError, Messenger, MessengerEvent, Store};
use natter_proto::chats::ChatKind;
use natter_proto::users::PresenceStatus;
use natter_proto::{ChatId, UserId};
use natter_server::config::Rate;
use natter_server::{Config, RunningServer};
use natter_testkit::{SmsInbox, TestUser};
use tempfile::TempDir;

/// How long a test waits for anything.
const WAIT: Duration = Duration::from_secs(30);

struct TestServer {
    sms: SmsInbox,
    server: Option<RunningServer>,
    client: Client,
    dir: TempDir,
}

impl TestServer {
    async fn start() -> Self {
        let sms = SmsInbox::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: dir.path().join("server"),
            sms_webhook_url: Some(sms.url().to_owned()),
            ..Config::default()
        };
        config.sms.timeout_secs = 5;
        // Many sign-ups and groups from one address in a few seconds.
        let many = Rate {
            burst: 10_000,
            per_secs: 1,
        };
        let r = &mut config.rate_limits;
        r.verification_per_ip = many;
        r.verification_per_network = many;
        r.verification_per_prefix = many;
        r.verification_per_country = many;
        r.verification_global = many;
        r.code_attempts_per_ip = many;
        r.chats_created_per_minute = many;
        r.chats_created_per_day = many;
        r.participants_added_per_minute = many;
        r.participants_added_per_day = many;
        // Pushes to a local receiver (plain http on loopback), promptly.
        config.push.allow_private_endpoints = true;
        config.push.coalesce_ms = 50;
        config.validate().unwrap();
        let server = tokio::time::timeout(WAIT, RunningServer::start(config))
            .await
            .unwrap()
            .unwrap();
        let client = Client::new(&format!("http://{}", server.local_addr()), WAIT).unwrap();
        Self {
            sms,
            server: Some(server),
            client,
            dir,
        }
    }

    async fn user(&self, phone: &str, name: &str) -> TestUser {
        TestUser::sign_up(&self.client, &self.sms, phone, name)
            .await
            .unwrap()
    }

    async fn second_device(&self, phone: &str) -> TestUser {
        TestUser::log_in(&self.client, &self.sms, phone, Some("second"))
            .await
            .unwrap()
    }

    /// The encrypted client of `user`'s device, with its own store.
    async fn messenger(&self, user: &TestUser) -> Messenger {
        let store = Store::open(&self.dir.path().join(user.device_id().to_string())).unwrap();
        Messenger::start(user.session.clone(), store).await.unwrap()
    }

    fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("server")
    }

    async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            tokio::time::timeout(WAIT, server.shutdown()).await.unwrap();
        }
    }
}

/// The next event that `pick` keeps, within WAIT.
async fn until<T>(m: &mut Messenger, mut pick: impl FnMut(MessengerEvent) -> Option<T>) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(t) = pick(m.next_event().await.unwrap()) {
                return t;
            }
        }
    })
    .await
    .expect("the event within WAIT")
}

/// The next decrypted text in `chat`.
async fn next_text(m: &mut Messenger, chat: ChatId) -> String {
    until(m, |e| match e {
        MessengerEvent::Message(msg) if msg.chat_id == chat => match msg.body {
            Body::Text { text } => Some(text),
            _ => None,
        },
        MessengerEvent::Undecryptable { reason, .. } => panic!("undecryptable: {reason}"),
        _ => None,
    })
    .await
}

async fn joined(m: &mut Messenger, chat: ChatId) {
    until(m, |e| match e {
        MessengerEvent::Joined { chat_id } if chat_id == chat => Some(()),
        _ => None,
    })
    .await;
}

/// Polls `m` until nothing arrives for a moment.
async fn drain(m: &mut Messenger) -> Vec<MessengerEvent> {
    let mut seen = Vec::new();
    while let Ok(e) = tokio::time::timeout(Duration::from_millis(400), m.next_event()).await {
        seen.push(e.unwrap());
    }
    seen
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// The server's log, captured for the whole test process (nextest runs one
/// test per process).
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A push service on loopback that keeps every request it gets, raw.
async fn push_receiver() -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/push/bob", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let keep = got.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let keep = keep.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                // Headers, then Content-Length bytes of body.
                loop {
                    let Ok(Ok(n)) =
                        tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf)).await
                    else {
                        break;
                    };
                    if n == 0 {
                        break;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).to_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if request.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                keep.lock().unwrap().push(request);
                let _ = socket
                    .write_all(
                        b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    )
                    .await;
            });
        }
    });
    (url, got)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn a_linked_device_and_a_contact_read_everything_and_the_server_reads_nothing() {
    let log = Log::default();
    let writer = log.clone();
    let _ = tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_writer(move || writer.clone())
        .try_init();
    let mut server = TestServer::start().await;
    let alice = server.user("+14155550201", "Alice").await;
    let bob = server.user("+14155550202", "Bob").await;
    let mut a1 = server.messenger(&alice).await;
    let mut b1 = server.messenger(&bob).await;
    assert!(a1.holds_identity() && b1.holds_identity());
    // Bob's phone is offline: it gets push notifications.
    let (endpoint, pushes) = push_receiver().await;
    let phone = server.second_device("+14155550202").await;
    phone
        .session
        .api()
        .set_push_channel(
            phone.device_id(),
            &natter_proto::push::PushChannelRequest::Unifiedpush { endpoint },
        )
        .await
        .unwrap();

    // Alice's second device logs in, shows its key, and her first device approves it.
    let alice2 = server.second_device("+14155550201").await;
    let mut a2 = server.messenger(&alice2).await;
    assert!(!a2.holds_identity());
    let shown = a2.device_key().to_vec();
    a1.approve_device(alice2.device_id(), Some(&shown), false)
        .await
        .unwrap();
    let imported = until(&mut a2, |e| match e {
        MessengerEvent::Linked { imported } => Some(imported),
        _ => None,
    })
    .await;
    assert_eq!(imported, 0, "no history unless asked for");
    assert!(a2.holds_identity());

    // A direct chat: every device of both is a member.
    let chat = a1
        .create_chat(ChatKind::Direct, &[bob.user_id()], None)
        .await
        .unwrap();
    joined(&mut b1, chat).await;
    joined(&mut a2, chat).await;

    const CANARY: &str = "zebracanary4711";
    a1.send_text(chat, &format!("hello {CANARY}"))
        .await
        .unwrap();
    assert_eq!(next_text(&mut b1, chat).await, format!("hello {CANARY}"));
    assert_eq!(next_text(&mut a2, chat).await, format!("hello {CANARY}"));
    b1.send_text(chat, "don't forget: e-mail me, how are you?")
        .await
        .unwrap();
    for m in [&mut a1, &mut a2] {
        assert_eq!(
            next_text(m, chat).await,
            "don't forget: e-mail me, how are you?"
        );
    }

    // A file: encrypted by the sender, the name and key inside the message.
    let bytes: Vec<u8> = (0..200_000u32)
        .flat_map(|i| {
            if i % 1000 == 0 {
                CANARY.as_bytes().to_vec()
            } else {
                vec![(i % 251) as u8]
            }
        })
        .collect();
    let name = format!("{CANARY}-plans.pdf");
    b1.send_file(chat, &name, "application/pdf", &bytes)
        .await
        .unwrap();
    let body = until(&mut a2, |e| match e {
        MessengerEvent::Message(m) if matches!(m.body, Body::File { .. }) => Some(m.body),
        _ => None,
    })
    .await;
    let file = a2.fetch_file(&body).await.unwrap();
    assert_eq!(
        (file.name.as_str(), file.bytes.len()),
        (name.as_str(), bytes.len())
    );
    assert!(file.bytes == bytes, "byte-exact");

    // Local search finds what people typed; the server's search finds nothing.
    drain(&mut a1).await;
    let hits = a1.store().search_local("e-mail").unwrap();
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert!(!a1.store().search_local(CANARY).unwrap().is_empty());
    let found = a1
        .session()
        .api()
        .search_messages(&natter_client::api::MessageSearch {
            q: CANARY.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        found.messages.is_empty(),
        "the server indexes no ciphertext"
    );

    // Bob's offline phone was told, without content.
    tokio::time::timeout(WAIT, async {
        while pushes.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a push within WAIT");
    for push in pushes.lock().unwrap().iter() {
        assert!(
            !contains(push, CANARY.as_bytes()),
            "a push holds the canary"
        );
    }

    // After the test: not one byte of the canary in the server's files or log.
    drop((a1, a2, b1));
    server.stop().await;
    let mut all = Vec::new();
    files(&server.data_dir(), &mut all);
    assert!(all.iter().any(|p| p.ends_with("natter.db")));
    for path in &all {
        let data = std::fs::read(path).unwrap();
        assert!(
            !contains(&data, CANARY.as_bytes()),
            "{} holds the canary",
            path.display()
        );
    }
    let log = log.0.lock().unwrap().clone();
    assert!(!log.is_empty(), "the log was captured");
    assert!(
        !contains(&log, CANARY.as_bytes()),
        "the log holds the canary"
    );
    std::io::stderr().flush().unwrap();
}

#[tokio::test]
async fn a_group_grows_and_removed_members_and_revoked_devices_read_nothing_after() {
    let server = TestServer::start().await;
    let alice = server.user("+14155550301", "Alice").await;
    let bob = server.user("+14155550302", "Bob").await;
    let carol = server.user("+14155550303", "Carol").await;
    let mut a = server.messenger(&alice).await;
    let mut b = server.messenger(&bob).await;
    let mut c = server.messenger(&carol).await;
    let chat = a
        .create_chat(
            ChatKind::Group,
            &[bob.user_id(), carol.user_id()],
            Some("Trio"),
        )
        .await
        .unwrap();
    joined(&mut b, chat).await;
    joined(&mut c, chat).await;
    a.send_text(chat, "welcome, both").await.unwrap();
    assert_eq!(next_text(&mut b, chat).await, "welcome, both");
    assert_eq!(next_text(&mut c, chat).await, "welcome, both");

    // Nine more people join: every device reads what follows.
    let mut others = Vec::new();
    for i in 0..9 {
        let u = server
            .user(&format!("+1415555031{i}"), &format!("Guest {i}"))
            .await;
        let m = server.messenger(&u).await;
        others.push((u, m));
    }
    let ids: Vec<UserId> = others.iter().map(|(u, _)| u.user_id()).collect();
    a.add_participants(chat, &ids).await.unwrap();
    for (_, m) in &mut others {
        joined(m, chat).await;
    }
    b.send_text(chat, "hi all twelve").await.unwrap();
    for m in [&mut a, &mut c]
        .into_iter()
        .chain(others.iter_mut().map(|(_, m)| m))
    {
        assert_eq!(next_text(m, chat).await, "hi all twelve");
    }

    // Carol is removed: her device cannot read what follows.
    a.remove_participant(chat, carol.user_id()).await.unwrap();
    a.send_text(chat, "after carol").await.unwrap();
    assert_eq!(next_text(&mut b, chat).await, "after carol");
    let seen = drain(&mut c).await;
    assert!(
        !seen.iter().any(|e| matches!(e,
            MessengerEvent::Message(m) if m.body == Body::Text { text: "after carol".into() })),
        "{seen:?}"
    );
    // Nor would the server give it to her: her history ends at her removal.
    let history = carol
        .session
        .api()
        .history(chat, natter_client::api::HistoryQuery::default())
        .await
        .unwrap();
    let newest = &history.messages[0];
    assert_eq!(
        newest.event,
        Some(natter_proto::chats::ChatEvent::MemberRemoved {
            user_id: carol.user_id()
        })
    );

    // Bob links a tablet, then revokes it: it reads nothing sent after.
    let tablet = server.second_device("+14155550302").await;
    let mut t = server.messenger(&tablet).await;
    let key = t.device_key().to_vec();
    // With the history: the tablet can read (and search) what came before it.
    drain(&mut b).await;
    b.approve_device(tablet.device_id(), Some(&key), true)
        .await
        .unwrap();
    let imported = until(&mut t, |e| match e {
        MessengerEvent::Linked { imported } => Some(imported),
        _ => None,
    })
    .await;
    assert!(imported >= 3, "{imported}");
    assert_eq!(t.store().search_local("twelve").unwrap().len(), 1);
    joined(&mut t, chat).await;
    a.send_text(chat, "tablet too").await.unwrap();
    assert_eq!(next_text(&mut t, chat).await, "tablet too");
    assert_eq!(next_text(&mut b, chat).await, "tablet too");
    b.revoke_device(tablet.device_id()).await.unwrap();
    a.send_text(chat, "after the tablet").await.unwrap();
    assert_eq!(next_text(&mut b, chat).await, "after the tablet");
    // The revoked device is told its token is dead, and it never sees the
    // message sent after it was removed from the group.
    let after = tokio::time::timeout(WAIT, async {
        loop {
            match t.next_event().await {
                Ok(MessengerEvent::Message(m)) => {
                    assert_ne!(
                        m.body,
                        Body::Text {
                            text: "after the tablet".into()
                        }
                    );
                }
                Ok(_) => {}
                Err(e) => return e,
            }
        }
    })
    .await
    .unwrap();
    assert!(matches!(after, ClientError::Revoked), "{after:?}");
}

/// Every text of `chat` up to and including `last`.
async fn texts_until(m: &mut Messenger, chat: ChatId, last: &str) -> Vec<String> {
    let mut texts = Vec::new();
    loop {
        let t = next_text(m, chat).await;
        let done = t == last;
        texts.push(t);
        if done {
            return texts;
        }
    }
}

#[tokio::test]
async fn racing_commits_one_wins_the_other_rebases_and_late_messages_still_decrypt() {
    let server = TestServer::start().await;
    let alice = server.user("+14155550401", "Alice").await;
    let bob = server.user("+14155550402", "Bob").await;
    let dan = server.user("+14155550403", "Dan").await;
    let eve = server.user("+14155550404", "Eve").await;
    let fay = server.user("+14155550405", "Fay").await;
    let mut f = server.messenger(&fay).await;
    let mut a = server.messenger(&alice).await;
    let mut b = server.messenger(&bob).await;
    let mut d = server.messenger(&dan).await;
    let mut e = server.messenger(&eve).await;
    let chat = a
        .create_chat(ChatKind::Group, &[bob.user_id()], Some("Race"))
        .await
        .unwrap();
    joined(&mut b, chat).await;
    // Bob is an admin too, so both may add.
    alice
        .session
        .api()
        .change_role(
            chat,
            bob.user_id(),
            &natter_proto::chats::ChangeRole {
                role: natter_proto::chats::Role::Admin,
            },
        )
        .await
        .unwrap();
    drain(&mut b).await;

    // Two admins add at once: one commit wins the epoch, the other
    // processes it, rebases and lands.
    let (dan_id, eve_id, fay_id) = ([dan.user_id()], [eve.user_id()], [fay.user_id()]);
    let (ra, rb) = tokio::join!(
        a.add_participants(chat, &dan_id),
        b.add_participants(chat, &eve_id)
    );
    ra.unwrap();
    rb.unwrap();
    // A message encrypted while a commit races it still decrypts (the
    // server takes the 3 epochs before the current one; so do clients).
    let (sent, added) = tokio::join!(
        b.send_text(chat, "sent while committing"),
        a.add_participants(chat, &fay_id)
    );
    sent.unwrap();
    added.unwrap();
    joined(&mut d, chat).await;
    joined(&mut e, chat).await;
    joined(&mut f, chat).await;
    b.send_text(chat, "all in").await.unwrap();
    // Alice was a member throughout: she reads both. The others read
    // "all in", and the racing message if they were members by then.
    assert_eq!(
        texts_until(&mut a, chat, "all in").await,
        ["sent while committing", "all in"]
    );
    for m in [&mut d, &mut e, &mut f] {
        texts_until(m, chat, "all in").await;
    }
}

#[tokio::test]
async fn a_key_package_forged_in_the_store_is_refused_and_a_new_identity_key_is_shown() {
    let server = TestServer::start().await;
    let alice = server.user("+14155550501", "Alice").await;
    let bob = server.user("+14155550502", "Bob").await;
    let mut a = server.messenger(&alice).await;
    let b = server.messenger(&bob).await;
    // Alice has met Bob: his identity key is pinned.
    let before = a.safety_number(bob.user_id()).await.unwrap();
    assert_eq!(before.digits().len(), 60);

    // The server (here: a write into its store) puts a KeyPackage of its
    // own for Bob's device first in line.
    let forger = natter_client::e2ee::Engine::new(bob.user_id(), bob.device_id(), None).unwrap();
    let forged = forger
        .key_packages(natter_client::e2ee::Suite::Classic, 1)
        .unwrap()
        .one_time
        .remove(0);
    let db = rusqlite::Connection::open(server.data_dir().join("natter.db")).unwrap();
    db.busy_timeout(WAIT).unwrap();
    db.execute(
        "INSERT INTO key_packages (id, device_id, last_resort, bytes, created_at)
         VALUES (0, ?1, 0, ?2, 0)",
        rusqlite::params![bob.device_id().as_uuid().as_bytes().to_vec(), forged],
    )
    .unwrap();
    drop(db);
    let chat = a
        .create_chat(ChatKind::Direct, &[bob.user_id()], None)
        .await
        .unwrap();
    let refused = until(&mut a, |e| match e {
        MessengerEvent::Refused { chat_id, reason } if chat_id == Some(chat) => Some(reason),
        _ => None,
    })
    .await;
    assert!(refused.contains("KeyPackage"), "{refused}");
    // The forged reader is not in the group: the next reconcile claims a
    // real package and adds Bob's real device.
    drop(b);

    // Bob's identity key changes (a new phone, no old device): Alice is told.
    let fresh = natter_client::e2ee::Identity::generate().unwrap();
    bob.session
        .api()
        .set_identity(&natter_proto::e2ee::SetIdentity {
            identity_key: base64_encode(fresh.public_key()),
        })
        .await
        .unwrap();
    let after = a.safety_number(bob.user_id()).await.unwrap();
    assert_ne!(before.digits(), after.digits());
    until(&mut a, |e| match e {
        MessengerEvent::IdentityChanged { user_id } if user_id == bob.user_id() => Some(()),
        _ => None,
    })
    .await;
    assert!(!a.is_verified(bob.user_id()));
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn an_offline_device_catches_up_commits_then_messages_and_the_directory_survives_exhaustion()
{
    let server = TestServer::start().await;
    let alice = server.user("+14155550601", "Alice").await;
    let bob = server.user("+14155550602", "Bob").await;
    let mut a = server.messenger(&alice).await;
    let mut b = server.messenger(&bob).await;
    let chat = a
        .create_chat(ChatKind::Group, &[bob.user_id()], Some("Away"))
        .await
        .unwrap();
    joined(&mut b, chat).await;
    // Bob goes offline (his client is closed; his state is on disk).
    drop(b);
    // Meanwhile: more people, key rotations and messages.
    let mut texts = Vec::new();
    for i in 0..3 {
        let u = server
            .user(&format!("+1415555061{i}"), &format!("Friend {i}"))
            .await;
        let _m = server.messenger(&u).await;
        a.add_participants(chat, &[u.user_id()]).await.unwrap();
        a.self_update(chat).await.unwrap();
        for j in 0..5 {
            let t = format!("round {i} message {j}");
            a.send_text(chat, &t).await.unwrap();
            texts.push(t);
        }
    }
    // Bob comes back: commits first, then every message, in order.
    let mut b = server.messenger(&bob).await;
    for t in &texts {
        assert_eq!(&next_text(&mut b, chat).await, t);
    }

    // Carol's one-time packages run out: the last resort still adds her.
    let carol = server.user("+14155550620", "Carol").await;
    let mut c = server.messenger(&carol).await;
    for _ in 0..25 {
        alice
            .session
            .api()
            .claim_key_packages(&natter_proto::e2ee::ClaimKeyPackages {
                user_ids: vec![carol.user_id()],
            })
            .await
            .unwrap();
    }
    let stock = carol.session.api().key_package_stock().await.unwrap();
    assert_eq!(stock.available, 0);
    assert!(stock.last_resort);
    a.add_participants(chat, &[carol.user_id()]).await.unwrap();
    joined(&mut c, chat).await;
    // Told to replenish, Carol's device publishes a new batch.
    drain(&mut c).await;
    let stock = carol.session.api().key_package_stock().await.unwrap();
    assert!(stock.available > 0, "{stock:?}");
    a.send_text(chat, "carol, welcome").await.unwrap();
    assert_eq!(next_text(&mut c, chat).await, "carol, welcome");
}

#[tokio::test]
async fn a_group_of_three_grows_to_a_hundred_devices_and_every_one_reads_every_message() {
    let server = TestServer::start().await;
    let alice = server.user("+14155550701", "Alice").await;
    let bob = server.user("+14155550702", "Bob").await;
    let carol = server.user("+14155550703", "Carol").await;
    let mut a = server.messenger(&alice).await;
    let mut members = vec![server.messenger(&bob).await, server.messenger(&carol).await];
    let chat = a
        .create_chat(
            ChatKind::Group,
            &[bob.user_id(), carol.user_id()],
            Some("Hundred"),
        )
        .await
        .unwrap();
    for m in &mut members {
        joined(m, chat).await;
    }
    a.send_text(chat, "three of us").await.unwrap();
    for m in &mut members {
        assert_eq!(next_text(m, chat).await, "three of us");
    }
    // 97 more people, added in four commits: 100 devices in the group.
    let mut n = 0;
    for batch in [25, 24, 24, 24] {
        let mut ids = Vec::new();
        let mut joiners = Vec::new();
        for _ in 0..batch {
            let u = server
                .user(&format!("+1415556{n:04}"), &format!("Member {n}"))
                .await;
            n += 1;
            ids.push(u.user_id());
            joiners.push(server.messenger(&u).await);
        }
        a.add_participants(chat, &ids).await.unwrap();
        for m in &mut joiners {
            joined(m, chat).await;
        }
        members.extend(joiners);
    }
    assert_eq!(members.len() + 1, 100);
    a.send_text(chat, "a hundred devices").await.unwrap();
    for m in &mut members {
        assert_eq!(next_text(m, chat).await, "a hundred devices");
    }
    // And one of the newest is heard by the first ones.
    let last = members.last_mut().unwrap();
    last.send_text(chat, "hello from the back").await.unwrap();
    assert_eq!(next_text(&mut a, chat).await, "hello from the back");
    assert_eq!(
        next_text(&mut members[0], chat).await,
        "hello from the back"
    );
}

#[tokio::test]
async fn a_large_file_streams_in_pieces_and_a_reader_that_lies_about_its_size_is_refused() {
    use natter_client::files::PIECE_BYTES;
    let server = TestServer::start().await;
    let alice = server.user("+14155550901", "Alice").await;
    let bob = server.user("+14155550902", "Bob").await;
    let mut a = server.messenger(&alice).await;
    let mut b = server.messenger(&bob).await;
    let chat = a
        .create_chat(ChatKind::Direct, &[bob.user_id()], None)
        .await
        .unwrap();
    joined(&mut b, chat).await;

    // Two full pieces and a bit: three PATCHes up, three ranges down.
    let size = 2 * PIECE_BYTES + 12_345;
    let bytes: Vec<u8> = (0..size).map(|i| (i * 7 % 253) as u8).collect();
    let mut sent = Vec::new();
    a.send_file_from(
        chat,
        "video.mp4",
        "video/mp4",
        size as u64,
        bytes.as_slice(),
        &mut |done, total| sent.push((done, total)),
    )
    .await
    .unwrap();
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert!(sent.windows(2).all(|w| w[0].0 < w[1].0), "{sent:?}");
    let (done, total) = *sent.last().unwrap();
    assert_eq!(done, total);
    assert!(total > size as u64, "the ciphertext carries tags");

    let body = until(&mut b, |e| match e {
        MessengerEvent::Message(m) if matches!(m.body, Body::File { .. }) => Some(m.body),
        _ => None,
    })
    .await;
    let mut received = Vec::new();
    let mut got = Vec::new();
    let written = b
        .fetch_file_to(&body, &mut received, &mut |done, total| {
            got.push((done, total));
        })
        .await
        .unwrap();
    assert_eq!(written, size as u64);
    assert!(received == bytes, "byte-exact");
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(*got.last().unwrap(), (size as u64, size as u64));

    // A reader shorter or longer than the size announced fails the send;
    // nothing is sent.
    for (announced, actual) in [(1_000u64, 999usize), (1_000, 1_001)] {
        let data = vec![1u8; actual];
        let err = a
            .send_file_from(
                chat,
                "a.bin",
                "application/octet-stream",
                announced,
                data.as_slice(),
                &mut |_, _| {},
            )
            .await
            .unwrap_err();
        let shown = err.to_string();
        assert!(
            shown.contains("shorter") || shown.contains("longer"),
            "{shown}"
        );
    }
    a.send_text(chat, "after the refused files").await.unwrap();
    assert_eq!(next_text(&mut b, chat).await, "after the refused files");
}

/// The next text, edit or deletion in `chat`, as (kind, target or id, text).
async fn next_change(m: &mut Messenger, chat: ChatId) -> (&'static str, String, String) {
    until(m, |e| match e {
        MessengerEvent::Message(msg) if msg.chat_id == chat => match msg.body {
            Body::Text { text } => Some(("text", msg.message_id.to_string(), text)),
            Body::Edit { target, text } => Some(("edit", target.to_string(), text)),
            Body::Delete { target } => Some(("delete", target.to_string(), String::new())),
            Body::File { .. } => None,
        },
        _ => None,
    })
    .await
}

#[tokio::test]
async fn edits_deletes_typing_presence_and_leaving_go_through_the_messenger() {
    let server = TestServer::start().await;
    let alice = server.user("+14155550801", "Alice").await;
    let bob = server.user("+14155550802", "Bob").await;
    let mut a = server.messenger(&alice).await;
    let mut b = server.messenger(&bob).await;
    let chat = a
        .create_chat(ChatKind::Group, &[bob.user_id()], Some("edits"))
        .await
        .unwrap();
    joined(&mut b, chat).await;
    assert!(a.chat_is_encrypted(chat).await.unwrap());
    a.send_text(chat, "frist").await.unwrap();
    until(&mut a, |e| {
        matches!(e, MessengerEvent::Sent { .. }).then_some(())
    })
    .await;
    // (the outbox sends over REST: the socket opens on the next poll)
    until(&mut a, |e| {
        matches!(e, MessengerEvent::Connected).then_some(())
    })
    .await;
    assert!(a.is_connected());
    let (kind, id, text) = next_change(&mut b, chat).await;
    assert_eq!((kind, text.as_str()), ("text", "frist"));
    let target = id.parse().unwrap();
    a.send_edit(chat, target, "first").await.unwrap();
    assert_eq!(
        next_change(&mut b, chat).await,
        ("edit", id.clone(), "first".into())
    );
    // The receiver's local history (and so its search) has the new text.
    assert_eq!(b.store().history(chat).unwrap()[0].text, "first");
    // Only a message's sender may change it: Bob's edit of Alice's message
    // reaches Alice and changes nothing, on either side.
    b.send_edit(chat, target, "forged").await.unwrap();
    until(&mut b, |e| {
        matches!(e, MessengerEvent::Sent { .. }).then_some(())
    })
    .await;
    assert_eq!(b.store().history(chat).unwrap()[0].text, "first");
    assert_eq!(
        next_change(&mut a, chat).await,
        ("edit", id.clone(), "forged".into())
    );
    assert_eq!(a.store().history(chat).unwrap()[0].text, "first");
    a.send_delete(chat, target).await.unwrap();
    assert_eq!(next_change(&mut b, chat).await.0, "delete");
    // Typing reaches the other member.
    a.typing(chat).await;
    let alice_id = alice.user_id();
    until(&mut b, |e| match e {
        MessengerEvent::Typing { chat_id, user_id } if chat_id == chat && user_id == alice_id => {
            Some(())
        }
        _ => None,
    })
    .await;
    // receive/process/take_event is next_event in two halves.
    a.send_text(chat, "two halves").await.unwrap();
    let text = tokio::time::timeout(WAIT, async {
        loop {
            let event = b.receive().await.unwrap();
            b.process(event).await.unwrap();
            while let Some(e) = b.take_event() {
                if let MessengerEvent::Message(m) = e
                    && let Body::Text { text } = m.body
                {
                    return text;
                }
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(text, "two halves");
    // Presence, live: Bob's device goes away and comes back; Alice's
    // messenger hears both from the server.
    let bob_id = bob.user_id();
    drop(b);
    let last_seen = until(&mut a, |e| match e {
        MessengerEvent::Presence {
            user_id,
            status: PresenceStatus::Offline,
            last_seen,
        } if user_id == bob_id => Some(last_seen),
        _ => None,
    })
    .await;
    assert!(
        last_seen.is_some(),
        "a member may see when Bob was last online"
    );
    let mut b = server.messenger(&bob).await;
    until(&mut b, |e| {
        matches!(e, MessengerEvent::Connected).then_some(())
    })
    .await;
    until(&mut a, |e| match e {
        MessengerEvent::Presence {
            user_id,
            status: PresenceStatus::Online,
            ..
        } if user_id == bob_id => Some(()),
        _ => None,
    })
    .await;
    // Bob leaves: Alice hears it, and Bob can no longer send there.
    b.leave(chat).await.unwrap();
    until(&mut a, |e| match e {
        MessengerEvent::ChatChanged {
            event: natter_proto::chats::ChatEvent::MemberLeft { user_id },
            ..
        } if user_id == bob_id => Some(()),
        _ => None,
    })
    .await;
    assert!(b.send_text(chat, "still here?").await.is_err());
}

#[tokio::test]
async fn an_accepted_invitation_is_committed_by_the_inviter_and_replies_and_files_keep_what_they_need()
 {
    let server = TestServer::start().await;
    let alice = server.user("+14155550901", "Alice").await;
    let bob = server.user("+14155550902", "Bob").await;
    let mut a = server.messenger(&alice).await;
    let mut b = server.messenger(&bob).await;
    // Bob lets nobody add him: Alice's group makes an invitation.
    b.session()
        .api()
        .update_me(&natter_proto::users::UpdateMe {
            group_add_permission: Some(natter_proto::users::GroupAddPermission::Nobody),
            ..Default::default()
        })
        .await
        .unwrap();
    let chat = a
        .create_chat(ChatKind::Group, &[bob.user_id()], Some("Club"))
        .await
        .unwrap();
    let pending = b.session().api().invitations().await.unwrap().invitations;
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].chat_id, chat);
    assert_eq!(pending[0].chat_name.as_deref(), Some("Club"));
    // Declining one that is not there is a clear 404.
    let unknown = natter_proto::InvitationId::new();
    match b.session().api().decline_invitation(unknown).await {
        Err(ClientError::Api(e)) => assert_eq!(e.status, 404),
        other => panic!("{other:?}"),
    }
    b.session()
        .api()
        .accept_invitation(pending[0].id)
        .await
        .unwrap();
    assert!(
        b.session()
            .api()
            .invitations()
            .await
            .unwrap()
            .invitations
            .is_empty()
    );
    // Alice's device hears the add made in her name and commits it by
    // itself (before she sends anything): Bob's device joins.
    let bob_id = bob.user_id();
    until(&mut a, |e| match e {
        MessengerEvent::ChatChanged {
            event: natter_proto::chats::ChatEvent::MemberAdded { user_id },
            ..
        } if user_id == bob_id => Some(()),
        _ => None,
    })
    .await;
    joined(&mut b, chat).await;

    // A reply carries what it answers, inside the encryption.
    a.send_text(chat, "welcome to the club").await.unwrap();
    let welcome = until(&mut b, |e| match e {
        MessengerEvent::Message(m) if m.chat_id == chat => Some(m.message_id),
        _ => None,
    })
    .await;
    b.send_reply(chat, "thanks!", Some(welcome)).await.unwrap();
    let answered = until(&mut a, |e| match e {
        MessengerEvent::Message(m) if m.chat_id == chat => Some(m.reply_to),
        _ => None,
    })
    .await;
    assert_eq!(answered, Some(welcome));
    let kept = a.store().history(chat).unwrap();
    assert_eq!(kept.last().unwrap().reply_to, Some(welcome));

    // A received file's key stays in the local history: it can be fetched
    // again from there (after a restart: the store is on disk).
    a.send_file(chat, "note.txt", "text/plain", b"kept for later")
        .await
        .unwrap();
    until(&mut b, |e| match e {
        MessengerEvent::Message(m) if matches!(m.body, Body::File { .. }) => Some(()),
        _ => None,
    })
    .await;
    let reopened = Store::open(&server.dir.path().join(bob.device_id().to_string())).unwrap();
    let history = natter_client::ClientStore::history(&reopened, chat).unwrap();
    let file = history.iter().find_map(|h| h.file.clone()).unwrap();
    assert_eq!(b.fetch_file(&file).await.unwrap().bytes, b"kept for later");
}
