//! Durable write throughput of the embedded store through its single writer
//! with group commit: `concurrency` tasks each upsert rows (verification
//! codes, one row each) and wait for the commit, like request handlers do.
//!
//! ```text
//! cargo run --release -p natter-server --example store_writes -- [total] [concurrency...]
//! ```
//! Prints one line per concurrency level: rows/s and the mean rows per commit.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::Instant;

use natter_server::clock::Timestamp;
use natter_server::config::StoreConfig;
use natter_server::phone::Phone;
use natter_server::secret::CodeHash;
use natter_server::store::sqlite::SqliteStore;
use natter_server::store::{Accounts as _, NewVerificationCode, Store as _};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let total: usize = args
        .next()
        .map_or(100_000, |a| a.parse().expect("total rows"));
    let levels: Vec<usize> = args.map(|a| a.parse().expect("concurrency")).collect();
    let levels = if levels.is_empty() {
        vec![1, 16, 256, 1024]
    } else {
        levels
    };

    println!("rows={total} synchronous=FULL journal=WAL");
    for concurrency in levels {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path(), &StoreConfig::default()).unwrap());
        let per_task = total / concurrency;
        let start = Instant::now();
        let tasks: Vec<_> = (0..concurrency)
            .map(|t| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    for i in 0..per_task {
                        let now = Timestamp::now();
                        store
                            .put_verification_code(NewVerificationCode {
                                phone: Phone::from_stored(format!("+1{:010}", t * per_task + i)),
                                hash: CodeHash([7; 32]),
                                created_at: now,
                                expires_at: now,
                                shown: None,
                            })
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let elapsed = start.elapsed();
        let rows = per_task * concurrency;
        store.close().await;
        println!(
            "concurrency={concurrency:5} rows/s={:9.0} elapsed={:.2}s",
            rows as f64 / elapsed.as_secs_f64(),
            elapsed.as_secs_f64()
        );
    }
}
