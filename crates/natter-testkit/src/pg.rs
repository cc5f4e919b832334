//! A throwaway PostgreSQL for tests. The test command (`scripts/test`)
//! starts one cluster for the whole run with `scripts/pg-cluster` and
//! exports its URL as [`URL_VAR`]; a test run without it (one test from an
//! editor) starts its own cluster with the same script and stops it when
//! the [`PgCluster`] drops. Either way each test gets its own database,
//! cloned from a template migrated once per schema, so tests run in
//! parallel without meeting. Never the PostgreSQL a machine may be
//! running: the clusters listen only on a unix socket in their own
//! temporary directory.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

use crate::TestkitError;

/// The variable naming a running test cluster (`postgres://…`, no database).
/// Not `NATTER_…`: the binary reads every `NATTER_*` variable as its
/// configuration and refuses unknown keys.
pub const URL_VAR: &str = "TEST_NATTER_PG_URL";

/// How long a test waits for another process to finish migrating the
/// template, or for a connection.
const WAIT: Duration = Duration::from_secs(60);

fn err(message: impl std::fmt::Display) -> TestkitError {
    TestkitError::Postgres(message.to_string())
}

/// A driver error with the server's words (its `Display` says "db error").
fn db_err(error: &tokio_postgres::Error) -> TestkitError {
    match error.as_db_error() {
        Some(db) => err(format!("{}: {}", db.code().code(), db.message())),
        None => err(error),
    }
}

/// A name no other test of any process uses.
fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}_{}_{nanos}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/pg-cluster")
}

/// A test PostgreSQL cluster.
#[derive(Debug)]
pub struct PgCluster {
    /// `postgres://user@host:port`, without a database.
    url: String,
    /// The directory of the cluster this value started (and stops).
    own: Option<PathBuf>,
}

impl PgCluster {
    /// The cluster named by [`URL_VAR`], or a new one of this test's own.
    ///
    /// # Errors
    /// When no cluster can be started (the script says what to install).
    pub fn from_env_or_start() -> Result<Self, TestkitError> {
        match std::env::var(URL_VAR) {
            Ok(url) if !url.is_empty() => Ok(Self {
                url: url.trim_end_matches('/').to_owned(),
                own: None,
            }),
            _ => Self::start(),
        }
    }

    /// Starts a new cluster of this value's own.
    ///
    /// # Errors
    /// When `scripts/pg-cluster` fails.
    pub fn start() -> Result<Self, TestkitError> {
        let dir = std::env::temp_dir().join(unique("natter-pg"));
        let out = Command::new(script())
            .arg("start")
            .arg(&dir)
            .output()
            .map_err(|e| err(format!("cannot run scripts/pg-cluster: {e}")))?;
        if !out.status.success() {
            return Err(err(String::from_utf8_lossy(&out.stderr)));
        }
        let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Ok(Self {
            url,
            own: Some(dir),
        })
    }

    /// Stops this value's own cluster cleanly (`pg_ctl stop -m fast`:
    /// every commit is written out first, so its durability settings lose
    /// nothing), keeping its directory for [`PgCluster::resume`]. A
    /// `kill -9` would not do: the cluster runs with `fsync=off`.
    ///
    /// # Errors
    /// The cluster is the run's (not this value's), or the script fails.
    pub fn pause(&self) -> Result<(), TestkitError> {
        self.own_script("pause")
    }

    /// Starts a paused cluster again on the same directory and socket.
    ///
    /// # Errors
    /// As [`PgCluster::pause`].
    pub fn resume(&self) -> Result<(), TestkitError> {
        self.own_script("resume")
    }

    fn own_script(&self, command: &str) -> Result<(), TestkitError> {
        let dir = self
            .own
            .as_ref()
            .ok_or_else(|| err("only a cluster started by this value can be paused"))?;
        let out = Command::new(script())
            .arg(command)
            .arg(dir)
            .output()
            .map_err(|e| err(format!("cannot run scripts/pg-cluster: {e}")))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(err(String::from_utf8_lossy(&out.stderr)))
        }
    }

    /// The process id of the server (the postmaster, parent of every
    /// backend) of a cluster this value started; `None` for the run's.
    #[must_use]
    pub fn server_pid(&self) -> Option<u32> {
        let pid_file = self.own.as_ref()?.join("data/postmaster.pid");
        let text = std::fs::read_to_string(pid_file).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// The URL of database `name` in this cluster.
    #[must_use]
    pub fn url_of(&self, name: &str) -> String {
        format!("{}/{name}", self.url)
    }

    /// A connection to database `name` (its driver task is spawned).
    ///
    /// # Errors
    /// When the database cannot be reached in time.
    pub async fn connect(&self, name: &str) -> Result<Client, TestkitError> {
        let (client, connection) =
            tokio::time::timeout(WAIT, tokio_postgres::connect(&self.url_of(name), NoTls))
                .await
                .map_err(|_| err("connecting timed out"))?
                .map_err(|e| db_err(&e))?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// A new, empty database of this test's own (dropped with the value).
    ///
    /// # Errors
    /// When the cluster cannot be used.
    pub async fn empty_database(&self) -> Result<TestDatabase<'_>, TestkitError> {
        let name = unique("natter_t");
        let admin = self.connect("postgres").await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .map_err(|e| db_err(&e))?;
        Ok(TestDatabase {
            cluster: self,
            name,
        })
    }

    /// A new database of this test's own, a copy of the template for
    /// `schema` (a name for the schema, such as the server's migrations
    /// fingerprint). The first test to need the template makes it: it
    /// calls `migrate` with the template's URL (which must close its
    /// connections before returning); tests of other processes wait.
    ///
    /// # Errors
    /// When the cluster cannot be used or `migrate` fails.
    pub async fn database<F, Fut>(
        &self,
        schema: &str,
        migrate: F,
    ) -> Result<TestDatabase<'_>, TestkitError>
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let template = format!("natter_tpl_{schema}");
        let admin = self.connect("postgres").await?;
        let deadline = Instant::now() + WAIT;
        let mut migrate = Some(migrate);
        loop {
            let row = admin
                .query_opt(
                    "SELECT datistemplate FROM pg_database WHERE datname = $1",
                    &[&template],
                )
                .await
                .map_err(|e| db_err(&e))?;
            match row.map(|r| r.get::<_, bool>(0)) {
                Some(true) => break,
                Some(false) => {}
                None => match admin
                    .batch_execute(&format!("CREATE DATABASE {template}"))
                    .await
                {
                    Ok(()) => {
                        let Some(migrate) = migrate.take() else {
                            return Err(err("the template was made twice"));
                        };
                        migrate(self.url_of(&template)).await.map_err(err)?;
                        admin
                            .batch_execute(&format!(
                                "ALTER DATABASE {template} WITH IS_TEMPLATE true"
                            ))
                            .await
                            .map_err(|e| db_err(&e))?;
                        break;
                    }
                    // Another process creates it: 42P04, or 23505 when
                    // both inserted into pg_database at once.
                    Err(e)
                        if e.code() == Some(&SqlState::DUPLICATE_DATABASE)
                            || e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {}
                    Err(e) => return Err(db_err(&e)),
                },
            }
            if Instant::now() > deadline {
                return Err(err(format!("{template} was not migrated in time")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let name = unique("natter_t");
        admin
            .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {template}"))
            .await
            .map_err(|e| db_err(&e))?;
        Ok(TestDatabase {
            cluster: self,
            name,
        })
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Some(dir) = self.own.take() {
            let _stopped = Command::new(script()).arg("stop").arg(&dir).status();
        }
    }
}

/// A database of one test's own.
#[derive(Debug)]
pub struct TestDatabase<'c> {
    /// Its cluster.
    cluster: &'c PgCluster,
    /// Its name.
    name: String,
}

impl TestDatabase<'_> {
    /// Its URL.
    #[must_use]
    pub fn url(&self) -> String {
        self.cluster.url_of(&self.name)
    }

    /// Its name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A connection to it (its driver task is spawned).
    ///
    /// # Errors
    /// When it cannot be reached in time.
    pub async fn connect(&self) -> Result<Client, TestkitError> {
        self.cluster.connect(&self.name).await
    }

    /// Drops it now, closing every connection to it (the store's pool
    /// then fails like one whose database went away).
    ///
    /// # Errors
    /// When the cluster cannot be used.
    pub async fn drop_now(&self) -> Result<(), TestkitError> {
        let admin = self.cluster.connect("postgres").await?;
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await
            .map_err(|e| db_err(&e))
    }
}

impl Drop for TestDatabase<'_> {
    fn drop(&mut self) {
        // Drop is synchronous and may run inside a runtime: a thread of its
        // own with a small runtime frees the disk the copy holds.
        let url = self.cluster.url_of("postgres");
        let name = self.name.clone();
        let _joined = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let Ok(Ok((client, connection))) =
                    tokio::time::timeout(WAIT, tokio_postgres::connect(&url, NoTls)).await
                else {
                    return;
                };
                let driver = tokio::spawn(connection);
                let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                let _dropped = tokio::time::timeout(WAIT, client.batch_execute(&sql)).await;
                drop(client);
                let _ended = driver.await;
            });
        })
        .join();
    }
}
