//! Reading blobs back: raw file handles for range serving, a reader that
//! verifies the hash as it goes, whole small blobs, ranges, and
//! re-verification of what is on disk. A blob whose bytes no longer match
//! its name is quarantined and reported.
//!
//! Not for writing: see `put` and `partial`.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use kiln_protocol::Hash;

use crate::error::{Result, StoreError};
use crate::store::Store;
use crate::{COPY_BUFFER_BYTES, RANGE_BYTES_MAX, READ_BYTES_MAX};

/// What [`Store::verify_all`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Blobs whose bytes match their hash.
    pub good: u64,
    /// Bytes re-hashed.
    pub checked_bytes: u64,
    /// Blobs whose bytes did not match; they were quarantined.
    pub corrupt: Vec<Hash>,
    /// Blobs listed but whose file had disappeared; they were forgotten.
    pub missing: Vec<Hash>,
}

/// Reads one blob from the start and checks its hash at the end: the
/// final `read` returns an error of kind `InvalidData` instead of end of
/// file if the bytes were not the blob's (and the blob is then
/// quarantined: see [`Store::quarantine`]).
pub struct BlobReader {
    store: Store,
    file: File,
    hash: Hash,
    size_bytes: u64,
    read_bytes: u64,
    hasher: blake3::Hasher,
    verified: bool,
}

impl BlobReader {
    pub fn hash(&self) -> Hash {
        self.hash
    }

    /// The blob's size in bytes.
    pub fn size(&self) -> u64 {
        self.size_bytes
    }

    /// Reads the next bytes; at the end, checks size and hash.
    fn read_checked(&mut self, buffer: &mut [u8]) -> Result<usize> {
        if self.verified || buffer.is_empty() {
            return Ok(0);
        }
        let read = loop {
            match self.file.read(buffer) {
                Ok(read) => break read,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(StoreError::io("reading blob", &self.store.blob_path(&self.hash), e)),
            }
        };
        self.read_bytes += read as u64;
        self.hasher.update(&buffer[..read]);
        if read > 0 && self.read_bytes <= self.size_bytes {
            return Ok(read);
        }
        let actual = Hash::from(self.hasher.finalize());
        if self.read_bytes == self.size_bytes && actual == self.hash {
            self.verified = true;
            return Ok(0);
        }
        Err(self.store.quarantine(&self.hash, actual))
    }
}

impl std::fmt::Debug for BlobReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobReader")
            .field("hash", &self.hash)
            .field("size_bytes", &self.size_bytes)
            .field("read_bytes", &self.read_bytes)
            .finish_non_exhaustive()
    }
}

impl Read for BlobReader {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        self.read_checked(buffer).map_err(|e| match e {
            corrupt @ StoreError::Corrupt { .. } => io::Error::new(io::ErrorKind::InvalidData, corrupt),
            other => io::Error::other(other),
        })
    }
}

impl Store {
    /// The blob's file, opened for reading, or `None` if it is not stored.
    /// Not verified: use [`Store::open_reader`] to check the hash while
    /// reading the whole blob.
    pub fn open_blob(&self, hash: &Hash) -> Result<Option<File>> {
        if !self.has(hash) {
            return Ok(None);
        }
        let path = self.blob_path(hash);
        match File::open(&path) {
            Ok(file) => {
                self.touch(hash);
                Ok(Some(file))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::warn!(blob = %hash, "blob file disappeared; forgetting it");
                self.forget(hash);
                Ok(None)
            }
            Err(e) => Err(StoreError::io("opening blob", &path, e)),
        }
    }

    /// A reader over the whole blob that verifies its hash at the end, or
    /// `None` if it is not stored.
    pub fn open_reader(&self, hash: &Hash) -> Result<Option<BlobReader>> {
        let Some(size_bytes) = self.size(hash) else {
            return Ok(None);
        };
        let Some(file) = self.open_blob(hash)? else {
            return Ok(None);
        };
        Ok(Some(BlobReader {
            store: self.clone(),
            file,
            hash: *hash,
            size_bytes,
            read_bytes: 0,
            hasher: blake3::Hasher::new(),
            verified: false,
        }))
    }

    /// The whole blob, verified; for blobs up to [`READ_BYTES_MAX`].
    pub fn read(&self, hash: &Hash) -> Result<Vec<u8>> {
        let size_bytes = self.size(hash).ok_or(StoreError::Missing { hash: *hash })?;
        if size_bytes > READ_BYTES_MAX {
            return Err(StoreError::TooLargeToRead {
                hash: *hash,
                size_bytes,
                limit_bytes: READ_BYTES_MAX,
            });
        }
        let mut reader = self.open_reader(hash)?.ok_or(StoreError::Missing { hash: *hash })?;
        let mut out = vec![0u8; usize::try_from(size_bytes).unwrap_or(usize::MAX)];
        let mut filled = 0;
        while filled < out.len() {
            let read = reader.read_checked(&mut out[filled..])?;
            if read == 0 {
                break;
            }
            filled += read;
        }
        // One more read checks that the file ends here and hashes right.
        let mut probe = [0u8; 1];
        reader.read_checked(&mut probe)?;
        Ok(out)
    }

    /// `len_bytes` bytes of the blob from `offset` (not verified: the
    /// caller checks ranges against the hash it trusts). The range must lie
    /// inside the blob and be at most [`RANGE_BYTES_MAX`] long.
    pub fn read_range(&self, hash: &Hash, offset: u64, len_bytes: u64) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.read_range_into(hash, offset, len_bytes, &mut out)?;
        Ok(out)
    }

    /// Like [`Store::read_range`], into `out` (resized to the range): a
    /// server reuses one buffer rather than zeroing a new one per range.
    pub fn read_range_into(&self, hash: &Hash, offset: u64, len_bytes: u64, out: &mut Vec<u8>) -> Result<()> {
        let size_bytes = self.size(hash).ok_or(StoreError::Missing { hash: *hash })?;
        let inside = offset.checked_add(len_bytes).is_some_and(|end| end <= size_bytes);
        if !inside || len_bytes > RANGE_BYTES_MAX {
            return Err(StoreError::BadRange {
                hash: *hash,
                offset,
                len_bytes,
                size_bytes,
                limit_bytes: RANGE_BYTES_MAX,
            });
        }
        let file = self.open_blob(hash)?.ok_or(StoreError::Missing { hash: *hash })?;
        out.resize(usize::try_from(len_bytes).unwrap_or(usize::MAX), 0);
        file.read_exact_at(out, offset)
            .map_err(|e| StoreError::io("reading a range of blob", &self.blob_path(hash), e))
    }

    /// Re-hashes a stored blob. `Ok(false)`: its bytes did not match its
    /// name, and it was quarantined (fetch it again).
    pub fn verify(&self, hash: &Hash) -> Result<bool> {
        let mut reader = self.open_reader(hash)?.ok_or(StoreError::Missing { hash: *hash })?;
        let mut buffer = vec![0u8; COPY_BUFFER_BYTES];
        loop {
            match reader.read_checked(&mut buffer) {
                Ok(0) => return Ok(true),
                Ok(_) => {}
                Err(StoreError::Corrupt { .. }) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
    }

    /// Re-hashes every stored blob; corrupt ones are quarantined, vanished
    /// ones forgotten.
    pub fn verify_all(&self) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        for (hash, size_bytes) in self.list() {
            match self.verify(&hash) {
                Ok(true) => {
                    report.good += 1;
                    report.checked_bytes += size_bytes;
                }
                Ok(false) => report.corrupt.push(hash),
                Err(StoreError::Missing { .. }) => report.missing.push(hash),
                Err(e) => return Err(e),
            }
        }
        Ok(report)
    }
}
