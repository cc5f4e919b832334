//! `natter`: the one binary. `natter serve` runs the server; `natter admin`
//! works on its data directory (`admin.rs`); `natter chat` is the terminal
//! client (crate `natter-chat`); `natter bench` is the load tool (crate
//! `natter-bench`).

mod admin;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use natter_server::config::LogFormat;
use natter_server::{Config, RunningServer};
use tracing_subscriber::EnvFilter;

/// Natter: a self-hostable messaging server.
#[derive(Debug, Parser)]
#[command(name = "natter", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server. With no configuration: data in ./natter-data,
    /// listening on 127.0.0.1:8080, SMS codes printed to the log.
    Serve {
        /// A TOML configuration file; `NATTER_*` variables override it.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Address and port to listen on (overrides `listen`).
        #[arg(long, value_name = "ADDR:PORT")]
        listen: Option<SocketAddr>,
        /// Data directory (overrides `data_dir`).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// The operator's commands on a data directory: accounts, devices,
    /// invites, stats, checks, configuration, backup and restore.
    Admin(admin::AdminArgs),
    /// The terminal client: end-to-end encrypted chats (see docs/chat.md).
    Chat(natter_chat::ChatArgs),
    /// The load tool: starts a server (or uses `--url`), drives a scenario
    /// on loopback and reports (see docs/benchmarks.md).
    Bench(natter_bench::BenchArgs),
    /// The bare relay the `baseline` scenario measures (no auth, no storage).
    #[command(hide = true)]
    BaselineRelay {
        /// Address and port to listen on.
        #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            listen,
            data_dir,
        } => serve(config, listen, data_dir),
        Command::Admin(args) => admin::run(args),
        Command::Chat(args) => natter_chat::run(args, std::env::vars()),
        Command::Bench(args) => natter_bench::run(args),
        Command::BaselineRelay { listen } => baseline_relay(listen),
    }
}

fn baseline_relay(listen: SocketAddr) -> ExitCode {
    natter_bench::raise_fd_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("natter: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(natter_bench::baseline::serve(listen)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("natter: baseline relay: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(file: Option<PathBuf>, listen: Option<SocketAddr>, data_dir: Option<PathBuf>) -> ExitCode {
    let mut config = match Config::load(file.as_deref(), std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("natter: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(listen) = listen {
        config.listen = listen;
    }
    if let Some(dir) = data_dir {
        config.data_dir = dir;
    }
    if let Err(e) = init_logging(&config) {
        eprintln!("natter: invalid configuration: `log` {e}");
        return ExitCode::from(2);
    }
    // Every connection is a file descriptor; the soft limit (often 1024) is
    // far below what the server can hold, the hard limit is the operator's.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(error = %e, "cannot raise the open-file limit");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("natter: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        // Before the server says it is serving: a SIGHUP sent as soon as it
        // does must find the handler, not the default action (exit).
        let mut signals = Signals::install();
        let server = match RunningServer::start(config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("natter: {e}");
                return ExitCode::FAILURE;
            }
        };
        while signals.next().await == Signal::Reload {
            match server.reload_tls() {
                Ok(true) => tracing::info!("TLS certificate and key reloaded"),
                Ok(false) => tracing::info!("SIGHUP: TLS is off, nothing to reload"),
                Err(e) => tracing::error!(error = %e, "TLS reload failed; the previous certificate stays in use"),
            }
        }
        server.shutdown().await;
        ExitCode::SUCCESS
    })
}

fn init_logging(config: &Config) -> Result<(), String> {
    let filter = EnvFilter::try_new(&config.log).map_err(|e| e.to_string())?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// What a signal asks of `natter serve`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    /// SIGINT (Ctrl-C) or SIGTERM: shut down.
    Stop,
    /// SIGHUP: reload the TLS certificate and key.
    Reload,
}

/// Resolves when `signal` arrives; never when it could not be installed.
#[cfg(unix)]
async fn wait(signal: Option<&mut tokio::signal::unix::Signal>) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}

/// The signals `natter serve` listens to, installed once so none is lost
/// between two waits.
#[derive(Debug)]
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self {
                term: signal(SignalKind::terminate()).ok(),
                hup: signal(SignalKind::hangup()).ok(),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// The next signal: SIGINT (Ctrl-C), SIGTERM or SIGHUP.
    async fn next(&mut self) -> Signal {
        let ctrl_c = async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        #[cfg(unix)]
        {
            tokio::select! {
                () = ctrl_c => Signal::Stop,
                () = wait(self.term.as_mut()) => Signal::Stop,
                () = wait(self.hup.as_mut()) => Signal::Reload,
            }
        }
        #[cfg(not(unix))]
        {
            ctrl_c.await;
            Signal::Stop
        }
    }
}
