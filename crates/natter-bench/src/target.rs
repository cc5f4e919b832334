//! The process under load: `natter serve` or the bare baseline relay,
//! started from the current executable as children on ephemeral loopback
//! ports with a temporary directory, optionally pinned with `taskset`.
//!
//! One node on the embedded store is the default. With `--nodes N` (N > 1)
//! or `--cluster`, the target is a cluster: its own PostgreSQL
//! (`scripts/pg-cluster`), NATS and S3 (`moto_server`), N stateless nodes
//! on them, and a round-robin [`Balancer`] in front whose address the
//! clients use. A [`Node`] is one child, the same code for one node and
//! for N; it can be killed and started again on its port, and nodes can
//! join a running cluster. Everything is stopped when the [`Target`] is
//! dropped (end of run, error or Ctrl-C), so no run leaves a process
//! behind.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use natter_testkit::balancer::Balancer;
use natter_testkit::engines::{NatsServer, S3Server};
use natter_testkit::pg::PgCluster;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::accounts::SmsInbox;
use crate::{BenchError, BenchResult, Common};

/// How long a started child may take to print its listening address.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The cluster's database and bucket (the engines are the run's own).
const CLUSTER_DB: &str = "natter_bench";
const CLUSTER_BUCKET: &str = "natter-bench";
/// PostgreSQL connections the cluster's nodes may hold together: the
/// test cluster's `max_connections` (400, `scripts/pg-cluster`) less room
/// for the bench's own and PostgreSQL's reserved ones.
const CLUSTER_PG_CONNECTIONS: usize = 360;
/// A node's pool (`store.pool_size`) is at most the server's default.
const NODE_POOL_MAX: usize = 16;

/// Which program to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `natter serve` with the benchmark configuration.
    Natter,
    /// `natter baseline-relay`: no authentication, no storage.
    Baseline,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Natter => "natter",
            Self::Baseline => "baseline",
        }
    }
}

/// The benchmark configuration: everything that would throttle one client
/// address or one user sending thousands of messages a second is opened
/// up, in the child's environment only (the defaults stay as they are).
pub(crate) fn bench_env(sms_url: &str) -> Vec<(&'static str, String)> {
    const MANY: &str = "1000000000";
    let mut env = vec![
        ("NATTER_SMS_WEBHOOK_URL", sms_url.to_owned()),
        ("NATTER_LOG", "warn,natter_server::server=info".to_owned()),
        ("NATTER_LOG_FORMAT", "text".to_owned()),
        ("NATTER_LIMITS__MAX_CONNECTIONS_PER_IP", MANY.to_owned()),
    ];
    for key in [
        "NATTER_RATE_LIMITS__VERIFICATION_PER_PHONE__BURST",
        "NATTER_RATE_LIMITS__VERIFICATION_PER_IP__BURST",
        "NATTER_RATE_LIMITS__VERIFICATION_PER_NETWORK__BURST",
        "NATTER_RATE_LIMITS__VERIFICATION_PER_PREFIX__BURST",
        "NATTER_RATE_LIMITS__VERIFICATION_PER_COUNTRY__BURST",
        "NATTER_RATE_LIMITS__VERIFICATION_GLOBAL__BURST",
        "NATTER_RATE_LIMITS__CODE_ATTEMPTS_PER_IP__BURST",
        "NATTER_RATE_LIMITS__MESSAGES_PER_USER__BURST",
        "NATTER_RATE_LIMITS__WS_SEND_PER_CONNECTION__BURST",
        "NATTER_RATE_LIMITS__WS_ACK_PER_CONNECTION__BURST",
        "NATTER_RATE_LIMITS__WS_ACK_WRITES_PER_USER__BURST",
        // One user creates the group scenario's group with all its members.
        "NATTER_RATE_LIMITS__PARTICIPANTS_ADDED_PER_MINUTE__BURST",
        "NATTER_RATE_LIMITS__PARTICIPANTS_ADDED_PER_DAY__BURST",
        // The keys scenario's claimers claim as fast as the server answers.
        "NATTER_E2EE__CLAIMS_PER_MINUTE",
    ] {
        env.push((key, MANY.to_owned()));
    }
    env
}

/// `--server-env`, checked.
fn server_env(common: &Common) -> BenchResult<Vec<(String, String)>> {
    common
        .server_env
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if k.starts_with("NATTER_") => Ok((k.to_owned(), v.to_owned())),
            _ => Err(BenchError::Other(format!(
                "--server-env takes NATTER_KEY=VALUE, not {pair}"
            ))),
        })
        .collect()
}

/// One child: `natter serve` on its own data directory, or the relay. It
/// keeps its port across restarts, so the balancer and clients find it
/// again.
#[derive(Debug)]
pub(crate) struct Node {
    /// What it runs.
    kind: Kind,
    /// This executable.
    exe: PathBuf,
    /// Its data directory and logs (inside the target's directory).
    dir: PathBuf,
    /// The configuration (`NATTER_*`), without the listening address.
    env: Vec<(String, String)>,
    /// `--server-cpus`.
    cpus: Option<String>,
    /// The running child (killed on drop).
    child: Option<Child>,
    /// Where it listens, once started.
    addr: Option<SocketAddr>,
    /// Starts so far (names the logs).
    starts: u32,
}

impl Node {
    fn log(&self) -> PathBuf {
        self.dir
            .join(format!("{}-{}.log", self.kind.name(), self.starts))
    }

    /// Where it listens (its first start chose the port).
    pub(crate) fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// Starts the child (on the same port after the first start) and waits
    /// until it listens.
    ///
    /// # Errors
    /// It cannot start, or does not listen within [`START_TIMEOUT`].
    pub(crate) async fn start(&mut self) -> BenchResult<SocketAddr> {
        self.starts += 1;
        let log = self.log();
        let deadline = Instant::now() + START_TIMEOUT;
        let listen = self
            .addr
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
            .to_string();
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
            match self.kind {
                Kind::Natter => {
                    cmd.arg("serve")
                        .envs(self.env.iter().cloned())
                        .env("NATTER_LISTEN", &listen);
                }
                Kind::Baseline => {
                    cmd.arg("baseline-relay").arg("--listen").arg(&listen);
                }
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
                if let Some(addr) = listening_at(&text) {
                    self.child = Some(child);
                    self.addr = Some(addr);
                    return Ok(addr);
                }
                let exited = child.try_wait().ok().flatten().is_some();
                if Instant::now() > deadline || (exited && self.addr.is_none()) {
                    let _ = child.kill().await;
                    return Err(BenchError::Other(format!(
                        "the {} did not start; its log:\n{}",
                        self.kind.name(),
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
    pub(crate) async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // tokio's `kill` is SIGKILL.
            let _ = child.kill().await;
        }
    }

    /// The child's resident memory (`VmRSS`), in bytes.
    fn rss_bytes(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id()?;
        rss_of(&format!("/proc/{pid}/status"))
    }

    /// The end of its current log.
    fn log_tail(&self) -> String {
        std::fs::read_to_string(self.log())
            .map(|t| tail(&t))
            .unwrap_or_default()
    }
}

/// The address a log names: `listen=` for Natter, `listening on` for the relay.
fn listening_at(text: &str) -> Option<SocketAddr> {
    text.lines().find_map(|line| {
        line.split_once("listen=")
            .or_else(|| line.split_once("listening on "))
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
    })
}

/// The shared engines of a cluster, the run's own.
#[derive(Debug)]
pub(crate) struct Engines {
    /// The store: [`CLUSTER_DB`] for the accounts and the first chats,
    /// `CLUSTER_DB_<i>` for the other chat databases.
    pub(crate) pg: PgCluster,
    /// How many databases the chats are partitioned over.
    chat_databases: u16,
    /// The bus between nodes.
    pub(crate) nats: NatsServer,
    /// Media ([`CLUSTER_BUCKET`]).
    s3: S3Server,
}

impl Engines {
    async fn start(chat_databases: u16) -> BenchResult<Self> {
        let engine = |what: &str| {
            let what = what.to_owned();
            move |e: natter_testkit::engines::EngineError| {
                BenchError::Other(format!("the cluster's {what}: {e}"))
            }
        };
        let pg = PgCluster::start()?;
        let admin = pg.connect("postgres").await?;
        for name in chat_database_names(chat_databases) {
            admin
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .map_err(|e| BenchError::Other(format!("creating the cluster's database: {e}")))?;
        }
        drop(admin);
        let nats = NatsServer::start().await.map_err(engine("NATS"))?;
        let s3 = S3Server::start().await.map_err(engine("S3 server"))?;
        s3.create_bucket(CLUSTER_BUCKET)
            .await
            .map_err(engine("S3 server"))?;
        Ok(Self {
            pg,
            chat_databases,
            nats,
            s3,
        })
    }

    /// The nodes' configuration for these engines.
    fn env(&self) -> Vec<(String, String)> {
        [
            ("NATTER_STORE__URL", self.pg.url_of(CLUSTER_DB)),
            (
                "NATTER_STORE__CHAT_URLS",
                chat_database_names(self.chat_databases)
                    .iter()
                    .map(|name| self.pg.url_of(name))
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            ("NATTER_BUS", self.nats.url()),
            ("NATTER_NATS__PREFIX", "bench".to_owned()),
            ("NATTER_BLOBS", format!("s3://{CLUSTER_BUCKET}")),
            ("NATTER_S3__ENDPOINT", self.s3.url().to_owned()),
            ("NATTER_S3__ALLOW_HTTP", "true".to_owned()),
            ("NATTER_S3__ACCESS_KEY_ID", "bench".to_owned()),
            ("NATTER_S3__SECRET_ACCESS_KEY", "bench".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

/// A server to load: one node, a cluster behind a balancer, or `--url`.
#[derive(Debug)]
pub(crate) struct Target {
    /// `http://127.0.0.1:port` (the balancer's on a cluster).
    pub(crate) http: String,
    /// Where clients connect, for WebSockets.
    pub(crate) addr: SocketAddr,
    /// The children, stopped first; empty with `--url`.
    pub(crate) nodes: Vec<Node>,
    /// In front of a cluster's nodes.
    balancer: Option<Balancer>,
    /// A cluster's engines, stopped after the nodes.
    pub(crate) engines: Option<Engines>,
    /// What a node joining later is given (kind, configuration).
    template: Option<Node>,
    /// The temporary directory holding data and logs; removed on drop.
    _dir: Option<tempfile::TempDir>,
}

impl Target {
    /// Starts `kind` (or uses `--url` for Natter) and waits until it listens:
    /// one node, or for Natter with `--nodes N > 1` or `--cluster` a cluster.
    ///
    /// # Errors
    /// An engine or child cannot start, or does not listen within
    /// [`START_TIMEOUT`].
    pub(crate) async fn start(common: &Common, kind: Kind, sms_url: &str) -> BenchResult<Self> {
        if kind == Kind::Natter
            && let Some(url) = &common.url
        {
            if common.is_cluster() {
                return Err(BenchError::Other(
                    "--url targets a running server: --nodes and --cluster start one".to_owned(),
                ));
            }
            let http = url.trim_end_matches('/').to_owned();
            let hostport = http
                .strip_prefix("http://")
                .ok_or_else(|| BenchError::Other("--url must start with http://".to_owned()))?;
            let addr = tokio::net::lookup_host(hostport)
                .await
                .map_err(BenchError::io(format!("resolving {hostport}")))?
                .next()
                .ok_or_else(|| BenchError::Other(format!("{hostport} does not resolve")))?;
            return Ok(Self {
                http,
                addr,
                nodes: Vec::new(),
                balancer: None,
                engines: None,
                template: None,
                _dir: None,
            });
        }
        let dir = tempfile::Builder::new()
            .prefix("natter-bench-")
            .tempdir()
            .map_err(BenchError::io("creating a temporary directory"))?;
        let cluster = kind == Kind::Natter && common.is_cluster();
        let (engines, mut env) = if cluster {
            let engines = Engines::start(common.chat_databases).await?;
            let env = engines.env();
            (Some(engines), env)
        } else {
            (None, Vec::new())
        };
        if kind == Kind::Natter {
            env.extend(
                bench_env(sms_url)
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v)),
            );
            if cluster {
                // Every node's pool together must fit PostgreSQL's
                // max_connections; `--server-env` (later, so it wins) may
                // say otherwise.
                env.push((
                    "NATTER_STORE__POOL_SIZE".to_owned(),
                    node_pool_size(common).to_string(),
                ));
            }
            env.extend(server_env(common)?);
        }
        let template = Node {
            kind,
            exe: std::env::current_exe().map_err(BenchError::io("finding this executable"))?,
            dir: dir.path().to_path_buf(),
            env,
            cpus: common.server_cpus.clone(),
            child: None,
            addr: None,
            starts: 0,
        };
        let mut target = Self {
            http: String::new(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            nodes: Vec::new(),
            balancer: None,
            engines,
            template: Some(template),
            _dir: Some(dir),
        };
        let count = if cluster {
            usize::from(common.nodes)
        } else {
            1
        };
        for _ in 0..count {
            target.start_node().await?;
        }
        let first = target.nodes[0].addr.unwrap_or(target.addr);
        target.addr = if cluster {
            let balancer = Balancer::start(target.node_addrs())
                .await
                .map_err(BenchError::io("starting the balancer"))?;
            let addr = balancer.addr();
            target.balancer = Some(balancer);
            addr
        } else {
            first
        };
        target.http = format!("http://{}", target.addr);
        Ok(target)
    }

    /// Starts one more node (its own data directory and port) and waits
    /// until it listens; on a running cluster, the balancer sends it
    /// connections from then on. Returns its index in [`Target::nodes`].
    ///
    /// # Errors
    /// As [`Node::start`].
    pub(crate) async fn start_node(&mut self) -> BenchResult<usize> {
        let Some(template) = &self.template else {
            return Err(BenchError::Other("--url: no node to start".to_owned()));
        };
        let ix = self.nodes.len();
        let node_dir = template.dir.join(format!("node-{ix}"));
        std::fs::create_dir_all(&node_dir).map_err(BenchError::io("creating a node directory"))?;
        let mut env = template.env.clone();
        if template.kind == Kind::Natter {
            env.push((
                "NATTER_DATA_DIR".to_owned(),
                node_dir.join("data").display().to_string(),
            ));
        }
        let mut node = Node {
            kind: template.kind,
            exe: template.exe.clone(),
            dir: node_dir,
            env,
            cpus: template.cpus.clone(),
            child: None,
            addr: None,
            starts: 0,
        };
        node.start().await?;
        self.nodes.push(node);
        if let Some(balancer) = &self.balancer {
            balancer.set_nodes(self.node_addrs());
        }
        Ok(ix)
    }

    /// Where each node listens, in start order.
    pub(crate) fn node_addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().filter_map(Node::addr).collect()
    }

    /// The nodes' resident memory (`VmRSS`) together, in bytes; `None`
    /// with `--url`.
    pub(crate) fn rss_bytes(&self) -> Option<u64> {
        self.nodes.iter().map(Node::rss_bytes).sum()
    }

    /// Each node's resident memory (`VmRSS`), in bytes, in start order.
    pub(crate) fn node_rss(&self) -> Vec<Option<u64>> {
        self.nodes.iter().map(Node::rss_bytes).collect()
    }

    /// The cluster's NATS server's resident memory (`VmRSS`), in bytes.
    pub(crate) fn nats_rss(&self) -> Option<u64> {
        let pid = self.engines.as_ref()?.nats.pid()?;
        rss_of(&format!("/proc/{pid}/status"))
    }

    /// The cluster's PostgreSQL memory, in bytes: the proportional set size
    /// (`Pss`) of the postmaster and every backend, so the shared buffers
    /// every backend maps count once, not once per backend.
    pub(crate) fn pg_pss(&self) -> Option<u64> {
        let server = self.engines.as_ref()?.pg.server_pid()?;
        let backends: u64 = children_of(server).into_iter().filter_map(pss_of).sum();
        Some(pss_of(server)? + backends)
    }

    /// CPU time used so far, in seconds: the nodes together, NATS, and
    /// PostgreSQL (the postmaster and its live backends).
    pub(crate) fn cpu_seconds(&self) -> CpuSeconds {
        let nodes = self
            .nodes
            .iter()
            .filter_map(|n| n.child.as_ref()?.id())
            .filter_map(cpu_of)
            .sum();
        let nats = self
            .engines
            .as_ref()
            .and_then(|e| e.nats.pid())
            .and_then(cpu_of);
        let pg = self
            .engines
            .as_ref()
            .and_then(|e| e.pg.server_pid())
            .map(|server| {
                cpu_of(server).unwrap_or(0.0)
                    + children_of(server)
                        .into_iter()
                        .filter_map(cpu_of)
                        .sum::<f64>()
            });
        CpuSeconds { nodes, nats, pg }
    }

    /// The end of each node's log, for error messages.
    pub(crate) fn log_tail(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                if self.nodes.len() == 1 {
                    n.log_tail()
                } else {
                    format!("node {i}:\n{}", n.log_tail())
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stops everything: the nodes (SIGKILL: their data is thrown away
    /// anyway), the balancer, then the engines.
    pub(crate) async fn stop(mut self) {
        for node in &mut self.nodes {
            node.kill9().await;
        }
        self.balancer = None;
        self.engines = None;
    }
}

/// `VmRSS` from a `/proc/<pid>/status` file, in bytes.
pub(crate) fn rss_of(path: &str) -> Option<u64> {
    let status = std::fs::read_to_string(path).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// `Pss` from `/proc/<pid>/smaps_rollup`, in bytes.
pub(crate) fn pss_of(pid: u32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let line = rollup.lines().find(|l| l.starts_with("Pss:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU seconds used, as [`Target::cpu_seconds`] reads them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuSeconds {
    /// Every node together.
    pub(crate) nodes: f64,
    /// The NATS server.
    pub(crate) nats: Option<f64>,
    /// PostgreSQL's processes.
    pub(crate) pg: Option<f64>,
}

/// Kernel clock ticks per second of `/proc/<pid>/stat`'s times
/// (`CLK_TCK`, 100 on Linux for every architecture the bench runs on).
const CLOCK_TICKS: f64 = 100.0;

/// User plus system CPU seconds of a process, from `/proc/<pid>/stat`.
pub(crate) fn cpu_of(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some((user + system) as f64 / CLOCK_TICKS)
}

/// The processes whose parent is `parent` (PostgreSQL's backends).
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| parent_of(pid) == Some(parent))
        .collect()
}

/// The parent process id, from `/proc/<pid>/stat` (the field after the
/// parenthesised name, which may itself hold spaces).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `store.pool_size` for each cluster node: a pool per database per node,
/// together within [`CLUSTER_PG_CONNECTIONS`], at least 2 each.
pub(crate) fn node_pool_size(common: &crate::Common) -> usize {
    let pools = usize::from(common.nodes.max(1)) * usize::from(common.chat_databases.max(1));
    (CLUSTER_PG_CONNECTIONS / pools).clamp(2, NODE_POOL_MAX)
}

/// The cluster's databases: the accounts one (also the first chat
/// database), then the other chat databases.
fn chat_database_names(count: u16) -> Vec<String> {
    std::iter::once(CLUSTER_DB.to_owned())
        .chain((1..count).map(|i| format!("{CLUSTER_DB}_{i}")))
        .collect()
}

pub(crate) fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Pins this process (all its threads so far, and those it starts later)
/// to `cpus` with `taskset`.
///
/// # Errors
/// `taskset` is missing or refuses the list.
pub(crate) fn pin_self(cpus: &str) -> BenchResult<()> {
    let status = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()
        .map_err(BenchError::io("running taskset"))?;
    if status.success() {
        Ok(())
    } else {
        Err(BenchError::Other(format!("taskset -c {cpus} failed")))
    }
}

/// Starts a Natter server with an SMS inbox for its codes, runs `drive`
/// against it, and stops it whatever happened (printing the end of its log
/// when the run failed).
///
/// # Errors
/// Setup failures and whatever `drive` returns.
pub(crate) async fn with_natter<T>(
    common: &Common,
    drive: impl AsyncFnOnce(&SmsInbox, &Target) -> BenchResult<T>,
) -> BenchResult<T> {
    let inbox = SmsInbox::start_on(common.sms_listen).await?;
    let target = Target::start(common, Kind::Natter, inbox.url()).await?;
    let outcome = drive(&inbox, &target).await;
    if outcome.is_err() {
        eprintln!("natter log:\n{}", target.log_tail());
    }
    target.stop().await;
    outcome
}
