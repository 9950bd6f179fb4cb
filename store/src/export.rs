//! Handing a stored blob to the user at a path they chose (`kiln fetch -o`).
//! On the same filesystem the output is a hard link to the blob: no second
//! copy of a large artifact is written. Blob files are read-only (0444), and
//! so is such an output; a user who wants to edit it copies it first.
//! Across filesystems the blob is copied and fsynced. Either way the output
//! appears whole, by rename, or not at all.
//!
//! A small blob a short-lived client fetched into memory is written the
//! same way ([`write_durably`]), without passing through the store.
//!
//! Not for reading blobs inside Kiln: see `read`.

use std::fs::{self, File, Permissions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use kiln_protocol::Hash;

use crate::error::{Result, StoreError};
use crate::fsutil::{random_name, sync_dir};
use crate::store::Store;

/// Mode of an output that had to be copied.
const COPY_FILE_MODE: u32 = 0o644;

/// How [`Store::export`] wrote its output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exported {
    /// A hard link to the stored blob (read-only).
    Linked,
    /// A durable copy (another filesystem, or links not allowed).
    Copied,
}

impl Store {
    /// Puts blob `hash` at `output`, replacing what was there.
    pub fn export(&self, hash: &Hash, output: &Path) -> Result<Exported> {
        if !self.has(hash) {
            return Err(StoreError::Missing { hash: *hash });
        }
        let source = self.blob_path(hash);
        let dir = output
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let staged = dir.join(random_name(".kiln-export"));
        let how = match fs::hard_link(&source, &staged) {
            Ok(()) => Exported::Linked,
            Err(_) => {
                copy_durably(&source, &staged)?;
                Exported::Copied
            }
        };
        if let Err(e) = fs::rename(&staged, output) {
            let _ = fs::remove_file(&staged);
            return Err(StoreError::io("writing", output, e));
        }
        sync_dir(dir)?;
        self.touch(hash);
        Ok(how)
    }
}

/// Writes `bytes` to `output` as a new file (0644 less the umask), replacing what was
/// there: written and fsynced under a temporary name beside it, then
/// renamed, so the output appears whole or not at all. For a blob a
/// short-lived client fetched into memory, past the store. Its errors are
/// about `output`, not the store.
pub fn write_durably(output: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let staged = dir.join(random_name(".kiln-export"));
    let written = File::options()
        .write(true)
        .create_new(true)
        .mode(COPY_FILE_MODE)
        .open(&staged)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .and_then(|()| fs::rename(&staged, output));
    if let Err(e) = written {
        let _ = fs::remove_file(&staged);
        return Err(e);
    }
    File::open(dir)?.sync_all()
}

fn copy_durably(source: &Path, staged: &Path) -> Result<()> {
    let copied = fs::copy(source, staged).and_then(|_| {
        let file = File::options().write(true).open(staged)?;
        file.set_permissions(Permissions::from_mode(COPY_FILE_MODE))?;
        file.sync_all()
    });
    copied.map_err(|e| {
        let _ = fs::remove_file(staged);
        StoreError::io("copying a blob to", staged, e)
    })
}
