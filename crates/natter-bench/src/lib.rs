//! `natter bench`: the load tool. Every scenario starts its own target (the
//! `natter serve` of the current executable, or the bare baseline relay) as
//! a child process on loopback, with a temporary data directory and the
//! benchmark configuration, unless `--url` points at a running server; it
//! creates accounts through the real API, drives load with the client SDK,
//! and prints a table (or `--json`). Every run is bounded in count and time,
//! and children are killed on exit, error or Ctrl-C.
//!
//! # Layout
//! - [`BenchArgs`]: the command line.
//! - `target`: starting, pinning, watching and stopping the child process.
//! - `accounts`: the SMS webhook receiver and account sign-up.
//! - `relay`, `group`, `catchup`, `search`, `idle`: the scenarios;
//!   `idle_cluster` is `idle` on a cluster, its client sockets held by
//!   `idle_worker` processes (`natter bench idle-worker`, hidden).
//! - `keys`: the KeyPackage directory (publish, claim, exhaustion).
//! - `e2ee`: the client's MLS engine in-process (no server started).
//! - `soak`: randomized sends, reconnects, socket drops and `kill -9`s of
//!   the server; [`checker`] judges the history it records.
//! - [`baseline`]: the bare relay (no auth, no storage), run as
//!   `natter baseline-relay` (hidden) by the `baseline` scenario.
//! - `report`: results as a table or JSON.

mod accounts;
pub mod baseline;
mod catchup;
pub mod checker;
mod e2ee;
mod group;
mod idle;
mod idle_cluster;
mod idle_worker;
mod keys;
mod load;
mod relay;
mod report;
mod search;
mod soak;
mod target;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

pub use report::Report;

/// The load tool's options.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Options shared by every scenario.
    #[command(flatten)]
    pub common: Common,
    /// What to measure.
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// Options shared by every scenario.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Target an already running server (`http://127.0.0.1:8080`) instead
    /// of starting one. It must have the benchmark configuration (see
    /// docs/benchmarks.md) and send SMS codes to `--sms-listen`.
    #[arg(long, global = true, value_name = "URL")]
    pub url: Option<String>,
    /// Where the SMS webhook receiver listens (with `--url`).
    #[arg(
        long,
        global = true,
        value_name = "ADDR:PORT",
        default_value = "127.0.0.1:0"
    )]
    pub sms_listen: std::net::SocketAddr,
    /// Pin the started server (or relay) to these CPUs (`taskset -c` list).
    #[arg(long, global = true, value_name = "CPUS")]
    pub server_cpus: Option<String>,
    /// Nodes of the started server. More than one (or `--cluster`) makes
    /// a cluster: its own PostgreSQL, NATS and S3, N stateless nodes on
    /// them and a round-robin balancer in front (see docs/scale.md).
    #[arg(long, global = true, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub nodes: u16,
    /// Run the started server as a cluster even with one node.
    #[arg(long, global = true)]
    pub cluster: bool,
    /// PostgreSQL databases a started cluster's chats are partitioned
    /// over (`store.chat_urls`): the accounts database and N - 1 more.
    #[arg(long, global = true, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=16))]
    pub chat_databases: u16,
    /// Pin this load generator to these CPUs (`taskset -c` list).
    #[arg(long, global = true, value_name = "CPUS")]
    pub client_cpus: Option<String>,
    /// Extra configuration for the started server, as `NATTER_*=value`
    /// (repeatable), e.g. `--server-env NATTER_LIMITS__SYNC_PAGE_SIZE=1000`.
    #[arg(long, global = true, value_name = "NATTER_KEY=VALUE")]
    pub server_env: Vec<String>,
    /// Print one JSON object instead of the table.
    #[arg(long, global = true)]
    pub json: bool,
    /// Worker threads of the load generator (default: one per CPU it may use).
    #[arg(long, global = true, value_name = "N")]
    pub client_threads: Option<usize>,
    /// Local addresses 127.0.0.2 .. 127.0.0.(1+N) that client sockets
    /// spread over (each has its own ephemeral ports).
    #[arg(long, global = true, value_name = "N", default_value_t = 32)]
    pub source_addrs: u8,
}

impl Common {
    /// Whether the started server is a cluster on shared engines.
    #[must_use]
    pub fn is_cluster(&self) -> bool {
        self.cluster || self.nodes > 1
    }
}

/// The scenarios.
#[derive(Debug, Clone, Subcommand)]
pub enum Scenario {
    /// Hold N authenticated WebSockets: server memory per connection and
    /// connect rate.
    Idle(idle::IdleArgs),
    /// P sender→receiver pairs in direct chats, W messages in flight per
    /// pair: the maximum (closed loop), then latency at a fixed rate (open
    /// loop). Runs the baseline relay first unless `--no-baseline`.
    Relay(relay::RelayArgs),
    /// Fan-out: K senders in a group of G members at a fixed rate.
    Group(group::GroupArgs),
    /// A device offline while K messages arrive, then reconnect and sync.
    Catchup(catchup::CatchupArgs),
    /// Query latency over a store of M messages.
    Search(search::SearchArgs),
    /// The KeyPackage directory: publish rate, claim rate and latency, each
    /// one-time package handed out exactly once, then the last resort.
    Keys(keys::KeysArgs),
    /// The client's MLS engine in-process, no server: message cost, add and
    /// remove commits at 100 and 1,000 devices, Welcome sizes.
    E2ee(e2ee::E2eeArgs),
    /// Randomized sends (REST and WebSocket), retries, socket drops and
    /// `kill -9`s of the server, then the delivery checker: nothing
    /// acknowledged lost, nothing twice, per-chat order, idempotent retries.
    Soak(soak::SoakArgs),
    /// The relay scenario against the bare built-in relay only (no auth, no
    /// storage): the physical limit of this machine and client.
    Baseline(relay::RelayArgs),
    /// A share of `idle`'s client sockets in a process of its own, started
    /// by `idle` on a cluster (sockets on stdin, reports on stdout).
    #[command(hide = true)]
    IdleWorker(idle_worker::WorkerArgs),
}

/// A failure that ends the run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Talking to the target failed.
    #[error("{0}")]
    Client(#[from] natter_client::ClientError),
    /// Signing up (the SMS receiver, a code that did not arrive).
    #[error("{0}")]
    Accounts(#[from] natter_testkit::TestkitError),
    /// A local operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// Anything else, as a sentence.
    #[error("{0}")]
    Other(String),
}

impl BenchError {
    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}

/// The result of a bench step.
pub type BenchResult<T> = Result<T, BenchError>;

/// How long any single wait (a request, a connect, a frame) may take before
/// the run fails rather than hangs.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `natter bench`.
#[must_use]
pub fn run(args: BenchArgs) -> ExitCode {
    if let Some(cpus) = &args.common.client_cpus {
        // Before the runtime starts its threads: they inherit the affinity.
        if let Err(e) = target::pin_self(cpus) {
            eprintln!("natter bench: {e}");
            return ExitCode::FAILURE;
        }
    }
    raise_fd_limit();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = args.common.client_threads {
        builder.worker_threads(n.max(1));
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("natter bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Scenario::IdleWorker(worker) = &args.scenario {
        let code = runtime.block_on(idle_worker::serve(&args.common, worker));
        drop(runtime);
        return code;
    }
    let json = args.common.json;
    let outcome = runtime.block_on(async move {
        tokio::select! {
            r = scenario(args) => r,
            _ = tokio::signal::ctrl_c() => Err(BenchError::Other("interrupted".to_owned())),
        }
    });
    // Dropping the runtime drops the scenario's children, which kills them.
    drop(runtime);
    match outcome {
        Ok(report) => {
            report.print(json);
            if report.found_violations() {
                // The report names them; a script sees the failure.
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("natter bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn scenario(args: BenchArgs) -> BenchResult<Report> {
    let common = args.common;
    match args.scenario {
        Scenario::Idle(a) => idle::run(&common, &a).await,
        Scenario::Relay(a) => relay::run(&common, &a, false).await,
        Scenario::Baseline(a) => relay::run(&common, &a, true).await,
        Scenario::Group(a) => group::run(&common, &a).await,
        Scenario::Catchup(a) => catchup::run(&common, &a).await,
        Scenario::Search(a) => search::run(&common, &a).await,
        Scenario::Keys(a) => keys::run(&common, &a).await,
        Scenario::E2ee(a) => e2ee::run(&common, &a).await,
        Scenario::Soak(a) => soak::run(&common, &a).await,
        Scenario::IdleWorker(_) => Err(BenchError::Other(
            "idle-worker is started by idle on a cluster".to_owned(),
        )),
    }
}

/// Raises the soft open-file limit to the hard one: every client socket is
/// a file descriptor.
pub fn raise_fd_limit() {
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("natter: cannot raise the open-file limit: {e}");
    }
}
