//! The security rate limits shared by every node of a cluster: the same
//! table (`ratelimit::configured_rates`), the same refill pace
//! (`ratelimit::refill_interval`) and the same answers as the in-process
//! engine, decided by PostgreSQL (`natter_rate_take`, a GCRA under a row
//! lock) so a client cannot multiply its budget by the number of nodes.
//!
//! It fails closed: a database that errs, or does not answer within
//! [`CHECK_TIMEOUT`], denies the request.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;

use super::{Database, Postgres};
use crate::config::{Config, Rate};
use crate::ratelimit::{
    Denied, Limit, NEVER, RateLimiter, configured_rates, denied_for, refill_interval,
};

/// How long one check may wait for the database before it denies: the
/// requests it guards (codes, logins, sends) must not hang on it either.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The wait a refusal names when the database could not decide: short,
/// since the cause is an outage rather than the client.
const UNDECIDED: Denied = Denied {
    retry_after: Duration::from_secs(5),
};

/// The name of the server-wide verification budget in `rate_limits`.
const VERIFICATION_GLOBAL: &str = "VerificationGlobal";

/// Rate limits kept in PostgreSQL.
#[derive(Debug)]
pub struct PgRateLimiter {
    /// The accounts database.
    pg: Database,
    /// Each keyed limit's burst and refill interval (milliseconds).
    rates: HashMap<Limit, (i32, i64)>,
    /// The server-wide verification budget.
    global: (i32, i64),
}

/// How a key is stored: the hex of its SHA-256, so a look at the table
/// lists no number or address in plain (rows also vanish once their budget
/// is full again; a hash of a phone number can still be found by trying
/// every number, see docs/security.md).
fn stored_key(key: &str) -> String {
    use sha2::{Digest as _, Sha256};
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn shape(rate: Rate) -> (i32, i64) {
    let interval = i64::try_from(refill_interval(rate).as_millis()).unwrap_or(i64::MAX);
    (
        i32::try_from(rate.burst.max(1)).unwrap_or(i32::MAX),
        interval,
    )
}

impl PgRateLimiter {
    /// The limits of `config`, decided by `pg`'s accounts database.
    #[must_use]
    pub fn for_config(pg: &Postgres, config: &Config) -> Self {
        Self {
            pg: pg.accounts().clone(),
            rates: configured_rates(config)
                .into_iter()
                .map(|(limit, rate)| (limit, shape(rate)))
                .collect(),
            global: shape(config.rate_limits.verification_global),
        }
    }

    async fn take(
        &self,
        name: &str,
        key: &str,
        n: u32,
        (burst, interval): (i32, i64),
    ) -> Result<(), Denied> {
        let Ok(n) = i32::try_from(n) else {
            return Err(NEVER);
        };
        if n > burst {
            return Err(NEVER);
        }
        // Keys name numbers and addresses: the table holds their hashes.
        let key = stored_key(key);
        let decided = tokio::time::timeout(CHECK_TIMEOUT, async {
            let client = self.pg.client().await?;
            let statement = client
                .prepare_cached("SELECT natter_rate_take($1, $2, $3, $4, $5)")
                .await
                .map_err(super::store_error)?;
            let row = client
                .query_one(&statement, &[&name, &key, &n, &interval, &burst])
                .await
                .map_err(super::store_error)?;
            Ok::<i64, crate::store::StoreError>(row.get(0))
        })
        .await;
        match decided {
            Ok(Ok(0)) => Ok(()),
            Ok(Ok(wait_ms)) if wait_ms > 0 => {
                Err(denied_for(Duration::from_millis(wait_ms.unsigned_abs())))
            }
            Ok(Ok(_)) => Err(NEVER),
            Ok(Err(error)) => {
                tracing::warn!(%error, limit = name, "rate limit undecided, denying");
                Err(UNDECIDED)
            }
            Err(_) => {
                tracing::warn!(limit = name, "rate limit timed out, denying");
                Err(UNDECIDED)
            }
        }
    }
}

#[async_trait]
impl RateLimiter for PgRateLimiter {
    async fn check(&self, limit: Limit, key: &str) -> Result<(), Denied> {
        self.check_n(limit, key, 1).await
    }

    async fn check_n(&self, limit: Limit, key: &str, n: u32) -> Result<(), Denied> {
        if n == 0 {
            return Ok(());
        }
        // Every limit is in the table; a missing one denies (fail closed).
        let Some(&rate) = self.rates.get(&limit) else {
            return Err(NEVER);
        };
        // The variant's name is the limit's name in the table.
        self.take(&format!("{limit:?}"), key, n, rate).await
    }

    async fn check_verification_budget(&self) -> Result<(), Denied> {
        self.take(VERIFICATION_GLOBAL, "", 1, self.global).await
    }

    fn sweep(&self) {
        // Called from the server's periodic task, inside the runtime.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pg = self.pg.clone();
        runtime.spawn(async move {
            let swept = tokio::time::timeout(CHECK_TIMEOUT, async {
                let client = pg.client().await?;
                client
                    .execute("SELECT natter_rate_sweep()", &[])
                    .await
                    .map_err(super::store_error)
            })
            .await;
            if let Ok(Err(error)) = swept {
                tracing::warn!(%error, "sweeping the shared rate limits failed");
            }
        });
    }
}
