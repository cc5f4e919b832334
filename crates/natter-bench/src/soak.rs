//! The soak scenario: SDK clients against the real `natter serve` through
//! randomized trouble, then the [`crate::checker`] judges the history.
//!
//! Every device runs one task with an SDK [`Connection`] (the receiving
//! side, its outbox for REST sends) and, at times, a raw WebSocket for
//! `send_message` frames. Driven by one seed, each task picks actions at
//! random: a REST send through the outbox, a WebSocket send, a retry of an
//! earlier key straight over REST, dropping its WebSocket mid-stream, or
//! dropping the SDK's socket (which reconnects and syncs). A killer task
//! sends the server `SIGKILL` every `--kill-every` seconds and restarts it
//! on the same data directory and port. At the end every device
//! reconnects, waits for its outbox to empty and for `sync_done`, the
//! chats' logs are read over REST, and the checker runs.
//!
//! Randomness decides actions, not timing: two runs with one seed do the
//! same things in roughly, not exactly, the same interleaving.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use clap::Args;
use natter_client::api::HistoryQuery;
use natter_client::{
    Client, Connection, ConnectionConfig, Event, MemoryState, SendMessage, Session, Socket,
    SyncState as _,
};
use natter_proto::ChatId;
use natter_proto::chats::{ChatKind, CreateChat, MessageType};
use natter_proto::ws::{ClientFrame, ServerFrame};
use natter_testkit::{SmsInbox, TestUser};
use serde_json::json;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::checker::{DeviceInfo, History, LogEntry, Via, check};
use crate::report::Report;
use crate::target::{bench_env, tail};
use crate::{BenchError, BenchResult, Common, STEP_TIMEOUT};

/// How long the server may take to listen after a (re)start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the end of the run may take per device: outbox empty, `sync_done`.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Quiet time after the final `sync_done` for live events still in flight.
const QUIET: Duration = Duration::from_millis(500);
/// Keys a device remembers for retries (older ones are forgotten).
const RETRY_MEMORY: usize = 64;
/// The extra devices: users 0 and 1 have two each.
const SECOND_DEVICES: usize = 2;

/// Options of `soak`.
#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    /// How long to run (fractions allowed: `0.25` is 15 s).
    #[arg(long, default_value_t = 2.0)]
    pub minutes: f64,
    /// The seed of every random choice (default: from the clock, printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Users (each with one device; the first two have a second).
    #[arg(long, default_value_t = 6)]
    pub clients: usize,
    /// Seconds between `kill -9`s of the server (0: never).
    #[arg(long, default_value_t = 20.0)]
    pub kill_every: f64,
    /// Mean pause between a device's actions, in milliseconds.
    #[arg(long, default_value_t = 60)]
    pub pause_ms: u64,
}

/// A small deterministic generator (splitmix64), one per task.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// `natter serve` on a data directory that outlives its processes.
struct Server {
    /// This executable.
    exe: PathBuf,
    /// Holds the data and the logs; removed at the end.
    dir: tempfile::TempDir,
    /// The SMS webhook.
    sms_url: String,
    /// `--server-env`.
    extra_env: Vec<(String, String)>,
    /// `--server-cpus`.
    cpus: Option<String>,
    /// The running child (killed on drop).
    child: Option<Child>,
    /// Where it listens; kept across restarts so clients find it again.
    addr: Option<std::net::SocketAddr>,
    /// Starts so far (names the logs).
    starts: u32,
}

impl Server {
    fn new(common: &Common, sms_url: &str) -> BenchResult<Self> {
        let dir = tempfile::Builder::new()
            .prefix("natter-soak-")
            .tempdir()
            .map_err(BenchError::io("creating a temporary directory"))?;
        let mut extra_env = Vec::new();
        for pair in &common.server_env {
            match pair.split_once('=') {
                Some((k, v)) if k.starts_with("NATTER_") => {
                    extra_env.push((k.to_owned(), v.to_owned()));
                }
                _ => {
                    return Err(BenchError::Other(format!(
                        "--server-env takes NATTER_KEY=VALUE, not {pair}"
                    )));
                }
            }
        }
        Ok(Self {
            exe: std::env::current_exe().map_err(BenchError::io("finding this executable"))?,
            dir,
            sms_url: sms_url.to_owned(),
            extra_env,
            cpus: common.server_cpus.clone(),
            child: None,
            addr: None,
            starts: 0,
        })
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join(format!("natter-{}.log", self.starts))
    }

    /// Starts the server (on the same port after the first start) and
    /// waits until it listens.
    async fn start(&mut self) -> BenchResult<std::net::SocketAddr> {
        self.starts += 1;
        let log = self.log();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let file = std::fs::File::create(&log).map_err(BenchError::io("creating the log"))?;
            let mut cmd = match &self.cpus {
                Some(cpus) => {
                    let mut c = Command::new("taskset");
                    c.arg("-c").arg(cpus).arg(&self.exe);
                    c
                }
                None => Command::new(&self.exe),
            };
            for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("NATTER_")) {
                cmd.env_remove(k);
            }
            cmd.arg("serve")
                .env("NATTER_DATA_DIR", self.dir.path().join("data"))
                .envs(bench_env(&self.sms_url))
                .envs(self.extra_env.iter().cloned());
            if let Some(addr) = self.addr {
                cmd.env("NATTER_LISTEN", addr.to_string());
            }
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(file))
                .kill_on_drop(true);
            let mut child = cmd
                .spawn()
                .map_err(BenchError::io(format!("starting {}", self.exe.display())))?;
            loop {
                let text = tokio::fs::read_to_string(&log).await.unwrap_or_default();
                let found = text.lines().find_map(|line| {
                    line.split_once("listen=")
                        .and_then(|(_, rest)| rest.split_whitespace().next())
                        .and_then(|a| a.parse().ok())
                });
                if let Some(addr) = found {
                    self.child = Some(child);
                    self.addr = Some(addr);
                    return Ok(addr);
                }
                let exited = child.try_wait().ok().flatten().is_some();
                if Instant::now() > deadline {
                    let _ = child.kill().await;
                    return Err(BenchError::Other(format!(
                        "the server did not start; its log:\n{}",
                        tail(&text)
                    )));
                }
                if exited {
                    // The old port may still be held for a moment: try again.
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `kill -9` and wait for the process to be gone.
    async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // tokio's `kill` is SIGKILL.
            let _ = child.kill().await;
        }
    }

    fn log_tail(&self) -> String {
        std::fs::read_to_string(self.log())
            .map(|t| tail(&t))
            .unwrap_or_default()
    }
}

/// One device of the run.
struct Device {
    ix: usize,
    session: Session,
    chats: Vec<ChatId>,
}

/// The shared history, behind one lock (recording is tiny).
type Shared = Arc<Mutex<History>>;

fn with<T>(history: &Shared, f: impl FnOnce(&mut History) -> T) -> T {
    f(&mut history.lock().unwrap_or_else(PoisonError::into_inner))
}

/// Runs `soak`.
///
/// # Errors
/// Setup failures, or a device that does not settle at the end.
pub(crate) async fn run(common: &Common, args: &SoakArgs) -> BenchResult<Report> {
    let seed = args
        .seed
        .unwrap_or_else(|| uuid::Uuid::now_v7().as_u128() as u64);
    eprintln!("natter bench soak: seed {seed}");
    let inbox = SmsInbox::start_on(common.sms_listen).await?;
    let mut server = Server::new(common, inbox.url())?;
    let addr = server.start().await?;
    let outcome = drive(args, seed, &inbox, &mut server, addr).await;
    if outcome.is_err() {
        eprintln!("natter log (seed {seed}):\n{}", server.log_tail());
    }
    server.kill9().await;
    outcome
}

async fn drive(
    args: &SoakArgs,
    seed: u64,
    inbox: &SmsInbox,
    server: &mut Server,
    addr: std::net::SocketAddr,
) -> BenchResult<Report> {
    let base = format!("http://{addr}");
    let client = Client::new(&base, STEP_TIMEOUT)?;
    let users = args.clients.max(2);
    let numbers = seed % 90_000_000;
    let mut accounts = Vec::new();
    for u in 0..users {
        let phone = format!("+4478{:08}", (numbers + u as u64) % 100_000_000);
        accounts.push(TestUser::sign_up(&client, inbox, &phone, &format!("soak{u}")).await?);
    }
    let mut sessions: Vec<(usize, Session)> = accounts
        .iter()
        .enumerate()
        .map(|(u, a)| (u, a.session.clone()))
        .collect();
    for (u, account) in accounts.iter().enumerate().take(SECOND_DEVICES) {
        let second = TestUser::log_in(&client, inbox, &account.phone, Some("second")).await?;
        sessions.push((u, second.session));
    }
    // One group of everyone, and direct chats of pairs.
    let creator = &accounts[0].session;
    let group = creator
        .api()
        .create_chat(&CreateChat {
            kind: ChatKind::Group,
            participants: accounts[1..].iter().map(TestUser::user_id).collect(),
            name: Some("soak".to_owned()),
            encrypted: false,
        })
        .await?
        .id;
    let mut chats: Vec<(ChatId, Vec<usize>)> = vec![(group, (0..users).collect())];
    for pair in 0..users / 2 {
        let (a, b) = (2 * pair, 2 * pair + 1);
        let chat = accounts[a]
            .session
            .api()
            .create_chat(&CreateChat {
                kind: ChatKind::Direct,
                participants: vec![accounts[b].user_id()],
                name: None,
                encrypted: false,
            })
            .await?
            .id;
        chats.push((chat, vec![a, b]));
    }
    let devices: Vec<Device> = sessions
        .into_iter()
        .enumerate()
        .map(|(ix, (user, session))| Device {
            ix,
            session,
            chats: chats
                .iter()
                .filter(|(_, members)| members.contains(&user))
                .map(|(c, _)| *c)
                .collect(),
        })
        .collect();
    let history: Shared = Arc::new(Mutex::new(History::new(
        devices
            .iter()
            .map(|d| DeviceInfo {
                name: format!(
                    "u{}/d{}",
                    if d.ix < users { d.ix } else { d.ix - users },
                    usize::from(d.ix >= users)
                ),
                chats: d.chats.clone(),
            })
            .collect(),
    )));

    let run_for = Duration::from_secs_f64((args.minutes * 60.0).max(1.0));
    let started = Instant::now();
    let deadline = started + run_for;
    let tasks: Vec<_> = devices
        .into_iter()
        .map(|d| {
            let history = Arc::clone(&history);
            let rng = Rng(seed ^ (d.ix as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F));
            let pause = args.pause_ms;
            tokio::spawn(device_task(d, addr, history, rng, deadline, pause))
        })
        .collect();

    // The killer: SIGKILL at random points, restart on the same data.
    let mut rng = Rng(seed);
    let mut kills = 0u64;
    if args.kill_every > 0.0 {
        loop {
            let jitter = 0.5 + rng.below(1000) as f64 / 1000.0;
            let at = Instant::now() + Duration::from_secs_f64(args.kill_every * jitter);
            if at + Duration::from_secs(2) > deadline {
                break;
            }
            tokio::time::sleep_until(at).await;
            server.kill9().await;
            kills += 1;
            tokio::time::sleep(Duration::from_millis(200 + rng.below(800))).await;
            server.start().await?;
        }
    }
    let mut failures = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(e.to_string()),
            Err(e) => failures.push(e.to_string()),
        }
    }
    let elapsed = started.elapsed();
    if !failures.is_empty() {
        return Err(BenchError::Other(format!(
            "devices did not settle (seed {seed}): {}",
            failures.join("; ")
        )));
    }

    // The server's logs, read by a member of each chat.
    for (chat, members) in &chats {
        let reader = &accounts[members[0]].session;
        let mut entries = Vec::new();
        let mut before = None;
        loop {
            let page = reader
                .api()
                .history(
                    *chat,
                    HistoryQuery {
                        page: None,
                        limit: Some(100),
                        before_seq: before,
                    },
                )
                .await?;
            before = page.messages.last().map(|m| m.seq);
            entries.extend(page.messages.into_iter().map(|m| LogEntry {
                seq: m.seq,
                id: m.id,
                client_message_id: m.client_message_id,
            }));
            if !page.has_more || before.is_none() {
                break;
            }
        }
        with(&history, |h| h.final_log(*chat, entries));
    }

    let history = with(&history, std::mem::take);
    let violations = check(&history);
    for v in &violations {
        eprintln!("natter bench soak (seed {seed}): {v}");
    }
    let (rest, ws) = history.attempts();
    let mut report = Report::new("soak");
    report.set(
        "params",
        json!({"minutes": args.minutes, "seed": seed, "clients": users,
               "devices": history.devices.len(), "chats": chats.len(),
               "kill_every_s": args.kill_every, "pause_ms": args.pause_ms}),
    );
    report.set("seed", json!(seed));
    report.set("seconds", json!(elapsed.as_secs_f64()));
    report.set("sent", json!(history.sent()));
    report.set("attempts", json!({"rest": rest, "websocket": ws}));
    report.set("retries", json!(history.retries()));
    report.set("acked", json!(history.acked()));
    report.set("refused", json!(history.refused));
    report.set("delivered", json!(history.delivered_total()));
    report.set("kills", json!(kills));
    report.set("drops", json!(history.drops));
    report.set(
        "violations",
        json!(
            violations
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        ),
    );
    report.line("seed", &seed.to_string());
    report.line(
        "devices, chats",
        &format!("{}, {}", history.devices.len(), chats.len()),
    );
    report.line("ran", &format!("{:.1} s", elapsed.as_secs_f64()));
    report.line(
        "sent (keys), acked",
        &format!("{}, {}", history.sent(), history.acked()),
    );
    report.line(
        "attempts REST / WebSocket, retries",
        &format!("{rest} / {ws}, {}", history.retries()),
    );
    report.line(
        "delivered (all devices)",
        &history.delivered_total().to_string(),
    );
    report.line(
        "kill -9, socket drops",
        &format!("{kills}, {}", history.drops),
    );
    report.line("violations", &violations.len().to_string());
    Ok(report)
}

/// A device's raw WebSocket for `send_message` frames, and the keys sent on
/// it that wait for `message_sent`.
struct Sender {
    socket: Socket,
    unconfirmed: Vec<(String, ChatId)>,
}

/// What a device does until `deadline`, then its settling.
async fn device_task(
    device: Device,
    addr: std::net::SocketAddr,
    history: Shared,
    mut rng: Rng,
    deadline: Instant,
    pause_ms: u64,
) -> BenchResult<()> {
    let state = Arc::new(MemoryState::default());
    // Position 0 in every chat: sync sends each log from its start.
    for chat in &device.chats {
        state
            .record(*chat, 0)
            .map_err(natter_client::ClientError::from)?;
    }
    let config = ConnectionConfig {
        connect_timeout: Duration::from_secs(5),
        heartbeat: Duration::from_secs(5),
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
    };
    let mut conn = device
        .session
        .connect_with(Arc::clone(&state) as Arc<_>, config);
    let ix = device.ix;
    let mut connection = 0u32;
    let mut sender: Option<Sender> = None;
    let mut keys: VecDeque<(String, ChatId)> = VecDeque::new();
    let mut n = 0u64;
    let mut next_action = Instant::now();
    while Instant::now() < deadline {
        tokio::select! {
            event = conn.next_event() => {
                on_event(&history, ix, &mut connection, event?);
            }
            text = async {
                match sender.as_mut() {
                    Some(s) => Some(s.socket.next_text().await),
                    None => std::future::pending().await,
                }
            } => {
                match text {
                    Some(Ok(text)) => {
                        if let Ok(ServerFrame::MessageSent { client_message_id: Some(key), message, .. }) =
                            serde_json::from_str::<ServerFrame>(&text)
                        {
                            with(&history, |h| h.ack(ix, &key, message.chat_id, message.seq, message.id));
                            if let Some(s) = sender.as_mut() {
                                s.unconfirmed.retain(|(k, _)| *k != key);
                            }
                        }
                    }
                    _ => sender = None,
                }
            }
            () = tokio::time::sleep_until(next_action) => {
                next_action = Instant::now() + Duration::from_millis(rng.below(2 * pause_ms.max(1)));
                let roll = rng.below(100);
                let chat = device.chats[rng.below(device.chats.len() as u64) as usize];
                let key = format!("d{ix}-{n}");
                match roll {
                    // A send through the SDK's outbox.
                    0..45 => {
                        n += 1;
                        with(&history, |h| h.attempt(&key, chat, Via::Rest));
                        conn.send(text_message(chat, &key)).await?;
                        remember(&mut keys, key, chat);
                    }
                    // A send on the raw WebSocket.
                    45..75 => {
                        if sender.is_none() {
                            let socket = tokio::time::timeout(
                                STEP_TIMEOUT,
                                Socket::connect(addr, None, device.session.token(), STEP_TIMEOUT),
                            )
                            .await;
                            if let Ok(Ok(socket)) = socket {
                                sender = Some(Sender { socket, unconfirmed: Vec::new() });
                            }
                        }
                        if let Some(s) = sender.as_mut() {
                            n += 1;
                            with(&history, |h| h.attempt(&key, chat, Via::WebSocket));
                            let frame = ClientFrame::SendMessage {
                                chat_id: chat,
                                content: Some(format!("soak {key}")),
                                ciphertext: None,
                                message_type: MessageType::Text,
                                client_message_id: Some(key.clone()),
                                reply_to: None,
                                timestamp: None,
                                media_id: None,
                            };
                            if s.socket.send(&frame).await.is_err() {
                                sender = None;
                            } else {
                                s.unconfirmed.push((key.clone(), chat));
                            }
                            remember(&mut keys, key, chat);
                        }
                    }
                    // A retry of an earlier key, straight over REST.
                    75..87 => {
                        if let Some((key, chat)) = pick(&mut rng, &keys) {
                            with(&history, |h| h.attempt(&key, chat, Via::Rest));
                            retry(&history, ix, &device.session, &key, chat).await;
                        }
                    }
                    // Drop the raw WebSocket with sends in flight.
                    87..93 => {
                        if let Some(s) = sender.take() {
                            with(&history, |h| h.drops += 1);
                            drop(s);
                        }
                    }
                    // Drop the SDK's socket mid-stream.
                    93..97 => {
                        with(&history, |h| h.drops += 1);
                        conn.disconnect().await;
                    }
                    _ => {}
                }
            }
        }
    }
    drop(sender);
    settle(&history, ix, &mut conn, &state, &mut connection).await
}

/// Records an SDK event in the history.
fn on_event(history: &Shared, ix: usize, connection: &mut u32, event: Event) {
    with(history, |h| match event {
        Event::Connected { .. } => *connection += 1,
        Event::Message {
            chat_id,
            seq,
            message,
        }
        | Event::MessageUpdated {
            chat_id,
            seq,
            message,
        }
        | Event::MessageDeleted {
            chat_id,
            seq,
            message,
        }
        | Event::ChatUpdated {
            chat_id,
            seq,
            message,
        } => h.delivered(ix, *connection, chat_id, seq, message.id),
        Event::SyncDone { chats } => {
            for c in chats {
                h.sync_done(ix, c.chat_id, c.seq);
            }
        }
        Event::TooLong { chat_id, seq } => h.too_long(ix, chat_id, seq),
        Event::Sent {
            client_message_id,
            message,
        } => h.ack(
            ix,
            &client_message_id,
            message.chat_id,
            message.seq,
            message.id,
        ),
        Event::SendFailed { .. } => h.refused += 1,
        _ => {}
    });
}

/// The end of a device's run: its outbox empties, then it reconnects and
/// syncs, then live events still in flight arrive within [`QUIET`].
async fn settle(
    history: &Shared,
    ix: usize,
    conn: &mut Connection,
    state: &MemoryState,
    connection: &mut u32,
) -> BenchResult<()> {
    let until = Instant::now() + SETTLE_TIMEOUT;
    let late = || BenchError::Other(format!("device {ix} did not settle in {SETTLE_TIMEOUT:?}"));
    while !state
        .outbox()
        .map_err(natter_client::ClientError::from)?
        .is_empty()
    {
        let event = tokio::time::timeout_at(until, conn.next_event())
            .await
            .map_err(|_| late())??;
        on_event(history, ix, connection, event);
    }
    conn.disconnect().await;
    loop {
        let event = tokio::time::timeout_at(until, conn.next_event())
            .await
            .map_err(|_| late())??;
        let done = matches!(event, Event::SyncDone { .. });
        on_event(history, ix, connection, event);
        if done {
            break;
        }
    }
    while let Ok(event) = tokio::time::timeout(QUIET, conn.next_event()).await {
        on_event(history, ix, connection, event?);
    }
    conn.disconnect().await;
    Ok(())
}

fn text_message(chat: ChatId, key: &str) -> SendMessage {
    SendMessage {
        chat_id: chat,
        content: Some(format!("soak {key}")),
        ciphertext: None,
        message_type: MessageType::Text,
        timestamp: None,
        client_message_id: Some(key.to_owned()),
        reply_to: None,
        media_id: None,
    }
}

fn remember(keys: &mut VecDeque<(String, ChatId)>, key: String, chat: ChatId) {
    if keys.len() >= RETRY_MEMORY {
        keys.pop_front();
    }
    keys.push_back((key, chat));
}

fn pick(rng: &mut Rng, keys: &VecDeque<(String, ChatId)>) -> Option<(String, ChatId)> {
    if keys.is_empty() {
        return None;
    }
    keys.get(rng.below(keys.len() as u64) as usize).cloned()
}

/// Sends `key` again over REST; an answer is an acknowledgement (of the
/// original, if there was one), a failure is fine (the server may be down).
async fn retry(history: &Shared, ix: usize, session: &Session, key: &str, chat: ChatId) {
    let sent = tokio::time::timeout(
        STEP_TIMEOUT,
        session.api().send_message(&text_message(chat, key)),
    )
    .await;
    if let Ok(Ok(posted)) = sent {
        let m = posted.message;
        with(history, |h| h.ack(ix, key, m.chat_id, m.seq, m.id));
    }
}
