//! Online backup and restore of a data directory (`natter admin backup`,
//! `natter admin restore`).
//!
//! A backup is a directory with `natter.db` (a consistent snapshot made with
//! SQLite's online backup API while the server keeps writing) and `blobs/`
//! (the media files). The database is copied first: blobs never change once
//! written, so every finished upload in the snapshot has its blob on disk
//! unless housekeeping collected it meanwhile, which the final check
//! reports. Staging files of uploads in progress (`uploads/`) and the lock
//! are not copied.
//!
//! Blocking code (files and SQLite); run it off the async runtime.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use uuid::Uuid;

use crate::perms;
use crate::server::BLOB_DIR;
use crate::store::sqlite::{DB_FILE, LOCK_FILE};

/// Pages copied per backup step: 4 MiB at SQLite's default page size, so
/// progress moves and the server's writer is never held up for long.
const PAGES_PER_STEP: std::ffi::c_int = 1024;

/// How far a backup or restore has got.
#[derive(Debug, Clone, Copy)]
pub enum Progress {
    /// Database pages copied of the total.
    Database {
        /// Copied so far.
        done: u64,
        /// All pages.
        total: u64,
    },
    /// Blob files copied so far, and their bytes.
    Blobs {
        /// Files.
        files: u64,
        /// Bytes.
        bytes: u64,
    },
}

/// What a backup or restore copied and found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Size of the database copy, in bytes.
    pub database_bytes: u64,
    /// Blob files copied.
    pub blob_files: u64,
    /// Their bytes.
    pub blob_bytes: u64,
    /// Blobs the database references that are not in the copy (collected
    /// while the backup ran, or missing from the source already).
    pub missing_blobs: Vec<String>,
}

/// Why a backup or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The source is not a data directory or backup.
    #[error("{0} has no {DB_FILE}: not a Natter data directory or backup")]
    NoDatabase(String),
    /// The destination already holds something.
    #[error("{0} exists and is not empty; choose a new directory")]
    NotEmpty(String),
    /// A server runs on the directory being restored into.
    #[error("a natter server is running on {0}; stop it before restoring")]
    Running(String),
    /// The copy of the database is damaged.
    #[error("the database copy failed its integrity check: {0}")]
    Corrupt(String),
    /// SQLite failed.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// Why.
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Makes `dir` (which must be missing or empty) as a private directory.
fn fresh_dir(dir: &Path) -> Result<(), BackupError> {
    if dir.exists() {
        let mut entries = fs::read_dir(dir).map_err(io_err(dir))?;
        if entries.next().is_some() {
            return Err(BackupError::NotEmpty(dir.display().to_string()));
        }
    }
    perms::private_dir_all(dir).map_err(io_err(dir))
}

/// Copies the database at `src` to `dst` with the online backup API, from
/// one read snapshot, so the copy is consistent however the server writes.
fn copy_database(
    src: &Path,
    dst: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<u64, BackupError> {
    let source = Connection::open_with_flags(
        src,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    source.busy_timeout(Duration::from_secs(5))?;
    // Hold one read transaction for the whole copy: every step reads the
    // same snapshot, and writes by the server (other connections) neither
    // block on it (WAL) nor restart the backup.
    source.execute_batch("BEGIN; SELECT count(*) FROM sqlite_schema;")?;
    perms::private_file(dst).map_err(io_err(dst))?;
    let mut target = Connection::open(dst)?;
    {
        let backup = rusqlite::backup::Backup::new(&source, &mut target)?;
        loop {
            let more = backup.step(PAGES_PER_STEP)?;
            let p = backup.progress();
            let total = u64::try_from(p.pagecount).unwrap_or(0);
            let left = u64::try_from(p.remaining).unwrap_or(0);
            progress(Progress::Database {
                done: total.saturating_sub(left),
                total,
            });
            match more {
                rusqlite::backup::StepResult::Done => break,
                rusqlite::backup::StepResult::More => {}
                rusqlite::backup::StepResult::Busy | rusqlite::backup::StepResult::Locked => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
    source.execute_batch("COMMIT;")?;
    // A self-contained file: no write-ahead log beside it.
    target.query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()))?;
    check_integrity(&target)?;
    drop(target);
    fs::metadata(dst).map(|m| m.len()).map_err(io_err(dst))
}

fn check_integrity(conn: &Connection) -> Result<(), BackupError> {
    let verdict: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if verdict == "ok" {
        Ok(())
    } else {
        Err(BackupError::Corrupt(verdict))
    }
}

/// Copies the tree `src` into `dst` (private files), reporting progress.
fn copy_tree(
    src: &Path,
    dst: &Path,
    report: &mut Report,
    progress: &mut dyn FnMut(Progress),
) -> Result<(), BackupError> {
    perms::private_dir_all(dst).map_err(io_err(dst))?;
    let entries = match fs::read_dir(src) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(src)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err(src))?;
        let path = entry.path();
        let target = dst.join(entry.file_name());
        let kind = entry.file_type().map_err(io_err(&path))?;
        if kind.is_dir() {
            copy_tree(&path, &target, report, progress)?;
        } else if kind.is_file() {
            match fs::copy(&path, &target) {
                Ok(bytes) => {
                    perms::restrict(&target).map_err(io_err(&target))?;
                    report.blob_files += 1;
                    report.blob_bytes += bytes;
                    if report.blob_files.is_multiple_of(100) {
                        progress(Progress::Blobs {
                            files: report.blob_files,
                            bytes: report.blob_bytes,
                        });
                    }
                }
                // Collected by housekeeping since the listing: the check says so.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
    }
    Ok(())
}

/// The blobs the database at `db` references that are missing under `blobs`.
fn missing_blobs(db: &Path, blobs: &Path) -> Result<Vec<String>, BackupError> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut s = conn.prepare("SELECT id, thumbnail FROM media WHERE ready = 1 ORDER BY id")?;
    let rows = s
        .query_map([], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)? != 0))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut missing = Vec::new();
    for (id, thumbnail) in rows {
        let Ok(id) = Uuid::from_slice(&id) else {
            continue;
        };
        let mut keys = vec![format!("media/{id}")];
        if thumbnail {
            keys.push(format!("thumbnails/{id}"));
        }
        missing.extend(keys.into_iter().filter(|k| !blobs.join(k).is_file()));
    }
    Ok(missing)
}

/// Backs `data_dir` up into `to` (missing or empty), online.
///
/// # Errors
/// No database at `data_dir`, `to` not empty, or a copy failing.
pub fn backup(
    data_dir: &Path,
    to: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<Report, BackupError> {
    let db = data_dir.join(DB_FILE);
    if !db.is_file() {
        return Err(BackupError::NoDatabase(data_dir.display().to_string()));
    }
    fresh_dir(to)?;
    let mut report = Report {
        database_bytes: copy_database(&db, &to.join(DB_FILE), progress)?,
        ..Report::default()
    };
    copy_tree(
        &data_dir.join(BLOB_DIR),
        &to.join(BLOB_DIR),
        &mut report,
        progress,
    )?;
    progress(Progress::Blobs {
        files: report.blob_files,
        bytes: report.blob_bytes,
    });
    report.missing_blobs = missing_blobs(&to.join(DB_FILE), &to.join(BLOB_DIR))?;
    Ok(report)
}

/// Restores the backup in `from` into `data_dir`, which must be missing or
/// empty (a fresh data directory): nothing is ever overwritten.
///
/// # Errors
/// Not a backup, `data_dir` in use or not empty, or a copy failing.
pub fn restore(
    from: &Path,
    data_dir: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<Report, BackupError> {
    let db = from.join(DB_FILE);
    if !db.is_file() {
        return Err(BackupError::NoDatabase(from.display().to_string()));
    }
    if crate::offline::server_running(data_dir) {
        return Err(BackupError::Running(data_dir.display().to_string()));
    }
    fresh_dir(data_dir)?;
    // Hold the lock while restoring, so a server cannot start on half a copy.
    let lock_path: PathBuf = data_dir.join(LOCK_FILE);
    perms::private_file(&lock_path).map_err(io_err(&lock_path))?;
    let lock = fs::OpenOptions::new()
        .write(true)
        .open(&lock_path)
        .map_err(io_err(&lock_path))?;
    if lock.try_lock().is_err() {
        return Err(BackupError::Running(data_dir.display().to_string()));
    }
    let mut report = Report {
        database_bytes: copy_database(&db, &data_dir.join(DB_FILE), progress)?,
        ..Report::default()
    };
    copy_tree(
        &from.join(BLOB_DIR),
        &data_dir.join(BLOB_DIR),
        &mut report,
        progress,
    )?;
    progress(Progress::Blobs {
        files: report.blob_files,
        bytes: report.blob_bytes,
    });
    report.missing_blobs = missing_blobs(&data_dir.join(DB_FILE), &data_dir.join(BLOB_DIR))?;
    drop(lock);
    Ok(report)
}
