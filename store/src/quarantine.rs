//! Blobs found corrupt on disk. Whoever notices (a reader checking the hash
//! at the end, a provider computing range hashes) calls
//! [`Store::quarantine`]: the file is moved aside to `quarantine/`, the
//! store forgets the blob (so it is no longer announced, served or
//! re-hashed on every request), and the blob is listed with whether it was
//! pinned, so the node can fetch a good copy and `kiln status --node` can
//! say so. The list and the files kept are bounded.
//!
//! Not for: deciding what to fetch again (the node does, told through
//! [`Store::on_quarantined`]).

use std::collections::VecDeque;
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use kiln_protocol::Hash;

use crate::error::StoreError;
use crate::fsutil::now_ms;
use crate::store::Store;

/// Quarantined blobs listed (the oldest entry makes room).
pub const QUARANTINE_LISTED_MAX: usize = 64;
/// Corrupt files kept for inspection in `quarantine/` (the oldest is
/// deleted to make room; they never count against the size cap).
pub const QUARANTINE_FILES_MAX: usize = 4;
/// Longest note kept about what became of a quarantined blob.
const NOTE_BYTES_MAX: usize = 512;

/// A blob found corrupt, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quarantined {
    pub hash: Hash,
    /// What its bytes hashed to.
    pub actual: Hash,
    pub size_bytes: u64,
    pub found_at_ms: u64,
    /// Pinned when found: the node needs it, so it fetches it again.
    pub pinned: bool,
    /// Where the corrupt bytes were kept, if they were.
    pub kept: Option<PathBuf>,
    /// What became of it since ("fetched a good copy", "could not ...").
    pub note: Option<String>,
}

/// Told of each blob quarantined, with whether it was pinned. It runs on
/// the thread that found the corruption: it should only hand the hash on.
pub type QuarantineListener = Arc<dyn Fn(Hash, bool) + Send + Sync>;

/// The quarantine list, kept in the store's handle.
#[derive(Default)]
pub(crate) struct QuarantineList {
    pub(crate) entries: VecDeque<Quarantined>,
    pub(crate) listener: Option<QuarantineListener>,
}

impl Store {
    /// Moves a blob found corrupt (its bytes hash to `actual`) out of the
    /// store and lists it; returns the error that says so. A blob not
    /// stored (already quarantined by another reader) is left alone.
    pub fn quarantine(&self, hash: &Hash, actual: Hash) -> StoreError {
        let corrupt = StoreError::Corrupt { hash: *hash, actual };
        let Some(size_bytes) = self.size(hash) else {
            return corrupt;
        };
        let pinned = self.is_pinned(hash);
        tracing::warn!(blob = %hash, actual = %actual, pinned, "blob on disk does not match its hash; quarantining it");
        let kept = self.keep_aside(hash);
        if let Err(e) = self.remove(hash) {
            tracing::warn!(blob = %hash, error = %e, "could not remove corrupt blob");
        }
        let listener = {
            let mut list = self.quarantine_list();
            list.entries.retain(|q| q.hash != *hash);
            if list.entries.len() >= QUARANTINE_LISTED_MAX {
                list.entries.pop_front();
            }
            list.entries.push_back(Quarantined {
                hash: *hash,
                actual,
                size_bytes,
                found_at_ms: now_ms(),
                pinned,
                kept,
                note: None,
            });
            list.listener.clone()
        };
        if let Some(listener) = listener {
            listener(*hash, pinned);
        }
        corrupt
    }

    /// Every blob quarantined since the store was opened, oldest first.
    pub fn quarantined(&self) -> Vec<Quarantined> {
        self.quarantine_list().entries.iter().cloned().collect()
    }

    /// Notes what became of a quarantined blob.
    pub fn note_quarantined(&self, hash: &Hash, note: &str) {
        let mut list = self.quarantine_list();
        if let Some(entry) = list.entries.iter_mut().find(|q| q.hash == *hash) {
            entry.note = Some(crate::store::cut_at_char(note, NOTE_BYTES_MAX).to_string());
        }
    }

    /// Registers the one listener told of every blob quarantined.
    pub fn on_quarantined(&self, listener: QuarantineListener) {
        self.quarantine_list().listener = Some(listener);
    }

    /// Moves the corrupt file into `quarantine/`, keeping the newest few;
    /// where it went, or `None` if it could not be kept.
    fn keep_aside(&self, hash: &Hash) -> Option<PathBuf> {
        let dir = self.dir().join("quarantine");
        if let Err(e) = fs::create_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot create the quarantine folder");
            return None;
        }
        prune(&dir, QUARANTINE_FILES_MAX.saturating_sub(1));
        let kept = dir.join(hash.to_string());
        match fs::rename(self.blob_path(hash), &kept) {
            Ok(()) => Some(kept),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!(blob = %hash, error = %e, "cannot move a corrupt blob aside; removing it");
                None
            }
        }
    }
}

/// Deletes the oldest files in `dir` until at most `keep` are left.
fn prune(dir: &std::path::Path, keep: usize) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if files.len() <= keep {
        return;
    }
    files.sort();
    for (_, path) in files.iter().take(files.len() - keep) {
        let _ = fs::remove_file(path);
    }
}
