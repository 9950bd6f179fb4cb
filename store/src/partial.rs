//! Partial blobs: the file a resumable download fills, range by range and
//! in any order, in `partial/<hash>`. Which ranges are written is kept in
//! the index, recorded only after the data it describes is fsynced, so a
//! crash loses at most the progress since the last flush, never claims
//! bytes that are not on disk. Finishing hashes the whole file and moves it
//! into `blobs/` only if it is the blob it was meant to be.
//!
//! Not for deciding what to fetch from whom: the fetcher does that.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use kiln_protocol::{wire, Hash};
use serde::{Deserialize, Serialize};

use crate::buffer::is_direct_aligned;
use crate::error::{Result, StoreError};
use crate::put::seal;
use crate::store::Store;
use crate::{COPY_BUFFER_BYTES, PARTIAL_FLUSH_BYTES, PARTIAL_RANGES_MAX};

/// Largest encoded progress record: two varint `u64`s per range, and the
/// total.
const PROGRESS_BYTES_MAX: usize = PARTIAL_RANGES_MAX * 20 + 64;

/// A partial blob as recorded in the index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartialInfo {
    pub hash: Hash,
    pub total_bytes: u64,
    /// Bytes written and flushed so far.
    pub done_bytes: u64,
}

#[derive(Serialize, Deserialize)]
struct Progress {
    total_bytes: u64,
    done: Vec<(u64, u64)>,
}

/// Disjoint, non-adjacent half-open ranges, by start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct RangeSet(BTreeMap<u64, u64>);

impl RangeSet {
    fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let touching: Vec<u64> = self
            .0
            .range(..=end)
            .rev()
            .take_while(|(_, range_end)| **range_end >= start)
            .map(|(range_start, _)| *range_start)
            .collect();
        let (mut merged_start, mut merged_end) = (start, end);
        for range_start in touching {
            if let Some(range_end) = self.0.remove(&range_start) {
                merged_start = merged_start.min(range_start);
                merged_end = merged_end.max(range_end);
            }
        }
        self.0.insert(merged_start, merged_end);
    }

    fn covered_bytes(&self) -> u64 {
        self.0.iter().map(|(start, end)| end - start).sum()
    }

    fn gaps(&self, total_bytes: u64) -> Vec<Range<u64>> {
        let mut out = Vec::new();
        let mut cursor = 0;
        for (start, end) in &self.0 {
            if *start > cursor {
                out.push(cursor..*start);
            }
            cursor = cursor.max(*end);
        }
        if cursor < total_bytes {
            out.push(cursor..total_bytes);
        }
        out
    }
}

/// A download in progress. Dropping it flushes its progress; reopen it
/// with [`Store::begin_partial`] to resume. Its bytes count toward the
/// size cap only once it is finished (`begin_partial` refuses a blob that
/// could never fit).
pub struct PartialBlob {
    store: Store,
    hash: Hash,
    total_bytes: u64,
    file: File,
    /// The same file opened for direct I/O, where the file system allows
    /// it: aligned ranges are written past the page cache.
    direct: Option<File>,
    path: PathBuf,
    done: RangeSet,
    unflushed_bytes: u64,
    dirty: bool,
    /// A sync failed: what was written since the last good one may not be
    /// on disk (and a retried fsync can succeed without it), so nothing
    /// more is recorded as done.
    sync_failed: bool,
    /// Writes that went past the page cache.
    direct_writes: u64,
}

impl Store {
    /// Starts or resumes the partial blob `hash` of `total_bytes`. A
    /// recorded partial of another size is started over. Fails with
    /// [`StoreError::Full`] if it could never fit under the size cap.
    pub fn begin_partial(&self, hash: &Hash, total_bytes: u64) -> Result<PartialBlob> {
        if let Some(room) = self.room() {
            room.check(total_bytes)?;
        }
        if !self.lock().open_partials.insert(*hash) {
            return Err(StoreError::PartialBusy { hash: *hash });
        }
        self.open_partial(hash, total_bytes).inspect_err(|_| {
            self.lock().open_partials.remove(hash);
        })
    }

    fn open_partial(&self, hash: &Hash, total_bytes: u64) -> Result<PartialBlob> {
        let path = self.inner.partial_dir.join(hash.to_string());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StoreError::io("opening partial blob", &path, e))?;
        let file_bytes = file
            .metadata()
            .map_err(|e| StoreError::io("reading metadata of", &path, e))?
            .len();
        let recorded = self.recorded_progress(hash);
        let done = match recorded {
            Some(progress) if progress.total_bytes == total_bytes && file_bytes == total_bytes => {
                progress_ranges(&progress)
            }
            _ => {
                if let Err(e) = file.set_len(0).and_then(|()| file.set_len(total_bytes)) {
                    drop(file);
                    let _ = fs::remove_file(&path);
                    return Err(StoreError::io("sizing partial blob", &path, e));
                }
                RangeSet::default()
            }
        };
        let direct = open_direct(&path);
        let mut partial = PartialBlob {
            store: self.clone(),
            hash: *hash,
            total_bytes,
            file,
            direct,
            path,
            done,
            unflushed_bytes: 0,
            dirty: true,
            sync_failed: false,
            direct_writes: 0,
        };
        partial.flush()?;
        Ok(partial)
    }

    fn recorded_progress(&self, hash: &Hash) -> Option<Progress> {
        let bytes = match self.inner.index.partial(hash) {
            Ok(bytes) => bytes?,
            Err(e) => {
                tracing::warn!(blob = %hash, error = %e, "could not read partial progress; starting over");
                return None;
            }
        };
        match wire::decode::<Progress, PROGRESS_BYTES_MAX>(&bytes) {
            Ok(progress) => Some(progress),
            Err(e) => {
                tracing::warn!(blob = %hash, error = %e, "partial progress is damaged; starting over");
                None
            }
        }
    }

    /// Finishes a partial blob whose every byte was written and flushed:
    /// see [`PartialBlob::finish`].
    pub fn finish_partial(&self, hash: &Hash) -> Result<u64> {
        let total_bytes = self
            .recorded_progress(hash)
            .ok_or(StoreError::NoPartial { hash: *hash })?
            .total_bytes;
        self.begin_partial(hash, total_bytes)?.finish()
    }

    /// Throws away a partial blob and its progress. Returns whether there
    /// was one.
    pub fn abort_partial(&self, hash: &Hash) -> Result<bool> {
        if self.lock().open_partials.contains(hash) {
            return Err(StoreError::PartialBusy { hash: *hash });
        }
        let path = self.inner.partial_dir.join(hash.to_string());
        let had_file = match fs::remove_file(&path) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(StoreError::io("removing partial blob", &path, e)),
        };
        let had_progress = self.inner.index.partial(hash)?.is_some();
        self.inner.index.remove_partial(hash)?;
        Ok(had_file || had_progress)
    }

    /// Every partial blob recorded in the index, by hash.
    pub fn partials(&self) -> Result<Vec<PartialInfo>> {
        let mut out = Vec::new();
        for (hash, bytes) in self.inner.index.partials()? {
            match wire::decode::<Progress, PROGRESS_BYTES_MAX>(&bytes) {
                Ok(progress) => out.push(PartialInfo {
                    hash,
                    total_bytes: progress.total_bytes,
                    done_bytes: progress_ranges(&progress).covered_bytes(),
                }),
                Err(e) => tracing::warn!(blob = %hash, error = %e, "skipping damaged partial progress"),
            }
        }
        Ok(out)
    }
}

fn progress_ranges(progress: &Progress) -> RangeSet {
    let mut ranges = RangeSet::default();
    for (start, end) in &progress.done {
        ranges.insert(*start, (*end).min(progress.total_bytes));
    }
    ranges
}

/// Bytes written to a partial blob, to be made durable and then recorded
/// as done (the record never runs ahead of the disk).
pub struct PendingFlush {
    store: Store,
    hash: Hash,
    file: File,
    /// The direct-I/O handle too: local file systems sync the whole file
    /// from either, but some (FUSE, network ones) sync per handle.
    direct: Option<File>,
    path: PathBuf,
    progress: Vec<u8>,
}

impl PendingFlush {
    pub fn complete(self) -> Result<()> {
        for file in std::iter::once(&self.file).chain(&self.direct) {
            file.sync_data()
                .map_err(|e| StoreError::io("syncing partial blob", &self.path, e))?;
        }
        self.store.inner.index.set_partial(&self.hash, &self.progress)
    }
}

impl PartialBlob {
    pub fn hash(&self) -> Hash {
        self.hash
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// The file the blob is written to until it is complete.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Bytes written so far (flushed or not).
    pub fn done_bytes(&self) -> u64 {
        self.done.covered_bytes()
    }

    pub fn is_complete(&self) -> bool {
        self.done_bytes() == self.total_bytes
    }

    /// The ranges still to write, in order.
    pub fn missing_ranges(&self) -> Vec<Range<u64>> {
        self.done.gaps(self.total_bytes)
    }

    /// Writes `bytes` at `offset`. Not verified here: [`PartialBlob::finish`]
    /// checks the whole blob.
    pub fn write_at(&mut self, offset: u64, bytes: &[u8]) -> Result<()> {
        self.write_range(offset, bytes)?;
        if self.unflushed_bytes >= PARTIAL_FLUSH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn write_range(&mut self, offset: u64, bytes: &[u8]) -> Result<()> {
        let len_bytes = bytes.len() as u64;
        let end = offset.checked_add(len_bytes).filter(|end| *end <= self.total_bytes);
        let Some(end) = end else {
            return Err(StoreError::BadRange {
                hash: self.hash,
                offset,
                len_bytes,
                size_bytes: self.total_bytes,
                limit_bytes: self.total_bytes,
            });
        };
        if !self.write_direct(offset, bytes)? {
            self.file
                .write_all_at(bytes, offset)
                .map_err(|e| StoreError::io("writing partial blob", &self.path, e))?;
        }
        self.done.insert(offset, end);
        self.dirty = true;
        self.unflushed_bytes += len_bytes;
        if self.done.0.len() > PARTIAL_RANGES_MAX {
            return Err(StoreError::PartialFragmented {
                hash: self.hash,
                limit: PARTIAL_RANGES_MAX,
            });
        }
        Ok(())
    }

    /// Writes `bytes` past the page cache if they and `offset` are aligned
    /// for it (see [`crate::AlignedBuffer`]). `false`: not written, write
    /// them through the page cache. A file system that turns out to refuse
    /// direct writes is not asked again.
    fn write_direct(&mut self, offset: u64, bytes: &[u8]) -> Result<bool> {
        let Some(direct) = &self.direct else { return Ok(false) };
        if !is_direct_aligned(bytes, offset) {
            return Ok(false);
        }
        match direct.write_all_at(bytes, offset) {
            Ok(()) => {
                self.direct_writes += 1;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                tracing::debug!(path = %self.path.display(), error = %e, "direct writes refused; using the page cache");
                self.direct = None;
                Ok(false)
            }
            Err(e) => Err(StoreError::io("writing partial blob", &self.path, e)),
        }
    }

    /// Makes the written bytes durable, then records them as done.
    pub fn flush(&mut self) -> Result<()> {
        match self.detach_flush()? {
            Some(pending) => pending.complete().inspect_err(|_| self.sync_failed = true),
            None => Ok(()),
        }
    }

    /// Tells the partial blob that a [`PendingFlush`] of it failed. From
    /// then on it records no more progress (flushing and finishing fail):
    /// the progress recorded before the failure still holds, and a resumed
    /// download fetches everything after it again.
    pub fn sync_failed(&mut self) {
        self.sync_failed = true;
    }

    /// Like [`PartialBlob::write_at`], but a flush that falls due is handed
    /// back to be completed on another thread, so writing goes on while the
    /// disk catches up. Complete each one, in order, before
    /// [`PartialBlob::finish_verified`].
    pub fn write_at_deferred(&mut self, offset: u64, bytes: &[u8]) -> Result<Option<PendingFlush>> {
        self.write_range(offset, bytes)?;
        if self.unflushed_bytes >= PARTIAL_FLUSH_BYTES {
            return self.detach_flush();
        }
        Ok(None)
    }

    /// What has been written so far, as a flush to complete (`None` if
    /// nothing is new).
    fn detach_flush(&mut self) -> Result<Option<PendingFlush>> {
        if self.sync_failed {
            let why = io::Error::other(
                "an earlier sync of it failed, so what was written since cannot be trusted; run the fetch again once the disk is sound: it resumes from the last progress saved before the failure",
            );
            return Err(StoreError::io("recording progress of partial blob", &self.path, why));
        }
        if !self.dirty {
            return Ok(None);
        }
        let clone = |file: &File| {
            file.try_clone()
                .map_err(|e| StoreError::io("syncing partial blob", &self.path, e))
        };
        let file = clone(&self.file)?;
        let direct = self.direct.as_ref().map(clone).transpose()?;
        let progress = Progress {
            total_bytes: self.total_bytes,
            done: self.done.0.iter().map(|(start, end)| (*start, *end)).collect(),
        };
        self.dirty = false;
        self.unflushed_bytes = 0;
        Ok(Some(PendingFlush {
            store: self.store.clone(),
            hash: self.hash,
            file,
            direct,
            path: self.path.clone(),
            progress: wire::canonical(&progress),
        }))
    }

    /// Hashes the whole file and, if it is the blob it should be, moves it
    /// into the store. Returns its size. On a hash mismatch the partial
    /// is thrown away (nothing is stored) and the error is
    /// [`StoreError::HashMismatch`].
    pub fn finish(mut self) -> Result<u64> {
        self.check_complete()?;
        self.flush()?;
        let actual = self.hash_file()?;
        if actual != self.hash {
            self.discard()?;
            return Err(StoreError::HashMismatch {
                expected: self.hash,
                actual,
            });
        }
        self.commit_into_store()
    }

    /// Like [`PartialBlob::finish`], for a caller that checked every byte
    /// against the hash before writing it (a fetch verifies each range
    /// against range hashes that merge into the blob hash): the file is
    /// not read back and hashed again.
    pub fn finish_verified(mut self) -> Result<u64> {
        self.check_complete()?;
        self.flush()?;
        self.commit_into_store()
    }

    fn check_complete(&self) -> Result<()> {
        if self.is_complete() {
            return Ok(());
        }
        Err(StoreError::PartialIncomplete {
            hash: self.hash,
            missing_bytes: self.total_bytes - self.done_bytes(),
            total_bytes: self.total_bytes,
        })
    }

    fn commit_into_store(mut self) -> Result<u64> {
        seal(&self.file, &self.path)?;
        let outcome = self.store.commit(&self.path, self.hash, self.total_bytes);
        self.discard()?;
        outcome.map(|_| self.total_bytes)
    }

    fn hash_file(&self) -> Result<Hash> {
        let mut hasher = blake3::Hasher::new();
        let mut buffer = vec![0u8; COPY_BUFFER_BYTES];
        let mut offset = 0;
        while offset < self.total_bytes {
            let want = usize::try_from(self.total_bytes - offset).map_or(buffer.len(), |left| left.min(buffer.len()));
            self.file
                .read_exact_at(&mut buffer[..want], offset)
                .map_err(|e| StoreError::io("reading partial blob", &self.path, e))?;
            hasher.update(&buffer[..want]);
            offset += want as u64;
        }
        Ok(Hash::from(hasher.finalize()))
    }

    /// Removes the partial file (if still there) and its progress.
    fn discard(&mut self) -> Result<()> {
        self.dirty = false;
        match fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("removing partial blob", &self.path, e)),
        }
        self.store.inner.index.remove_partial(&self.hash)
    }
}

/// The partial file opened again for direct I/O (`O_DIRECT`), or `None`
/// where that is not available. A fetch writes gigabytes that nothing
/// reads soon: copying them into the page cache, then writing them back,
/// cost more CPU than the transfer itself.
fn open_direct(path: &Path) -> Option<File> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        match OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(path) {
            Ok(file) => Some(file),
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "no direct I/O; using the page cache");
                None
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = path;
        None
    }
}

impl std::fmt::Debug for PartialBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartialBlob")
            .field("hash", &self.hash)
            .field("total_bytes", &self.total_bytes)
            .field("done_bytes", &self.done_bytes())
            .finish_non_exhaustive()
    }
}

impl Drop for PartialBlob {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::warn!(blob = %self.hash, error = %e, "could not save partial progress");
        }
        self.store.lock().open_partials.remove(&self.hash);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AlignedBuffer, DIRECT_IO_ALIGN};

    #[test]
    fn after_a_failed_sync_no_more_progress_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..3 * DIRECT_IO_ALIGN).map(|i| (i % 253) as u8).collect();
        let (hash, len) = (Hash::of(&data), data.len() as u64);
        let step = DIRECT_IO_ALIGN;
        let mut partial = store.begin_partial(&hash, len).unwrap();
        partial.write_at(0, &data[..step]).unwrap();
        partial.flush().unwrap();
        partial.write_at(step as u64, &data[step..2 * step]).unwrap();
        partial.sync_failed();
        let error = partial.flush().unwrap_err().to_string();
        assert!(error.contains("an earlier sync of it failed"), "{error}");
        partial.write_at(2 * step as u64, &data[2 * step..]).unwrap();
        assert!(
            partial.finish_verified().is_err(),
            "a partial that failed a sync is not finished"
        );
        let partial = store.begin_partial(&hash, len).unwrap();
        assert_eq!(
            partial.done_bytes(),
            step as u64,
            "only the progress synced before the failure"
        );
        assert_eq!(partial.missing_ranges(), vec![step as u64..len]);
    }

    #[test]
    fn aligned_ranges_go_past_the_page_cache_and_the_rest_through_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let range = 16 * DIRECT_IO_ALIGN;
        let data: Vec<u8> = (0..3 * range + 1000).map(|i| (i * 7 % 251) as u8).collect();
        let hash = Hash::of(&data);
        let mut partial = store.begin_partial(&hash, data.len() as u64).unwrap();
        let direct_at_start = partial.direct.is_some();
        let mut buffer = AlignedBuffer::with_len(range);
        // The short last range first (through the page cache), then whole
        // ranges from aligned buffers, then one from an unaligned slice.
        for start in [3 * range, 0, range] {
            let end = (start + range).min(data.len());
            buffer.set_len(end - start);
            buffer.copy_from_slice(&data[start..end]);
            partial.write_at(start as u64, &buffer).unwrap();
        }
        partial.write_at(2 * range as u64, &data[2 * range..3 * range]).unwrap();
        assert_eq!(
            partial.direct.is_some(),
            direct_at_start,
            "aligned writes must not make direct I/O give up"
        );
        if direct_at_start {
            assert!(
                partial.direct_writes >= 2,
                "the aligned ranges went past the page cache"
            );
        } else {
            eprintln!("no O_DIRECT on this file system: only the page cache path was tested");
        }
        // `finish` reads the whole file back and checks its hash.
        assert_eq!(partial.finish().unwrap(), data.len() as u64);
        assert_eq!(store.read(&hash).unwrap(), data);
    }

    fn set(ranges: &[(u64, u64)]) -> RangeSet {
        let mut out = RangeSet::default();
        for (start, end) in ranges {
            out.insert(*start, *end);
        }
        out
    }

    #[test]
    fn ranges_merge_when_they_touch_or_overlap() {
        let ranges = set(&[(10, 20), (30, 40), (20, 25), (0, 5), (24, 31)]);
        assert_eq!(ranges.0.into_iter().collect::<Vec<_>>(), vec![(0, 5), (10, 40)]);
        let ranges = set(&[(10, 20), (5, 50)]);
        assert_eq!(ranges.0.into_iter().collect::<Vec<_>>(), vec![(5, 50)]);
        assert!(set(&[(3, 3)]).0.is_empty());
    }

    #[test]
    fn gaps_are_what_is_missing() {
        let ranges = set(&[(2, 4), (6, 8)]);
        assert_eq!(ranges.gaps(10), vec![0..2, 4..6, 8..10]);
        assert_eq!(ranges.covered_bytes(), 4);
        assert_eq!(set(&[(0, 10)]).gaps(10), Vec::<Range<u64>>::new());
        assert_eq!(RangeSet::default().gaps(0), Vec::<Range<u64>>::new());
    }
}
