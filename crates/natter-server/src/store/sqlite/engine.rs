//! The SQLite engine room: one writer thread that commits in groups, and a
//! pool of read connections used from blocking threads.
//!
//! Group commit: the writer takes every job waiting in its queue (up to
//! `write_batch_max`), runs each inside its own savepoint of one transaction,
//! commits once, and only then answers the callers. A failing job rolls back
//! its savepoint alone. With `synchronous=FULL` one fsync covers the batch,
//! which is what makes durable writes fast (see `docs/storage.md`).

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::cache::ChatCache;
use crate::store::{StoreError, StoreErrorKind, StoreResult};

/// Answers a job's caller once the batch's fate is known.
type Reply = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// A write job: runs against the open transaction and the writer's memory of
/// the chats, says whether it succeeded (keep its savepoint) and how to
/// answer its caller.
type Job = Box<dyn FnOnce(&Connection, &mut ChatCache) -> (bool, Reply) + Send>;

/// What the writer thread is asked to do.
enum Task {
    /// A write job, run in the next group commit.
    Write(Job),
    /// Commit what is gathered, then checkpoint and truncate the WAL now;
    /// answers whether the log was emptied.
    Checkpoint(oneshot::Sender<bool>),
}

/// Turns a rusqlite error into a [`StoreError`] of the right kind.
pub(super) fn db_err(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode as Code;
    let kind = match e.sqlite_error_code() {
        Some(Code::DatabaseBusy | Code::DatabaseLocked) => StoreErrorKind::Conflict,
        Some(
            Code::CannotOpen
            | Code::DiskFull
            | Code::SystemIoFailure
            | Code::ReadOnly
            | Code::PermissionDenied
            | Code::OutOfMemory,
        ) => StoreErrorKind::Unavailable,
        _ if matches!(e, rusqlite::Error::QueryReturnedNoRows) => StoreErrorKind::NotFound,
        _ => StoreErrorKind::Internal,
    };
    StoreError::new(kind, e.to_string())
}

/// Opens a connection with the pragmas every connection needs.
fn open(path: &Path, read_only: bool) -> StoreResult<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags).map_err(db_err)?;
    conn.execute_batch(
        "PRAGMA busy_timeout = 5000;
         PRAGMA foreign_keys = ON;
         PRAGMA synchronous = FULL;",
    )
    .map_err(db_err)?;
    Ok(conn)
}

/// The writer thread's handle.
pub(super) struct Writer {
    /// Jobs for the writer thread; bounded, so a flood of writes makes
    /// callers wait instead of growing memory. `None` once closed.
    jobs: Mutex<Option<mpsc::Sender<Task>>>,
    /// The thread, joined on close so the last batch is committed before exit.
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

impl Writer {
    /// Opens the database for writing, applies `migrate`, and starts the thread.
    pub(super) fn start(
        path: &Path,
        queue: usize,
        batch_max: usize,
        cache: ChatCache,
        migrate: impl FnOnce(&mut Connection) -> StoreResult<()>,
    ) -> StoreResult<Self> {
        let mut conn = open(path, false)?;
        // WAL: readers never block the writer and the writer never blocks readers.
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(db_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::internal(format!(
                "could not enable WAL mode (got {mode})"
            )));
        }
        // Fold the write-ahead log into the database every WAL_CHECKPOINT_PAGES
        // pages instead of SQLite's 1,000: a checkpoint runs inside a commit
        // and copies (and syncs) pages a busy log rewrites many times over.
        conn.pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_PAGES)
            .map_err(db_err)?;
        // Deleted content (messages deleted for everyone, consumed codes) is
        // overwritten in the file, not just unlinked from the b-tree.
        conn.execute_batch("PRAGMA secure_delete = ON;")
            .map_err(db_err)?;
        migrate(&mut conn)?;
        let (tx, rx) = mpsc::channel(queue);
        let thread = std::thread::Builder::new()
            .name("natter-sqlite-writer".to_owned())
            .spawn(move || run_writer(conn, rx, batch_max, cache))
            .map_err(|e| {
                StoreError::unavailable(format!("could not start the writer thread: {e}"))
            })?;
        Ok(Self {
            jobs: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Runs `f` in the next group commit and returns its result once committed.
    pub(super) async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        self.write_chats(move |conn, _| f(conn)).await
    }

    /// Like [`Writer::write`], for jobs that use the writer's memory of the
    /// chats (members, heads, receipts). A job that fails may have changed
    /// that memory half-way: the writer then forgets it all and reloads
    /// each chat from the store when next needed.
    pub(super) async fn write_chats<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut ChatCache) -> StoreResult<T> + Send + 'static,
    {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move |conn, cache| {
            let outcome = f(conn, cache);
            let ok = outcome.is_ok();
            let reply: Reply = Box::new(move |commit| {
                let _ = done.send(commit.and(outcome));
            });
            (ok, reply)
        });
        self.send(Task::Write(job)).await?;
        result
            .await
            .map_err(|_| StoreError::unavailable("the writer stopped"))?
    }

    /// Queues a task for the writer thread (waiting while its queue is full).
    async fn send(&self, task: Task) -> StoreResult<()> {
        let sender = self
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| StoreError::unavailable("the store is closed"))?;
        sender
            .send(task)
            .await
            .map_err(|_| StoreError::unavailable("the store is closed"))
    }

    /// Commits what the writer holds, then folds the write-ahead log into
    /// the database and truncates it, waiting (bounded) for readers: after
    /// this, old copies of deleted content are gone from the log too.
    /// `false` if readers kept it busy (the minute's checkpoint finishes it).
    pub(super) async fn checkpoint(&self) -> StoreResult<bool> {
        let (done, result) = oneshot::channel();
        self.send(Task::Checkpoint(done)).await?;
        result
            .await
            .map_err(|_| StoreError::unavailable("the writer stopped"))
    }

    /// Stops taking jobs, lets the writer commit what it has, and waits for it.
    pub(super) async fn close(&self) {
        drop(
            self.jobs
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// The writer loop: wait for a job, gather the queue, commit once, answer
/// all. Receipt positions that changed only in memory are written out at
/// most `cache.flush_every` apart (and when the writer stops).
fn run_writer(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Task>,
    batch_max: usize,
    mut cache: ChatCache,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(batch_max);
    let mut last_checkpoint = Instant::now();
    let mut last_flush = Instant::now();
    loop {
        let first = if cache.has_unflushed() {
            // Wait no longer than the flush is due.
            let due = cache.flush_every().saturating_sub(last_flush.elapsed());
            match recv_within(&mut rx, due) {
                Received::Job(job) => Some(job),
                Received::Timeout => None,
                Received::Closed => break,
            }
        } else {
            match rx.blocking_recv() {
                Some(job) => Some(job),
                None => break,
            }
        };
        // A checkpoint request ends the batch: what came before it is
        // committed first, so the checkpoint covers it.
        let mut checkpoint = None;
        match first {
            Some(Task::Write(job)) => batch.push(job),
            Some(Task::Checkpoint(reply)) => checkpoint = Some(reply),
            None => {}
        }
        while checkpoint.is_none() && batch.len() < batch_max {
            match rx.try_recv() {
                Ok(Task::Write(job)) => batch.push(job),
                Ok(Task::Checkpoint(reply)) => checkpoint = Some(reply),
                Err(_) => break,
            }
        }
        let flush = cache.has_unflushed() && last_flush.elapsed() >= cache.flush_every();
        if !batch.is_empty() || flush {
            commit_batch(&mut conn, &mut batch, &mut cache, flush);
        }
        if flush {
            last_flush = Instant::now();
        }
        cache.evict_if_full();
        if let Some(reply) = checkpoint {
            let _ = reply.send(truncate_wal(&conn, CHECKPOINT_WAIT));
            last_checkpoint = Instant::now();
        } else if last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
            truncate_wal(&conn, Duration::ZERO);
            last_checkpoint = Instant::now();
        }
    }
    if cache.has_unflushed() {
        commit_batch(&mut conn, &mut batch, &mut cache, true);
    }
}

/// What waiting for a job gave.
enum Received {
    Job(Task),
    Timeout,
    Closed,
}

/// Waits at most `wait` for the next job (the writer is a plain thread, so
/// this polls the queue in short steps rather than blocking on it).
fn recv_within(rx: &mut mpsc::Receiver<Task>, wait: Duration) -> Received {
    /// Short enough to keep a send's latency low, long enough to cost nothing idle.
    const STEP: Duration = Duration::from_millis(1);
    let deadline = Instant::now() + wait;
    loop {
        match rx.try_recv() {
            Ok(job) => return Received::Job(job),
            Err(mpsc::error::TryRecvError::Disconnected) => return Received::Closed,
            Err(mpsc::error::TryRecvError::Empty) => {}
        }
        if Instant::now() >= deadline {
            return Received::Timeout;
        }
        std::thread::sleep(STEP);
    }
}

/// Pages the write-ahead log may hold before a commit folds it into the
/// database (about 40 MiB of 4 KiB pages); the writer also truncates it
/// every [`CHECKPOINT_EVERY`].
const WAL_CHECKPOINT_PAGES: i64 = 10_000;

/// How often the writer folds the write-ahead log into the database and
/// truncates it. Besides bounding the log's size, this is what removes the
/// old copies of deleted content that the log still holds.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(60);

/// How long a requested checkpoint (after an account deletion) waits for
/// readers to move to the newest snapshot: reads are single statements, so
/// this is plenty, and it holds the writer no longer than a slow commit.
const CHECKPOINT_WAIT: Duration = Duration::from_secs(2);

/// Checkpoints and truncates the WAL, waiting at most `wait` for readers:
/// if some are still busy, it does what it can now and the rest next time.
/// True if the log was emptied.
fn truncate_wal(conn: &Connection, wait: Duration) -> bool {
    let result = conn
        .execute_batch(&format!("PRAGMA busy_timeout = {};", wait.as_millis()))
        .and_then(|()| {
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0)
            })
        })
        .and_then(|busy| {
            conn.execute_batch("PRAGMA busy_timeout = 5000;")
                .map(|()| busy)
        });
    match result {
        Ok(0) => {
            tracing::debug!("write-ahead log checkpointed and truncated");
            true
        }
        Ok(_) => {
            tracing::debug!("write-ahead log checkpoint deferred: readers busy");
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "write-ahead log checkpoint failed");
            false
        }
    }
}

/// Runs one batch in one transaction, each job in its own savepoint; with
/// `flush`, also writes out the receipt positions changed in memory.
fn commit_batch(conn: &mut Connection, batch: &mut Vec<Job>, cache: &mut ChatCache, flush: bool) {
    let started = std::time::Instant::now();
    metrics::histogram!("natter_store_commit_batch_size").record(batch.len() as f64);
    let mut replies: Vec<Reply> = Vec::with_capacity(batch.len());
    // Whether the memory of the chats may no longer match the store.
    let mut stale = false;
    let result = (|| -> Result<(), rusqlite::Error> {
        let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for job in batch.drain(..) {
            let sp = tx.savepoint()?;
            // A bug in one job must not take the writer (and every later write) down:
            // its savepoint is rolled back and its caller sees the writer error.
            let Ok((ok, reply)) = std::panic::catch_unwind(AssertUnwindSafe(|| job(&sp, cache)))
            else {
                tracing::error!("a write job panicked; its changes were rolled back");
                stale = true;
                continue;
            };
            replies.push(reply);
            if ok {
                sp.commit()?;
            } else {
                // Dropping a savepoint rolls it back.
                drop(sp);
                stale = true;
            }
        }
        // A failed job may have left the memory ahead of the store: write
        // nothing from it (it is forgotten below).
        if flush && !stale {
            cache.flush(&tx)?;
        }
        tx.commit()
    })();
    if stale || result.is_err() {
        cache.forget();
    } else {
        cache.publish();
    }
    let result = result.map_err(db_err);
    metrics::histogram!("natter_store_commit_seconds").record(started.elapsed().as_secs_f64());
    if let Err(e) = &result {
        tracing::error!(error = %e, jobs = replies.len(), "a group commit failed");
    }
    // Jobs not reached because the batch failed early are answered by dropping them.
    batch.clear();
    for reply in replies {
        reply(result.clone());
    }
}

/// Read connections, lent to blocking threads one query at a time.
pub(super) struct ReadPool {
    /// Where to open a replacement if a connection is lost.
    path: PathBuf,
    /// Idle connections.
    idle: Mutex<Vec<Connection>>,
    /// One permit per connection: readers wait here when all are busy.
    permits: Semaphore,
    /// How many connections the pool holds.
    size: usize,
}

impl std::fmt::Debug for ReadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadPool")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ReadPool {
    /// Opens `size` read-only connections.
    pub(super) fn open(path: &Path, size: usize) -> StoreResult<Self> {
        let idle = (0..size)
            .map(|_| open(path, true))
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(Self {
            path: path.to_owned(),
            idle: Mutex::new(idle),
            permits: Semaphore::new(size),
            size,
        })
    }

    /// Waits for running reads, then closes every connection (so the
    /// writer's connection is the last and SQLite folds the WAL in on close).
    pub(super) async fn close(&self) {
        if let Ok(all) = self
            .permits
            .acquire_many(u32::try_from(self.size).unwrap_or(u32::MAX))
            .await
        {
            self.idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clear();
            all.forget();
        }
        self.permits.close();
    }

    /// Runs `f` on a read connection in a blocking thread.
    pub(super) async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::unavailable("the store is closed"))?;
        let conn = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let conn = match conn {
            Some(c) => c,
            None => open(&self.path, true)?,
        };
        let (conn, result) = tokio::task::spawn_blocking(move || {
            let r = f(&conn);
            (conn, r)
        })
        .await
        .map_err(|e| StoreError::internal(format!("a read task failed: {e}")))?;
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(conn);
        result
    }
}
