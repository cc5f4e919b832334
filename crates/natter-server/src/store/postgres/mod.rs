//! The PostgreSQL engine, for running many stateless nodes on shared
//! databases: one accounts database and the chat databases the chats are
//! partitioned over by chat id (by default the accounts database alone),
//! their connection pools, the embedded migrations (applied at start to
//! each database under an advisory lock, so nodes may start together),
//! transactions that are retried when PostgreSQL aborts them for a
//! serialization failure or a deadlock, and the security rate limits shared
//! by every node ([`PgRateLimiter`], failing closed).
//!
//! Every transaction runs in one database. An operation that concerns an
//! account and chats (deleting an account, a key change announced to the
//! user's encrypted chats, a commit's Welcomes, a user's chat list or
//! search) runs one transaction per database, in an order that leaves
//! nothing a later step cannot finish: each module says how.
//!
//! # Layout
//! - [`Postgres`]: the databases; [`Postgres::connect`] checks each is
//!   reachable, migrates it and checks the chat databases are the store's
//!   (`partitions`); `Database::transaction` runs one domain operation with
//!   retries in one database.
//! - `partitions`: which database holds a chat, and the fixed list.
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
mod partitions;
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

/// How to reach the databases, and how many connections to keep.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// The accounts database: a libpq-style URL
    /// (`postgres://user:password@host:port/dbname`, a percent-encoded
    /// socket directory as the host for a unix socket).
    pub url: String,
    /// The chat databases, in their fixed order (empty: the chats live in
    /// the accounts database). `url` may be one of them.
    pub chat_urls: Vec<String>,
    /// Connections in each database's pool.
    pub pool_size: usize,
    /// How long connecting (or waiting for a free connection) may take.
    pub connect_timeout: Duration,
}

impl PgOptions {
    /// The options of a `store` section whose `url` is set (`None` if not),
    /// with `pool_size` connections to each database.
    #[must_use]
    pub fn for_config(store: &crate::config::StoreConfig, pool_size: usize) -> Option<Self> {
        Some(Self {
            url: store.url.as_ref()?.expose().to_owned(),
            chat_urls: store.chat_urls(),
            pool_size,
            connect_timeout: Duration::from_secs(store.connect_timeout_secs),
        })
    }
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
    /// The chat databases named differ from those the store was made with.
    #[error("the PostgreSQL databases do not match this store: {0}")]
    Layout(String),
}

/// The PostgreSQL engine: the accounts database (users, devices, contacts,
/// keys, uploads, pushes, rate limits) and the chat databases the chats are
/// partitioned over (`partitions`); with one database, it is both.
#[derive(Clone, Debug)]
pub struct Postgres {
    accounts: Database,
    /// By position: a chat lives in `chats[partitions::partition(id)]`.
    chats: std::sync::Arc<[Database]>,
    /// Each chat database once, in order (a list may name one twice only
    /// to be refused by `partitions::claim`).
    chat_distinct: std::sync::Arc<[Database]>,
    /// Each database once (the accounts one first), for what concerns all.
    distinct: std::sync::Arc<[Database]>,
    /// What the search indexer waits on; never woken, since the words are
    /// written with each message (`search`).
    log_appended: std::sync::Arc<tokio::sync::Notify>,
}

impl Postgres {
    /// Opens the pools, checks each database answers within
    /// `connect_timeout`, applies the migrations each lacks and checks the
    /// chat databases are those the store was made with (recording them at
    /// its first start).
    ///
    /// # Errors
    /// A URL that does not parse, a database that does not answer, a schema
    /// newer than this binary, a failed migration or changed chat databases.
    pub async fn connect(options: &PgOptions) -> Result<Self, PgError> {
        let store = Self::open(options)?;
        for db in store.distinct.iter() {
            db.migrate().await?;
        }
        partitions::claim(&store.accounts, &store.chats).await?;
        Ok(store)
    }

    /// Applies the migrations one database lacks, and nothing else (a test
    /// cluster's template database).
    ///
    /// # Errors
    /// As [`Postgres::connect`], but for the layout.
    pub async fn migrate_only(url: &str, connect_timeout: Duration) -> Result<(), PgError> {
        let db = Database::open(url, 1, connect_timeout)?;
        let migrated = db.migrate().await;
        db.close();
        migrated
    }

    /// Opens the pools without connecting (connections are made on first
    /// use) and without migrating.
    ///
    /// # Errors
    /// A URL that does not parse.
    pub fn open(options: &PgOptions) -> Result<Self, PgError> {
        let open = |url: &str| Database::open(url, options.pool_size, options.connect_timeout);
        let accounts = open(&options.url)?;
        let mut distinct = vec![(options.url.clone(), accounts.clone())];
        let mut chats = Vec::with_capacity(options.chat_urls.len().max(1));
        for url in &options.chat_urls {
            let db = match distinct.iter().find(|(u, _)| u == url) {
                Some((_, db)) => db.clone(),
                None => {
                    let mut db = open(url)?;
                    db.id = distinct.len();
                    distinct.push((url.clone(), db.clone()));
                    db
                }
            };
            chats.push(db);
        }
        if chats.is_empty() {
            chats.push(accounts.clone());
        }
        let mut chat_distinct: Vec<Database> = Vec::with_capacity(chats.len());
        for db in &chats {
            if !chat_distinct.iter().any(|seen| seen.is(db)) {
                chat_distinct.push(db.clone());
            }
        }
        Ok(Self {
            accounts,
            chats: chats.into(),
            chat_distinct: chat_distinct.into(),
            distinct: distinct.into_iter().map(|(_, db)| db).collect(),
            log_appended: std::sync::Arc::default(),
        })
    }

    /// Succeeds when every database answers a query.
    ///
    /// # Errors
    /// `Unavailable` when one does not.
    pub async fn ping(&self) -> StoreResult<()> {
        for db in self.distinct.iter() {
            db.ping().await?;
        }
        Ok(())
    }

    /// Closes the pools: connections in use finish, idle ones close.
    pub fn close(&self) {
        for db in self.distinct.iter() {
            db.close();
        }
    }

    /// The accounts database.
    pub(crate) fn accounts(&self) -> &Database {
        &self.accounts
    }

    /// The database of a chat.
    pub(crate) fn chat_db(&self, chat: natter_proto::ChatId) -> &Database {
        &self.chats[partitions::partition(chat.as_uuid(), self.chats.len())]
    }

    /// The chat databases, each once, in order.
    pub(crate) fn chat_dbs(&self) -> &[Database] {
        &self.chat_distinct
    }

    /// The database of the direct chat of a pair, and an id for it there
    /// (`proposed` if it lands there).
    pub(crate) fn direct_chat_home(
        &self,
        proposed: uuid::Uuid,
        key: &[u8],
    ) -> (&Database, uuid::Uuid) {
        let n = self.chats.len();
        (
            &self.chats[partitions::pair_partition(key, n)],
            partitions::direct_chat_id(proposed, key, n),
        )
    }
}

/// One PostgreSQL database's connection pool: the accounts database, or
/// one of the chat databases.
#[derive(Clone)]
pub(crate) struct Database {
    pool: Pool,
    /// Which of the store's databases this is (the accounts one is 0):
    /// two handles with the same `id` are one pool.
    id: usize,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = self.pool.status();
        f.debug_struct("Database")
            .field("size", &status.size)
            .field("available", &status.available)
            .finish_non_exhaustive()
    }
}

impl Database {
    /// Applies the migrations the database lacks.
    async fn migrate(&self) -> Result<(), PgError> {
        migrations::migrate(&mut self.connection().await?).await
    }

    /// A connection, for starting up (its error is a start error).
    async fn connection(&self) -> Result<deadpool_postgres::Object, PgError> {
        self.pool
            .get()
            .await
            .map_err(|e| PgError::Unreachable(describe_pool_error(&e)))
    }

    /// Opens a pool to `url` without connecting.
    fn open(url: &str, pool_size: usize, connect_timeout: Duration) -> Result<Self, PgError> {
        let mut config =
            tokio_postgres::Config::from_str(url).map_err(|e| PgError::BadUrl(e.to_string()))?;
        if config.get_hosts().is_empty() {
            return Err(PgError::BadUrl("it names no host".into()));
        }
        config.connect_timeout(connect_timeout);
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
            .max_size(pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(connect_timeout))
            .create_timeout(Some(connect_timeout))
            .recycle_timeout(Some(connect_timeout))
            .build()
            .map_err(|e| PgError::BadUrl(e.to_string()))?;
        Ok(Self { pool, id: 0 })
    }

    /// Whether two handles are one database's pool.
    pub(crate) fn is(&self, other: &Database) -> bool {
        self.id == other.id
    }

    /// Succeeds when the database answers a query.
    async fn ping(&self) -> StoreResult<()> {
        let client = self.pool.get().await.map_err(pool_error)?;
        client.simple_query("SELECT 1").await.map_err(store_error)?;
        Ok(())
    }

    /// Closes the pool: connections in use finish, idle ones close.
    fn close(&self) {
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
    pub(crate) async fn transaction<T, F>(
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

impl Database {
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
