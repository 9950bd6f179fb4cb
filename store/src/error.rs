//! What can go wrong in the store, each with what to do about it.
//!
//! Every I/O error names the operation and the path; a full disk, a quota
//! or a file-size limit is told apart from other I/O errors because the
//! user's fix is different. Not for errors of the network or of builds.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use kiln_protocol::{Hash, SignError};

/// Why the store refused or failed an operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("blob bytes hash to {actual}, not the expected {expected}: the source sent different data; nothing was stored, fetch it again (from another source if it repeats)")]
    HashMismatch { expected: Hash, actual: Hash },

    #[error("{operation} {path}: {reason} ({source}); {advice}; nothing was stored", advice = .reason.advice())]
    DiskFull {
        operation: &'static str,
        path: PathBuf,
        reason: DiskFullReason,
        source: io::Error,
    },

    #[error("store is full: a blob of {blob_bytes} bytes does not fit under the size cap of {cap_bytes} bytes because pinned blobs alone take {pinned_bytes} bytes; nothing was stored: unpin some blobs or raise the cap (--max-store-size)")]
    Full {
        blob_bytes: u64,
        cap_bytes: u64,
        pinned_bytes: u64,
    },

    #[error("{operation} {path}: {source}; check that the data dir is on a healthy, writable filesystem and that kiln may use it")]
    Io {
        operation: &'static str,
        path: PathBuf,
        source: io::Error,
    },

    #[error("index database {path} failed while {operation}: {source}; if this repeats, stop kiln and move index.redb aside: blobs are kept and re-indexed on the next start, but pins, attestations and queued records are lost")]
    Index {
        operation: &'static str,
        path: PathBuf,
        source: Box<redb::Error>,
    },

    #[error("reading the data to store failed: {source}; nothing was stored, try again")]
    Source { source: io::Error },

    #[error(
        "{operation} {path} to store it: {source}; check that the file exists and is readable; nothing was stored"
    )]
    SourceFile {
        operation: &'static str,
        path: PathBuf,
        source: io::Error,
    },

    #[error("data dir {dir} is in use by another kiln process; stop that process or pass a different --data-dir")]
    InUse { dir: PathBuf },

    #[error("blob {hash} is not in the store; fetch it first (`kiln fetch {hash}`)")]
    Missing { hash: Hash },

    #[error("blob {hash} is corrupt on disk (its bytes hash to {actual}); it was moved to the quarantine folder of the data dir: fetch it again, and check the disk if this repeats")]
    Corrupt { hash: Hash, actual: Hash },

    #[error("blob {hash} is {size_bytes} bytes, over the {limit_bytes}-byte limit for reading it whole; stream it with `Store::open_reader` instead")]
    TooLargeToRead {
        hash: Hash,
        size_bytes: u64,
        limit_bytes: u64,
    },

    #[error("range of {len_bytes} bytes at offset {offset} is outside blob {hash} of {size_bytes} bytes, or over the {limit_bytes}-byte range limit; ask for a range inside the blob, in smaller pieces")]
    BadRange {
        hash: Hash,
        offset: u64,
        len_bytes: u64,
        size_bytes: u64,
        limit_bytes: u64,
    },

    #[error("partial blob {hash} is already open for writing in this process; finish or drop the other handle first")]
    PartialBusy { hash: Hash },

    #[error("partial blob {hash} is not complete: {missing_bytes} of {total_bytes} bytes are still missing; write them before finishing")]
    PartialIncomplete {
        hash: Hash,
        missing_bytes: u64,
        total_bytes: u64,
    },

    #[error("no partial blob {hash} in the store; start one with `begin_partial`")]
    NoPartial { hash: Hash },

    #[error("partial blob {hash} is split into more than {limit} separate ranges; write it in larger, more contiguous pieces")]
    PartialFragmented { hash: Hash, limit: usize },

    #[error("attestation refused: {0}; it was not stored (if a peer sent it, ignore that peer's claim)")]
    BadAttestation(#[from] SignError),

    #[error("build {build_key} already has {limit} attestations; the new one was not stored")]
    TooManyAttestations { build_key: Hash, limit: u64 },

    #[error("record of {len_bytes} bytes (key or value) is over the {limit_bytes}-byte limit for table {table}; store large data as a blob and record its hash")]
    RecordTooLarge {
        table: &'static str,
        len_bytes: usize,
        limit_bytes: usize,
    },

    #[error("no default data dir: the home directory is unknown; pass --data-dir")]
    NoDefaultDir,
}

/// Which resource ran out, so the message says which limit to change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFullReason {
    /// ENOSPC: the filesystem has no free space.
    NoSpace,
    /// EDQUOT: the user's disk quota is used up.
    Quota,
    /// EFBIG: a file-size limit (`ulimit -f`, or the filesystem's) was hit.
    FileTooLarge,
}

impl fmt::Display for DiskFullReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DiskFullReason::NoSpace => "disk full",
            DiskFullReason::Quota => "disk quota exceeded",
            DiskFullReason::FileTooLarge => "file too large for the file-size limit",
        })
    }
}

impl DiskFullReason {
    /// What the user can do about it.
    pub fn advice(&self) -> &'static str {
        match self {
            DiskFullReason::NoSpace => {
                "free space on that filesystem, or lower the store cap (--max-store-size) so kiln evicts old blobs"
            }
            DiskFullReason::Quota => {
                "free space within your disk quota or ask for a larger one, or lower the store cap (--max-store-size)"
            }
            DiskFullReason::FileTooLarge => {
                "raise the file-size limit (`ulimit -f`) for the kiln process, or use a filesystem that allows larger files"
            }
        }
    }

    fn of(error: &io::Error) -> Option<DiskFullReason> {
        match error.kind() {
            io::ErrorKind::StorageFull => Some(DiskFullReason::NoSpace),
            io::ErrorKind::QuotaExceeded => Some(DiskFullReason::Quota),
            io::ErrorKind::FileTooLarge => Some(DiskFullReason::FileTooLarge),
            _ => None,
        }
    }
}

impl StoreError {
    /// An I/O error during `operation` on `path`, told apart as disk full
    /// when it is one.
    pub fn io(operation: &'static str, path: &Path, source: io::Error) -> StoreError {
        match DiskFullReason::of(&source) {
            Some(reason) => StoreError::DiskFull {
                operation,
                path: path.to_path_buf(),
                reason,
                source,
            },
            None => StoreError::Io {
                operation,
                path: path.to_path_buf(),
                source,
            },
        }
    }

    /// An index error during `operation`; a full disk under the database is
    /// reported as [`StoreError::DiskFull`].
    pub(crate) fn index(operation: &'static str, path: &Path, source: impl Into<redb::Error>) -> StoreError {
        match source.into() {
            redb::Error::Io(io_error) if DiskFullReason::of(&io_error).is_some() => {
                StoreError::io(operation, path, io_error)
            }
            other => StoreError::Index {
                operation,
                path: path.to_path_buf(),
                source: Box::new(other),
            },
        }
    }

    /// True for the disk-full family of errors.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::DiskFull { .. })
    }
}

/// Shorthand used throughout the crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
