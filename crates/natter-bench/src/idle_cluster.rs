//! The idle scenario on a cluster (`--nodes N` or `--cluster`): N
//! authenticated WebSockets held open across the nodes, each client
//! connecting straight to a node (user `i` to node `i mod nodes`, no
//! balancer in between), the client side spread over `idle-worker`
//! processes of at most `--per-worker` sockets each, because one process
//! may hold only as many sockets as its open-file limit.
//!
//! During the hold a prober measures what a held connection is for: the
//! parent holds `--probe-users` of the N itself (spread over the nodes like
//! the rest), with direct chats between random pairs of them on different
//! nodes created beforehand, and at `--probe-rate` sends a message on one
//! user's socket and times it to the other user's socket (both in this
//! process, one clock). Every probe must arrive; a probe missing
//! [`PROBE_GRACE`] after the hold is a violation, as is a connection that
//! did not stay open.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::SinkExt as _;
use hdrhistogram::Histogram;
use natter_client::{Client, SocketWriter};
use natter_proto::ChatId;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::accounts::{BenchCalls as _, SmsInbox, User, sign_up_spread};
use crate::idle::IdleArgs;
use crate::idle_worker::{SPARE_FDS, Worker, WorkerArgs};
use crate::load::{
    Rng, connect_each, histogram, latency_json, latency_line, now_us, parse, progress, record,
};
use crate::report::{Report, thousands};
use crate::target::{Kind, Target, cpu_of, rss_of};
use crate::{BenchError, BenchResult, Common, STEP_TIMEOUT};

/// Settle time before reading memory, so allocations in flight land.
const SETTLE: Duration = Duration::from_millis(500);
/// How long after the hold a probe may still arrive before it counts as
/// lost (far above any delivery time; the goal is 50 ms).
const PROBE_GRACE: Duration = Duration::from_secs(10);
/// Descriptors a node keeps beside its clients' sockets (PostgreSQL pool,
/// NATS, listeners, logs, the runtime).
const NODE_SPARE_FDS: u64 = 200;
/// Local ports the kernel hands out per source address that the run may
/// use: a share of `net.ipv4.ip_local_port_range`, leaving room for every
/// other socket of the machine.
const PORT_SHARE: f64 = 0.9;

/// A probe sent and not yet received.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// Index (among the probe users) of the user who must receive it.
    to: usize,
    /// When it was sent (`now_us`).
    sent_us: u64,
}

/// What the probe users' readers share with the prober.
#[derive(Debug)]
struct Probes {
    /// Sent, not yet received, by probe id.
    pending: Mutex<HashMap<u64, Pending>>,
    /// Send → delivery on the other user's socket, in microseconds.
    latency: Mutex<Histogram<u64>>,
}

impl Probes {
    /// A message reached probe user `me`: records it if it is a probe
    /// meant for `me` (the sender's own copy, if any, is not).
    fn received(&self, me: usize, text: &str) {
        let Some(frame) = parse(text) else {
            return;
        };
        if frame.kind != "new_message" {
            return;
        }
        let Some(id) = frame
            .message
            .as_ref()
            .and_then(|m| m.content.as_deref())
            .and_then(probe_id)
        else {
            return;
        };
        let now = now_us();
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.get(&id).is_some_and(|p| p.to == me)
            && let Some(p) = pending.remove(&id)
        {
            drop(pending);
            record(
                &mut self.latency.lock().unwrap_or_else(PoisonError::into_inner),
                now.saturating_sub(p.sent_us),
            );
        }
    }
}

/// A probe's text: `probe <id>`.
fn probe_text(id: u64) -> String {
    format!("probe {id}")
}

/// The id in a text made by [`probe_text`].
fn probe_id(text: &str) -> Option<u64> {
    text.strip_prefix("probe ")?.parse().ok()
}

/// The node a user connects to.
fn node_of(user: usize, nodes: usize) -> usize {
    user % nodes.max(1)
}

/// `count` distinct pairs of the first `users` users, the two of each on
/// different nodes; each user is the first of at least one pair.
fn probe_pairs(users: usize, nodes: usize, rng: &mut Rng) -> Vec<(usize, usize)> {
    let mut seen = HashSet::new();
    let mut pairs = Vec::with_capacity(users);
    for a in 0..users {
        // Bounded: with two nodes, half the users qualify.
        for _ in 0..64 {
            let b = rng.below(users as u64) as usize;
            let key = (a.min(b), a.max(b));
            if node_of(a, nodes) != node_of(b, nodes) && seen.insert(key) {
                pairs.push((a, b));
                break;
            }
        }
    }
    pairs
}

/// The limits a run must fit, checked before anything starts: each with a
/// sentence that says which option to change.
fn check(common: &Common, args: &IdleArgs) -> BenchResult<()> {
    let n = args.connections;
    let nodes = usize::from(common.nodes);
    let err = |s: String| Err(BenchError::Other(s));
    if args.baseline {
        return err(
            "--baseline runs the bare relay, which has no cluster: drop --nodes/--cluster".into(),
        );
    }
    if args.probe_users > n {
        return err(format!(
            "--probe-users {} is more than the {n} connections (-n) it is part of",
            args.probe_users
        ));
    }
    if args.probe_users == 1 {
        return err("--probe-users must be 0 (no probes) or at least 2 (a pair)".into());
    }
    if args.probe_users >= 2 && nodes < 2 {
        return err("cross-node probes need --nodes 2 or more (or --probe-users 0)".into());
    }
    if !(args.probe_rate.is_finite() && args.probe_rate > 0.0 && args.probe_rate <= 10_000.0) {
        return err(format!(
            "--probe-rate must be above 0 and at most 10000 per second, not {}",
            args.probe_rate
        ));
    }
    if !(args.hold.is_finite() && args.hold >= 0.0) {
        return err(format!(
            "--hold must be 0 or more seconds, not {}",
            args.hold
        ));
    }
    let hard = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map_err(BenchError::io("reading the open-file limit"))?
        .1;
    if args.per_worker == 0 || args.per_worker as u64 + SPARE_FDS > hard {
        return err(format!(
            "--per-worker must be 1 to {} (this machine's per-process open-file limit, ulimit -Hn, is {hard}), not {}",
            hard.saturating_sub(SPARE_FDS),
            args.per_worker
        ));
    }
    let per_node = n.div_ceil(nodes) as u64;
    if per_node + NODE_SPARE_FDS > hard {
        let need = (n as u64).div_ceil(hard.saturating_sub(NODE_SPARE_FDS).max(1));
        return err(format!(
            "{n} connections over {nodes} nodes is {per_node} per node, more than a node's open-file limit ({hard}) allows: use --nodes {need} or more"
        ));
    }
    if let Some(ports) = local_ports() {
        let usable = (ports as f64 * PORT_SHARE) as u64;
        let addrs = u64::from(common.source_addrs.max(1));
        if n as u64 > usable * addrs {
            let need = (n as u64).div_ceil(usable.max(1));
            return err(format!(
                "{n} client sockets over {addrs} source addresses need more local ports than net.ipv4.ip_local_port_range gives ({ports} per address, {usable} used): use --source-addrs {need} or more"
            ));
        }
    }
    Ok(())
}

/// The size of `net.ipv4.ip_local_port_range`.
fn local_ports() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = text.split_whitespace().map(|x| x.parse::<u64>().ok());
    let (low, high) = (it.next()??, it.next()??);
    Some(high.saturating_sub(low) + 1)
}

/// Runs `idle` on a cluster.
///
/// # Errors
/// A limit the run does not fit, setup failures, a failed connection.
pub(crate) async fn run(common: &Common, args: &IdleArgs) -> BenchResult<Report> {
    check(common, args)?;
    let inbox = SmsInbox::start_on(common.sms_listen).await?;
    let target = Target::start(common, Kind::Natter, inbox.url()).await?;
    let outcome = drive(common, args, &inbox, &target).await;
    if outcome.is_err() {
        eprintln!("natter log:\n{}", target.log_tail());
    }
    target.stop().await;
    outcome
}

/// Memory of everything in the run at one moment, in bytes.
#[derive(Debug, Clone)]
struct Memory {
    nodes: Vec<Option<u64>>,
    nats: Option<u64>,
    pg: Option<u64>,
    parent: Option<u64>,
}

impl Memory {
    fn read(target: &Target) -> Self {
        Self {
            nodes: target.node_rss(),
            nats: target.nats_rss(),
            pg: target.pg_pss(),
            parent: rss_of("/proc/self/status"),
        }
    }

    fn nodes_total(&self) -> Option<u64> {
        self.nodes.iter().copied().sum()
    }
}

/// A probe user's socket in this process.
struct ProbeUser {
    /// Its sending half (the prober's).
    writer: Arc<tokio::sync::Mutex<SocketWriter>>,
    /// Its reader; finished once the socket closed.
    reader: tokio::task::JoinHandle<()>,
}

#[allow(clippy::too_many_lines)]
async fn drive(
    common: &Common,
    args: &IdleArgs,
    inbox: &SmsInbox,
    target: &Target,
) -> BenchResult<Report> {
    let quiet = common.json;
    let n = args.connections;
    let p = args.probe_users;
    let node_addrs = target.node_addrs();
    let k = node_addrs.len();
    let clients = node_addrs
        .iter()
        .map(|a| Client::new(&format!("http://{a}"), STEP_TIMEOUT))
        .collect::<Result<Vec<_>, _>>()?;

    // Accounts, through the API of every node in turn.
    let started = now_us();
    let users: Vec<User> =
        sign_up_spread(&clients, inbox, "idle", n, args.signup_concurrency, quiet).await?;
    let signup_secs = (now_us() - started) as f64 / 1e6;

    // The probe pairs' chats, before anything is timed.
    let mut rng = Rng(now_us() ^ u64::from(std::process::id()));
    let pairs = probe_pairs(p, k, &mut rng);
    let mut chats: Vec<ChatId> = Vec::with_capacity(pairs.len());
    for &(a, b) in &pairs {
        let client = &clients[node_of(a, k)];
        chats.push(client.direct_chat(&users[a].token, users[b].id).await?);
    }

    tokio::time::sleep(SETTLE).await;
    let before = Memory::read(target);

    // Connect: the workers' shares and the probe users, all at once.
    let assigned: Vec<(SocketAddr, &str)> = users
        .iter()
        .enumerate()
        .map(|(i, u)| (node_addrs[node_of(i, k)], u.token.as_str()))
        .collect();
    let rest = &assigned[p..];
    let workers_needed = rest.len().div_ceil(args.per_worker);
    let chunk = rest.len().div_ceil(workers_needed.max(1)).max(1);
    let per_worker_concurrency = args.concurrency.div_ceil(workers_needed.max(1)).max(1);
    let exe = std::env::current_exe().map_err(BenchError::io("finding this executable"))?;
    let logs = tempfile::Builder::new()
        .prefix("natter-bench-workers-")
        .tempdir()
        .map_err(BenchError::io("creating a temporary directory"))?;
    let bar = progress(n as u64, "connecting", quiet);
    let connect_started = now_us();
    let mut workers = Vec::with_capacity(workers_needed);
    for (w, share) in rest.chunks(chunk).enumerate() {
        let worker_args = WorkerArgs {
            concurrency: per_worker_concurrency,
            first: p + w * chunk,
        };
        let log = logs.path().join(format!("worker-{w}.log"));
        workers.push(Worker::start(&exe, common, &worker_args, share, &log).await?);
    }
    // The probe users' readers, each started as soon as its socket is open.
    let probes = Arc::new(Probes {
        pending: Mutex::new(HashMap::new()),
        latency: Mutex::new(histogram()?),
    });
    let probe_connect = connect_each(
        &assigned[..p],
        0,
        args.concurrency.min(64),
        common.source_addrs,
        natter_client::SMALL_BUFFER_BYTES,
        &bar,
        |me, socket| {
            let (writer, mut reader) = socket.split();
            let probes = Arc::clone(&probes);
            let reader = tokio::spawn(async move {
                while let Ok(text) = reader.next_text().await {
                    probes.received(me, &text);
                }
            });
            ProbeUser {
                writer: Arc::new(tokio::sync::Mutex::new(writer)),
                reader,
            }
        },
    );
    let workers_ready = futures_util::future::try_join_all(workers.iter_mut().map(async |w| {
        let c = w.connected().await;
        bar.inc(w.sockets as u64);
        c
    }));
    let (probe_users, ready) = tokio::join!(probe_connect, workers_ready);
    let connect_secs = (now_us() - connect_started) as f64 / 1e6;
    bar.finish_and_clear();
    let (probe_users, ready) = match (probe_users, ready) {
        (Ok(s), Ok(r)) => (s, r),
        (Err(e), _) | (_, Err(e)) => {
            let logs: String = (0..workers.len())
                .filter_map(|w| {
                    std::fs::read_to_string(logs.path().join(format!("worker-{w}.log"))).ok()
                })
                .filter(|t| !t.is_empty())
                .take(3)
                .collect();
            if !logs.is_empty() {
                eprintln!("worker logs:\n{logs}");
            }
            return Err(e);
        }
    };
    drop(assigned);

    tokio::time::sleep(SETTLE).await;
    let after = Memory::read(target);

    // The hold, with the prober; what it costs in CPU while nothing else runs.
    let worker_pids: Vec<u32> = workers.iter().filter_map(Worker::pid).collect();
    let clients_cpu = || {
        worker_pids.iter().copied().filter_map(cpu_of).sum::<f64>()
            + cpu_of(std::process::id()).unwrap_or(0.0)
    };
    let cpu_before = (target.cpu_seconds(), clients_cpu());
    let hold_started = now_us();
    let (sent, send_errors) = if pairs.is_empty() {
        tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
        (0, 0)
    } else {
        probe(args, &pairs, &chats, &probe_users, &probes, &mut rng).await
    };
    let hold_secs = ((now_us() - hold_started) as f64 / 1e6).max(1e-9);
    let cpu_after = (target.cpu_seconds(), clients_cpu());
    let cores = |b: Option<f64>, a: Option<f64>| match (b, a) {
        (Some(b), Some(a)) => Some((a - b) / hold_secs),
        _ => None,
    };
    let hold_cpu = json!({
        "nodes": (cpu_after.0.nodes - cpu_before.0.nodes) / hold_secs,
        "nats": cores(cpu_before.0.nats, cpu_after.0.nats),
        "postgres": cores(cpu_before.0.pg, cpu_after.0.pg),
        "bench": (cpu_after.1 - cpu_before.1) / hold_secs,
    });
    let grace_end = tokio::time::Instant::now() + PROBE_GRACE;
    while tokio::time::Instant::now() < grace_end
        && !probes
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lost = probes
        .pending
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .len();

    // What stayed open.
    let mut held = probe_users
        .iter()
        .filter(|u| !u.reader.is_finished())
        .count() as u64;
    let mut worker_open = Vec::with_capacity(workers.len());
    for w in &mut workers {
        let open = w.open().await?;
        worker_open.push(open);
        held += open;
    }
    let workers_rss: Vec<Option<u64>> = workers
        .iter()
        .map(|w| {
            w.pid()
                .and_then(|pid| rss_of(&format!("/proc/{pid}/status")))
        })
        .collect();
    for u in &probe_users {
        u.reader.abort();
    }
    for w in workers {
        w.stop().await;
    }

    let latency = probes
        .latency
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let delivered = latency.len();

    // The figures.
    let mut violations = Vec::new();
    if held != n as u64 {
        violations.push(format!("only {held} of {n} connections stayed open"));
    }
    if lost > 0 {
        violations.push(format!(
            "{lost} of {sent} probes were not delivered within {PROBE_GRACE:?} after the hold"
        ));
    }
    if send_errors > 0 {
        violations.push(format!("{send_errors} probes could not be sent"));
    }
    let nf = n.max(1) as f64;
    let diff = |b: Option<u64>, a: Option<u64>| match (b, a) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b)),
        _ => None,
    };
    let nodes_total = after.nodes_total();
    let node_grown = diff(before.nodes_total(), nodes_total);
    let server_per = node_grown.map(|g| g as f64 / nf);
    let workers_grown: Option<u64> = ready.iter().map(|c| diff(c.rss_before, c.rss_after)).sum();
    let worker_sockets: u64 = ready.iter().map(|c| c.connected).sum();
    let client_per = workers_grown.map(|g| g as f64 / worker_sockets.max(1) as f64);
    let workers_total: Option<u64> = workers_rss.iter().copied().sum();
    let node_mean = nodes_total.map(|t| t as f64 / k.max(1) as f64);
    let connect_rate = nf / connect_secs.max(1e-9);
    let signup_rate = nf / signup_secs.max(1e-9);

    let mut report = Report::new("idle");
    report.set(
        "params",
        json!({"connections": n, "nodes": k, "concurrency": args.concurrency,
               "hold": args.hold, "per_worker": args.per_worker,
               "probe_users": p, "probe_rate": args.probe_rate,
               "signup_concurrency": args.signup_concurrency,
               "source_addrs": common.source_addrs, "target": "natter-cluster",
               "node_pool_size": crate::target::node_pool_size(common)}),
    );
    report.set("target", json!("natter-cluster"));
    report.set("nodes", json!(k));
    report.set("workers", json!(ready.len()));
    report.set(
        "worker_sockets",
        json!(ready.iter().map(|c| c.connected).collect::<Vec<_>>()),
    );
    report.set("worker_open", json!(worker_open));
    report.set("connections", json!(n));
    report.set("open_at_end", json!(held));
    report.set("signup_seconds", json!(signup_secs));
    report.set("signups_per_sec", json!(signup_rate));
    report.set("connect_seconds", json!(connect_secs));
    report.set(
        "worker_connect_seconds_max",
        json!(ready.iter().map(|c| c.seconds).fold(0.0, f64::max)),
    );
    report.set("connects_per_sec", json!(connect_rate));
    report.set(
        "memory",
        json!({
            "node_rss_before": before.nodes, "node_rss_after": after.nodes,
            "nodes_rss_total": nodes_total, "node_rss_mean": node_mean,
            "nats_rss_before": before.nats, "nats_rss_after": after.nats,
            "postgres_pss_before": before.pg, "postgres_pss_after": after.pg,
            "parent_rss_before": before.parent, "parent_rss_after": after.parent,
            "workers_rss_total": workers_total,
        }),
    );
    report.set("server_bytes_per_connection", json!(server_per));
    report.set("client_bytes_per_connection", json!(client_per));
    report.set(
        "probes",
        json!({
            "pairs": pairs.len(), "sent": sent, "delivered": delivered, "lost": lost,
            "send_errors": send_errors, "cross_node": pairs.iter().all(|&(a, b)| node_of(a, k) != node_of(b, k)),
            "latency": latency_json(&latency),
        }),
    );
    report.set("hold_cpu_cores", hold_cpu.clone());
    report.set("violations", json!(violations));

    let mib = |b: Option<u64>| {
        b.map_or("n/a".to_owned(), |b| {
            format!("{:.1} MiB", b as f64 / 1_048_576.0)
        })
    };
    let mibf =
        |b: Option<f64>| b.map_or("n/a".to_owned(), |b| format!("{:.1} MiB", b / 1_048_576.0));
    let kib = |b: Option<f64>| b.map_or("n/a".to_owned(), |b| format!("{:.2} KiB", b / 1024.0));
    report.line(
        "target",
        &format!("{k} nodes (PostgreSQL + NATS + S3), clients direct to the nodes"),
    );
    report.line(
        "connections held",
        &format!(
            "{held} of {n} for {:.0} s ({} worker processes + {p} probe users here)",
            args.hold,
            ready.len()
        ),
    );
    report.line(
        "sign-up",
        &format!(
            "{}/s ({signup_secs:.1} s, {} at once)",
            thousands(signup_rate),
            args.signup_concurrency
        ),
    );
    report.line(
        "connect + upgrade + auth",
        &format!("{}/s ({connect_secs:.2} s)", thousands(connect_rate)),
    );
    report.line(
        "node RSS, after connecting",
        &format!("{} total, {} mean", mib(nodes_total), mibf(node_mean)),
    );
    report.line("node RSS per connection", &kib(server_per));
    report.line(
        "NATS server RSS",
        &format!(
            "{} (before connecting {})",
            mib(after.nats),
            mib(before.nats)
        ),
    );
    report.line(
        "PostgreSQL PSS, all processes",
        &format!("{} (before connecting {})", mib(after.pg), mib(before.pg)),
    );
    report.line("bench client RSS per connection", &kib(client_per));
    report.line("bench workers RSS total", &mib(workers_total));
    report.line(
        "cross-node probes",
        &format!(
            "{delivered} of {sent} delivered ({} pairs, {:.0}/s): {}",
            pairs.len(),
            args.probe_rate,
            latency_line(&latency)
        ),
    );
    let core = |v: &serde_json::Value| v.as_f64().map_or("n/a".to_owned(), |c| format!("{c:.2}"));
    report.line(
        "CPU during the hold (cores)",
        &format!(
            "nodes {}, NATS {}, PostgreSQL {}, bench {}",
            core(&hold_cpu["nodes"]),
            core(&hold_cpu["nats"]),
            core(&hold_cpu["postgres"]),
            core(&hold_cpu["bench"])
        ),
    );
    for v in &violations {
        report.line("VIOLATION", v);
    }
    Ok(report)
}

/// Sends probes at `--probe-rate` for `--hold` seconds, each from one user
/// of a random pair to the other on that user's held socket. Returns
/// (sent, failed sends).
async fn probe(
    args: &IdleArgs,
    pairs: &[(usize, usize)],
    chats: &[ChatId],
    users: &[ProbeUser],
    probes: &Arc<Probes>,
    rng: &mut Rng,
) -> (u64, u64) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.probe_rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let end = tokio::time::Instant::now() + Duration::from_secs_f64(args.hold);
    let mut sends = Vec::new();
    let mut id = 0u64;
    loop {
        tick.tick().await;
        if tokio::time::Instant::now() >= end {
            break;
        }
        let ix = rng.below(pairs.len() as u64) as usize;
        let (a, b) = pairs[ix];
        let (from, to) = if rng.below(2) == 0 { (a, b) } else { (b, a) };
        let frame = format!(
            r#"{{"type":"send_message","chat_id":"{}","content":"{}"}}"#,
            chats[ix],
            probe_text(id)
        );
        let writer = Arc::clone(&users[from].writer);
        let probes = Arc::clone(probes);
        let probe = id;
        sends.push(tokio::spawn(async move {
            let mut w = writer.lock().await;
            probes
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(
                    probe,
                    Pending {
                        to,
                        sent_us: now_us(),
                    },
                );
            let sent = tokio::time::timeout(STEP_TIMEOUT, w.send(WsMessage::text(frame))).await;
            if matches!(sent, Ok(Ok(()))) {
                true
            } else {
                probes
                    .pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&probe);
                false
            }
        }));
        id += 1;
    }
    let mut failed = 0;
    for s in sends {
        if !matches!(s.await, Ok(true)) {
            failed += 1;
        }
    }
    (id, failed)
}
