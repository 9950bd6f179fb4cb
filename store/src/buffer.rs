//! Buffers for direct I/O: a partial blob writes a range past the page
//! cache when the range's bytes start at a multiple of
//! [`DIRECT_IO_ALIGN`] in memory and in the file, and fill whole blocks.

use std::ops::{Deref, DerefMut};

/// Alignment of memory, file offset and length that direct writes need
/// (4096 covers disks with 512-byte and 4 KiB logical blocks).
pub const DIRECT_IO_ALIGN: usize = 4096;

/// A byte buffer whose bytes start at a multiple of [`DIRECT_IO_ALIGN`] in
/// memory, so that [`crate::PartialBlob::write_at_deferred`] can write it
/// with direct I/O. Derefs to its `len` bytes.
pub struct AlignedBuffer {
    bytes: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuffer {
    /// A zeroed buffer of `len` bytes.
    pub fn with_len(len: usize) -> AlignedBuffer {
        let bytes = vec![0u8; len + DIRECT_IO_ALIGN];
        // align_offset may in principle give up (usize::MAX): the buffer
        // is then unaligned, and writes of it take the page cache.
        let start = match bytes.as_ptr().align_offset(DIRECT_IO_ALIGN) {
            offset if offset < DIRECT_IO_ALIGN => offset,
            _ => 0,
        };
        AlignedBuffer { bytes, start, len }
    }

    /// Makes the buffer `len` bytes long, allocating only if it is too
    /// small. The bytes are whatever the buffer held before (zero when
    /// new): for a caller that overwrites them.
    pub fn set_len(&mut self, len: usize) {
        if self.start + len > self.bytes.len() {
            *self = AlignedBuffer::with_len(len);
        } else {
            self.len = len;
        }
    }

    /// Whether direct writes can take these bytes as they are.
    pub fn is_aligned(&self) -> bool {
        is_direct_aligned(self, 0)
    }
}

impl Deref for AlignedBuffer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes[self.start..self.start + self.len]
    }
}

impl DerefMut for AlignedBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[self.start..self.start + self.len]
    }
}

impl std::fmt::Debug for AlignedBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuffer")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// Whether `bytes` written at `offset` meet direct I/O's alignment.
pub(crate) fn is_direct_aligned(bytes: &[u8], offset: u64) -> bool {
    let align = DIRECT_IO_ALIGN as u64;
    !bytes.is_empty()
        && offset % align == 0
        && (bytes.len() as u64) % align == 0
        && (bytes.as_ptr() as usize) % DIRECT_IO_ALIGN == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_is_aligned_and_keeps_its_allocation_when_shortened() {
        let mut buffer = AlignedBuffer::with_len(3 * DIRECT_IO_ALIGN);
        assert!(buffer.is_aligned());
        assert_eq!(buffer.len(), 3 * DIRECT_IO_ALIGN);
        buffer[0] = 7;
        let at = buffer.as_ptr();
        buffer.set_len(DIRECT_IO_ALIGN);
        assert_eq!((buffer.len(), buffer.as_ptr(), buffer[0]), (DIRECT_IO_ALIGN, at, 7));
        buffer.set_len(100);
        assert!(!buffer.is_aligned(), "100 bytes are not whole blocks");
        buffer.set_len(5 * DIRECT_IO_ALIGN);
        assert!(buffer.is_aligned());
        assert_eq!(buffer.len(), 5 * DIRECT_IO_ALIGN);
    }

    #[test]
    fn direct_writes_need_aligned_offsets_lengths_and_memory() {
        let buffer = AlignedBuffer::with_len(2 * DIRECT_IO_ALIGN);
        assert!(is_direct_aligned(&buffer, 0));
        assert!(is_direct_aligned(&buffer, 1 << 20));
        assert!(!is_direct_aligned(&buffer, 512));
        assert!(!is_direct_aligned(&buffer[1..DIRECT_IO_ALIGN + 1], 0));
        assert!(!is_direct_aligned(&buffer[..0], 0));
    }
}
