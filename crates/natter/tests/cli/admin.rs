//! `natter admin` against real data directories, through the real binary:
//! every subcommand's help, bad input, accounts, devices, invites, stats,
//! check, the configuration commands, backup while serving, and restore.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Natter, WAIT, post};

/// What an admin command did.
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `natter admin <args>` in `cwd` with only `env` as `NATTER_*`
/// variables, within [`WAIT`].
fn admin_in(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Ran {
    let out = cwd.join(".admin-out");
    let err = cwd.join(".admin-err");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_natter"));
    cmd.arg("admin")
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap());
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("NATTER_")) {
        cmd.env_remove(k);
    }
    cmd.env("RUST_BACKTRACE", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("natter admin {args:?} did not finish in {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let ran = Ran {
        code: status.code().unwrap_or(-1),
        stdout: std::fs::read_to_string(&out).unwrap(),
        stderr: std::fs::read_to_string(&err).unwrap(),
    };
    assert!(
        !ran.stderr.contains("panicked") && !ran.stderr.contains("stack backtrace"),
        "natter admin {args:?} panicked:\n{}",
        ran.stderr
    );
    ran
}

/// `natter admin <args> --data-dir <data>`.
fn admin(data: &Path, args: &[&str]) -> Ran {
    let mut all = args.to_vec();
    all.extend(["--data-dir", data.to_str().unwrap()]);
    admin_in(data.parent().unwrap(), &all, &[])
}

/// `admin`, asserting success; returns stdout.
#[track_caller]
fn admin_ok(data: &Path, args: &[&str]) -> String {
    let ran = admin(data, args);
    assert_eq!(ran.code, 0, "natter admin {args:?}:\n{}", ran.stderr);
    ran.stdout
}

/// Starts `natter serve` on `data` with `env`; returns it and its base URL.
fn serve(data: &Path, env: &[(&str, &str)]) -> (Natter, String) {
    let mut vars = vec![
        ("NATTER_LISTEN", "127.0.0.1:0"),
        ("NATTER_DATA_DIR", data.to_str().unwrap()),
        ("NATTER_LOG", "info"),
    ];
    vars.extend_from_slice(env);
    let mut natter = Natter::spawn(data.parent().unwrap(), &["serve"], &vars);
    let line = natter.wait_for_line("natter is serving");
    let addr = super::listen_addr(&line);
    (natter, format!("http://{addr}"))
}

/// Stops a server with SIGTERM and waits for a clean exit.
fn stop(mut natter: Natter) {
    let pid = natter.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(natter.wait_exit(), 0);
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(WAIT).build().unwrap()
}

/// The first whitespace-separated word after `label` in `text`.
fn word_after<'a>(text: &'a str, label: &str) -> &'a str {
    text.split(label)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {label:?} in {text:?}"))
}

#[test]
fn every_admin_command_explains_itself_in_help() {
    let cwd = tempfile::tempdir().unwrap();
    let commands: &[&[&str]] = &[
        &[],
        &["user"],
        &["user", "create"],
        &["user", "list"],
        &["user", "deactivate"],
        &["user", "delete"],
        &["user", "login-code"],
        &["device"],
        &["device", "list"],
        &["device", "revoke"],
        &["invite"],
        &["invite", "create"],
        &["invite", "list"],
        &["invite", "revoke"],
        &["codes"],
        &["stats"],
        &["check"],
        &["genconfig"],
        &["checkconfig"],
        &["backup"],
        &["restore"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.push("--help");
        let ran = admin_in(cwd.path(), &args, &[]);
        assert_eq!(ran.code, 0, "{args:?}: {}", ran.stderr);
        let about = ran.stdout.lines().next().unwrap_or_default();
        assert!(
            about.split_whitespace().count() >= 3 && !about.starts_with("Usage"),
            "{args:?} has no description: {:?}",
            ran.stdout
        );
    }
}

#[test]
fn bad_input_is_a_clear_message_and_a_nonzero_exit() {
    let cwd = tempfile::tempdir().unwrap();
    let data = cwd.path().join("data");
    admin_ok(&data, &["invite", "create"]);
    let cases: &[(&[&str], i32, &str)] = &[
        (&["user", "deactivate", "nobody"], 2, "not a user id"),
        (&["device", "revoke", "123"], 2, "not a device id"),
        (&["device", "list"], 2, "--user"),
        (&["invite", "revoke", "inv_x"], 2, "not an invite id"),
        (
            &["invite", "create", "--expires-in", "7w"],
            2,
            "not a positive duration",
        ),
        (&["invite", "create", "--uses", "0"], 2, "at least one use"),
        (&["invite", "create", "--uses", "many"], 2, "invalid value"),
        (
            &["user", "create", "--phone", "12", "--name", "X"],
            2,
            "phone",
        ),
        (
            &["user", "create", "--phone", "+14155550123", "--name", ""],
            2,
            "name",
        ),
        (
            &["user", "deactivate", "01a00000-0000-7000-8000-000000000000"],
            1,
            "no user",
        ),
        (
            &["device", "revoke", "01a00000-0000-7000-8000-000000000000"],
            1,
            "no device",
        ),
        (
            &["invite", "revoke", "01a00000-0000-7000-8000-000000000000"],
            1,
            "no usable invite",
        ),
        (
            &[
                "user",
                "delete",
                "nobody",
                "--confirm-phone",
                "+14155550123",
            ],
            2,
            "not a user id",
        ),
        (
            &["user", "delete", "01a00000-0000-7000-8000-000000000000"],
            2,
            "--confirm-phone",
        ),
        (
            &[
                "user",
                "delete",
                "01a00000-0000-7000-8000-000000000000",
                "--confirm-phone",
                "+14155550123",
            ],
            1,
            "no user",
        ),
        (&["frobnicate"], 2, "unrecognized subcommand"),
    ];
    for (args, code, needle) in cases {
        let ran = admin(&data, args);
        assert_eq!(ran.code, *code, "{args:?}: {}", ran.stderr);
        assert!(
            ran.stderr.to_lowercase().contains(&needle.to_lowercase()),
            "{args:?}: {:?} lacks {needle:?}",
            ran.stderr
        );
    }
    // A directory that is not a data directory is not created by a read.
    let ran = admin(&cwd.path().join("typo"), &["user", "list"]);
    assert_eq!(ran.code, 1);
    assert!(
        ran.stderr.contains("not a Natter data directory"),
        "{}",
        ran.stderr
    );
    assert!(!cwd.path().join("typo").exists());
    // A bad configuration names the key.
    let ran = admin_in(
        cwd.path(),
        &["stats"],
        &[("NATTER_LIMITS__MAX_BODY_BYTES", "0")],
    );
    assert_eq!(ran.code, 2);
    assert!(
        ran.stderr.contains("`limits.max_body_bytes`"),
        "{}",
        ran.stderr
    );
}

#[test]
fn genconfig_prints_a_valid_configuration_and_checkconfig_names_the_bad_key() {
    let cwd = tempfile::tempdir().unwrap();
    let ran = admin_in(cwd.path(), &["genconfig"], &[]);
    assert_eq!(ran.code, 0);
    assert!(ran.stdout.contains("[limits]") && ran.stdout.contains("[signup]"));
    assert_eq!(
        ran.stdout,
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/natter.example.toml")
        )
        .unwrap(),
        "genconfig and docs/natter.example.toml are one text"
    );
    let file = cwd.path().join("natter.toml");
    std::fs::write(&file, &ran.stdout).unwrap();
    let ok = admin_in(cwd.path(), &["checkconfig", "natter.toml"], &[]);
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert!(ok.stdout.contains("valid"), "{}", ok.stdout);

    let bad = ran
        .stdout
        .replace("max_attempts = 5", "max_attempts = \"five\"");
    std::fs::write(&file, bad).unwrap();
    let ran = admin_in(cwd.path(), &["checkconfig", "natter.toml"], &[]);
    assert_eq!(ran.code, 2);
    assert!(
        ran.stderr.contains("`verification.max_attempts`"),
        "{}",
        ran.stderr
    );

    std::fs::write(&file, "[signup]\nmode = \"sms\"\n").unwrap();
    let ran = admin_in(cwd.path(), &["checkconfig", "natter.toml"], &[]);
    assert_eq!(ran.code, 2);
    assert!(ran.stderr.contains("`sms_webhook_url`"), "{}", ran.stderr);

    std::fs::write(&file, "listn = \"127.0.0.1:1\"\n").unwrap();
    let ran = admin_in(cwd.path(), &["checkconfig", "natter.toml"], &[]);
    assert_eq!(ran.code, 2);
    assert!(ran.stderr.contains("listn"), "{}", ran.stderr);

    let ran = admin_in(cwd.path(), &["checkconfig", "missing.toml"], &[]);
    assert_eq!(ran.code, 2);
    assert!(ran.stderr.contains("missing.toml"), "{}", ran.stderr);
}

#[tokio::test]
async fn invites_users_and_devices_from_creation_to_deactivation() {
    let cwd = tempfile::tempdir().unwrap();
    let data = cwd.path().join("data");
    let invite_mode = [("NATTER_SIGNUP__MODE", "invite")];

    // Before the first start: an invite for two, one for one, and an account.
    let twice = admin_ok(
        &data,
        &["invite", "create", "--uses", "2", "--expires-in", "1d"],
    );
    let twice = twice.trim().to_owned();
    assert!(twice.starts_with("inv_"), "{twice}");
    let once = admin_ok(&data, &["invite", "create"]).trim().to_owned();
    let created = admin_ok(
        &data,
        &[
            "user",
            "create",
            "--phone",
            "+14155554000",
            "--name",
            "Olga",
        ],
    );
    let olga_id = word_after(&created, "created user").to_owned();
    let olga_code = word_after(&created, "login code:").to_owned();

    let (natter, base) = serve(&data, &invite_mode);
    // While the server runs, admin commands refuse, clearly.
    let ran = admin(&data, &["user", "list"]);
    assert_eq!(ran.code, 1);
    assert!(ran.stderr.contains("server is running"), "{}", ran.stderr);

    let http = http();
    let (status, ann) = post(
        &http,
        format!("{base}/api/v1/users/register"),
        json!({"phone": "+14155554001", "name": "Ann", "invite": twice}),
    )
    .await;
    assert_eq!(status, 201, "{ann}");
    let (status, olga) = post(
        &http,
        format!("{base}/api/v1/users/login"),
        json!({"phone": "+14155554000", "verification_code": olga_code, "device_name": "Olga's phone"}),
    )
    .await;
    assert_eq!(status, 200, "{olga}");
    assert_eq!(olga["user_id"], olga_id.as_str());
    stop(natter);

    // The list shows both accounts and the invite's use.
    let users = admin_ok(&data, &["user", "list"]);
    assert!(
        users.contains("+14155554000") && users.contains("Olga"),
        "{users}"
    );
    assert!(
        users.contains("+14155554001") && users.contains("Ann"),
        "{users}"
    );
    assert!(users.contains("2 users"), "{users}");
    let invites = admin_ok(&data, &["invite", "list"]);
    assert!(
        invites.contains("1/2") && invites.contains("0/1"),
        "{invites}"
    );
    assert!(!invites.contains(&twice), "invites are never shown again");
    let once_id = invites
        .lines()
        .find(|l| l.contains("0/1"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();
    assert!(admin_ok(&data, &["invite", "revoke", &once_id]).contains("revoked"));
    assert!(admin_ok(&data, &["invite", "list"]).contains("revoked"));

    // Devices: Olga's one, revoked by id.
    let devices = admin_ok(&data, &["device", "list", "--user", &olga_id]);
    assert!(
        devices.contains("Olga's phone") && devices.contains("1 devices"),
        "{devices}"
    );
    let device_id = olga["device_id"].as_str().unwrap();
    assert!(devices.contains(device_id), "{devices}");
    admin_ok(&data, &["device", "revoke", device_id]);
    assert!(admin_ok(&data, &["device", "list", "--user", &olga_id]).contains("0 devices"));

    // Ann is deactivated: her token dies and she cannot log in again.
    let ann_id = ann["user_id"].as_str().unwrap();
    let out = admin_ok(&data, &["user", "deactivate", ann_id]);
    assert!(out.contains("1 devices logged out"), "{out}");
    assert!(admin_ok(&data, &["user", "list"]).contains("deactivated"));
    let ran = admin(&data, &["user", "login-code", ann_id]);
    assert_eq!(ran.code, 1, "no login code for a deactivated account");
    let stats = admin_ok(&data, &["stats"]);
    assert!(
        stats.contains("users:          2 (1 deactivated)"),
        "{stats}"
    );
    assert!(stats.contains("usable invites: 1"), "{stats}");

    let (natter, base) = serve(&data, &invite_mode);
    let me = http
        .get(format!("{base}/api/v1/users/me"))
        .bearer_auth(ann["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 401);
    let (status, _) = post(
        &http,
        format!("{base}/api/v1/users/register"),
        json!({"phone": "+14155554002", "name": "Cy", "invite": once}),
    )
    .await;
    assert_eq!(status, 401, "a revoked invite creates no account");
    stop(natter);

    // A fresh login code for Olga, who lost her only device.
    let ran = admin_in(
        cwd.path(),
        &[
            "user",
            "login-code",
            &olga_id,
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &invite_mode,
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let code = word_after(&ran.stdout, "+14155554000:").to_owned();
    // Outside development mode `codes` lists it, but only its hash is stored.
    let ran = admin_in(
        cwd.path(),
        &["codes", "--data-dir", data.to_str().unwrap()],
        &invite_mode,
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let line = ran.stdout.lines().find(|l| l.contains("+14155554000"));
    assert!(
        line.is_some_and(|l| l.contains("(hidden)")),
        "{}",
        ran.stdout
    );
    assert!(!ran.stdout.contains(&code), "{}", ran.stdout);
    assert!(ran.stderr.contains("only their hashes"), "{}", ran.stderr);
    let (_natter, base) = serve(&data, &invite_mode);
    let (status, _) = post(
        &http,
        format!("{base}/api/v1/users/login"),
        json!({"phone": "+14155554000", "verification_code": code}),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn in_development_codes_shows_pending_codes_while_the_server_runs() {
    let cwd = tempfile::tempdir().unwrap();
    let data = cwd.path().join("data");
    let (_natter, base) = serve(&data, &[]);
    let (status, _) = post(
        &http(),
        format!("{base}/api/v1/users/verification"),
        json!({"phone": "+14155554100"}),
    )
    .await;
    assert_eq!(status, 202);
    let listed = admin_ok(&data, &["codes"]);
    let line = listed
        .lines()
        .find(|l| l.contains("+14155554100"))
        .unwrap_or_else(|| panic!("{listed}"));
    let code = line.split_whitespace().nth(1).unwrap().to_owned();
    assert!(
        code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()),
        "{line}"
    );
    assert!(listed.contains("1 pending codes"), "{listed}");
    // The code shown is the one that signs the tester up.
    let (status, body) = post(
        &http(),
        format!("{base}/api/v1/users/register"),
        json!({"phone": "+14155554100", "name": "Tess", "verification_code": code}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert!(admin_ok(&data, &["codes"]).contains("0 pending codes"));
}

#[test]
fn user_delete_needs_the_number_and_frees_it() {
    let cwd = tempfile::tempdir().unwrap();
    let data = cwd.path().join("data");
    let created = admin_ok(
        &data,
        &["user", "create", "--phone", "+14155554200", "--name", "Dee"],
    );
    let id = word_after(&created, "created user").to_owned();
    let ran = admin(
        &data,
        &["user", "delete", &id, "--confirm-phone", "+14155554201"],
    );
    assert_eq!(ran.code, 1);
    assert!(ran.stderr.contains("Nothing was deleted"), "{}", ran.stderr);
    assert!(admin_ok(&data, &["user", "list"]).contains("1 users"));
    // Any form of the number that parses to it confirms.
    let out = admin_ok(
        &data,
        &["user", "delete", &id, "--confirm-phone", "+1 415 555 4200"],
    );
    assert!(out.contains("deleted user"), "{out}");
    assert!(admin_ok(&data, &["user", "list"]).contains("0 users"));
    // The number is free again.
    admin_ok(
        &data,
        &["user", "create", "--phone", "+14155554200", "--name", "Dee"],
    );
}

/// Signs `phone` up on an open-mode server, reading the code from stderr.
async fn sign_up(natter: &mut Natter, base: &str, phone: &str) -> Value {
    super::sign_up(natter, &http(), base, phone).await
}

/// Uploads `bytes` as a file; returns the media id.
async fn upload(base: &str, token: &str, bytes: Vec<u8>) -> String {
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name("notes.txt"),
        )
        .text("type", "file");
    let res = http()
        .post(format!("{base}/api/v1/media/upload"))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let media: Value = res.json().await.unwrap();
    media["media_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn check_finds_a_missing_blob_and_a_damaged_database() {
    let cwd = tempfile::tempdir().unwrap();
    let data = cwd.path().join("data");
    let (mut natter, base) = serve(&data, &[]);
    let alice = sign_up(&mut natter, &base, "+14155554100").await;
    let token = alice["access_token"].as_str().unwrap();
    let media = upload(&base, token, b"hello, blob".to_vec()).await;
    stop(natter);

    let out = admin_ok(&data, &["check"]);
    assert!(
        out.contains("1 looked for") && out.trim_end().ends_with("ok"),
        "{out}"
    );

    std::fs::remove_file(data.join("blobs/media").join(&media)).unwrap();
    let ran = admin(&data, &["check"]);
    assert_eq!(ran.code, 1, "{}", ran.stdout);
    assert!(
        ran.stdout.contains(&format!("missing blob media/{media}")),
        "{}",
        ran.stdout
    );

    // Damage the database: zero pages 5 to 8, the accounts' indexes
    // (migration 0001 is never edited, so they stay there).
    {
        use std::io::{Seek as _, SeekFrom, Write as _};
        let mut db = std::fs::OpenOptions::new()
            .write(true)
            .open(data.join("natter.db"))
            .unwrap();
        db.seek(SeekFrom::Start(4 * 4096)).unwrap();
        db.write_all(&[0u8; 4 * 4096]).unwrap();
    }
    let ran = admin(&data, &["check"]);
    assert_eq!(ran.code, 1, "{}", ran.stdout);
    let said = format!("{}{}", ran.stdout, ran.stderr);
    assert!(
        said.contains("malformed") || said.contains("PROBLEM"),
        "{said}"
    );
}

#[tokio::test]
async fn a_backup_taken_while_serving_restores_into_a_working_server() {
    let cwd = tempfile::tempdir().unwrap();
    let data = cwd.path().join("data");
    let (mut natter, base) = serve(
        &data,
        &[("NATTER_RATE_LIMITS__MESSAGES_PER_USER__BURST", "1000000")],
    );
    let alice = sign_up(&mut natter, &base, "+14155554200").await;
    let bob = sign_up(&mut natter, &base, "+14155554201").await;
    let token = alice["access_token"].as_str().unwrap().to_owned();
    let media = upload(&base, &token, vec![7u8; 100_000]).await;
    let http = http();
    let chat: Value = http
        .post(format!("{base}/api/v1/chats"))
        .bearer_auth(&token)
        .json(&json!({"type": "direct", "participants": [bob["user_id"]]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let chat = chat["id"].as_str().unwrap().to_owned();
    let send = {
        let (http, base, token, chat) = (http.clone(), base.clone(), token.clone(), chat.clone());
        move |n: usize| {
            let (http, base, token, chat) =
                (http.clone(), base.clone(), token.clone(), chat.clone());
            async move {
                let res = http
                    .post(format!("{base}/api/v1/messages"))
                    .bearer_auth(&token)
                    .json(&json!({"chat_id": chat, "content": format!("m{n}")}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 201);
            }
        }
    };
    for n in 0..50 {
        send(n).await;
    }

    // Back up while a sender keeps writing.
    let writing = tokio::spawn({
        let send = send.clone();
        async move {
            for n in 50..400 {
                send(n).await;
            }
        }
    });
    let backup_dir = cwd.path().join("backup");
    let ran = tokio::task::spawn_blocking({
        let (data, to) = (data.clone(), backup_dir.clone());
        move || admin(&data, &["backup", "--to", to.to_str().unwrap()])
    })
    .await
    .unwrap();
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("database:") && ran.stderr.contains("pages"),
        "{}",
        ran.stderr
    );
    assert!(ran.stderr.contains("blobs: 1 files"), "{}", ran.stderr);
    tokio::time::timeout(WAIT, writing).await.unwrap().unwrap();
    // A second backup into the same directory is refused.
    let again = admin(&data, &["backup", "--to", backup_dir.to_str().unwrap()]);
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("not empty"), "{}", again.stderr);
    stop(natter);

    // Restore into a fresh directory and serve it.
    let restored = cwd.path().join("restored");
    let ran = admin(
        &restored,
        &["restore", "--from", backup_dir.to_str().unwrap()],
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let out = admin_ok(&restored, &["check"]);
    assert!(out.trim_end().ends_with("ok"), "{out}");
    // Restoring over a data directory is refused.
    let ran = admin(
        &restored,
        &["restore", "--from", backup_dir.to_str().unwrap()],
    );
    assert_eq!(ran.code, 1);
    assert!(ran.stderr.contains("not empty"), "{}", ran.stderr);

    let (_natter, base) = serve(&restored, &[]);
    let page: Value = http
        .get(format!("{base}/api/v1/chats/{chat}/messages?limit=100"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let newest = page["messages"][0]["seq"].as_i64().unwrap();
    assert!(
        newest >= 50,
        "the backup has at least what was there before it: {newest}"
    );
    let blob = http
        .get(format!("{base}/api/v1/media/{media}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(blob.status(), 200);
    assert_eq!(blob.bytes().await.unwrap().len(), 100_000);
}

/// With a PostgreSQL store (`store.url`), the commands that work through the
/// store work on it (here `stats`, which migrates the database first), and
/// those that read or copy the embedded store's files refuse, saying what
/// to use instead.
#[test]
fn on_a_postgresql_store_stats_work_and_file_commands_refuse() {
    let cluster = natter_testkit::pg::PgCluster::from_env_or_start().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let db = runtime.block_on(cluster.empty_database()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let url = db.url();
    let env = [("NATTER_STORE__URL", url.as_str())];
    let data_arg = data.to_str().unwrap();
    let stats = admin_in(dir.path(), &["stats", "--data-dir", data_arg], &env);
    assert_eq!(stats.code, 0, "{}", stats.stderr);
    assert!(
        stats.stdout.contains("users:") && stats.stdout.contains("chats:"),
        "{}",
        stats.stdout
    );
    let to = dir.path().join("backup");
    for args in [vec!["backup", "--to", to.to_str().unwrap()], vec!["codes"]] {
        let mut all = args.clone();
        all.extend(["--data-dir", data_arg]);
        let ran = admin_in(dir.path(), &all, &env);
        assert_ne!(ran.code, 0, "{args:?} ran on a PostgreSQL store");
        assert!(
            ran.stderr.contains("store.url") && ran.stderr.contains("pg_dump"),
            "{}",
            ran.stderr
        );
    }
    assert!(!to.exists(), "nothing was written");
}
