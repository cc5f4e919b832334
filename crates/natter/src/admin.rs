//! `natter admin`: the operator's commands on a local data directory.
//!
//! Every command but `backup`, `codes`, `genconfig` and `checkconfig` opens
//! the data directory the way `natter serve` would (same `--config`,
//! `NATTER_*` variables and `--data-dir`) and takes its lock, so it refuses,
//! with a message saying so, while a server runs on it. `backup` (SQLite's
//! online backup API) and `codes` (a read-only look) work while the server
//! runs. Output goes to stdout; errors
//! to stderr with exit code 1 (2 for bad input or configuration).

/// A line on stdout. A closed stdout (`natter admin user list | head -1`)
/// ends the output quietly instead of panicking like `println!` would.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use natter_proto::{DeviceId, UserId};
use natter_server::Config;
use natter_server::clock::Timestamp;
use natter_server::config::SignupMode;
use natter_server::offline::Offline;
use natter_server::service::ServiceError;
use natter_server::store::admin::Deactivated;

/// The example configuration, every key with its default and a comment:
/// one source for `natter admin genconfig` and the docs (a test in the
/// server checks it against the code's defaults).
const EXAMPLE_CONFIG: &str = include_str!("../../../docs/natter.example.toml");

/// `natter admin`'s arguments.
#[derive(Debug, Args)]
pub(crate) struct AdminArgs {
    /// A TOML configuration file, as for `natter serve`; `NATTER_*` variables override it.
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// Data directory (overrides `data_dir`).
    #[arg(long, value_name = "DIR", global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Accounts: create, list, deactivate, make a login code.
    #[command(subcommand)]
    User(UserCommand),
    /// Devices (logged-in sessions): list an account's, revoke one.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Invites for sign-up mode `invite`: create, list, revoke.
    #[command(subcommand)]
    Invite(InviteCommand),
    /// Verification codes waiting to be used, soonest to expire first: in
    /// sign-up mode `open` (development) with the codes, so testers can be
    /// given theirs; otherwise only numbers and expiry (only hashes are
    /// stored). Works while the server runs.
    Codes,
    /// Counts of accounts, devices, chats, messages, media and invites, and
    /// the size of the data directory.
    Stats,
    /// Checks the store: SQLite's integrity check, foreign keys, and that
    /// every finished upload's blob exists. Exit code 1 if anything is wrong.
    Check,
    /// Prints a configuration file with every key, its default and a comment
    /// (the same text as docs/natter.example.toml).
    Genconfig,
    /// Validates a configuration file (the file alone, not the environment);
    /// names the bad key. Exit code 2 if it is invalid.
    Checkconfig {
        /// The TOML file to check.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Copies the database (a consistent snapshot, online: the server may
    /// keep running) and the media blobs into a new directory, with progress.
    Backup {
        /// The directory to create (it must not exist, or be empty).
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
    },
    /// Restores a backup made by `backup` into the data directory, which
    /// must not exist or be empty; the server must be stopped.
    Restore {
        /// The backup directory.
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Creates an account (no device yet) and prints a one-time code its
    /// owner logs a first device in with (`POST /api/v1/users/login`).
    Create {
        /// The number, in international format (+14155550123).
        #[arg(long)]
        phone: String,
        /// The display name.
        #[arg(long)]
        name: String,
    },
    /// Lists every account, oldest first.
    List,
    /// Deletes an account for good, as the user can themselves: its devices,
    /// tokens, memberships, push channels and media go; its messages in
    /// groups stay, shown as from "Deleted account". Its number is free again.
    Delete {
        /// The account's user id (from `user list`).
        #[arg(value_name = "USER_ID")]
        user: String,
        /// The account's phone number again, to confirm.
        #[arg(long, value_name = "PHONE")]
        confirm_phone: String,
    },
    /// Deactivates an account: logs out all its devices and refuses its
    /// logins from now on; its number stays taken and its messages stay.
    Deactivate {
        /// The account's user id (from `user list`).
        #[arg(value_name = "USER_ID")]
        user: String,
    },
    /// Prints a one-time login code for an account (one that lost all its
    /// devices, or in invite mode), valid `verification.code_ttl_secs`.
    LoginCode {
        /// The account's user id (from `user list`).
        #[arg(value_name = "USER_ID")]
        user: String,
    },
}

#[derive(Debug, Subcommand)]
enum DeviceCommand {
    /// Lists an account's devices, oldest first.
    List {
        /// The account's user id (from `user list`).
        #[arg(long, value_name = "USER_ID")]
        user: String,
    },
    /// Logs a device out: its token stops working at once.
    Revoke {
        /// The device id (from `device list`).
        #[arg(value_name = "DEVICE_ID")]
        device: String,
    },
}

#[derive(Debug, Subcommand)]
enum InviteCommand {
    /// Creates an invite and prints it (once: only its hash is stored).
    Create {
        /// How many accounts it may create.
        #[arg(long, default_value_t = 1, value_name = "N")]
        uses: u32,
        /// How long it is valid: seconds, or a number with s, m, h or d
        /// (`90m`, `7d`). Default: until used up or revoked.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        expires_in: Option<Duration>,
    },
    /// Lists invites, newest first, with their uses and state.
    List,
    /// Revokes an invite: it creates no more accounts.
    Revoke {
        /// The invite's id (from `invite list`), not the invite itself.
        #[arg(value_name = "INVITE_ID")]
        invite: String,
    },
}

/// `30`, `30s`, `90m`, `12h`, `7d`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 3600, 90m, 12h or 7d"))?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => None,
    }
    .filter(|&s| s > 0)
    .ok_or_else(|| format!("`{text}` is not a positive duration like 3600, 90m, 12h or 7d"))?;
    Ok(Duration::from_secs(secs))
}

/// A command's failure: the message and the exit code.
struct Failure {
    /// For stderr, after `natter admin: `.
    message: String,
    /// 1: the operation failed; 2: bad input or configuration.
    code: u8,
}

impl Failure {
    fn failed(message: impl std::fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            code: 1,
        }
    }

    fn usage(message: impl std::fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            code: 2,
        }
    }
}

impl From<ServiceError> for Failure {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::InvalidPhone(_)
            | ServiceError::Validation(_)
            | ServiceError::PhoneTaken => Self::usage(e),
            // The operator sees the cause, not the API's discreet sentence.
            ServiceError::Store(cause) => Self::failed(cause),
            ServiceError::Internal(cause) => Self::failed(cause),
            other => Self::failed(other),
        }
    }
}

type Outcome = Result<(), Failure>;

/// Runs `natter admin`.
pub(crate) fn run(args: AdminArgs) -> ExitCode {
    let outcome = match &args.command {
        AdminCommand::Genconfig => {
            {
                use std::io::Write as _;
                let _ = std::io::stdout()
                    .lock()
                    .write_all(EXAMPLE_CONFIG.as_bytes());
            }
            Ok(())
        }
        AdminCommand::Checkconfig { file } => checkconfig(file),
        _ => match load_config(&args) {
            Ok(config) => run_on_data(config, args.command),
            Err(f) => Err(f),
        },
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("natter admin: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn load_config(args: &AdminArgs) -> Result<Config, Failure> {
    let mut config =
        Config::load(args.config.as_deref(), std::env::vars()).map_err(Failure::usage)?;
    if let Some(dir) = &args.data_dir {
        config.data_dir.clone_from(dir);
    }
    Ok(config)
}

fn checkconfig(file: &Path) -> Outcome {
    let config = Config::load(Some(file), std::iter::empty()).map_err(Failure::usage)?;
    out!(
        "{} is a valid configuration (signup.mode = \"{}\", listen = {}, data_dir = {})",
        file.display(),
        config.signup_mode().as_str(),
        config.listen,
        config.data_dir.display()
    );
    Ok(())
}

fn run_on_data(config: Config, command: AdminCommand) -> Outcome {
    // These read or copy the embedded store's files; a PostgreSQL store is
    // backed up with PostgreSQL's own tools.
    if config.store.url.is_some()
        && matches!(
            command,
            AdminCommand::Backup { .. } | AdminCommand::Restore { .. } | AdminCommand::Codes
        )
    {
        return Err(Failure::usage(
            "this command works on the embedded store; the configuration names a PostgreSQL \
             store (`store.url`): back it up with pg_dump or PostgreSQL's own tools, and read \
             codes with the server's log",
        ));
    }
    match command {
        AdminCommand::Backup { to } => return backup(&config.data_dir, &to),
        AdminCommand::Restore { from } => return restore(&from, &config.data_dir),
        AdminCommand::Codes => return codes(&config),
        _ => {}
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| Failure::failed(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async move {
        // Only creating something may make a new data directory.
        let create = matches!(
            command,
            AdminCommand::User(UserCommand::Create { .. })
                | AdminCommand::Invite(InviteCommand::Create { .. })
        );
        let data_dir = config.data_dir.clone();
        let offline = Offline::open(config, create)
            .await
            .map_err(Failure::failed)?;
        let outcome = dispatch(&offline, &data_dir, command).await;
        offline.close().await;
        outcome
    })
}

async fn dispatch(offline: &Offline, data_dir: &Path, command: AdminCommand) -> Outcome {
    let services = offline.services();
    match command {
        AdminCommand::User(UserCommand::Create { phone, name }) => {
            let created = services.admin_create_user(&phone, &name).await?;
            out!("created user {}", created.user.id);
            out!("  phone: {}", created.user.phone.as_str());
            out!("  name:  {}", created.user.name);
            out!(
                "login code: {} (valid {} s, single use: POST /api/v1/users/login \
                 {{\"phone\", \"verification_code\", \"device_name\"}})",
                created.login.code.expose(),
                created.login.expires_in.as_secs()
            );
        }
        AdminCommand::User(UserCommand::List) => {
            let users = services.admin_users().await?;
            out!(
                "{:<36}  {:<16}  {:>7}  {:<24}  {:<11}  NAME",
                "USER_ID",
                "PHONE",
                "DEVICES",
                "CREATED",
                "STATE"
            );
            for u in &users {
                out!(
                    "{:<36}  {:<16}  {:>7}  {:<24}  {:<11}  {}",
                    u.user.id,
                    u.user.phone.as_str(),
                    u.devices,
                    time_text(u.user.created_at),
                    if u.deactivated_at.is_some() {
                        "deactivated"
                    } else {
                        "active"
                    },
                    u.user.name
                );
            }
            out!("{} users", users.len());
        }
        AdminCommand::User(UserCommand::Deactivate { user }) => {
            let id = parse_id::<UserId>(&user, "user id")?;
            match services.admin_deactivate_user(id).await? {
                Deactivated::Done(devices) => out!(
                    "deactivated user {id}; {} devices logged out",
                    devices.len()
                ),
                Deactivated::Already => out!("user {id} was deactivated already"),
                Deactivated::NoSuchUser => {
                    return Err(Failure::failed(format!("no user with id {id}")));
                }
            }
        }
        AdminCommand::User(UserCommand::Delete {
            user,
            confirm_phone,
        }) => {
            let id = parse_id::<UserId>(&user, "user id")?;
            services
                .admin_delete_user(id, &confirm_phone)
                .await
                .map_err(|e| match e {
                    ServiceError::UserNotFound => Failure::failed(format!("no user with id {id}")),
                    ServiceError::ConfirmationMismatch(m) => {
                        Failure::failed(format!("{m} Nothing was deleted."))
                    }
                    other => other.into(),
                })?;
            out!("deleted user {id}");
        }
        AdminCommand::User(UserCommand::LoginCode { user }) => {
            let id = parse_id::<UserId>(&user, "user id")?;
            let issued = services.admin_login_code(id).await.map_err(|e| match e {
                ServiceError::UserNotFound => {
                    Failure::failed(format!("no active user with id {id}"))
                }
                other => other.into(),
            })?;
            out!(
                "login code for {}: {} (valid {} s, single use)",
                issued.phone.as_str(),
                issued.code.expose(),
                issued.expires_in.as_secs()
            );
        }
        AdminCommand::Device(DeviceCommand::List { user }) => {
            let id = parse_id::<UserId>(&user, "user id")?;
            let devices = services.admin_devices(id).await.map_err(|e| match e {
                ServiceError::UserNotFound => Failure::failed(format!("no user with id {id}")),
                other => other.into(),
            })?;
            out!(
                "{:<36}  {:<24}  {:<24}  NAME",
                "DEVICE_ID",
                "LOGGED IN",
                "LAST ACTIVE"
            );
            for d in &devices {
                out!(
                    "{:<36}  {:<24}  {:<24}  {}",
                    d.id,
                    time_text(d.created_at),
                    time_text(d.last_active_at),
                    d.name
                );
            }
            out!("{} devices", devices.len());
        }
        AdminCommand::Device(DeviceCommand::Revoke { device }) => {
            let id = parse_id::<DeviceId>(&device, "device id")?;
            let revoked = services
                .admin_revoke_device(id)
                .await
                .map_err(|e| match e {
                    ServiceError::DeviceNotFound => {
                        Failure::failed(format!("no device with id {id}"))
                    }
                    other => other.into(),
                })?;
            out!(
                "revoked device {id} ({}) of user {}",
                revoked.name,
                revoked.user_id
            );
        }
        AdminCommand::Invite(InviteCommand::Create { uses, expires_in }) => {
            let created = services.admin_create_invite(uses, expires_in).await?;
            out!("{}", created.token.expose());
            eprintln!(
                "invite {} for {} account{}, {}; shown once, only its hash is stored",
                created.record.id,
                uses,
                if uses == 1 { "" } else { "s" },
                created
                    .record
                    .expires_at
                    .map_or("never expires".to_owned(), |t| format!(
                        "expires {}",
                        time_text(t)
                    ))
            );
        }
        AdminCommand::Invite(InviteCommand::List) => {
            let now = Timestamp::now();
            let invites = services.admin_invites().await?;
            out!(
                "{:<36}  {:>9}  {:<24}  {:<24}  STATE",
                "INVITE_ID",
                "USES",
                "CREATED",
                "EXPIRES"
            );
            for i in &invites {
                let state = if i.revoked_at.is_some() {
                    "revoked"
                } else if i.uses >= i.max_uses {
                    "used up"
                } else if i.expires_at.is_some_and(|t| t <= now) {
                    "expired"
                } else {
                    "usable"
                };
                out!(
                    "{:<36}  {:>9}  {:<24}  {:<24}  {state}",
                    i.id,
                    format!("{}/{}", i.uses, i.max_uses),
                    time_text(i.created_at),
                    i.expires_at.map_or("never".to_owned(), time_text),
                );
            }
            out!("{} invites", invites.len());
        }
        AdminCommand::Invite(InviteCommand::Revoke { invite }) => {
            let id = uuid::Uuid::parse_str(invite.trim()).map_err(|_| {
                Failure::usage(format!(
                    "`{invite}` is not an invite id (a UUID from `natter admin invite list`)"
                ))
            })?;
            if !services.admin_revoke_invite(id).await? {
                return Err(Failure::failed(format!(
                    "no usable invite with id {id} (unknown or revoked already)"
                )));
            }
            out!("revoked invite {id}");
        }
        AdminCommand::Stats => {
            let s = services.admin_stats().await?;
            out!(
                "users:          {} ({} deactivated)",
                s.users,
                s.deactivated_users
            );
            out!("devices:        {}", s.devices);
            out!("chats:          {}", s.chats);
            out!("chat log:       {} entries", s.log_entries);
            out!("media:          {} ({} bytes)", s.media, s.media_bytes);
            out!("usable invites: {}", s.usable_invites);
            out!(
                "disk:           {} bytes in {}",
                disk_usage(data_dir),
                data_dir.display()
            );
        }
        AdminCommand::Check => {
            let mut problems = services.admin_integrity_problems().await?;
            let blobs = services.admin_check_blobs().await?;
            problems.extend(
                blobs
                    .missing
                    .iter()
                    .map(|k| format!("missing blob {k} (a finished upload references it)")),
            );
            out!("database: SQLite integrity_check and foreign_key_check");
            out!("blobs:    {} looked for", blobs.checked);
            if problems.is_empty() {
                out!("ok");
            } else {
                for p in &problems {
                    out!("PROBLEM: {p}");
                }
                return Err(Failure::failed(format!(
                    "{} problem(s) found in {}",
                    problems.len(),
                    data_dir.display()
                )));
            }
        }
        AdminCommand::Genconfig
        | AdminCommand::Checkconfig { .. }
        | AdminCommand::Backup { .. }
        | AdminCommand::Restore { .. }
        | AdminCommand::Codes => {}
    }
    Ok(())
}

fn parse_id<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, Failure> {
    text.trim()
        .parse()
        .map_err(|_| Failure::usage(format!("`{text}` is not a {what} (a UUID)")))
}

fn time_text(t: Timestamp) -> String {
    t.to_datetime()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Bytes of the files under `dir`.
fn disk_usage(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => disk_usage(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

fn progress_printer() -> impl FnMut(natter_server::backup::Progress) {
    use natter_server::backup::Progress;
    let mut last_percent = None;
    move |p| match p {
        Progress::Database { done, total } => {
            let percent = (done * 100).checked_div(total).unwrap_or(100);
            if last_percent != Some(percent) {
                last_percent = Some(percent);
                eprintln!("database: {done}/{total} pages ({percent}%)");
            }
        }
        Progress::Blobs { files, bytes } => eprintln!("blobs: {files} files, {bytes} bytes"),
    }
}

fn report(r: &natter_server::backup::Report) -> Outcome {
    out!(
        "database: {} bytes; blobs: {} files, {} bytes",
        r.database_bytes,
        r.blob_files,
        r.blob_bytes
    );
    if r.missing_blobs.is_empty() {
        Ok(())
    } else {
        for k in &r.missing_blobs {
            out!("WARNING: missing blob {k}");
        }
        Err(Failure::failed(format!(
            "{} referenced blob(s) are missing from the copy (collected while it ran, \
             or missing from the source: run `natter admin check`)",
            r.missing_blobs.len()
        )))
    }
}

fn backup(data_dir: &Path, to: &Path) -> Outcome {
    let mut progress = progress_printer();
    let r = natter_server::backup::backup(data_dir, to, &mut progress).map_err(Failure::failed)?;
    report(&r)?;
    out!(
        "backup of {} written to {}",
        data_dir.display(),
        to.display()
    );
    Ok(())
}

fn codes(config: &Config) -> Outcome {
    let now = Timestamp::now();
    let codes =
        natter_server::offline::pending_codes(&config.data_dir, now).map_err(Failure::failed)?;
    let open = config.signup_mode() == SignupMode::Open;
    out!("{:<16}  {:<8}  {:>8}  EXPIRES", "PHONE", "CODE", "ATTEMPTS");
    for c in &codes {
        out!(
            "{:<16}  {:<8}  {:>8}  {}",
            c.phone,
            c.code.as_deref().unwrap_or("(hidden)"),
            c.attempts,
            time_text(c.expires_at)
        );
    }
    out!("{} pending codes", codes.len());
    if !open {
        eprintln!(
            "codes are shown only in sign-up mode \"open\" (development); this server \
             runs in mode \"{}\" and stores only their hashes",
            config.signup_mode().as_str()
        );
    }
    Ok(())
}

fn restore(from: &Path, data_dir: &Path) -> Outcome {
    let mut progress = progress_printer();
    let r =
        natter_server::backup::restore(from, data_dir, &mut progress).map_err(Failure::failed)?;
    report(&r)?;
    out!("restored {} into {}", from.display(), data_dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(parse_duration("3600"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        for bad in ["", "0", "7w", "-1", "d", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
