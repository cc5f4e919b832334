//! The idle scenario: N authenticated WebSockets held open. Measures the
//! connect rate (TCP connect + upgrade + `auth` + `connected`) and the
//! server's resident memory per connection (VmRSS after minus before,
//! divided by N; the accounts exist before the "before" reading).
//!
//! One node: every socket in this process, through the node's port. On a
//! cluster (`--nodes N`, `--cluster`) `idle_cluster` runs instead: clients
//! straight to the nodes, spread over worker processes, with a cross-node
//! prober during the hold.

use std::time::Duration;

use clap::Args;
use natter_client::Client;
use serde_json::json;

use crate::accounts::{SmsInbox, sign_up};
use crate::load::{connect_all, now_us, parse, progress};
use crate::report::{Report, thousands};
use crate::target::{Kind, Target, rss_of};
use crate::{BenchError, BenchResult, Common, STEP_TIMEOUT};

/// Options of `idle`.
#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    /// Connections to open, one account each.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub connections: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
    /// Seconds to hold them all open before closing.
    #[arg(long, default_value_t = 5.0)]
    pub hold: f64,
    /// Against the bare relay instead of Natter (no accounts).
    #[arg(long)]
    pub baseline: bool,
    /// On a cluster: client sockets per worker process at most (a process
    /// holds at most its open-file limit, `ulimit -Hn`, of descriptors).
    #[arg(long, value_name = "N", default_value_t = 19_000)]
    pub per_worker: usize,
    /// On a cluster: how many of the connections this process holds itself
    /// as probe users (spread over the nodes; 0: no probes).
    #[arg(long, value_name = "N", default_value_t = 200)]
    pub probe_users: usize,
    /// On a cluster: cross-node probe messages per second during the hold.
    #[arg(long, value_name = "PER_SEC", default_value_t = 20.0)]
    pub probe_rate: f64,
    /// Sign-ups in flight at once (on a cluster spread over every node).
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub signup_concurrency: usize,
}

/// Settle time before reading memory, so allocations in flight land.
const SETTLE: Duration = Duration::from_millis(500);

/// Runs `idle`.
///
/// # Errors
/// Setup failures, or a connection that fails to open.
pub(crate) async fn run(common: &Common, args: &IdleArgs) -> BenchResult<Report> {
    if common.is_cluster() && common.url.is_none() {
        return crate::idle_cluster::run(common, args).await;
    }
    let quiet = common.json;
    let kind = if args.baseline {
        Kind::Baseline
    } else {
        Kind::Natter
    };
    let inbox = SmsInbox::start_on(common.sms_listen).await?;
    let target = Target::start(common, kind, inbox.url()).await?;
    let tokens: Vec<String> = match kind {
        Kind::Natter => {
            let client = Client::new(&target.http, STEP_TIMEOUT)?;
            sign_up(&client, &inbox, "idle", args.connections, quiet)
                .await?
                .into_iter()
                .map(|u| u.token)
                .collect()
        }
        Kind::Baseline => (0..args.connections)
            .map(|_| uuid::Uuid::now_v7().to_string())
            .collect(),
    };
    tokio::time::sleep(SETTLE).await;
    let server_before = target.rss_bytes();
    let client_before = rss_of("/proc/self/status");

    let bar = progress(args.connections as u64, "connecting", quiet);
    let start = now_us();
    let sockets = connect_all(
        target.addr,
        &tokens,
        args.concurrency,
        common.source_addrs,
        natter_client::SMALL_BUFFER_BYTES,
        &bar,
    )
    .await;
    let connect_secs = (now_us() - start) as f64 / 1e6;
    bar.finish_and_clear();
    let sockets = match sockets {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{} log:\n{}", kind.name(), target.log_tail());
            return Err(e);
        }
    };
    // Each socket gets a reader so pings are answered and closes noticed.
    let mut readers = Vec::with_capacity(sockets.len());
    for mut socket in sockets {
        readers.push(tokio::spawn(async move {
            loop {
                match socket.next_text().await {
                    Ok(text) => {
                        // Presence and other signals are fine; nothing else is expected.
                        let _ = parse(&text);
                    }
                    Err(_) => return false,
                }
            }
        }));
    }
    tokio::time::sleep(SETTLE).await;
    let server_after = target.rss_bytes();
    let client_after = rss_of("/proc/self/status");
    tokio::time::sleep(Duration::from_secs_f64(args.hold.max(0.0))).await;
    let open = readers.iter().filter(|r| !r.is_finished()).count();
    for r in &readers {
        r.abort();
    }
    target.stop().await;
    if open != args.connections {
        return Err(BenchError::Other(format!(
            "only {open} of {} connections stayed open",
            args.connections
        )));
    }

    let n = args.connections.max(1) as f64;
    let per_conn = |before: Option<u64>, after: Option<u64>| match (before, after) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 / n),
        _ => None,
    };
    let server_per = per_conn(server_before, server_after);
    let client_per = per_conn(client_before, client_after);
    let rate = n / connect_secs.max(1e-9);

    let mut report = Report::new("idle");
    report.set(
        "params",
        json!({"connections": args.connections, "concurrency": args.concurrency,
               "hold": args.hold, "target": kind.name()}),
    );
    report.set("target", json!(kind.name()));
    report.set("connections", json!(args.connections));
    report.set("open_at_end", json!(open));
    report.set("connect_seconds", json!(connect_secs));
    report.set("connects_per_sec", json!(rate));
    report.set("server_rss_before", json!(server_before));
    report.set("server_rss_after", json!(server_after));
    report.set("server_bytes_per_connection", json!(server_per));
    report.set("client_bytes_per_connection", json!(client_per));
    report.line("target", kind.name());
    report.line(
        "connections held",
        &format!("{open} of {} for {:.0} s", args.connections, args.hold),
    );
    report.line(
        "connect + upgrade + auth",
        &format!("{}/s ({connect_secs:.2} s)", thousands(rate)),
    );
    let kib = |b: Option<f64>| b.map_or("n/a".to_owned(), |b| format!("{:.2} KiB", b / 1024.0));
    report.line("server RSS per connection", &kib(server_per));
    report.line("client RSS per connection", &kib(client_per));
    if let (Some(s), Some(c)) = (server_per, client_per) {
        report.set("all_in_bytes_per_connection", json!(s + c));
        report.line("all-in per client+server pair", &kib(Some(s + c)));
    }
    Ok(report)
}
