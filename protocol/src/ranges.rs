//! Verified ranges: how a fetcher checks each 1 MiB range of a blob against
//! the blob's BLAKE3 hash before it keeps a byte.
//!
//! BLAKE3 is a tree hash. Every aligned range of [`RANGE_BYTES`] (a power of
//! two, a whole number of 1 KiB chunks) is a complete subtree, and so is the
//! short last range. A provider sends the list of the ranges' chaining
//! values (32 bytes per MiB); the fetcher checks that the list merges into
//! the blob hash, then checks each range it downloads against its entry. A
//! provider that lies is caught at its first bad range. Blobs of one range
//! or less are checked against the hash directly.

use blake3::hazmat::{left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, HasherExt, Mode};

use crate::hash::Hash;

/// The unit of verification and of download.
pub const RANGE_BYTES: u64 = 1 << 20;

/// Largest blob Kiln transfers (1 TiB): its range-hash list is 32 MiB.
/// A provider claiming more is refused before anything is allocated.
pub const BLOB_BYTES_MAX: u64 = 1 << 40;

/// A range's chaining value.
pub type RangeHash = [u8; 32];

/// How many ranges a blob of `blob_bytes` has (at least one, even if empty).
pub fn range_count(blob_bytes: u64) -> u64 {
    blob_bytes.div_ceil(RANGE_BYTES).max(1)
}

/// The byte length of range `index` of a blob of `blob_bytes`.
pub fn range_len(blob_bytes: u64, index: u64) -> u64 {
    let start = index.saturating_mul(RANGE_BYTES);
    blob_bytes.saturating_sub(start).min(RANGE_BYTES)
}

/// How many range hashes a provider must send for a blob of `blob_bytes`
/// (none for a blob of one range); `None` for a size over [`BLOB_BYTES_MAX`].
pub fn range_hash_count(blob_bytes: u64) -> Option<u64> {
    if blob_bytes > BLOB_BYTES_MAX {
        None
    } else if has_range_hashes(blob_bytes) {
        Some(range_count(blob_bytes))
    } else {
        Some(0)
    }
}

/// Whether a blob needs a list of range hashes (more than one range).
pub fn has_range_hashes(blob_bytes: u64) -> bool {
    blob_bytes > RANGE_BYTES
}

/// The chaining value of range `index`, whose bytes are `bytes`. Only
/// meaningful for blobs of more than one range. `None` when `bytes` is
/// empty or longer than a range (never a valid range of such a blob).
pub fn range_hash(index: u64, bytes: &[u8]) -> Option<RangeHash> {
    if bytes.is_empty() || bytes.len() as u64 > RANGE_BYTES {
        return None;
    }
    let mut hasher = blake3::Hasher::new();
    hasher.set_input_offset(index.checked_mul(RANGE_BYTES)?);
    hasher.update(bytes);
    Some(hasher.finalize_non_root())
}

/// Merges the range hashes of a blob of `blob_bytes` into its root hash.
/// `None` when the list has the wrong length for that size.
pub fn root_from_range_hashes(range_hashes: &[RangeHash], blob_bytes: u64) -> Option<Hash> {
    if !has_range_hashes(blob_bytes) || range_hashes.len() as u64 != range_count(blob_bytes) {
        return None;
    }
    let split = left_subtree_len(blob_bytes);
    let left_ranges = (split / RANGE_BYTES) as usize;
    let left = merge(&range_hashes[..left_ranges], split);
    let right = merge(&range_hashes[left_ranges..], blob_bytes - split);
    Some(Hash::from(merge_subtrees_root(&left, &right, Mode::Hash)))
}

fn merge(range_hashes: &[RangeHash], len_bytes: u64) -> RangeHash {
    if range_hashes.len() <= 1 {
        return range_hashes.first().copied().unwrap_or([0; 32]);
    }
    let split = left_subtree_len(len_bytes);
    let left_ranges = (split / RANGE_BYTES) as usize;
    let left = merge(&range_hashes[..left_ranges], split);
    let right = merge(&range_hashes[left_ranges..], len_bytes - split);
    merge_subtrees_non_root(&left, &right, Mode::Hash)
}

/// Hashes a blob fed in pieces of any size, giving both its hash and its
/// range hashes in one pass (what the store does while writing a blob).
pub struct RangeHasher {
    current: blake3::Hasher,
    current_bytes: u64,
    done: Vec<RangeHash>,
}

impl Default for RangeHasher {
    fn default() -> Self {
        RangeHasher::new()
    }
}

impl RangeHasher {
    pub fn new() -> RangeHasher {
        RangeHasher {
            current: blake3::Hasher::new(),
            current_bytes: 0,
            done: Vec::new(),
        }
    }

    pub fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.current_bytes == RANGE_BYTES {
                // Only close a full range once more bytes arrive: a blob of
                // exactly one range is hashed in root mode instead.
                self.done.push(self.current.finalize_non_root());
                self.current = blake3::Hasher::new();
                self.current.set_input_offset(self.done.len() as u64 * RANGE_BYTES);
                self.current_bytes = 0;
            }
            let room = (RANGE_BYTES - self.current_bytes) as usize;
            let take = room.min(bytes.len());
            self.current.update(&bytes[..take]);
            self.current_bytes += take as u64;
            bytes = &bytes[take..];
        }
    }

    /// The blob hash and its range hashes (empty for a blob of one range).
    pub fn finish(mut self) -> (Hash, Vec<RangeHash>) {
        if self.done.is_empty() {
            return (Hash::from(self.current.finalize()), Vec::new());
        }
        let blob_bytes = self.done.len() as u64 * RANGE_BYTES + self.current_bytes;
        self.done.push(self.current.finalize_non_root());
        let root = root_from_range_hashes(&self.done, blob_bytes).unwrap_or(Hash::from_bytes([0; 32]));
        (root, self.done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: u64) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    const R: u64 = RANGE_BYTES;

    #[test]
    fn range_hashes_merge_into_the_blob_hash() {
        for len in [
            0,
            1,
            1024,
            R - 1,
            R,
            R + 1,
            2 * R,
            3 * R - 5,
            3 * R,
            5 * R + 1024,
            8 * R + 7,
        ] {
            let bytes = data(len);
            let mut hasher = RangeHasher::new();
            for piece in bytes.chunks(300_001) {
                hasher.update(piece);
            }
            let (root, ranges) = hasher.finish();
            assert_eq!(root, Hash::of(&bytes), "len {len}");
            if has_range_hashes(len) {
                assert_eq!(ranges.len() as u64, range_count(len));
                assert_eq!(root_from_range_hashes(&ranges, len), Some(Hash::of(&bytes)));
                for (i, expected) in ranges.iter().enumerate() {
                    let start = i as u64 * R;
                    let piece = &bytes[start as usize..(start + range_len(len, i as u64)) as usize];
                    assert_eq!(range_hash(i as u64, piece).as_ref(), Some(expected));
                }
            } else {
                assert!(ranges.is_empty());
            }
        }
    }

    #[test]
    fn a_lying_range_or_list_is_detected() {
        let len = 3 * R + 10;
        let mut bytes = data(len);
        let (root, ranges) = {
            let mut h = RangeHasher::new();
            h.update(&bytes);
            h.finish()
        };
        bytes[(R + 5) as usize] ^= 1;
        assert_ne!(range_hash(1, &bytes[R as usize..2 * R as usize]).unwrap(), ranges[1]);
        let mut forged = ranges.clone();
        forged[2][0] ^= 1;
        assert_ne!(root_from_range_hashes(&forged, len), Some(root));
        assert_eq!(root_from_range_hashes(&ranges[..3], len), None);
        assert_eq!(root_from_range_hashes(&ranges, len + R), None);
    }

    #[test]
    fn range_arithmetic() {
        assert_eq!(range_count(0), 1);
        assert_eq!(range_count(R), 1);
        assert_eq!(range_count(R + 1), 2);
        assert_eq!(range_len(R + 1, 1), 1);
        assert_eq!(range_len(R + 1, 2), 0);
        assert_eq!(range_hash(0, &[]), None);
        assert_eq!(range_hash_count(R), Some(0));
        assert_eq!(range_hash_count(R + 1), Some(2));
        assert_eq!(range_hash_count(BLOB_BYTES_MAX), Some(BLOB_BYTES_MAX / R));
        assert_eq!(range_hash_count(u64::MAX), None);
    }
}
