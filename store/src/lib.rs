//! Kiln's store: content-addressed blobs as files on disk, and a small
//! embedded index (redb) beside them.
//!
//! A data dir looks like this:
//!
//! ```text
//! blobs/ab/ab12…ef   one file per blob, named by its BLAKE3 hash (64 hex), sharded by the first 2 hex
//! tmp/               puts in progress; cleared on open (a crash leaves files only here)
//! partial/           resumable downloads, named by the hash they must have when complete
//! quarantine/        a few blobs found corrupt, kept aside for inspection (never served)
//! index.redb         access times, pins, attestations, partial progress, durable records
//! ```
//!
//! Every blob is written to `tmp/`, hashed while it is written, fsynced and
//! renamed into `blobs/` only when its hash is the one expected, so a blob
//! under a real name is always whole. The index is advisory for blobs (the
//! directory is the truth, re-read on open) and authoritative for pins,
//! attestations and records. A size cap evicts unpinned blobs, least
//! recently used first.
//!
//! The store is blocking (std I/O): async callers use `spawn_blocking`. One
//! handle owns a data dir at a time (the index file is locked, so a second
//! `Store::open` of the same dir fails with [`StoreError::InUse`], even in
//! the same process): open it once and clone the [`Store`] handle into
//! every role.
//!
//! Not for: networking, fetching, deciding what to pin, or building.

mod buffer;
mod error;
mod export;
mod fsutil;
mod index;
mod partial;
mod put;
mod quarantine;
mod read;
mod records;
mod store;

pub use buffer::{AlignedBuffer, DIRECT_IO_ALIGN};
pub use error::{DiskFullReason, Result, StoreError};
pub use export::{write_durably, Exported};
pub use index::RecordTable;
pub use partial::{PartialBlob, PartialInfo, PendingFlush};
pub use quarantine::{QuarantineListener, Quarantined, QUARANTINE_FILES_MAX, QUARANTINE_LISTED_MAX};
pub use read::{BlobReader, VerifyReport};
pub use store::{RemovedListener, Store, StoreOptions};

/// Buffer for copying and hashing blob bytes.
pub const COPY_BUFFER_BYTES: usize = 1024 * 1024;
/// Largest blob [`Store::read`] returns whole; larger ones are streamed.
pub const READ_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Largest range [`Store::read_range`] returns at once: the protocol's
/// limit for one blob request, so a peer can never ask for a range the
/// store would refuse to read.
pub use kiln_protocol::messages::RANGE_BYTES_MAX;
/// Most attestations kept for one build key (independent rebuilds).
pub const ATTESTATIONS_PER_BUILD_MAX: u64 = 64;
/// Largest encoded signed attestation accepted.
pub const ATTESTATION_BYTES_MAX: usize = 64 * 1024;
/// Largest key of a durable record.
pub const RECORD_KEY_BYTES_MAX: usize = 1024;
/// Largest value of a durable record.
pub const RECORD_VALUE_BYTES_MAX: usize = 1024 * 1024;
/// Longest pin reason kept (longer ones are cut at a character boundary).
pub const PIN_REASON_BYTES_MAX: usize = 1024;
/// Most separate written ranges tracked for one partial blob.
pub const PARTIAL_RANGES_MAX: usize = 65_536;
/// A partial blob persists its progress after this many new bytes.
pub const PARTIAL_FLUSH_BYTES: u64 = 64 * 1024 * 1024;
/// A blob's last access time is written to the index at most this often
/// (reads update it in memory every time).
pub const ACCESS_PERSIST_MS: u64 = 60 * 1000;
