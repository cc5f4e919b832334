//! The PostgreSQL engine, for running many stateless nodes on one shared
//! database: its connection pool, its embedded migrations (applied at start
//! under an advisory lock, so nodes may start together), transactions that
//! are retried when PostgreSQL aborts them for a serialization failure or a
//! deadlock, and the security rate limits shared by every node
//! ([`PgRateLimiter`], failing closed).
//!
//! # Layout
//! - [`Postgres`]: the pool; [`Postgres::connect`] checks the database is
//!   reachable and migrates it; [`Postgres::transaction`] runs one domain
//!   operation with retries.
//! - `migrations`: the embedded SQL steps and the advisory-locked runner.
//! - `ratelimit`: [`PgRateLimiter`], GCRA in one SQL function.
//!
//! - `accounts`: [`Accounts`](super::Accounts) on the accounts database.
//! - `invites`: [`Invites`](super::admin::Invites), one use spent once.
//! - `push`: [`PushOutbox`](super::PushOutbox), claimed by every node's
//!   worker without double sends.
//!
//! - `chats`, `e2ee`, `media`, `group_invitations`, `admin`, `across`,
//!   `search`: the other traits, so [`Postgres`] is a whole
//!   [`Store`](super::Store).
//!
//! May depend on `store` (its error type) and `ratelimit` (the trait); nothing
//! above `store` uses it directly.

mod accounts;
mod across;
mod admin;
mod chats;
mod e2ee;
mod group_invitations;
mod invites;
mod media;
mod migrations;
mod push;
mod ratelimit;
mod search;
#[cfg(test)]
mod tests;

use std::str::FromStr as _;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use futures_util::future::BoxFuture;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{IsolationLevel, NoTls};

pub use migrations::{LATEST_VERSION, fingerprint as migrations_fingerprint};
pub use ratelimit::PgRateLimiter;

use super::{StoreError, StoreErrorKind, StoreResult};

/// How many times a transaction aborted by a serialization failure or a
/// deadlock is run again before the caller is told `Conflict`: contention
/// that survives eight backed-off tries is an overload, not a race.
const MAX_ATTEMPTS: u32 = 8;

/// The first wait before a retry; it doubles each time (with jitter).
const RETRY_BASE: Duration = Duration::from_millis(2);

/// How to reach the database, and how many connections to keep.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// A libpq-style URL (`postgres://user:password@host:port/dbname`, a
    /// percent-encoded socket directory as the host for a unix socket).
    pub url: String,
    /// Connections in the pool.
    pub pool_size: usize,
    /// How long connecting (or waiting for a free connection) may take.
    pub connect_timeout: Duration,
}

/// Why the engine could not start. The messages never repeat the URL (it
/// may hold a password).
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The URL does not parse.
    #[error("the PostgreSQL URL is not valid: {0}")]
    BadUrl(String),
    /// The database did not answer.
    #[error("the PostgreSQL database cannot be reached: {0}")]
    Unreachable(String),
    /// The database's schema is newer than this binary.
    #[error(
        "the PostgreSQL database has schema version {found}, newer than this binary's {known}: run a newer natter"
    )]
    NewerSchema {
        /// The database's version.
        found: i32,
        /// The newest this binary knows.
        known: i32,
    },
    /// A migration failed (nothing of it was applied).
    #[error("a PostgreSQL migration failed: {0}")]
    Migration(String),
}

/// The PostgreSQL engine's connection pool.
#[derive(Clone)]
pub struct Postgres {
    /// Connections to the one database (accounts, devices, chat logs).
    pool: Pool,
    /// What the search indexer waits on; never woken, since the words are
    /// written with each message (`search`).
    log_appended: std::sync::Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = self.pool.status();
        f.debug_struct("Postgres")
            .field("size", &status.size)
            .field("available", &status.available)
            .finish_non_exhaustive()
    }
}

impl Postgres {
    /// Opens the pool, checks the database answers within
    /// `connect_timeout` and applies the migrations it lacks.
    ///
    /// # Errors
    /// A URL that does not parse, a database that does not answer, a schema
    /// newer than this binary or a failed migration.
    pub async fn connect(options: &PgOptions) -> Result<Self, PgError> {
        let store = Self::open(options)?;
        let mut client = store
            .pool
            .get()
            .await
            .map_err(|e| PgError::Unreachable(describe_pool_error(&e)))?;
        migrations::migrate(&mut client).await?;
        Ok(store)
    }

    /// Opens the pool without connecting (connections are made on first
    /// use) and without migrating.
    ///
    /// # Errors
    /// A URL that does not parse.
    pub fn open(options: &PgOptions) -> Result<Self, PgError> {
        let mut config = tokio_postgres::Config::from_str(&options.url)
            .map_err(|e| PgError::BadUrl(e.to_string()))?;
        if config.get_hosts().is_empty() {
            return Err(PgError::BadUrl("it names no host".into()));
        }
        config.connect_timeout(options.connect_timeout);
        config.application_name("natter");
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                // Checking a connection before each use costs a round trip;
                // a dead one fails its query and is dropped instead.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.connect_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| PgError::BadUrl(e.to_string()))?;
        Ok(Self {
            pool,
            log_appended: std::sync::Arc::default(),
        })
    }

    /// Succeeds when the database answers a query.
    ///
    /// # Errors
    /// `Unavailable` when it does not.
    pub async fn ping(&self) -> StoreResult<()> {
        let client = self.pool.get().await.map_err(pool_error)?;
        client.simple_query("SELECT 1").await.map_err(store_error)?;
        Ok(())
    }

    /// Closes the pool: connections in use finish, idle ones close.
    pub fn close(&self) {
        self.pool.close();
    }

    /// Runs `operation` in one transaction at `isolation` and commits it,
    /// running it again (after a short, growing, jittered wait) when
    /// PostgreSQL aborts it for a serialization failure or a deadlock. So
    /// `operation` must do nothing outside the transaction that cannot be
    /// done twice.
    ///
    /// # Errors
    /// What `operation` returns; `Conflict` after [`MAX_ATTEMPTS`] aborted
    /// tries; `Unavailable` when the database cannot be reached.
    pub async fn transaction<T, F>(
        &self,
        isolation: IsolationLevel,
        mut operation: F,
    ) -> StoreResult<T>
    where
        T: Send,
        F: for<'t> FnMut(&'t deadpool_postgres::Transaction<'t>) -> BoxFuture<'t, StoreResult<T>>
            + Send,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_once(isolation, &mut operation).await {
                Err(error) if error.is_retryable() && attempt < MAX_ATTEMPTS => {
                    tokio::time::sleep(backoff(attempt)).await;
                }
                outcome => return outcome,
            }
        }
    }

    async fn try_once<T, F>(&self, isolation: IsolationLevel, operation: &mut F) -> StoreResult<T>
    where
        F: for<'t> FnMut(&'t deadpool_postgres::Transaction<'t>) -> BoxFuture<'t, StoreResult<T>>,
    {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client
            .build_transaction()
            .isolation_level(isolation)
            .start()
            .await
            .map_err(store_error)?;
        let value = operation(&tx).await?;
        tx.commit().await.map_err(store_error)?;
        Ok(value)
    }

    /// One connection of the pool, for work that is not one transaction.
    pub(crate) async fn client(&self) -> StoreResult<deadpool_postgres::Object> {
        self.pool.get().await.map_err(pool_error)
    }
}

/// Runs a cached statement on `tx` and returns its rows.
pub(super) async fn rows(
    tx: &deadpool_postgres::Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> StoreResult<Vec<tokio_postgres::Row>> {
    let statement = tx.prepare_cached(sql).await.map_err(store_error)?;
    tx.query(&statement, params).await.map_err(store_error)
}

/// Runs a cached statement on `tx` and returns the rows it changed.
pub(super) async fn execute(
    tx: &deadpool_postgres::Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> StoreResult<u64> {
    let statement = tx.prepare_cached(sql).await.map_err(store_error)?;
    tx.execute(&statement, params).await.map_err(store_error)
}

impl Postgres {
    /// Runs one READ COMMITTED transaction (see [`Postgres::transaction`]).
    pub(super) async fn write<T, F>(&self, operation: F) -> StoreResult<T>
    where
        T: Send,
        F: for<'t> FnMut(
                &'t deadpool_postgres::Transaction<'t>,
            ) -> futures_util::future::BoxFuture<'t, StoreResult<T>>
            + Send,
    {
        self.transaction(IsolationLevel::ReadCommitted, operation)
            .await
    }

    /// Runs one statement on its own (autocommit) and returns the rows it
    /// changed; run again, like a transaction, if PostgreSQL aborts it for
    /// a deadlock.
    pub(super) async fn execute_one(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> StoreResult<u64> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = async {
                let client = self.client().await?;
                let statement = client.prepare_cached(sql).await.map_err(store_error)?;
                client
                    .execute(&statement, params)
                    .await
                    .map_err(store_error)
            }
            .await;
            match outcome {
                Err(error) if error.is_retryable() && attempt < MAX_ATTEMPTS => {
                    tokio::time::sleep(backoff(attempt)).await;
                }
                outcome => return outcome,
            }
        }
    }

    /// Runs a cached read-only statement on a pooled connection.
    pub(super) async fn read(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> StoreResult<Vec<tokio_postgres::Row>> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(store_error)?;
        client.query(&statement, params).await.map_err(store_error)
    }
}

/// The wait before try `attempt + 1`: `RETRY_BASE * 2^(attempt-1)`, between
/// half and all of it, so retrying transactions do not collide again.
fn backoff(attempt: u32) -> Duration {
    let step = RETRY_BASE.saturating_mul(1 << attempt.saturating_sub(1).min(10));
    let half = step / 2;
    half + half.mul_f64(rand::random::<f64>())
}

/// What a PostgreSQL failure means to the callers: an aborted transaction
/// may pass if run again (`Conflict`), a lost connection means the engine
/// cannot serve now (`Unavailable`), anything else is a bug (`Internal`).
pub(crate) fn store_error(error: tokio_postgres::Error) -> StoreError {
    let kind = match error.code() {
        Some(code)
            if *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED =>
        {
            StoreErrorKind::Conflict
        }
        Some(code)
            if *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || *code == SqlState::TOO_MANY_CONNECTIONS
                || *code == SqlState::INVALID_CATALOG_NAME
                || code.code().starts_with("08") =>
        {
            StoreErrorKind::Unavailable
        }
        Some(_) => StoreErrorKind::Internal,
        None if error.is_closed() => StoreErrorKind::Unavailable,
        // No SQLSTATE: the connection itself failed (I/O, protocol).
        None => StoreErrorKind::Unavailable,
    };
    StoreError::new(kind, describe_error(&error))
}

fn pool_error(error: PoolError) -> StoreError {
    match error {
        PoolError::Backend(e) => store_error(e),
        other => StoreError::unavailable(describe_pool_error(&other)),
    }
}

/// The error with its database-side detail (tokio-postgres's `Display`
/// says only "db error").
fn describe_error(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        }
    }
}

fn describe_pool_error(error: &PoolError) -> String {
    match error {
        PoolError::Backend(e) => describe_error(e),
        PoolError::Timeout(_) => "timed out waiting for a connection".into(),
        other => other.to_string(),
    }
}

#[async_trait::async_trait]
impl super::Store for Postgres {
    async fn ping(&self) -> StoreResult<()> {
        Postgres::ping(self).await
    }

    async fn close(&self) {
        Postgres::close(self);
    }
}
