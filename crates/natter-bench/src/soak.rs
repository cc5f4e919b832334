//! The soak scenario: SDK clients against the real `natter serve` through
//! randomized trouble, then the [`crate::checker`] judges the history.
//!
//! Every device runs one task with an SDK [`Connection`] (the receiving
//! side, its outbox for REST sends) and, at times, a raw WebSocket for
//! `send_message` frames. Driven by one seed, each task picks actions at
//! random: a REST send through the outbox, a WebSocket send, a retry of an
//! earlier key straight over REST, dropping its WebSocket mid-stream, or
//! dropping the SDK's socket (which reconnects and syncs). Meanwhile the
//! fault (`--fault`) strikes every `--kill-every` seconds:
//! - `node`: `kill -9` of a random node, started again on its data and port
//!   (on a cluster its clients reconnect through the balancer to another);
//! - `nats`: the cluster's NATS killed, started again after `--outage` s;
//! - `postgres`: the cluster's PostgreSQL stopped cleanly for `--outage` s,
//!   while a prober posts REST messages: each answer must be 201, or 503
//!   with `Retry-After`, and at least one 503 must be seen;
//! - `join` (once, a third into the run): a new node starts and joins the
//!   balancer; it must have served requests by the end.
//!
//! At the end every device reconnects, waits for its outbox to empty and
//! for `sync_done`, the chats' logs are read over REST, and the checker
//! runs; the fault's own violations join its list.
//!
//! Randomness decides actions, not timing: two runs with one seed do the
//! same things in roughly, not exactly, the same interleaving.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use clap::{Args, ValueEnum};
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
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;

use crate::checker::{DeviceInfo, History, LogEntry, Via, check};
use crate::load::Rng;
use crate::report::Report;
use crate::target::{Kind, Target};
use crate::{BenchError, BenchResult, Common, STEP_TIMEOUT};

/// How often the prober posts during a PostgreSQL outage.
const PROBE_EVERY: Duration = Duration::from_millis(100);
/// How long the prober goes on after PostgreSQL is back (recovery is part
/// of what it watches).
const PROBE_AFTER: Duration = Duration::from_secs(1);
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
    /// Seconds between faults (0: never): `kill -9`s of a node, NATS or
    /// PostgreSQL outages (`join` happens once).
    #[arg(long, default_value_t = 20.0)]
    pub kill_every: f64,
    /// The trouble besides the clients' own (`nats`, `postgres` and `join`
    /// need a cluster: `--nodes N` or `--cluster`).
    #[arg(long, value_enum, default_value_t = Fault::Node)]
    pub fault: Fault,
    /// Seconds NATS or PostgreSQL stay down per fault.
    #[arg(long, default_value_t = 3.0)]
    pub outage: f64,
    /// Mean pause between a device's actions, in milliseconds.
    #[arg(long, default_value_t = 60)]
    pub pause_ms: u64,
}

/// What `--fault` breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Fault {
    /// `kill -9` of a random node, started again on the same port.
    Node,
    /// The cluster's NATS killed, then started again.
    Nats,
    /// The cluster's PostgreSQL stopped cleanly, then started again.
    Postgres,
    /// A new node joins the running cluster.
    Join,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Self::Node => "node",
            Self::Nats => "nats",
            Self::Postgres => "postgres",
            Self::Join => "join",
        }
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
    if common.url.is_some() {
        return Err(BenchError::Other(
            "soak kills and restarts its own server: --url is not for it".to_owned(),
        ));
    }
    if args.fault != Fault::Node && !common.is_cluster() {
        return Err(BenchError::Other(format!(
            "--fault {} needs a cluster: add --nodes N (or --cluster)",
            args.fault.name()
        )));
    }
    eprintln!("natter bench soak: seed {seed}");
    let inbox = SmsInbox::start_on(common.sms_listen).await?;
    let mut target = Target::start(common, Kind::Natter, inbox.url()).await?;
    let outcome = drive(args, seed, &inbox, &mut target).await;
    if outcome.is_err() {
        eprintln!("natter log (seed {seed}):\n{}", target.log_tail());
    }
    target.stop().await;
    outcome
}

async fn drive(
    args: &SoakArgs,
    seed: u64,
    inbox: &SmsInbox,
    target: &mut Target,
) -> BenchResult<Report> {
    let addr = target.addr;
    let base = target.http.clone();
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

    let mut rng = Rng(seed);
    let prober = Prober {
        addr,
        token: accounts[0].session.token().to_owned(),
        chat: group,
        history: Arc::clone(&history),
    };
    let mut figures = faults(args, &mut rng, target, deadline, &prober).await?;
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

    if let Some(node) = figures.joined {
        figures.joined_served = served(target, node).await;
        if figures.joined_served == 0 {
            figures
                .violations
                .push("the joined node served no request".to_owned());
        }
    }
    let history = with(&history, std::mem::take);
    let mut violations: Vec<String> = check(&history).iter().map(ToString::to_string).collect();
    violations.append(&mut figures.violations);
    for v in &violations {
        eprintln!("natter bench soak (seed {seed}): {v}");
    }
    let (rest, ws) = history.attempts();
    let mut report = Report::new("soak");
    report.set(
        "params",
        json!({"minutes": args.minutes, "seed": seed, "clients": users,
               "devices": history.devices.len(), "chats": chats.len(),
               "kill_every_s": args.kill_every, "pause_ms": args.pause_ms,
               "nodes": target.nodes.len(), "fault": args.fault.name(),
               "outage_s": args.outage}),
    );
    report.set("seed", json!(seed));
    report.set("seconds", json!(elapsed.as_secs_f64()));
    report.set("sent", json!(history.sent()));
    report.set("attempts", json!({"rest": rest, "websocket": ws}));
    report.set("retries", json!(history.retries()));
    report.set("acked", json!(history.acked()));
    report.set("refused", json!(history.refused));
    report.set("delivered", json!(history.delivered_total()));
    report.set("kills", json!(figures.kills));
    report.set(
        "fault",
        json!({"kind": args.fault.name(), "faults": figures.faults,
               "outage_s": figures.outage.as_secs_f64(),
               "probes": {"created": figures.probes.created,
                          "unavailable": figures.probes.unavailable,
                          "other": figures.probes.other},
               "joined_served": figures.joined_served}),
    );
    report.set("drops", json!(history.drops));
    report.set("violations", json!(violations));
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
        "nodes, fault",
        &format!("{}, {}", target.nodes.len(), args.fault.name()),
    );
    report.line(
        "kill -9, socket drops",
        &format!("{}, {}", figures.kills, history.drops),
    );
    match args.fault {
        Fault::Node => {}
        Fault::Nats | Fault::Postgres => report.line(
            "outages, seconds down",
            &format!("{}, {:.1}", figures.faults, figures.outage.as_secs_f64()),
        ),
        Fault::Join => report.line(
            "requests on the joined node",
            &figures.joined_served.to_string(),
        ),
    }
    if args.fault == Fault::Postgres {
        report.line(
            "probes 201 / 503 / other",
            &format!(
                "{} / {} / {}",
                figures.probes.created, figures.probes.unavailable, figures.probes.other
            ),
        );
    }
    report.line("violations", &violations.len().to_string());
    Ok(report)
}

/// What the fault did, and what it found wrong.
#[derive(Debug, Default)]
struct FaultFigures {
    /// Faults applied (kills, outages, joins).
    faults: u64,
    /// `kill -9`s of nodes.
    kills: u64,
    /// Time NATS or PostgreSQL was down, in total.
    outage: Duration,
    /// The prober's answers.
    probes: ProbeCounts,
    /// The node that joined, by index.
    joined: Option<usize>,
    /// Requests and WebSockets the joined node served (its `/metrics`).
    joined_served: u64,
    /// What the fault's own checks found.
    violations: Vec<String>,
}

/// The prober's answers during PostgreSQL outages.
#[derive(Debug, Default, Clone, Copy)]
struct ProbeCounts {
    /// 201: stored.
    created: u64,
    /// 503 with `Retry-After`: come back later.
    unavailable: u64,
    /// Anything else (each one a violation).
    other: u64,
}

/// Applies `args.fault` until `deadline`.
///
/// # Errors
/// A node or engine that cannot start again.
async fn faults(
    args: &SoakArgs,
    rng: &mut Rng,
    target: &mut Target,
    deadline: Instant,
    prober: &Prober,
) -> BenchResult<FaultFigures> {
    let mut figures = FaultFigures::default();
    if args.fault == Fault::Join {
        let run_for = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(run_for / 3).await;
        figures.joined = Some(target.start_node().await?);
        figures.faults = 1;
        tokio::time::sleep_until(deadline).await;
        return Ok(figures);
    }
    if args.kill_every <= 0.0 {
        return Ok(figures);
    }
    let outage = Duration::from_secs_f64(args.outage.max(0.0));
    loop {
        let jitter = 0.5 + rng.below(1000) as f64 / 1000.0;
        let at = Instant::now() + Duration::from_secs_f64(args.kill_every * jitter);
        if at + outage + Duration::from_secs(2) > deadline {
            break;
        }
        tokio::time::sleep_until(at).await;
        figures.faults += 1;
        match args.fault {
            Fault::Node | Fault::Join => {
                let ix = rng.below(target.nodes.len() as u64) as usize;
                let node = &mut target.nodes[ix];
                node.kill9().await;
                figures.kills += 1;
                tokio::time::sleep(Duration::from_millis(200 + rng.below(800))).await;
                node.start().await?;
            }
            Fault::Nats => {
                let nats = &mut engines(target)?.nats;
                let down = Instant::now();
                nats.kill();
                tokio::time::sleep(outage).await;
                nats.restart()
                    .await
                    .map_err(|e| BenchError::Other(format!("NATS did not start again: {e}")))?;
                figures.outage += down.elapsed();
            }
            Fault::Postgres => {
                let stop = Arc::new(AtomicBool::new(false));
                let probing = tokio::spawn(prober.clone().run(Arc::clone(&stop)));
                let down = Instant::now();
                let pg = &engines(target)?.pg;
                tokio::task::block_in_place(|| pg.pause())?;
                tokio::time::sleep(outage).await;
                tokio::task::block_in_place(|| pg.resume())?;
                figures.outage += down.elapsed();
                tokio::time::sleep(PROBE_AFTER).await;
                stop.store(true, Ordering::Relaxed);
                let (counts, mut wrong) = probing
                    .await
                    .map_err(|e| BenchError::Other(format!("the prober failed: {e}")))?;
                figures.probes.created += counts.created;
                figures.probes.unavailable += counts.unavailable;
                figures.probes.other += counts.other;
                figures.violations.append(&mut wrong);
            }
        }
    }
    if args.fault == Fault::Postgres && figures.faults > 0 && figures.probes.unavailable == 0 {
        figures.violations.push(format!(
            "no 503 seen in {} PostgreSQL outage(s): the prober never met the fault",
            figures.faults
        ));
    }
    Ok(figures)
}

fn engines(target: &mut Target) -> BenchResult<&mut crate::target::Engines> {
    target
        .engines
        .as_mut()
        .ok_or_else(|| BenchError::Other("this fault needs a cluster".to_owned()))
}

/// Posts REST messages as one device during a PostgreSQL outage and
/// judges each answer; a 201 is an acknowledgement the checker holds the
/// cluster to.
#[derive(Clone)]
struct Prober {
    /// The balancer.
    addr: SocketAddr,
    /// Device 0's token.
    token: String,
    /// Where it posts (the group).
    chat: ChatId,
    history: Shared,
}

impl Prober {
    async fn run(self, stop: Arc<AtomicBool>) -> (ProbeCounts, Vec<String>) {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let mut counts = ProbeCounts::default();
        let mut wrong = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let key = format!("probe-{}", NEXT.fetch_add(1, Ordering::Relaxed));
            let body = serde_json::to_string(&text_message(self.chat, &key)).unwrap_or_default();
            with(&self.history, |h| h.attempt(&key, self.chat, Via::Rest));
            let answer = http(
                self.addr,
                "POST",
                "/api/v1/messages",
                Some(&self.token),
                Some(&body),
            )
            .await;
            match answer {
                Ok(a) if a.status == 201 => {
                    match serde_json::from_str::<natter_proto::chats::Message>(&a.body) {
                        Ok(m) => {
                            counts.created += 1;
                            with(&self.history, |h| h.ack(0, &key, m.chat_id, m.seq, m.id));
                        }
                        Err(e) => {
                            counts.other += 1;
                            wrong.push(format!(
                                "probe {key}: 201 with a body that is not a message ({e})"
                            ));
                        }
                    }
                }
                Ok(a) if a.status == 503 && a.header("retry-after").is_some() => {
                    counts.unavailable += 1;
                }
                Ok(a) => {
                    counts.other += 1;
                    wrong.push(format!(
                        "probe {key} during a PostgreSQL outage: {} (Retry-After: {:?}) {}",
                        a.status,
                        a.header("retry-after"),
                        a.body.chars().take(200).collect::<String>()
                    ));
                }
                Err(e) => {
                    counts.other += 1;
                    wrong.push(format!("probe {key} during a PostgreSQL outage: {e}"));
                }
            }
            tokio::time::sleep(PROBE_EVERY).await;
        }
        (counts, wrong)
    }
}

/// Requests (other than `/metrics`) and WebSockets that node `ix` served,
/// from its own `/metrics`.
async fn served(target: &Target, ix: usize) -> u64 {
    let Some(addr) = target.nodes.get(ix).and_then(crate::target::Node::addr) else {
        return 0;
    };
    let Ok(answer) = http(addr, "GET", "/metrics", None, None).await else {
        return 0;
    };
    answer
        .body
        .lines()
        .filter(|l| l.starts_with("natter_http_requests_total{") && !l.contains("\"/metrics\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// An HTTP answer, read whole.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on its own connection (`Connection: close`), so
/// the answer's status and headers are seen as sent (the SDK keeps only
/// the error body).
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> std::io::Result<Answer> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let mut request =
            format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        if let Some(token) = token {
            request.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        let body = body.unwrap_or("");
        if !body.is_empty() {
            request.push_str("Content-Type: application/json\r\n");
        }
        request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(STEP_TIMEOUT, exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in time"))??;
    let text = String::from_utf8_lossy(&raw);
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer");
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut answer = Answer {
        status,
        headers,
        body: body.to_owned(),
    };
    if answer
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        answer.body = dechunk(&answer.body);
    }
    Ok(answer)
}

/// The body of a chunked answer.
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].strip_prefix("\r\n").unwrap_or(&after[n..]);
    }
    out
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
    let late = |stage: String| {
        BenchError::Other(format!(
            "device {ix} did not settle in {SETTLE_TIMEOUT:?}: {stage}"
        ))
    };
    loop {
        let waiting = state
            .outbox()
            .map_err(natter_client::ClientError::from)?
            .len();
        if waiting == 0 {
            break;
        }
        let event = tokio::time::timeout_at(until, conn.next_event())
            .await
            .map_err(|_| late(format!("{waiting} message(s) still in its outbox")))??;
        on_event(history, ix, connection, event);
    }
    conn.disconnect().await;
    loop {
        let event = tokio::time::timeout_at(until, conn.next_event())
            .await
            .map_err(|_| late("no sync_done after reconnecting".to_owned()))??;
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
