//! File permissions of everything in the data directory: the directories
//! `0700`, the files (database, its `-wal` and `-shm`, the lock, blobs,
//! staging files, backups) `0600`, whatever the process's umask. The
//! database holds the server's keys and everyone's messages; nobody but
//! the server's user may read it.
//!
//! Modes are set explicitly after creation: a umask can only take bits
//! away from what `open(2)` asks for, and a permissive one (`000`) must not
//! leave files readable by others. On other systems than Unix these are
//! no-ops.

use std::io;
use std::path::Path;

/// Mode of every directory Natter makes.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file Natter makes.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` and its missing parents; `dir` itself gets [`DIR_MODE`].
///
/// # Errors
/// When it cannot be created or its mode set.
pub fn private_dir_all(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    set_mode(dir, DIR_MODE)
}

/// Creates `file` if missing (without truncating it) and gives it [`FILE_MODE`].
///
/// # Errors
/// When it cannot be created or its mode set.
pub fn private_file(file: &Path) -> io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).truncate(false).write(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, FILE_MODE);
    drop(options.open(file)?);
    set_mode(file, FILE_MODE)
}

/// Gives an existing file [`FILE_MODE`] (directories [`DIR_MODE`]); a
/// missing path is not an error.
///
/// # Errors
/// When the mode cannot be set.
pub fn restrict(path: &Path) -> io::Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => set_mode(path, DIR_MODE),
        Ok(_) => set_mode(path, FILE_MODE),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> io::Result<()> {
    Ok(())
}
