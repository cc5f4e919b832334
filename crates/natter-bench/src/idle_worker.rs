//! A share of the idle scenario's client sockets in a process of its own:
//! one process may hold only as many sockets as its open-file limit
//! (20,000 here), so `idle` on a cluster spreads its connections over
//! several `natter bench idle-worker` children (hidden), each holding at
//! most `--per-worker`.
//!
//! The protocol, one line at a time:
//! - stdin, from the parent: `ADDR TOKEN` per socket (the node to connect
//!   to and the device's token), then an empty line; later `count`.
//! - stdout, to the parent, JSON: `{"event":"connected",...}` once every
//!   socket is open and authenticated (or `{"event":"failed","error":…}`),
//!   then `{"event":"open","open":N}` for each `count`.
//!
//! The worker exits when its stdin closes, so a parent that dies (even by
//! `kill -9`, which runs no destructor) leaves no worker behind; the
//! parent also kills its workers when it drops them.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use clap::Args;
use indicatif::ProgressBar;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::load::{connect_each, now_us};
use crate::target::rss_of;
use crate::{BenchError, BenchResult, Common};

/// Options of `idle-worker` (given by the parent, not by people).
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// Connections this worker opens at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// The index of this worker's first socket in the whole run, so the
    /// workers together spread over the source addresses evenly.
    #[arg(long, default_value_t = 0)]
    pub first: usize,
}

/// Descriptors a worker keeps beside its sockets (stdio, the runtime's
/// epoll and wakers, the allocator): the margin between `--per-worker`
/// and the open-file limit.
pub(crate) const SPARE_FDS: u64 = 64;

/// Settle time before reading memory, so allocations in flight land.
const SETTLE: Duration = Duration::from_millis(500);

/// How long a worker may take to open all its sockets: each connect has
/// its own [`crate::STEP_TIMEOUT`]; this bounds a worker that stalls
/// anyway (19,000 sockets at a pessimistic 100/s).
pub(crate) const CONNECT_ALL_TIMEOUT: Duration = Duration::from_secs(600);

/// Writes one JSON line to stdout for the parent.
fn emit(line: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Runs `idle-worker`; its report is its stdout lines.
pub(crate) async fn serve(common: &Common, args: &WorkerArgs) -> ExitCode {
    match hold(common, args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            emit(&json!({"event": "failed", "error": e.to_string()}));
            ExitCode::FAILURE
        }
    }
}

/// Lines of stdin in flight between the reading thread and the worker: a
/// few pages of the socket list.
const STDIN_LINES: usize = 1024;

/// Stdin's lines, read on a thread of their own (the async runtime here is
/// built without its stdin support); the channel closes at end of file or
/// on an error.
fn stdin_lines() -> tokio::sync::mpsc::Receiver<String> {
    let (tx, rx) = tokio::sync::mpsc::channel(STDIN_LINES);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { return };
            if tx.blocking_send(line).is_err() {
                return;
            }
        }
    });
    rx
}

async fn hold(common: &Common, args: &WorkerArgs) -> BenchResult<()> {
    let mut lines = stdin_lines();
    let mut targets: Vec<(SocketAddr, String)> = Vec::new();
    loop {
        let line = lines
            .recv()
            .await
            .ok_or_else(|| BenchError::Other("stdin closed before the socket list ended".into()))?;
        if line.is_empty() {
            break;
        }
        let (addr, token) = line
            .split_once(' ')
            .ok_or_else(|| BenchError::Other(format!("not `ADDR TOKEN`: {line}")))?;
        let addr = addr
            .parse()
            .map_err(|e| BenchError::Other(format!("not an address ({e}): {addr}")))?;
        targets.push((addr, token.to_owned()));
    }
    let limit = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map_err(BenchError::io("reading the open-file limit"))?
        .0;
    if targets.len() as u64 + SPARE_FDS > limit {
        return Err(BenchError::Other(format!(
            "{} sockets do not fit this process's open-file limit of {limit}",
            targets.len()
        )));
    }
    let rss_before = rss_of("/proc/self/status");
    let refs: Vec<(SocketAddr, &str)> = targets.iter().map(|(a, t)| (*a, t.as_str())).collect();
    let start = now_us();
    // Each socket gets a reader as soon as it is open, so pings are
    // answered and closes noticed.
    let readers = connect_each(
        &refs,
        args.first,
        args.concurrency,
        common.source_addrs,
        natter_client::SMALL_BUFFER_BYTES,
        &ProgressBar::hidden(),
        |_, mut socket| {
            tokio::spawn(async move {
                // Presence and other signals are fine; nothing else is expected.
                while socket.next_text().await.is_ok() {}
            })
        },
    )
    .await?;
    let seconds = (now_us() - start) as f64 / 1e6;
    drop(refs);
    drop(targets);
    tokio::time::sleep(SETTLE).await;
    emit(&json!({
        "event": "connected",
        "connected": readers.len(),
        "seconds": seconds,
        "rss_before": rss_before,
        "rss_after": rss_of("/proc/self/status"),
    }));
    while let Some(line) = lines.recv().await {
        match line.as_str() {
            "count" => {
                let open = readers.iter().filter(|r| !r.is_finished()).count();
                emit(&json!({"event": "open", "open": open}));
            }
            other => return Err(BenchError::Other(format!("unknown command: {other}"))),
        }
    }
    for r in &readers {
        r.abort();
    }
    Ok(())
}

/// What a worker said when all its sockets were open.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Connected {
    /// Sockets it holds.
    pub(crate) connected: u64,
    /// Seconds from its first connect to its last `connected`.
    pub(crate) seconds: f64,
    /// Its resident memory before connecting and after, in bytes.
    pub(crate) rss_before: Option<u64>,
    pub(crate) rss_after: Option<u64>,
}

/// A worker process, from the parent's side; killed when dropped.
#[derive(Debug)]
pub(crate) struct Worker {
    /// The child (`kill_on_drop`); it is in the parent's process group, so
    /// a signal to the group (Ctrl-C, a test's timeout) reaches it too.
    child: Child,
    /// Its commands; closing it ends the worker.
    stdin: ChildStdin,
    /// Its JSON lines.
    stdout: Lines<BufReader<ChildStdout>>,
    /// Its sockets.
    pub(crate) sockets: usize,
}

impl Worker {
    /// Starts `exe bench idle-worker` and hands it its sockets.
    ///
    /// # Errors
    /// It cannot start or take its list.
    pub(crate) async fn start(
        exe: &Path,
        common: &Common,
        args: &WorkerArgs,
        sockets: &[(SocketAddr, &str)],
        log: &Path,
    ) -> BenchResult<Self> {
        let stderr = std::fs::File::create(log).map_err(BenchError::io("creating a worker log"))?;
        let mut cmd = Command::new(exe);
        cmd.arg("bench")
            .arg("--source-addrs")
            .arg(common.source_addrs.to_string())
            .arg("idle-worker")
            .arg("--concurrency")
            .arg(args.concurrency.to_string())
            .arg("--first")
            .arg(args.first.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true);
        if let Some(n) = common.client_threads {
            cmd.arg("--client-threads").arg(n.to_string());
        }
        let mut child = cmd
            .spawn()
            .map_err(BenchError::io(format!("starting {}", exe.display())))?;
        let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(BenchError::Other("a worker without pipes".to_owned()));
        };
        let mut list = String::with_capacity(sockets.len() * 128);
        for (addr, token) in sockets {
            list.push_str(&format!("{addr} {token}\n"));
        }
        list.push('\n');
        stdin
            .write_all(list.as_bytes())
            .await
            .map_err(BenchError::io("handing a worker its sockets"))?;
        stdin
            .flush()
            .await
            .map_err(BenchError::io("handing a worker its sockets"))?;
        Ok(Self {
            child,
            stdin,
            stdout: BufReader::new(stdout).lines(),
            sockets: sockets.len(),
        })
    }

    /// The worker's process id.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Its next JSON line: `event` must be `expected`.
    async fn next(&mut self, expected: &str, wait: Duration) -> BenchResult<Value> {
        let line = tokio::time::timeout(wait, self.stdout.next_line())
            .await
            .map_err(|_| {
                BenchError::Other(format!("a worker did not report `{expected}` in {wait:?}"))
            })?
            .map_err(BenchError::io("reading a worker's report"))?
            .ok_or_else(|| BenchError::Other("a worker exited without a report".to_owned()))?;
        let value: Value = serde_json::from_str(&line).map_err(|e| {
            BenchError::Other(format!("a worker's report is not JSON ({e}): {line}"))
        })?;
        match value["event"].as_str() {
            Some(e) if e == expected => Ok(value),
            Some("failed") => Err(BenchError::Other(format!(
                "a worker failed: {}",
                value["error"].as_str().unwrap_or("?")
            ))),
            _ => Err(BenchError::Other(format!(
                "a worker said {line}, not `{expected}`"
            ))),
        }
    }

    /// Waits until every socket of the worker is open and authenticated.
    ///
    /// # Errors
    /// A connection failed, or the worker stalled past
    /// [`CONNECT_ALL_TIMEOUT`].
    pub(crate) async fn connected(&mut self) -> BenchResult<Connected> {
        let v = self.next("connected", CONNECT_ALL_TIMEOUT).await?;
        Ok(Connected {
            connected: v["connected"].as_u64().unwrap_or(0),
            seconds: v["seconds"].as_f64().unwrap_or(0.0),
            rss_before: v["rss_before"].as_u64(),
            rss_after: v["rss_after"].as_u64(),
        })
    }

    /// How many of its sockets are still open.
    ///
    /// # Errors
    /// The worker does not answer within [`crate::STEP_TIMEOUT`].
    pub(crate) async fn open(&mut self) -> BenchResult<u64> {
        self.stdin
            .write_all(b"count\n")
            .await
            .map_err(BenchError::io("asking a worker"))?;
        self.stdin
            .flush()
            .await
            .map_err(BenchError::io("asking a worker"))?;
        let v = self.next("open", crate::STEP_TIMEOUT).await?;
        Ok(v["open"].as_u64().unwrap_or(0))
    }

    /// Kills it and waits until it is gone.
    pub(crate) async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
