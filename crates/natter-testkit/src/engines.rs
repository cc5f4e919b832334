//! Throwaway scale-out engines for tests: a `nats-server -js` and an
//! S3-compatible server (`moto_server`), each on its own port and
//! temporary directory, killed when dropped. Never the services that
//! happen to run on the machine.
//!
//! A test command that starts one engine for the whole run exports its
//! address (`TESTKIT_S3_URL`); a test without it starts its own. The
//! variables are not `NATTER_*`: the server takes every one of those as
//! configuration and refuses unknown keys.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long an engine may take to start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Where `nats-server` is, unless `TESTKIT_NATS_SERVER` says.
const NATS_SERVER: &str = "nats-server";

/// Where `moto_server` is, unless `TESTKIT_MOTO_SERVER` says.
const MOTO_SERVER: &str = "moto_server";

/// An engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The program is not installed.
    #[error("`{program}` could not be started ({source}); {hint}")]
    Missing {
        /// The program.
        program: String,
        /// What to install.
        hint: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// It started but did not listen in time.
    #[error("`{0}` did not start listening within {START_TIMEOUT:?}")]
    Timeout(String),
    /// A temporary directory or file failed.
    #[error("engine files: {0}")]
    Io(#[from] std::io::Error),
}

/// A child process killed (and reaped) on drop.
#[derive(Debug)]
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn program(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

fn spawn(command: &mut Command, hint: &'static str) -> Result<Killed, EngineError> {
    let program = command.get_program().to_string_lossy().into_owned();
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Killed)
        .map_err(|source| EngineError::Missing {
            program,
            hint,
            source,
        })
}

/// A free port on 127.0.0.1 (for engines that cannot report the one they
/// chose; the moment between releasing and binding it again is retried).
fn free_port() -> Result<u16, EngineError> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

async fn wait_listening(addr: SocketAddr, child: &mut Killed) -> bool {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.0.try_wait() {
            return false;
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A `nats-server` with JetStream on a random port and a temporary store.
#[derive(Debug)]
pub struct NatsServer {
    /// The process.
    process: Option<Killed>,
    /// Its JetStream store and ports file.
    dir: tempfile::TempDir,
    /// Where it listens.
    addr: SocketAddr,
}

impl NatsServer {
    /// Starts one (`nats-server -js`, on Debian `apt-get install nats-server`).
    ///
    /// # Errors
    /// Not installed, or not listening in time.
    pub async fn start() -> Result<Self, EngineError> {
        let dir = tempfile::tempdir()?;
        let (process, addr) = Self::run(dir.path(), None).await?;
        Ok(Self {
            process: Some(process),
            dir,
            addr,
        })
    }

    async fn run(dir: &Path, port: Option<u16>) -> Result<(Killed, SocketAddr), EngineError> {
        let bin = program("TESTKIT_NATS_SERVER", NATS_SERVER);
        let ports = dir.join("ports");
        std::fs::create_dir_all(&ports)?;
        let port_arg = port.map_or("-1".to_owned(), |p| p.to_string());
        let mut child = spawn(
            Command::new(&bin)
                .args(["-js", "-a", "127.0.0.1", "-p", &port_arg, "-sd"])
                .arg(dir.join("js"))
                .arg("--ports_file_dir")
                .arg(&ports),
            "install it (Debian: apt-get install nats-server) or set TESTKIT_NATS_SERVER",
        )?;
        let deadline = Instant::now() + START_TIMEOUT;
        let pid = child.0.id();
        let file = ports.join(format!("{}_{pid}.ports", file_stem(&bin)));
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.0.try_wait() {
                return Err(EngineError::Timeout(bin));
            }
            if let Some(addr) = read_ports_file(&file) {
                if wait_listening(addr, &mut child).await {
                    return Ok((child, addr));
                }
                return Err(EngineError::Timeout(bin));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(EngineError::Timeout(bin))
    }

    /// `nats://127.0.0.1:PORT`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Its process id while it runs (the load tool reads its memory).
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.0.id())
    }

    /// Kills it (as a crash would); [`NatsServer::restart`] brings it back.
    pub fn kill(&mut self) {
        self.process = None;
    }

    /// Starts it again on the same port and store.
    ///
    /// # Errors
    /// As [`NatsServer::start`].
    pub async fn restart(&mut self) -> Result<(), EngineError> {
        self.process = None;
        let _ = std::fs::remove_dir_all(self.dir.path().join("ports"));
        let (process, addr) = Self::run(self.dir.path(), Some(self.addr.port())).await?;
        self.process = Some(process);
        self.addr = addr;
        Ok(())
    }
}

fn file_stem(bin: &str) -> String {
    Path::new(bin)
        .file_name()
        .map_or_else(|| bin.to_owned(), |n| n.to_string_lossy().into_owned())
}

/// Reads `{"nats":["nats://127.0.0.1:PORT"],…}`.
fn read_ports_file(file: &PathBuf) -> Option<SocketAddr> {
    let text = std::fs::read_to_string(file).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    let url = value.get("nats")?.get(0)?.as_str()?;
    url.strip_prefix("nats://")?.parse().ok()
}

/// An S3-compatible server: the run's own (`TESTKIT_S3_URL`), or a
/// `moto_server` started for this test on a free port.
#[derive(Debug)]
pub struct S3Server {
    /// The process, when this test started it.
    _process: Option<Killed>,
    /// `http://127.0.0.1:PORT`.
    url: String,
}

impl S3Server {
    /// The run's server, or a new `moto_server` (PyPI `moto[server]`).
    ///
    /// # Errors
    /// Not installed, or not listening in time.
    pub async fn start() -> Result<Self, EngineError> {
        if let Ok(url) = std::env::var("TESTKIT_S3_URL") {
            return Ok(Self {
                _process: None,
                url,
            });
        }
        let bin = program("TESTKIT_MOTO_SERVER", MOTO_SERVER);
        // The port is free when chosen; another process may take it before
        // moto binds, so try a few.
        for _ in 0..3 {
            let port = free_port()?;
            let mut child = spawn(
                Command::new(&bin).args(["-H", "127.0.0.1", "-p", &port.to_string()]),
                "install it (pip install 'moto[server]') or set TESTKIT_MOTO_SERVER",
            )?;
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            if wait_listening(addr, &mut child).await {
                return Ok(Self {
                    _process: Some(child),
                    url: format!("http://{addr}"),
                });
            }
        }
        Err(EngineError::Timeout(bin))
    }

    /// Creates a bucket (moto takes an unsigned request; a real S3 server
    /// would need the bucket made by its operator).
    ///
    /// # Errors
    /// The server refused or did not answer.
    pub async fn create_bucket(&self, bucket: &str) -> Result<(), EngineError> {
        let client = reqwest::Client::builder()
            .timeout(START_TIMEOUT)
            .build()
            .map_err(std::io::Error::other)?;
        let response = client
            .put(format!("{}/{bucket}", self.url))
            .send()
            .await
            .map_err(std::io::Error::other)?;
        if !response.status().is_success() {
            return Err(std::io::Error::other(format!(
                "creating bucket {bucket}: {}",
                response.status()
            ))
            .into());
        }
        Ok(())
    }

    /// Its endpoint URL.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }
}
