//! Helpers shared by the store's integration tests.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Child;

use kiln_protocol::Hash;

/// Deterministic pseudo-random bytes for `seed`.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

/// A small xorshift generator seeded from the OS, printed so a failing
/// run can be repeated.
pub struct Rng(u64);

impl Rng {
    pub fn from_os(label: &str) -> Rng {
        let mut seed = [0u8; 8];
        getrandom::getrandom(&mut seed).unwrap();
        let seed = u64::from_le_bytes(seed) | 1;
        eprintln!("{label}: rng seed {seed}");
        Rng(seed)
    }

    pub fn seeded(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

/// Every regular file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Checks that every file under `blobs/` holds the bytes its name says.
pub fn assert_blob_files_match_names(data_dir: &Path) {
    for path in files_under(&data_dir.join("blobs")) {
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let actual = Hash::of(&fs::read(&path).unwrap());
        assert_eq!(name, actual.to_string(), "file {} holds other bytes", path.display());
    }
}

/// Kills and reaps a child process when dropped, so a failing test never
/// leaves one behind.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
