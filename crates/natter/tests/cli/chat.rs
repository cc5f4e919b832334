//! `natter chat`: the non-interactive commands against a real `natter
//! serve` (codes read from its development SMS sink), and the terminal
//! client driven in tmux (`tmux.rs`).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Natter, WAIT, listen_addr};

/// A `natter serve` for chat tests: its own data directory, a free port.
pub(super) struct ChatServer {
    pub(super) natter: Natter,
    pub(super) base: String,
    pub(super) dir: tempfile::TempDir,
}

impl ChatServer {
    pub(super) fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let natter = Self::serve(dir.path(), "127.0.0.1:0");
        let mut server = Self {
            natter,
            base: String::new(),
            dir,
        };
        let line = server.natter.wait_for_line("natter is serving");
        server.base = format!("http://{}", listen_addr(&line));
        server
    }

    fn serve(dir: &Path, listen: &str) -> Natter {
        let data = dir.join("server");
        Natter::spawn(
            dir,
            &["serve"],
            &[
                ("NATTER_LISTEN", listen),
                ("NATTER_DATA_DIR", data.to_str().unwrap()),
            ],
        )
    }

    /// Stops the server (SIGKILL) and starts it again on the same address
    /// and data; `between` runs while it is down.
    pub(super) fn restart(&mut self, between: impl FnOnce()) {
        let _ = self.natter.child.kill();
        let _ = self.natter.child.wait();
        between();
        let addr = self.base.trim_start_matches("http://").to_owned();
        self.natter = Self::serve(self.dir.path(), &addr);
        self.natter.wait_for_line("natter is serving");
    }

    /// The code the development SMS sink printed for `phone`.
    pub(super) fn code_for(&mut self, phone: &str) -> String {
        let line = self.natter.wait_for_line(&format!("phone={phone} code="));
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("code="))
            .unwrap()
            .to_owned()
    }

    /// A client data directory of its own.
    pub(super) fn client_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The command line of an interactive `natter chat` for this server,
    /// with the data directory `name`.
    pub(super) fn interactive(&self, name: &str) -> Vec<String> {
        vec![
            env!("CARGO_BIN_EXE_natter").to_owned(),
            "chat".to_owned(),
            "--server".to_owned(),
            self.base.clone(),
            "--data-dir".to_owned(),
            self.client_dir(name).to_str().unwrap().to_owned(),
        ]
    }

    /// `natter chat login` for `phone`, typing the code from the log.
    pub(super) fn log_in(&mut self, dir: &Path, phone: &str, name: &str) -> Output {
        let mut child = chat(dir, &self.base)
            .args([
                "login",
                "--phone",
                phone,
                "--name",
                name,
                "--device-name",
                "cli",
            ])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let code = self.code_for(phone);
        writeln!(child.stdin.take().unwrap(), "{code}").unwrap();
        wait_output(child)
    }
}

/// `natter chat --data-dir DIR --server BASE`, output captured.
pub(super) fn chat(dir: &Path, base: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_natter"));
    cmd.arg("chat")
        .arg("--data-dir")
        .arg(dir)
        .arg("--server")
        .arg(base)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Waits (within WAIT) for a child and its output; kills it on timeout.
pub(super) fn wait_output(mut child: Child) -> Output {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    panic!(
        "natter chat did not finish within {WAIT:?}; stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run(cmd: &mut Command) -> Output {
    wait_output(cmd.spawn().unwrap())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A failure a person can read: one `natter chat:` sentence, no panic, no
/// debug dump of an error value.
fn assert_clear_failure(out: &Output, needle: &str) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("natter chat: "), "{err}");
    for raw in [
        "panicked",
        "Error {",
        "Api(",
        "Transport(",
        "RUST_BACKTRACE",
    ] {
        assert!(!err.contains(raw), "raw error in: {err}");
    }
}

/// The saved session of the client in `dir`.
fn saved_session(dir: &Path) -> (PathBuf, Value) {
    let device = std::fs::read_to_string(dir.join("current")).unwrap();
    let path = dir.join(device.trim()).join("session.json");
    let session = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    (path, session)
}

#[test]
fn login_keeps_the_session_private_and_never_prints_the_token() {
    let mut server = ChatServer::start();
    let dir = server.client_dir("alice");
    let out = server.log_in(&dir, "+14155550301", "Alice");
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    // The client says where the code comes from on a development server.
    assert!(err.contains("DEVELOPMENT SMS SINK"), "{err}");
    let (path, session) = saved_session(&dir);
    let token = session["token"].as_str().unwrap();
    assert!(token.len() > 20);
    assert!(!err.contains(token) && !text(&out.stdout).contains(token));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
    // The same number on a second directory logs in to the same account.
    let second = server.client_dir("alice-2");
    let out = server.log_in(&second, "+14155550301", "Alice");
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("has an account already"), "{err}");
    assert!(err.contains("further device"), "{err}");
    assert_eq!(saved_session(&second).1["user_id"], session["user_id"]);
}

#[test]
fn send_and_tail_carry_an_encrypted_message_and_a_file() {
    let mut server = ChatServer::start();
    let (alice, bob) = (server.client_dir("alice"), server.client_dir("bob"));
    assert!(
        server
            .log_in(&alice, "+14155550311", "Alice")
            .status
            .success()
    );
    assert!(server.log_in(&bob, "+14155550312", "Bob").status.success());
    let out = run(chat(&alice, &server.base).args(["send", "--to", "+14155550312", "hello, Bob"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let sent: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(sent["seq"].as_i64().unwrap() > 0);
    let file = server.dir.path().join("notes.bin");
    let bytes: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &bytes).unwrap();
    let out = run(chat(&alice, &server.base).args([
        "send",
        "--to",
        sent["chat_id"].as_str().unwrap(),
        "--file",
        file.to_str().unwrap(),
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(chat(&bob, &server.base).args(["tail", "--count", "2"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &Value| v["type"] == "message")
        .collect();
    assert_eq!(lines.len(), 2, "{}", text(&out.stdout));
    assert_eq!(lines[0]["text"], "hello, Bob");
    assert_eq!(lines[0]["chat_id"], sent["chat_id"]);
    assert_eq!(lines[1]["kind"], "file");
    assert_eq!(lines[1]["name"], "notes.bin");
    assert_eq!(lines[1]["size"], 70_000);
    // The server holds no plaintext of it.
    let db = std::fs::read(server.dir.path().join("server/natter.db")).unwrap_or_default();
    assert!(!db.windows(10).any(|w| w == b"hello, Bob"));

    // A file to a plaintext chat goes as plain media, and tail names it.
    let carol = server.client_dir("carol");
    assert!(
        server
            .log_in(&carol, "+14155550313", "Carol")
            .status
            .success()
    );
    let out = run(chat(&alice, &server.base).args([
        "send",
        "--plain",
        "--to",
        "+14155550313",
        "--file",
        file.to_str().unwrap(),
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(chat(&carol, &server.base).args(["tail", "--count", "1"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let line: Value = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .find(|v: &Value| v["type"] == "message")
        .unwrap();
    assert_eq!(line["kind"], "file", "{line}");
    assert_eq!(line["name"], "notes.bin");
    assert!(line["media_id"].is_string(), "{line}");
}

#[test]
fn bad_input_gets_a_sentence_not_a_panic() {
    let mut server = ChatServer::start();
    let alice = server.client_dir("alice");
    // Not logged in yet.
    let out = run(chat(&alice, &server.base).args(["send", "--to", "+14155550399", "hi"]));
    assert_clear_failure(&out, "not logged in");
    assert!(
        server
            .log_in(&alice, "+14155550321", "Alice")
            .status
            .success()
    );
    // A number nobody has.
    let out = run(chat(&alice, &server.base).args(["send", "--to", "+14155550399", "hi"]));
    assert_clear_failure(&out, "no Natter account has the number +14155550399");
    // Not a number.
    let out = run(chat(&alice, &server.base).args(["send", "--to", "+1", "hi"]));
    assert_clear_failure(&out, "not a phone number");
    // Neither text nor file.
    let out = run(chat(&alice, &server.base).args(["send", "--to", "+14155550399"]));
    assert_clear_failure(&out, "--file");
    // A wrong code, three times.
    let bob = server.client_dir("bob");
    let mut child = chat(&bob, &server.base)
        .args([
            "login",
            "--phone",
            "+14155550322",
            "--name",
            "Bob",
            "--device-name",
            "x",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    server.code_for("+14155550322");
    writeln!(child.stdin.as_mut().unwrap(), "000000\n000001\n000002").unwrap();
    let out = wait_output(child);
    assert_clear_failure(&out, "the code is wrong");
    // The server down (a port nobody listens on).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let out = run(chat(&alice, &down).args(["send", "--to", "+14155550399", "hi"]));
    assert_clear_failure(&out, "cannot reach the Natter server at");
    let out =
        run(chat(&server.client_dir("carol"), &down).args(["login", "--phone", "+14155550323"]));
    assert_clear_failure(&out, "cannot reach the Natter server at");
    // The interactive client without a terminal.
    let out = run(&mut chat(&alice, &server.base));
    assert_clear_failure(&out, "needs a terminal");
    // Not an address.
    let out = run(chat(&alice, "localhost:8080").args(["tail"]));
    assert_clear_failure(&out, "http://");
}

#[tokio::test]
async fn an_expired_session_says_to_log_in_again() {
    let mut server = ChatServer::start();
    let alice = server.client_dir("alice");
    assert!(
        server
            .log_in(&alice, "+14155550331", "Alice")
            .status
            .success()
    );
    let (_, session) = saved_session(&alice);
    let status = reqwest::Client::new()
        .post(format!("{}/api/v1/users/logout", server.base))
        .bearer_auth(session["token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 204);
    let base = server.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        run(chat(&alice, &base).args(["send", "--to", "+14155550399", "hi"]))
    })
    .await
    .unwrap();
    assert_clear_failure(&out, "natter chat login");
    let alice = server.client_dir("alice");
    let base = server.base.clone();
    let out = tokio::task::spawn_blocking(move || run(chat(&alice, &base).args(["tail"])))
        .await
        .unwrap();
    assert_clear_failure(&out, "session has ended");
}

#[test]
fn one_client_at_a_time_per_data_directory() {
    let mut server = ChatServer::start();
    let alice = server.client_dir("alice");
    assert!(
        server
            .log_in(&alice, "+14155550341", "Alice")
            .status
            .success()
    );
    let mut tail = chat(&alice, &server.base).arg("tail").spawn().unwrap();
    // Wait (bounded) until the tail holds the directory's lock.
    let deadline = Instant::now() + WAIT;
    let lock = std::fs::File::open(alice.join("lock")).unwrap();
    while lock.try_lock().is_ok() {
        lock.unlock().unwrap();
        assert!(Instant::now() < deadline, "the tail never took the lock");
        assert!(tail.try_wait().unwrap().is_none(), "the tail ended");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = run(chat(&alice, &server.base).args(["send", "--to", "+14155550399", "x"]));
    let _ = tail.kill();
    let _ = tail.wait();
    assert_clear_failure(&out, "another `natter chat` is using");
}
