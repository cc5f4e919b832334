//! `natter bench e2ee`: the client's MLS engine in-process (no server):
//! message encrypt/decrypt, add and remove commits at a few group sizes,
//! Welcome sizes. See `natter_client::e2ee::bench`.

use clap::Args;
use natter_client::e2ee::{Suite, bench};
use serde_json::{Value, json};

use crate::report::Report;
use crate::{BenchError, BenchResult, Common};

/// Options of the `e2ee` scenario.
#[derive(Debug, Clone, Args)]
pub struct E2eeArgs {
    /// Group sizes (devices) to measure at.
    #[arg(long, value_delimiter = ',', default_values_t = [100usize, 1000])]
    pub members: Vec<usize>,
    /// Messages per size for the per-message figures.
    #[arg(long, default_value_t = 1000)]
    pub messages: usize,
}

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

pub(crate) async fn run(_common: &Common, args: &E2eeArgs) -> BenchResult<Report> {
    let mut report = Report::new("e2ee");
    let (members, messages) = (args.members.clone(), args.messages);
    let result =
        tokio::task::spawn_blocking(move || bench::run(Suite::default(), &members, messages))
            .await
            .map_err(|e| BenchError::Other(format!("the benchmark thread failed: {e}")))?
            .map_err(|e| BenchError::Other(format!("MLS: {e}")))?;
    report.line("MLS suite", &format!("0x{:04x}", result.suite.code()));
    let mut sizes = Vec::new();
    for g in &result.groups {
        let n = g.members;
        report.line(
            &format!("{n} members: message encrypt / decrypt"),
            &format!(
                "{:.1} / {:.1} µs, {} B for 100 B",
                g.message.encrypt.as_secs_f64() * 1e6,
                g.message.decrypt.as_secs_f64() * 1e6,
                g.message.wire_bytes
            ),
        );
        report.line(
            &format!("{n} members: create (one commit) / join it"),
            &format!("{} / {} ms", ms(g.create), ms(g.join_created)),
        );
        report.line(
            &format!("{n} members: add 1 commit / process / join"),
            &format!(
                "{} / {} / {} ms, commit {} B, Welcome {} B",
                ms(g.add_commit),
                ms(g.add_process),
                ms(g.add_join),
                g.add_commit_bytes,
                g.welcome_bytes
            ),
        );
        report.line(
            &format!("{n} members: remove 1 commit / process"),
            &format!(
                "{} / {} ms, commit {} B",
                ms(g.remove_commit),
                ms(g.remove_process),
                g.remove_commit_bytes
            ),
        );
        sizes.push(json!({
            "members": n,
            "encrypt_us": g.message.encrypt.as_secs_f64() * 1e6,
            "decrypt_us": g.message.decrypt.as_secs_f64() * 1e6,
            "message_bytes": g.message.wire_bytes,
            "create_ms": ms(g.create),
            "join_created_ms": ms(g.join_created),
            "add_commit_ms": ms(g.add_commit),
            "add_commit_bytes": g.add_commit_bytes,
            "welcome_bytes": g.welcome_bytes,
            "add_process_ms": ms(g.add_process),
            "add_join_ms": ms(g.add_join),
            "remove_commit_ms": ms(g.remove_commit),
            "remove_commit_bytes": g.remove_commit_bytes,
            "remove_process_ms": ms(g.remove_process),
        }));
    }
    report.set("sizes", Value::from(sizes));
    Ok(report)
}
