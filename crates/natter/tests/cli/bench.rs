//! Smoke tests of `natter bench`: each scenario runs tiny against the real
//! binary (which starts its own server or relay), within a time limit. They
//! check that the JSON report is well formed and that every message sent
//! was delivered exactly; never how fast (CI machines vary).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A tiny scenario finishes in seconds even in a debug build.
const LIMIT: Duration = Duration::from_secs(90);

/// Runs `natter bench <args> --json` and returns its report.
fn bench(args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.json");
    let err = dir.path().join("err.txt");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_natter"));
    cmd.arg("bench")
        .args(args)
        .arg("--json")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap());
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("NATTER_")) {
        cmd.env_remove(k);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "natter bench {args:?} did not finish in {LIMIT:?}; stderr:\n{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&out).unwrap();
    assert!(
        status.success(),
        "natter bench {args:?} failed; stderr:\n{}",
        std::fs::read_to_string(&err).unwrap_or_default()
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn count(v: &Value, path: &str) -> u64 {
    v.pointer(path)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no count at {path} in {v}"))
}

/// Every message sent in a phase was confirmed durable and delivered once.
fn all_delivered(report: &Value, phase: &str, expected_sent: Option<u64>) {
    let sent = count(report, &format!("{phase}/sent"));
    if let Some(expected) = expected_sent {
        assert_eq!(sent, expected, "{phase} in {report}");
    }
    assert!(sent > 0, "{phase} sent nothing: {report}");
    assert_eq!(
        count(report, &format!("{phase}/delivered")),
        sent,
        "{phase} in {report}"
    );
    assert_eq!(
        count(report, &format!("{phase}/confirmed")),
        sent,
        "{phase} in {report}"
    );
    assert_eq!(
        count(report, &format!("{phase}/errors")),
        0,
        "{phase} in {report}"
    );
    assert_eq!(
        count(report, &format!("{phase}/latency/count")),
        sent,
        "{phase} in {report}"
    );
}

#[test]
fn relay_delivers_every_message_through_natter_and_the_baseline() {
    let r = bench(&[
        "relay",
        "--pairs",
        "2",
        "--window",
        "4",
        "--messages",
        "100",
        "--duration",
        "30",
        "--rate",
        "200",
        "--open-duration",
        "0.5",
    ]);
    assert_eq!(r["scenario"], "relay");
    for target in ["/baseline", "/natter"] {
        all_delivered(&r, &format!("{target}/closed"), Some(100));
        all_delivered(&r, &format!("{target}/open"), None);
    }
    assert!(r["natter_vs_baseline"].is_number(), "{r}");
}

#[test]
fn idle_holds_every_connection() {
    let r = bench(&["idle", "-n", "20", "--hold", "0.2"]);
    assert_eq!(count(&r, "/open_at_end"), 20, "{r}");
    assert!(r["connects_per_sec"].is_number(), "{r}");
    assert!(r["server_bytes_per_connection"].is_number(), "{r}");
}

#[test]
fn group_delivers_every_message_to_every_other_member() {
    let r = bench(&[
        "group",
        "-g",
        "5",
        "-k",
        "2",
        "--rate",
        "40",
        "--duration",
        "0.5",
    ]);
    let sent = count(&r, "/sent");
    assert!(sent > 0, "{r}");
    assert_eq!(count(&r, "/expected_deliveries"), sent * 4, "{r}");
    assert_eq!(count(&r, "/delivered"), sent * 4, "{r}");
    assert_eq!(count(&r, "/members_complete"), 5, "{r}");
}

#[test]
fn catchup_syncs_every_queued_message() {
    let r = bench(&["catchup", "-k", "100", "--rounds", "2"]);
    for round in 0..2 {
        assert_eq!(count(&r, &format!("/rounds/{round}/messages")), 100, "{r}");
    }
}

#[test]
fn search_fills_the_store_and_queries_each_word_class() {
    let r = bench(&["search", "-m", "200", "-q", "3", "--senders", "2"]);
    assert_eq!(count(&r, "/params/messages"), 200, "{r}");
    for class in ["common", "medium", "rare"] {
        assert_eq!(count(&r, &format!("/queries/{class}/count")), 3, "{r}");
    }
    assert!(
        r.pointer("/queries/common/mean_hits")
            .and_then(Value::as_f64)
            .unwrap()
            > 0.0
    );
}

#[test]
fn e2ee_measures_the_mls_engine_in_process() {
    let r = bench(&["e2ee", "--members", "3", "--messages", "5"]);
    assert_eq!(count(&r, "/sizes/0/members"), 3, "{r}");
    assert!(count(&r, "/sizes/0/welcome_bytes") > 0, "{r}");
    assert!(count(&r, "/sizes/0/message_bytes") > 100, "{r}");
}
