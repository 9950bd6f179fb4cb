//! Putting blobs: bytes go to a temporary file in `tmp/`, are hashed while
//! they are written, fsynced, and renamed under their hash only if the hash
//! is the expected one and the size cap allows. Any failure removes the
//! temporary file and leaves blobs and index as they were.
//!
//! Not for partial (resumable) downloads: see `partial`.

use std::fs::{self, File, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use kiln_protocol::Hash;

use crate::error::{Result, StoreError};
use crate::fsutil::TempFile;
use crate::store::{ensure_shard, sync_shard, Room, Store};
use crate::COPY_BUFFER_BYTES;

/// Blobs are read-only on disk: nothing should change them in place.
pub(crate) const BLOB_FILE_MODE: u32 = 0o444;

/// Where the bytes of a put come from, for error messages.
enum Source<'a> {
    Reader,
    File(&'a Path),
}

impl Store {
    /// Stores `bytes`. Returns the hash and size.
    pub fn put_bytes(&self, bytes: &[u8], expected: Option<Hash>) -> Result<(Hash, u64)> {
        self.put_from(bytes, expected, Source::Reader)
    }

    /// Stores everything `reader` yields. If `expected` is given and the
    /// bytes hash to something else, nothing is stored and the error is
    /// [`StoreError::HashMismatch`]. Storing a blob that is already there
    /// succeeds without a second copy.
    pub fn put_reader(&self, reader: impl Read, expected: Option<Hash>) -> Result<(Hash, u64)> {
        self.put_from(reader, expected, Source::Reader)
    }

    /// Stores a copy of the file at `path`.
    pub fn put_file(&self, path: impl AsRef<Path>, expected: Option<Hash>) -> Result<(Hash, u64)> {
        let path = path.as_ref();
        let source_error = |operation, source| StoreError::SourceFile {
            operation,
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(|e| source_error("opening", e))?;
        let size_bytes = file
            .metadata()
            .map_err(|e| source_error("reading metadata of", e))?
            .len();
        if let Some(room) = self.room() {
            room.check(size_bytes)?;
        }
        self.put_from(file, expected, Source::File(path))
    }

    fn put_from(&self, reader: impl Read, expected: Option<Hash>, source: Source<'_>) -> Result<(Hash, u64)> {
        let temp = TempFile::create(&self.inner.tmp_dir, "put")?;
        let room = self.room();
        let (hash, size_bytes) = write_hashing(reader, &temp, &source, room)?;
        if let Some(expected) = expected {
            if expected != hash {
                return Err(StoreError::HashMismatch { expected, actual: hash });
            }
        }
        if self.has(&hash) {
            self.touch(&hash);
            return Ok((hash, size_bytes));
        }
        seal(&temp.file, &temp.path)?;
        if self.commit(&temp.path, hash, size_bytes)? {
            temp.keep();
        }
        Ok((hash, size_bytes))
    }

    /// Renames a sealed, verified file into `blobs/`, evicting to make room
    /// first. The file is the blob `hash` of `size_bytes`. If the blob is
    /// already stored, `source` is left where it is for the caller to
    /// remove, and the answer is `false`.
    pub(crate) fn commit(&self, source: &Path, hash: Hash, size_bytes: u64) -> Result<bool> {
        let final_path = self.blob_path(&hash);
        let mut state = self.lock();
        if state.blobs.contains_key(&hash) {
            drop(state);
            self.touch(&hash);
            return Ok(false);
        }
        self.make_room(&mut state, &hash, size_bytes)?;
        ensure_shard(&final_path)?;
        fs::rename(source, &final_path).map_err(|e| StoreError::io("renaming into place", &final_path, e))?;
        self.record_blob(&mut state, hash, size_bytes);
        drop(state);
        sync_shard(&final_path)?;
        tracing::debug!(blob = %hash, size_bytes, "stored blob");
        Ok(true)
    }
}

/// Makes a written file read-only and durable before it is renamed.
pub(crate) fn seal(file: &File, path: &Path) -> Result<()> {
    file.set_permissions(Permissions::from_mode(BLOB_FILE_MODE))
        .map_err(|e| StoreError::io("making read-only", path, e))?;
    file.sync_all().map_err(|e| StoreError::io("syncing", path, e))
}

/// Copies `reader` into the temporary file while hashing it, one buffer
/// at a time. Stops with [`StoreError::Full`] as soon as more arrived than
/// can fit in `room`.
///
/// Hashing in a second thread so that it overlaps the writes was measured
/// (512 MiB file, 2 cores): no faster, because the page cache writes and
/// the final fsync dominate. So it stays in one thread.
fn write_hashing(
    mut reader: impl Read,
    temp: &TempFile,
    source: &Source<'_>,
    room: Option<Room>,
) -> Result<(Hash, u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut buffer = vec![0u8; COPY_BUFFER_BYTES];
    let mut size_bytes: u64 = 0;
    loop {
        let filled = read_full(&mut reader, &mut buffer).map_err(|e| source_error(source, e))?;
        if filled == 0 {
            return Ok((Hash::from(hasher.finalize()), size_bytes));
        }
        size_bytes += filled as u64;
        if let Some(room) = &room {
            room.check(size_bytes)?;
        }
        hasher.update(&buffer[..filled]);
        write_chunk(temp, &buffer[..filled])?;
    }
}

fn write_chunk(temp: &TempFile, chunk: &[u8]) -> Result<()> {
    (&temp.file)
        .write_all(chunk)
        .map_err(|e| StoreError::io("writing blob to", &temp.path, e))
}

/// Reads until `buffer` is full or the reader ends; returns bytes read.
pub(crate) fn read_full(reader: &mut impl Read, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn source_error(source: &Source<'_>, error: io::Error) -> StoreError {
    match source {
        Source::File(path) => StoreError::SourceFile {
            operation: "reading",
            path: path.to_path_buf(),
            source: error,
        },
        Source::Reader => StoreError::Source { source: error },
    }
}
