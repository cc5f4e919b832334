//! The process under load: `natter serve` or the bare baseline relay,
//! started from the current executable as a child on an ephemeral loopback
//! port with a temporary data directory, optionally pinned with `taskset`.
//! The child is killed when the [`Target`] is dropped (end of run, error or
//! Ctrl-C), so no run leaves a process behind.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::accounts::SmsInbox;
use crate::{BenchError, BenchResult, Common};

/// How long a started child may take to print its listening address.
const START_TIMEOUT: Duration = Duration::from_secs(30);

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

/// A server to load: started here, or given by `--url`.
#[derive(Debug)]
pub(crate) struct Target {
    /// `http://127.0.0.1:port`.
    pub(crate) http: String,
    /// The listening address, for WebSockets.
    pub(crate) addr: SocketAddr,
    /// The child, killed on drop; `None` with `--url`.
    child: Option<Child>,
    /// The child's log (stderr).
    log: Option<PathBuf>,
    /// The temporary directory holding the data and the log; removed on drop.
    _dir: Option<tempfile::TempDir>,
}

/// The benchmark configuration: everything that would throttle one client
/// address or one user sending thousands of messages a second is opened
/// up, in the child's environment only (the defaults stay as they are).
pub(crate) fn bench_env(sms_url: &str) -> Vec<(&'static str, String)> {
    const MANY: &str = "1000000000";
    let mut env = vec![
        ("NATTER_LISTEN", "127.0.0.1:0".to_owned()),
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

impl Target {
    /// Starts `kind` (or uses `--url` for Natter) and waits until it listens.
    ///
    /// # Errors
    /// The child cannot start, or does not listen within [`START_TIMEOUT`].
    pub(crate) async fn start(common: &Common, kind: Kind, sms_url: &str) -> BenchResult<Self> {
        if kind == Kind::Natter
            && let Some(url) = &common.url
        {
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
                child: None,
                log: None,
                _dir: None,
            });
        }
        let dir = tempfile::Builder::new()
            .prefix("natter-bench-")
            .tempdir()
            .map_err(BenchError::io("creating a temporary directory"))?;
        let exe = std::env::current_exe().map_err(BenchError::io("finding this executable"))?;
        let log = dir.path().join(format!("{}.log", kind.name()));
        let log_file = std::fs::File::create(&log).map_err(BenchError::io("creating the log"))?;
        let mut cmd = match &common.server_cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpus).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("NATTER_")) {
            cmd.env_remove(k);
        }
        match kind {
            Kind::Natter => {
                cmd.arg("serve")
                    .env("NATTER_DATA_DIR", dir.path().join("data"))
                    .envs(bench_env(sms_url));
                for pair in &common.server_env {
                    match pair.split_once('=') {
                        Some((k, v)) if k.starts_with("NATTER_") => {
                            cmd.env(k, v);
                        }
                        _ => {
                            return Err(BenchError::Other(format!(
                                "--server-env takes NATTER_KEY=VALUE, not {pair}"
                            )));
                        }
                    }
                }
            }
            Kind::Baseline => {
                cmd.arg("baseline-relay").arg("--listen").arg("127.0.0.1:0");
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(BenchError::io(format!("starting {}", exe.display())))?;
        let mut target = Self {
            http: String::new(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            child: Some(child),
            log: Some(log),
            _dir: Some(dir),
        };
        let addr = target.wait_listening().await?;
        target.addr = addr;
        target.http = format!("http://{addr}");
        Ok(target)
    }

    /// Reads the child's log until it names its address (`listen=` for
    /// Natter, `listening on` for the relay).
    async fn wait_listening(&mut self) -> BenchResult<SocketAddr> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        let log = self.log.clone().unwrap_or_default();
        loop {
            let text = tokio::fs::read_to_string(&log).await.unwrap_or_default();
            for line in text.lines() {
                let found = line
                    .split_once("listen=")
                    .or_else(|| line.split_once("listening on "))
                    .map(|(_, rest)| rest.split_whitespace().next().unwrap_or(""));
                if let Some(Ok(addr)) = found.map(str::parse::<SocketAddr>) {
                    return Ok(addr);
                }
            }
            let exited = match self.child.as_mut() {
                Some(child) => child.try_wait().ok().flatten(),
                None => None,
            };
            if exited.is_some() || tokio::time::Instant::now() > deadline {
                return Err(BenchError::Other(format!(
                    "the target did not start; its log:\n{}",
                    tail(&text)
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The child's resident memory (`VmRSS`), in bytes; `None` with `--url`.
    pub(crate) fn rss_bytes(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id()?;
        rss_of(&format!("/proc/{pid}/status"))
    }

    /// The end of the child's log, for error messages.
    pub(crate) fn log_tail(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|t| tail(&t))
            .unwrap_or_default()
    }

    /// Stops the child (SIGKILL: its data is thrown away anyway) and waits for it.
    pub(crate) async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}

/// `VmRSS` from a `/proc/<pid>/status` file, in bytes.
pub(crate) fn rss_of(path: &str) -> Option<u64> {
    let status = std::fs::read_to_string(path).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
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
