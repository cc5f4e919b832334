//! `natter chat`: the terminal client, end-to-end encrypted by default.
//!
//! # Layout
//! - `profile`: the data directory (locked, one store per device), sign-up
//!   and login.
//! - `error`: every failure as a sentence a person can act on.
//! - `oneshot`: `natter chat send` and `natter chat tail` (JSON lines).
//! - `driver`: the task that owns the [`natter_client::Messenger`] and
//!   runs what the UI asks, reporting back as [`driver::Update`]s.
//! - `app`: the UI's state and key handling, no I/O (unit-tested).
//! - `ui`: drawing the state with ratatui (tested on its `TestBackend`).
//! - `tui`: the terminal, the event loop between keys and the driver.
//!
//! The crate depends on the SDK only, never on the server.

pub mod app;
pub mod driver;
pub mod error;
pub mod oneshot;
pub mod profile;
pub mod thumb;
pub mod tui;
pub mod ui;

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use natter_client::Messenger;

use crate::error::ChatError;
use crate::profile::{DEFAULT_SERVER, LinePrompt, LoginInput, Profile};

/// `natter chat`: the terminal client.
#[derive(Debug, clap::Args)]
pub struct ChatArgs {
    /// The server (default: the one this device logged in to, else
    /// http://127.0.0.1:8080).
    #[arg(long, global = true, value_name = "URL")]
    pub server: Option<String>,
    /// Where the client keeps its session, keys and history (default:
    /// $XDG_DATA_HOME/natter/chat, or ~/.local/share/natter/chat).
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Without a command: the interactive client.
    #[command(subcommand)]
    pub command: Option<ChatCommand>,
}

/// The non-interactive commands.
#[derive(Debug, clap::Subcommand)]
pub enum ChatCommand {
    /// Sign up, or log this device in to an account; asks for what the
    /// flags do not give (the code is read from standard input).
    Login {
        /// The phone number, international format (+14155550123).
        #[arg(long)]
        phone: Option<String>,
        /// Your name, for a new account; empty: log in to an existing one.
        #[arg(long)]
        name: Option<String>,
        /// A name for this device.
        #[arg(long)]
        device_name: Option<String>,
        /// A code you have already (a login code shown on another device):
        /// no SMS is asked for.
        #[arg(long)]
        code: Option<String>,
    },
    /// Send one message (or file) and wait until the server has it; prints
    /// `{"chat_id","seq","client_message_id"}`.
    Send {
        /// A phone number (+…: the direct chat with that user) or a chat id.
        #[arg(long)]
        to: String,
        /// The text.
        text: Option<String>,
        /// Send this file instead of a text.
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
        /// A new direct chat is made without end-to-end encryption.
        #[arg(long)]
        plain: bool,
    },
    /// Print incoming messages and chat changes as JSON lines.
    Tail {
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<usize>,
    },
}

/// The data directory from the flag or the environment.
#[must_use]
pub fn data_dir(flag: Option<PathBuf>, env: &HashMap<String, String>) -> PathBuf {
    if let Some(dir) = flag {
        return dir;
    }
    if let Some(xdg) = env.get("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("natter").join("chat");
    }
    if let Some(home) = env.get("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join(".local/share/natter/chat");
    }
    PathBuf::from("natter-chat")
}

/// Runs `natter chat` with `env` (the process's environment).
pub fn run(args: ChatArgs, env: impl Iterator<Item = (String, String)>) -> ExitCode {
    let env: HashMap<String, String> = env.collect();
    // Before any thread: reading the local UTC offset is sound only then.
    let offset = time::UtcOffset::current_local_offset().unwrap_or(time::UtcOffset::UTC);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "natter chat: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let dir = data_dir(args.data_dir.clone(), &env);
    match runtime.block_on(dispatch(args, dir, offset)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "natter chat: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(args: ChatArgs, dir: PathBuf, offset: time::UtcOffset) -> Result<(), ChatError> {
    let profile = Profile::open(&dir)?;
    let server = args.server.as_deref();
    match args.command {
        Some(ChatCommand::Login {
            phone,
            name,
            device_name,
            code,
        }) => {
            let base = server.unwrap_or(DEFAULT_SERVER);
            let input = LoginInput {
                phone,
                name,
                device_name,
                code,
            };
            let (store, session) = profile::login(&profile, base, input, &mut LinePrompt).await?;
            let m = start(session, store, base).await?;
            say_linked(&m);
            let _ = writeln!(
                std::io::stderr(),
                "Logged in; this device's session is kept in {}.",
                profile.dir().display()
            );
            Ok(())
        }
        Some(ChatCommand::Send {
            to,
            text,
            file,
            plain,
        }) => {
            let (store, session) = profile.require(server)?;
            let base = session.base().to_owned();
            let mut m = start(session, store, &base).await?;
            oneshot::send(&mut m, &base, &to, text.as_deref(), file.as_deref(), plain).await
        }
        Some(ChatCommand::Tail { count }) => {
            let (store, session) = profile.require(server)?;
            let base = session.base().to_owned();
            let mut m = start(session, store, &base).await?;
            oneshot::tail(&mut m, &base, count).await
        }
        None => {
            let (store, session) = match profile.current(server)? {
                Some(current) => current,
                None => {
                    let base = server.unwrap_or(DEFAULT_SERVER);
                    let _ = writeln!(
                        std::io::stderr(),
                        "Welcome to Natter. Sign up or log in to {base}."
                    );
                    profile::login(&profile, base, LoginInput::default(), &mut LinePrompt).await?
                }
            };
            let base = session.base().to_owned();
            let m = start(session, store, &base).await?;
            say_linked(&m);
            tui::run(m, base, offset).await
        }
    }
}

/// Opens the device's encrypted client.
async fn start(
    session: natter_client::Session,
    store: natter_client::Store,
    base: &str,
) -> Result<Messenger, ChatError> {
    Messenger::start(session, store)
        .await
        .map_err(|e| ChatError::client(&e, base))
}

/// On a further device of an account: how to approve it.
fn say_linked(m: &Messenger) {
    if !m.holds_identity() {
        let _ = writeln!(
            std::io::stderr(),
            "This is a further device of your account. Approve it on a device you already use \
             (`/devices` there), checking that it shows this key: {}",
            profile::fingerprint(m.device_key())
        );
    }
}
