//! Small filesystem helpers: durable directories, temporary files that
//! remove themselves unless kept, the clock. Not for anything that knows
//! about blobs or the index.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use kiln_protocol::hash::to_hex;

use crate::error::{Result, StoreError};

/// Makes a directory's entries (a rename, a new file) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|e| StoreError::io("syncing directory", dir, e))
}

/// Creates `dir` if missing; when it was created, makes that durable in its
/// parent.
pub(crate) fn ensure_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|e| StoreError::io("creating directory", dir, e))?;
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => Ok(()),
    }
}

/// Unix time in milliseconds (0 if the clock is before 1970).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Unix time in milliseconds of a file's modification.
pub(crate) fn mtime_ms(metadata: &fs::Metadata) -> u64 {
    metadata
        .modified()
        .ok()
        .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A fresh random name for a temporary file.
pub(crate) fn random_name(prefix: &str) -> String {
    let mut bytes = [0u8; 12];
    // Uniqueness comes from `create_new`; randomness only avoids retries,
    // so a failing random source falls back to the clock and pid.
    if getrandom::getrandom(&mut bytes).is_err() {
        let fallback = now_ms() ^ u64::from(std::process::id()).rotate_left(40);
        bytes[..8].copy_from_slice(&fallback.to_le_bytes());
    }
    format!("{prefix}-{}", to_hex(&bytes))
}

/// A file in `tmp/` that is removed when dropped, unless [`TempFile::keep`]
/// was called after it was renamed into place.
pub(crate) struct TempFile {
    pub(crate) path: PathBuf,
    pub(crate) file: File,
    kept: bool,
}

/// Attempts at finding an unused temporary name before giving up.
const TEMP_NAME_ATTEMPTS_MAX: u32 = 16;

impl TempFile {
    pub(crate) fn create(dir: &Path, prefix: &str) -> Result<TempFile> {
        let mut attempt = 0;
        loop {
            let path = dir.join(random_name(prefix));
            match OpenOptions::new().read(true).write(true).create_new(true).open(&path) {
                Ok(file) => {
                    return Ok(TempFile {
                        path,
                        file,
                        kept: false,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < TEMP_NAME_ATTEMPTS_MAX => {
                    attempt += 1;
                }
                Err(e) => return Err(StoreError::io("creating temporary file", &path, e)),
            }
        }
    }

    /// The file was renamed away: nothing to remove.
    pub(crate) fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.kept {
            if let Err(e) = fs::remove_file(&self.path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %self.path.display(), error = %e, "could not remove temporary file");
                }
            }
        }
    }
}

/// Removes every entry of `dir` (files and directories), keeping `dir`.
pub(crate) fn clear_dir(dir: &Path) -> Result<u64> {
    let entries = fs::read_dir(dir).map_err(|e| StoreError::io("listing", dir, e))?;
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io("listing", dir, e))?;
        let path = entry.path();
        let is_dir = entry.file_type().map(|kind| kind.is_dir()).unwrap_or(false);
        let outcome = if is_dir {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        outcome.map_err(|e| StoreError::io("removing leftover temporary file", &path, e))?;
        removed += 1;
    }
    Ok(removed)
}
