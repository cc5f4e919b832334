//! The client's data directory and the login of this device.
//!
//! ```text
//! <data dir>/            0700
//!   lock                 held by the one `natter chat` using the directory
//!   current              the id of the device logged in now
//!   <device id>/         that device's Store: session.json (0600), keys, history
//! ```
//!
//! A login makes a new device with a store of its own, so logging in again
//! (after a revoked session) never mixes two devices' keys and never
//! deletes an earlier device's history.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use natter_client::{Client, ClientError, Session, Store};
use natter_proto::ErrorCode;
use natter_proto::accounts::{LoginRequest, RegisterRequest};

use crate::error::ChatError;

/// Each REST request's limit.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The server used when none is given and none is saved.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";
/// Wrong codes typed before the login gives up (the server counts too).
const CODE_TRIES: usize = 3;

/// The data directory, locked for this process.
#[derive(Debug)]
pub struct Profile {
    /// The directory.
    dir: PathBuf,
    /// The lock, held while this value lives.
    _lock: File,
}

impl Profile {
    /// Opens (creating, mode 0700) and locks `dir`.
    ///
    /// # Errors
    /// The directory cannot be made, or another `natter chat` holds it.
    pub fn open(dir: &Path) -> Result<Self, ChatError> {
        let cannot = |e: std::io::Error| {
            ChatError::new(format!(
                "cannot use the data directory {}: {e}",
                dir.display()
            ))
        };
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir).map_err(cannot)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .map_err(cannot)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(ChatError::new(format!(
                    "another `natter chat` is using {} now: close it first, or give this \
                     one its own directory with --data-dir",
                    dir.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(cannot(e)),
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    /// The directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The logged-in device's store and session, if any; `server`
    /// overrides the saved address.
    ///
    /// # Errors
    /// The store cannot be opened.
    pub fn current(&self, server: Option<&str>) -> Result<Option<(Store, Session)>, ChatError> {
        let Ok(device) = std::fs::read_to_string(self.dir.join("current")) else {
            return Ok(None);
        };
        let device = device.trim();
        if device.is_empty() || device.contains(['/', '\\', '.']) {
            return Ok(None);
        }
        let store = open_store(&self.dir.join(device))?;
        let saved = store
            .load_session()
            .map_err(|e| ChatError::new(format!("the saved session cannot be read: {e}")))?;
        let Some(saved) = saved else {
            return Ok(None);
        };
        let base = server.unwrap_or(&saved.base);
        let client = client(base)?;
        Ok(Some((
            store,
            client.session(saved.user_id, saved.device_id, &saved.token),
        )))
    }

    /// [`Profile::current`], or a clear error when nobody is logged in.
    ///
    /// # Errors
    /// Not logged in; the store cannot be opened.
    pub fn require(&self, server: Option<&str>) -> Result<(Store, Session), ChatError> {
        self.current(server)?.ok_or_else(|| {
            ChatError::new(
                "this client is not logged in yet: run `natter chat login` (or `natter chat`)",
            )
        })
    }

    /// Keeps a new device's session: its own store, then `current`.
    fn adopt(&self, session: &Session) -> Result<Store, ChatError> {
        let store = open_store(&self.dir.join(session.device_id().to_string()))?;
        store
            .save_session(&session.saved())
            .map_err(|e| ChatError::new(format!("cannot save the session: {e}")))?;
        let tmp = self.dir.join("current.tmp");
        std::fs::write(&tmp, session.device_id().to_string())
            .and_then(|()| std::fs::rename(&tmp, self.dir.join("current")))
            .map_err(|e| ChatError::new(format!("cannot save the session: {e}")))?;
        Ok(store)
    }
}

fn open_store(dir: &Path) -> Result<Store, ChatError> {
    Store::open(dir).map_err(|e| {
        ChatError::new(format!(
            "the local store in {} cannot be opened: {e}",
            dir.display()
        ))
    })
}

/// A client for `base`, with the request timeout.
///
/// # Errors
/// `base` is not an http(s) URL, or the HTTP client cannot be built.
pub fn client(base: &str) -> Result<Client, ChatError> {
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(ChatError::new(format!(
            "the server address must start with http:// or https:// (got {base:?})"
        )));
    }
    Client::new(base.trim_end_matches('/'), REQUEST_TIMEOUT)
        .map_err(|e| ChatError::client(&e, base))
}

/// Asks a person questions on a terminal or a pipe.
pub trait Prompt {
    /// Shows `text` (a line).
    fn say(&mut self, text: &str);
    /// Asks `question` and returns the answer, trimmed.
    ///
    /// # Errors
    /// The input ended.
    fn ask(&mut self, question: &str) -> Result<String, ChatError>;
}

/// Questions on standard error, answers from standard input.
#[derive(Debug, Default)]
pub struct LinePrompt;

impl Prompt for LinePrompt {
    fn say(&mut self, text: &str) {
        let _ = writeln!(std::io::stderr(), "{text}");
    }

    fn ask(&mut self, question: &str) -> Result<String, ChatError> {
        let mut err = std::io::stderr();
        let _ = write!(err, "{question}");
        let _ = err.flush();
        let mut line = String::new();
        let n = std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| ChatError::new(format!("cannot read the answer: {e}")))?;
        // Piped answers are not echoed: end the question's line.
        if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
            let _ = writeln!(err);
        }
        if n == 0 {
            return Err(ChatError::new("the input ended before the login finished"));
        }
        Ok(line.trim().to_owned())
    }
}

/// What the login already knows (from flags); the rest is asked.
#[derive(Debug, Default, Clone)]
pub struct LoginInput {
    /// The phone number.
    pub phone: Option<String>,
    /// The display name for a new account.
    pub name: Option<String>,
    /// This device's name.
    pub device_name: Option<String>,
    /// A code obtained already (a login code from another device): no SMS
    /// is asked for.
    pub code: Option<String>,
}

/// Signs up or logs in a new device at `base` and makes it current.
///
/// # Errors
/// The server refused, could not be reached, or the input ended.
pub async fn login(
    profile: &Profile,
    base: &str,
    input: LoginInput,
    prompt: &mut dyn Prompt,
) -> Result<(Store, Session), ChatError> {
    let client = client(base)?;
    let explain = |e: &ClientError| ChatError::client(e, base);
    let mut phone = match input.phone {
        Some(p) => p,
        None => prompt.ask("Phone number (international format, e.g. +14155550123): ")?,
    };
    let mut code = input.code;
    if code.is_none() {
        let sent = client.request_code(&phone).await.map_err(|e| explain(&e))?;
        phone = sent.phone;
        prompt.say(&format!(
            "A 6-digit code was sent to {phone} by SMS (valid for {} minutes).",
            sent.expires_in.div_ceil(60)
        ));
        prompt.say(
            "A server without an SMS gateway (a development server: `natter serve` with no \
             configuration) prints the code in its own log instead: look there for \
             `DEVELOPMENT SMS SINK ... code=123456`.",
        );
    }
    let name = match input.name {
        Some(n) => n,
        None => prompt.ask("Your name, for a new account (Enter to log in to your account): ")?,
    };
    let device_name = match input.device_name {
        Some(d) => d,
        None => {
            let d = prompt.ask("A name for this device [terminal]: ")?;
            if d.is_empty() {
                "terminal".to_owned()
            } else {
                d
            }
        }
    };
    for attempt in 1..=CODE_TRIES {
        let this = match code.take() {
            Some(c) => c,
            None => prompt.ask("Code: ")?,
        };
        let outcome = if name.is_empty() {
            log_in(&client, &phone, &this, &device_name).await
        } else {
            match client
                .register(&RegisterRequest {
                    phone: phone.clone(),
                    name: name.clone(),
                    verification_code: Some(this.clone()),
                    invite: None,
                    device_name: Some(device_name.clone()),
                })
                .await
            {
                // The number has an account: the code still logs in.
                Err(ClientError::Api(e)) if e.code == ErrorCode::PhoneTaken => {
                    prompt.say("This number has an account already: logging in to it.");
                    log_in(&client, &phone, &this, &device_name).await
                }
                other => other,
            }
        };
        match outcome {
            Ok(session) => {
                let store = profile.adopt(&session)?;
                return Ok((store, session));
            }
            Err(ClientError::Api(e))
                if e.code == ErrorCode::InvalidVerificationCode && attempt < CODE_TRIES =>
            {
                prompt.say(&crate::error::explain(&ClientError::Api(e), base));
            }
            Err(e) => return Err(explain(&e)),
        }
    }
    Err(ChatError::new("too many wrong codes"))
}

async fn log_in(
    client: &Client,
    phone: &str,
    code: &str,
    device_name: &str,
) -> Result<Session, ClientError> {
    client
        .login(&LoginRequest {
            phone: phone.to_owned(),
            verification_code: code.to_owned(),
            device_name: Some(device_name.to_owned()),
        })
        .await
}

/// A short, comparable fingerprint of a device key (shown on a new device
/// and on the device that approves it).
#[must_use]
pub fn fingerprint(key: &[u8]) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(key);
    digest[..10]
        .chunks(2)
        .map(|c| format!("{:02X}{:02X}", c[0], c.get(1).copied().unwrap_or(0)))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_process_holds_a_data_directory() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let first = Profile::open(dir.path());
        assert!(first.is_ok());
        let second = Profile::open(dir.path());
        let Err(e) = second else {
            unreachable!("a second process got the lock")
        };
        assert!(e.0.contains("another `natter chat`"), "{e}");
        drop(first);
        assert!(Profile::open(dir.path()).is_ok());
    }

    #[test]
    fn a_fresh_directory_is_not_logged_in_and_says_so() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let profile = Profile::open(dir.path()).unwrap_or_else(|e| unreachable!("{e}"));
        assert!(matches!(profile.current(None), Ok(None)));
        let Err(e) = profile.require(None) else {
            unreachable!()
        };
        assert!(e.0.contains("natter chat login"));
    }

    #[test]
    fn fingerprints_are_grouped_hex() {
        let f = fingerprint(b"key");
        assert_eq!(f.len(), 24);
        assert_eq!(f.split(' ').count(), 5);
    }

    #[test]
    fn a_server_address_must_be_http() {
        assert!(client("ftp://x").is_err());
        assert!(client("http://127.0.0.1:1").is_ok());
    }
}
