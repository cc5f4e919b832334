//! The search indexer: a background task that keeps the store's full-text
//! index in step with the chat logs, outside the append transactions.
//!
//! The store does the work ([`crate::store::Store::index_search`]: follow the
//! log from a durable cursor, in bounded passes, exactly once); this task
//! only decides when. It runs a pass whenever the store says something was
//! appended, again at once while entries remain, and otherwise every
//! `store.search_index_poll_ms` as a safety net. Until it catches up, search
//! answers from the index as far as it goes; the lag is a metric.

use std::time::Duration;

use tokio::sync::watch;

use super::Services;

/// How long to wait after a failed pass before the next one, so a failing
/// store does not turn the indexer into a busy loop.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(1);

fn describe_metrics() {
    metrics::describe_gauge!(
        "natter_search_index_lag_entries",
        "Chat log entries committed but not yet followed by the search index."
    );
    metrics::describe_counter!(
        "natter_search_indexed_total",
        "Chat log entries the search indexer has followed."
    );
}

impl Services {
    /// Runs the search indexer until `stopped`. A pass in flight at the stop
    /// finishes (it is one writer job); whatever is left is caught up after
    /// the next start, from the durable cursor.
    pub async fn run_search_indexer(self, mut stopped: watch::Receiver<bool>) {
        describe_metrics();
        let store = &self.inner.store;
        let batch = self.inner.config.store.search_index_batch;
        let poll = Duration::from_millis(self.inner.config.store.search_index_poll_ms);
        loop {
            if *stopped.borrow() {
                break;
            }
            let wait = match store.index_search(batch).await {
                Ok(progress) => {
                    metrics::counter!("natter_search_indexed_total").increment(progress.processed);
                    metrics::gauge!("natter_search_index_lag_entries")
                        .set(progress.remaining as f64);
                    if progress.remaining > 0 {
                        // More to do: the next pass goes into the next group commit.
                        continue;
                    }
                    poll
                }
                Err(e) => {
                    tracing::warn!(error = %e, "search indexing failed; retrying");
                    RETRY_AFTER_ERROR
                }
            };
            tokio::select! {
                () = store.log_appended().notified() => {}
                () = tokio::time::sleep(wait) => {}
                _ = stopped.changed() => break,
            }
        }
    }

    /// Chat log entries not yet in the search index (0 when caught up).
    ///
    /// # Errors
    /// The store's failure.
    pub async fn search_index_lag(&self) -> Result<u64, crate::store::StoreError> {
        self.inner.store.search_index_lag().await
    }
}
