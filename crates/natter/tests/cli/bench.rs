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
    bench_within(args, LIMIT)
}

/// [`bench`], killed (and failed) after `limit`.
fn bench_within(args: &[&str], limit: Duration) -> Value {
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
    // Its own process group, so a timeout kills the servers it started too.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "natter bench {args:?} did not finish in {limit:?}; stderr:\n{}",
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

#[test]
fn keys_hands_every_one_time_package_out_once_then_the_last_resort() {
    let r = bench(&[
        "keys",
        "--users",
        "3",
        "--packages",
        "12",
        "--batch",
        "5",
        "--per-claim",
        "2",
        "--claimers",
        "2",
    ]);
    assert_eq!(r["violations"], serde_json::json!([]), "{r}");
    // 3 × 12 packages, 2 users per claim: 18 claims take all 36.
    assert_eq!(count(&r, "/keys/one_time_handed_out"), 36, "{r}");
    assert_eq!(count(&r, "/keys/one_time_distinct"), 36, "{r}");
    assert_eq!(count(&r, "/keys/last_resort_after_exhaustion"), 3, "{r}");
    assert_eq!(count(&r, "/keys/claim_latency/count"), 18, "{r}");
}

/// The soak's whole run (sign-ups, 18 s of trouble, settling) in a debug
/// build on a loaded 2-core machine takes about 20 s.
const SOAK_LIMIT: Duration = Duration::from_secs(60);

/// The delivery checker on a short soak: 6 users (8 devices), a group and
/// three direct chats, REST and WebSocket sends with retries, socket drops
/// and `kill -9`s of the server every ~6 s. `SOAK_SEED=<n>` replays a seed.
#[test]
fn soak_loses_nothing_acknowledged_and_repeats_nothing_across_kill_9() {
    let seed = std::env::var("SOAK_SEED").unwrap_or_else(|_| "20261202".to_owned());
    let r = bench_within(
        &[
            "soak",
            "--minutes",
            "0.3",
            "--clients",
            "6",
            "--kill-every",
            "6",
            "--seed",
            &seed,
        ],
        SOAK_LIMIT,
    );
    assert_no_violations(&r, &format!("SOAK_SEED={seed}"));
    assert!(count(&r, "/kills") >= 1, "SOAK_SEED={seed}: {r}");
    assert!(count(&r, "/acked") > 100, "SOAK_SEED={seed}: {r}");
    assert!(count(&r, "/retries") > 0, "SOAK_SEED={seed}: {r}");
    assert!(
        count(&r, "/attempts/websocket") > 0,
        "SOAK_SEED={seed}: {r}"
    );
    assert!(
        count(&r, "/delivered") >= count(&r, "/acked"),
        "SOAK_SEED={seed}: {r}"
    );
}

/// Asserts a soak report found no violation, listing them if it did.
#[track_caller]
fn assert_no_violations(r: &Value, run: &str) {
    let violations = r["violations"].as_array().unwrap();
    assert!(
        violations.is_empty(),
        "{run}: {} violations:\n{}",
        violations.len(),
        violations
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A fault run on a 3-node cluster (its own PostgreSQL, NATS and S3: the
/// bench starts `scripts/pg-cluster`, `nats-server` and `moto_server`;
/// Debian: `apt-get install postgresql nats-server`, `pip install
/// 'moto[server]'`): engines, nodes and 18 s of trouble take about 30 s in
/// a debug build on 2 cores.
const FAULT_LIMIT: Duration = Duration::from_secs(90);

/// `natter bench soak --nodes 3 --fault <fault>`, checked for violations.
fn fault_run(fault: &str) -> Value {
    let seed = std::env::var("SOAK_SEED").unwrap_or_else(|_| "20261203".to_owned());
    let r = bench_within(
        &[
            "soak",
            "--nodes",
            "3",
            "--fault",
            fault,
            "--minutes",
            "0.3",
            "--clients",
            "6",
            "--kill-every",
            "6",
            "--outage",
            "3",
            "--seed",
            &seed,
        ],
        FAULT_LIMIT,
    );
    assert_no_violations(&r, &format!("--fault {fault} SOAK_SEED={seed}"));
    assert!(count(&r, "/acked") > 100, "--fault {fault}: {r}");
    assert!(count(&r, "/fault/faults") >= 1, "--fault {fault}: {r}");
    r
}

#[test]
fn a_cluster_loses_nothing_across_kill_9_of_its_nodes() {
    let r = fault_run("node");
    assert_eq!(count(&r, "/params/nodes"), 3, "{r}");
    assert!(count(&r, "/kills") >= 1, "{r}");
}

#[test]
fn a_cluster_loses_nothing_across_a_nats_restart() {
    let r = fault_run("nats");
    assert!(r["fault"]["outage_s"].as_f64().unwrap() > 0.0, "{r}");
}

#[test]
fn a_cluster_answers_503_with_retry_after_while_postgres_is_down() {
    let r = fault_run("postgres");
    // The run itself requires at least one 503 and nothing but 201 or 503.
    assert!(count(&r, "/fault/probes/unavailable") >= 1, "{r}");
    assert_eq!(count(&r, "/fault/probes/other"), 0, "{r}");
}

#[test]
fn a_node_that_joins_a_running_cluster_serves_requests() {
    let r = fault_run("join");
    assert_eq!(count(&r, "/params/nodes"), 4, "{r}");
    assert!(count(&r, "/fault/joined_served") > 0, "{r}");
}

#[test]
fn an_unknown_fault_is_refused_with_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_natter"))
        .args(["bench", "soak", "--fault", "bogus"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid value 'bogus'"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_fault_of_the_cluster_engines_needs_a_cluster() {
    let out = Command::new(env!("CARGO_BIN_EXE_natter"))
        .args(["bench", "soak", "--fault", "nats", "--minutes", "0.1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("needs a cluster"), "{stderr}");
}

/// `idle` on a 2-node cluster, its client side in worker processes of at
/// most 20 sockets: every connection held, straight to the nodes, and
/// probes between users of different nodes all delivered.
#[test]
fn idle_on_a_cluster_holds_every_connection_in_workers_and_probes_across_nodes() {
    let r = bench_within(
        &[
            "idle",
            "--nodes",
            "2",
            "-n",
            "50",
            "--per-worker",
            "20",
            "--probe-users",
            "10",
            "--probe-rate",
            "20",
            "--hold",
            "2",
        ],
        FAULT_LIMIT,
    );
    assert_no_violations(&r, "idle --nodes 2");
    assert_eq!(count(&r, "/nodes"), 2, "{r}");
    assert_eq!(count(&r, "/open_at_end"), 50, "{r}");
    // 40 sockets beside the 10 probe users, at most 20 per worker.
    assert_eq!(count(&r, "/workers"), 2, "{r}");
    let shares: Vec<u64> = r["worker_sockets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(shares.iter().sum::<u64>(), 40, "{r}");
    assert!(shares.iter().all(|&s| s <= 20), "{r}");
    assert_eq!(r["worker_open"], r["worker_sockets"], "{r}");
    let sent = count(&r, "/probes/sent");
    assert!(sent >= 10, "{r}");
    assert_eq!(count(&r, "/probes/delivered"), sent, "{r}");
    assert_eq!(count(&r, "/probes/latency/count"), sent, "{r}");
    assert_eq!(count(&r, "/probes/lost"), 0, "{r}");
    assert_eq!(r["probes"]["cross_node"], true, "{r}");
    assert!(count(&r, "/probes/pairs") >= 5, "{r}");
    let nodes = r["memory"]["node_rss_after"].as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{r}");
    assert!(nodes.iter().all(Value::is_u64), "{r}");
    assert!(r["memory"]["nats_rss_after"].is_u64(), "{r}");
    assert!(r["memory"]["postgres_pss_after"].is_u64(), "{r}");
    assert!(r["signups_per_sec"].as_f64().unwrap() > 0.0, "{r}");
}

#[test]
fn idle_on_a_cluster_refuses_limits_it_cannot_fit() {
    for (args, says) in [
        (&["--per-worker", "0"][..], "--per-worker must be 1 to"),
        (
            &["--per-worker", "1000000"][..],
            "--per-worker must be 1 to",
        ),
        (&["--probe-users", "1"][..], "--probe-users must be 0"),
        (&["-n", "100000"][..], "use --nodes"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_natter"))
            .args(["bench", "--nodes", "2", "idle"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_natter"))
        .args(["bench", "--cluster", "idle", "--probe-users", "4"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cross-node probes need --nodes 2"),
        "{out:?}"
    );
}
