//! The PostgreSQL engine against a real PostgreSQL (the test command's
//! cluster, or the test's own): migrations (also from two processes at
//! once), retried transactions under real serialization failures, and the
//! shared rate limits (one budget across nodes, exact under concurrency,
//! failing closed).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use natter_testkit::pg::{PgCluster, TestDatabase};
use tokio_postgres::IsolationLevel;

use super::*;
use crate::config::{Config, Rate};
use crate::ratelimit::{Limit, RateLimiter};

fn options(url: &str) -> PgOptions {
    PgOptions {
        url: url.to_owned(),
        chat_urls: Vec::new(),
        pool_size: 4,
        connect_timeout: Duration::from_secs(10),
    }
}

/// A database of the test's own, migrated (a copy of the template).
async fn migrated(cluster: &PgCluster) -> TestDatabase<'_> {
    cluster
        .database(&migrations_fingerprint(), |url| async move {
            Postgres::migrate_only(&url, Duration::from_secs(10))
                .await
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap()
}

async fn schema_versions(pg: &Postgres) -> Vec<i32> {
    let client = pg.accounts().client().await.unwrap();
    client
        .query("SELECT version FROM natter_schema ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

#[tokio::test]
async fn migrations_apply_once_and_record_each_version() {
    let cluster = PgCluster::from_env_or_start().unwrap();
    let db = cluster.empty_database().await.unwrap();
    let first = Postgres::connect(&options(&db.url())).await.unwrap();
    let expected: Vec<i32> = (1..=LATEST_VERSION).collect();
    assert_eq!(schema_versions(&first).await, expected);
    // A second start finds nothing to do.
    let second = Postgres::connect(&options(&db.url())).await.unwrap();
    assert_eq!(schema_versions(&second).await, expected);
    first.close();
    second.close();
}

/// Set in the child processes of the next test: the database to migrate.
const CHILD_VAR: &str = "TEST_NATTER_PG_MIGRATE_CHILD";

#[tokio::test]
async fn migrations_from_two_processes_at_once() {
    if let Ok(url) = std::env::var(CHILD_VAR) {
        // The child: migrate and report through the exit status.
        let pg = Postgres::connect(&options(&url)).await.unwrap();
        pg.close();
        return;
    }
    let cluster = PgCluster::from_env_or_start().unwrap();
    let db = cluster.empty_database().await.unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..2)
        .map(|_| {
            std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "store::postgres::tests::migrations_from_two_processes_at_once",
                    "--nocapture",
                ])
                .env(CHILD_VAR, db.url())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = tokio::time::timeout(
            Duration::from_secs(120),
            tokio::task::spawn_blocking(move || child.wait_with_output()),
        )
        .await
        .unwrap()
        .unwrap()
        .unwrap();
        assert!(
            out.status.success(),
            "a migrating process failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pg = Postgres::connect(&options(&db.url())).await.unwrap();
    let expected: Vec<i32> = (1..=LATEST_VERSION).collect();
    assert_eq!(schema_versions(&pg).await, expected);
    pg.close();
}

#[tokio::test]
async fn a_database_newer_than_the_binary_is_refused() {
    let cluster = PgCluster::from_env_or_start().unwrap();
    let db = migrated(&cluster).await;
    let pg = Postgres::connect(&options(&db.url())).await.unwrap();
    pg.accounts()
        .client()
        .await
        .unwrap()
        .execute(
            "INSERT INTO natter_schema (version) VALUES ($1)",
            &[&(LATEST_VERSION + 1)],
        )
        .await
        .unwrap();
    pg.close();
    let refused = Postgres::connect(&options(&db.url())).await.unwrap_err();
    assert!(
        matches!(refused, PgError::NewerSchema { found, known } if found == LATEST_VERSION + 1 && known == LATEST_VERSION),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("newer than this binary"),
        "{refused}"
    );
}

#[tokio::test]
async fn a_bad_url_or_an_unreachable_database_is_a_clear_error() {
    let bad = Postgres::connect(&options("postgres://u@h:notaport/db"))
        .await
        .unwrap_err();
    assert!(matches!(bad, PgError::BadUrl(_)), "{bad}");
    assert!(bad.to_string().contains("URL is not valid"), "{bad}");
    // A socket directory with no server in it.
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "postgres://postgres:secret-password@{}:5432/natter",
        dir.path().display().to_string().replace('/', "%2F")
    );
    let unreachable = Postgres::connect(&options(&url)).await.unwrap_err();
    assert!(
        matches!(unreachable, PgError::Unreachable(_)),
        "{unreachable}"
    );
    assert!(
        !unreachable.to_string().contains("secret-password"),
        "{unreachable}"
    );
}

#[tokio::test]
async fn transactions_aborted_by_serialization_failures_are_run_again() {
    let cluster = PgCluster::from_env_or_start().unwrap();
    let db = migrated(&cluster).await;
    let pg = Postgres::connect(&PgOptions {
        pool_size: 8,
        ..options(&db.url())
    })
    .await
    .unwrap();
    pg.accounts()
        .client()
        .await
        .unwrap()
        .batch_execute("CREATE TABLE counter (n integer NOT NULL); INSERT INTO counter VALUES (0)")
        .await
        .unwrap();
    // Each task reads, waits for the others to read too, and writes: under
    // SERIALIZABLE all but one abort with 40001 and must be run again.
    let tasks = 8_u32;
    let tries = Arc::new(AtomicU32::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(tasks as usize));
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let pg = pg.clone();
        let tries = Arc::clone(&tries);
        let barrier = Arc::clone(&barrier);
        handles.push(tokio::spawn(async move {
            pg.accounts()
                .transaction(IsolationLevel::Serializable, move |tx| {
                    let tries = Arc::clone(&tries);
                    let barrier = Arc::clone(&barrier);
                    Box::pin(async move {
                        let first = tries.fetch_add(1, Ordering::SeqCst) < tasks;
                        let n: i32 = tx
                            .query_one("SELECT n FROM counter", &[])
                            .await
                            .map_err(store_error)?
                            .get(0);
                        if first {
                            barrier.wait().await;
                        }
                        tx.execute("UPDATE counter SET n = $1", &[&(n + 1)])
                            .await
                            .map_err(store_error)?;
                        Ok(())
                    })
                })
                .await
        }));
    }
    for handle in handles {
        tokio::time::timeout(Duration::from_secs(60), handle)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
    let n: i32 = pg
        .accounts()
        .client()
        .await
        .unwrap()
        .query_one("SELECT n FROM counter", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 8, "every increment counted once");
    assert!(
        tries.load(Ordering::SeqCst) > tasks,
        "the race made some transactions run again"
    );
    pg.close();
}

fn config_with(rate: Rate) -> Config {
    let mut config = Config::default();
    config.rate_limits.verification_per_phone = rate;
    config.rate_limits.verification_global = rate;
    config
}

#[tokio::test]
async fn a_shared_burst_is_allowed_then_refused_on_every_node() {
    let cluster = PgCluster::from_env_or_start().unwrap();
    let db = migrated(&cluster).await;
    let config = config_with(Rate {
        burst: 3,
        per_secs: 3600,
    });
    // Two nodes, each with its own pool.
    let a = PgRateLimiter::for_config(
        &Postgres::connect(&options(&db.url())).await.unwrap(),
        &config,
    );
    let b = PgRateLimiter::for_config(
        &Postgres::connect(&options(&db.url())).await.unwrap(),
        &config,
    );
    let phone = "+14155550123";
    a.check(Limit::VerificationPerPhone, phone).await.unwrap();
    b.check(Limit::VerificationPerPhone, phone).await.unwrap();
    a.check(Limit::VerificationPerPhone, phone).await.unwrap();
    for node in [&a, &b] {
        let denied = node
            .check(Limit::VerificationPerPhone, phone)
            .await
            .unwrap_err();
        // One unit returns every 20 minutes.
        assert!(denied.retry_after > Duration::from_secs(1000), "{denied:?}");
        assert!(
            denied.retry_after <= Duration::from_secs(1200),
            "{denied:?}"
        );
    }
    // Other keys and other limits are untouched.
    b.check(Limit::VerificationPerPhone, "+14155550124")
        .await
        .unwrap();
    b.check(Limit::VerificationPerIp, phone).await.unwrap();
    // The server-wide budget is one key for all nodes too.
    for _ in 0..3 {
        a.check_verification_budget().await.unwrap();
    }
    b.check_verification_budget().await.unwrap_err();
}

#[tokio::test]
async fn units_at_once_pass_up_to_the_burst_and_never_beyond() {
    let cluster = PgCluster::from_env_or_start().unwrap();
    let db = migrated(&cluster).await;
    let config = config_with(Rate {
        burst: 5,
        per_secs: 3600,
    });
    let limiter = PgRateLimiter::for_config(
        &Postgres::connect(&options(&db.url())).await.unwrap(),
        &config,
    );
    let key = "+14155550125";
    // N + 1 at once can never pass, even with a full budget.
    let never = limiter
        .check_n(Limit::VerificationPerPhone, key, 6)
        .await
        .unwrap_err();
    assert_eq!(never.retry_after, Duration::from_secs(60));
    // N at once passes; then one more does not.
    limiter
        .check_n(Limit::VerificationPerPhone, key, 5)
        .await
        .unwrap();
    limiter
        .check(Limit::VerificationPerPhone, key)
        .await
        .unwrap_err();
    // Nothing is always allowed.
    limiter
        .check_n(Limit::VerificationPerPhone, key, 0)
        .await
        .unwrap();
}

#[tokio::test]
async fn concurrent_checks_from_two_nodes_hand_out_exactly_the_burst() {
    let cluster = PgCluster::from_env_or_start().unwrap();
    let db = migrated(&cluster).await;
    let config = config_with(Rate {
        burst: 10,
        per_secs: 3600,
    });
    let nodes = [
        Arc::new(PgRateLimiter::for_config(
            &Postgres::connect(&options(&db.url())).await.unwrap(),
            &config,
        )),
        Arc::new(PgRateLimiter::for_config(
            &Postgres::connect(&options(&db.url())).await.unwrap(),
            &config,
        )),
    ];
    let mut handles = Vec::new();
    for i in 0..30 {
        let node = Arc::clone(&nodes[i % 2]);
        handles.push(tokio::spawn(async move {
            node.check(Limit::VerificationPerPhone, "+14155550126")
                .await
                .is_ok()
        }));
    }
    let mut allowed = 0;
    for handle in handles {
        if tokio::time::timeout(Duration::from_secs(30), handle)
            .await
            .unwrap()
            .unwrap()
        {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 10);
}

#[tokio::test]
async fn a_database_that_cannot_decide_denies() {
    let cluster = PgCluster::from_env_or_start().unwrap();
    let db = migrated(&cluster).await;
    let config = Config::default();
    let limiter = PgRateLimiter::for_config(
        &Postgres::connect(&options(&db.url())).await.unwrap(),
        &config,
    );
    limiter
        .check(Limit::MessagesPerUser, "someone")
        .await
        .unwrap();
    // The database goes away (its connections are closed).
    db.drop_now().await.unwrap();
    let denied = limiter
        .check(Limit::MessagesPerUser, "someone")
        .await
        .unwrap_err();
    assert_eq!(denied.retry_after, Duration::from_secs(5));
    limiter.check_verification_budget().await.unwrap_err();
}
