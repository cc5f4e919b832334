//! The services on a data directory with no server running: what `natter
//! admin` works with. Opening takes the data directory's lock like a server
//! does, so it refuses while a server runs (and a server refuses while it
//! is open).

use std::path::Path;
use std::sync::Arc;

use crate::blobs::Blobs;
use crate::config::Config;
use crate::ratelimit::LocalRateLimiter;
use crate::server::{BLOB_DIR, StartError};
use crate::service::Services;
use crate::sms::NoSms;
use crate::store::Store;
use crate::store::postgres::{PgOptions, Postgres};
use crate::store::sqlite::{DB_FILE, LOCK_FILE, SqliteStore};

/// Why a data directory cannot be opened offline.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// A server (or another `natter admin`) holds the lock.
    #[error(
        "a natter server is running on the data directory {0}: stop it first \
         (`natter admin` works on a stopped server; only `backup` works while it runs)"
    )]
    Running(String),
    /// There is no store to work on.
    #[error(
        "{0} is not a Natter data directory (it has no {DB_FILE}); pass --data-dir or \
         --config, or start `natter serve` once"
    )]
    Missing(String),
    /// The store or the services could not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// A read-only look at the store failed.
    #[error("cannot read the store: {0}")]
    Read(String),
}

/// A verification code waiting to be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingCode {
    /// The number it was issued for (E.164).
    pub phone: String,
    /// The code, in sign-up mode `open` only (elsewhere only its hash is stored).
    pub code: Option<String>,
    /// Wrong guesses so far.
    pub attempts: i64,
    /// When it stops working.
    pub expires_at: crate::clock::Timestamp,
}

/// The verification codes not yet used or expired, soonest to expire first.
/// A read-only look that works while a server runs (SQLite's WAL lets a
/// reader in beside the server's writer), as `natter admin codes` needs in
/// development, where the operator hands codes to testers.
///
/// # Errors
/// No store at `data_dir`, or it cannot be read.
pub fn pending_codes(
    data_dir: &Path,
    now: crate::clock::Timestamp,
) -> Result<Vec<PendingCode>, OfflineError> {
    use rusqlite::{Connection, OpenFlags};
    let db = data_dir.join(DB_FILE);
    if !db.is_file() {
        return Err(OfflineError::Missing(data_dir.display().to_string()));
    }
    let read = |e: rusqlite::Error| OfflineError::Read(e.to_string());
    let conn = Connection::open_with_flags(
        &db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(read)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(read)?;
    let mut stmt = conn
        .prepare(
            "SELECT phone, shown_code, attempts, expires_at FROM verification_codes
             WHERE expires_at > ?1 ORDER BY expires_at, phone",
        )
        .map_err(read)?;
    let rows = stmt
        .query_map([now.0], |r| {
            Ok(PendingCode {
                phone: r.get(0)?,
                code: r.get(1)?,
                attempts: r.get(2)?,
                expires_at: crate::clock::Timestamp(r.get(3)?),
            })
        })
        .map_err(read)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(read)
}

/// Whether a process holds the data directory's lock right now.
#[must_use]
pub fn server_running(data_dir: &Path) -> bool {
    let Ok(file) = std::fs::OpenOptions::new()
        .write(true)
        .open(data_dir.join(LOCK_FILE))
    else {
        return false;
    };
    matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock))
}

/// The services over a locked data directory, without a listener.
#[derive(Debug)]
pub struct Offline {
    /// The services, as a server would have them.
    services: Services,
    /// Closed by [`Offline::close`], so every write is committed.
    store: Arc<dyn Store>,
}

impl Offline {
    /// Opens the data directory of `config`. With `create`, a missing one
    /// is made (as `natter serve` would); without, it is an error.
    ///
    /// # Errors
    /// A server runs on it, it does not exist, or it cannot be opened.
    pub async fn open(config: Config, create: bool) -> Result<Self, OfflineError> {
        let dir = config.data_dir.clone();
        let store: Arc<dyn Store> = match PgOptions::for_config(&config.store, 2) {
            // A shared store: nodes may be serving while the operator works
            // (PostgreSQL serializes both); connecting migrates it.
            Some(options) => Arc::new(
                Postgres::connect(&options)
                    .await
                    .map_err(|e| OfflineError::Read(e.to_string()))?,
            ),
            None => {
                let shown = dir.display().to_string();
                if !create && !dir.join(DB_FILE).is_file() {
                    return Err(OfflineError::Missing(shown));
                }
                if server_running(&dir) {
                    return Err(OfflineError::Running(shown));
                }
                let store_config = config.store.clone();
                let open_dir = dir.clone();
                Arc::new(
                    tokio::task::spawn_blocking(move || {
                        SqliteStore::open(&open_dir, &store_config)
                    })
                    .await
                    .map_err(|e| {
                        StartError::Store(crate::store::StoreError::internal(e.to_string()))
                    })?
                    .map_err(StartError::Store)?,
                )
            }
        };
        let blobs = Blobs::for_config(&config, &dir.join(BLOB_DIR)).map_err(StartError::Blobs)?;
        let limiter = Arc::new(LocalRateLimiter::for_config(&config));
        let services = Services::new(
            Arc::clone(&store),
            Arc::new(crate::bus::LocalBus::default()),
            Arc::new(NoSms),
            limiter,
            blobs,
            Arc::new(config),
            None,
        )
        .await
        .map_err(StartError::Store)?;
        Ok(Self { services, store })
    }

    /// The services.
    #[must_use]
    pub fn services(&self) -> &Services {
        &self.services
    }

    /// Commits and closes the store, releasing the lock.
    pub async fn close(self) {
        drop(self.services);
        self.store.close().await;
    }
}
