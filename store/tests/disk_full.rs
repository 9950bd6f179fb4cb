//! Disk full: a child process with a file-size limit (`ulimit -f`, with
//! SIGXFSZ ignored so `write` fails with EFBIG) puts a blob over the limit.
//! It must get `StoreError::DiskFull` with a message that says what to do,
//! and the store must be left as it was.
//!
//! The child is this test binary itself, re-run under `bash` with an
//! environment variable and `--exact disk_full_child`.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::env;
use std::process::Command;

use common::{bytes, files_under};
use kiln_protocol::Hash;
use kiln_store::{Store, StoreError};

const CHILD_DIR_ENV: &str = "KILN_STORE_DISK_FULL_CHILD_DIR";
/// The child's file-size limit for bash's `ulimit -f`, which counts in
/// KiB (POSIX sh counts 512-byte blocks): 8 MiB, above what the index file
/// needs, below the blob.
const FILE_KIB_MAX: u64 = 8 * 1024;
const BIG_BLOB_BYTES: usize = 12 * 1024 * 1024;
const BIG_BLOB_SEED: u64 = 99;

/// Not a test on its own: the body of the child process.
#[test]
fn disk_full_child() {
    let Some(dir) = env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    let store = Store::open(&dir).unwrap();
    let data = bytes(BIG_BLOB_BYTES, BIG_BLOB_SEED);
    report("put", store.put_bytes(&data, None).map(|_| ()));
    report(
        "partial",
        store.begin_partial(&Hash::of(&data), data.len() as u64).map(|_| ()),
    );
}

fn report(what: &str, outcome: Result<(), StoreError>) {
    match outcome {
        Ok(()) => println!("{what}: stored"),
        Err(e) => println!("{what}: disk_full={} error: {e}", e.is_disk_full()),
    }
}

#[test]
fn a_write_over_the_file_size_limit_is_disk_full_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let earlier: Vec<Hash> = {
        let store = Store::open(dir.path()).unwrap();
        (0..3)
            .map(|seed| store.put_bytes(&bytes(100_000, seed), None).unwrap().0)
            .collect()
    };
    let index_bytes = std::fs::metadata(dir.path().join("index.redb")).unwrap().len();
    assert!(
        index_bytes < FILE_KIB_MAX * 1024,
        "index is {index_bytes} bytes, over the child's limit"
    );

    let script = format!("trap '' XFSZ; ulimit -f {FILE_KIB_MAX}; exec \"$0\" \"$@\"");
    let output = Command::new("bash")
        .args(["-c", &script])
        .arg(env::current_exe().unwrap())
        .args([
            "--exact",
            "disk_full_child",
            "--nocapture",
            "--test-threads=1",
            "--quiet",
        ])
        .env(CHILD_DIR_ENV, dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "child failed:\n{stdout}\n{stderr}");
    for what in ["put", "partial"] {
        let line = stdout
            .lines()
            .find(|line| line.starts_with(&format!("{what}: ")))
            .unwrap_or_else(|| panic!("no {what} report in:\n{stdout}\n{stderr}"));
        assert!(line.contains("disk_full=true"), "{line}");
        assert!(line.contains("file too large") && line.contains("ulimit -f"), "{line}");
        assert!(line.contains("nothing was stored"), "{line}");
    }

    assert!(
        files_under(&dir.path().join("tmp")).is_empty(),
        "the failed put left a temp file"
    );
    assert!(
        files_under(&dir.path().join("partial")).is_empty(),
        "the failed partial left a file"
    );
    let store = Store::open(dir.path()).unwrap();
    let big = Hash::of(&bytes(BIG_BLOB_BYTES, BIG_BLOB_SEED));
    assert!(!store.has(&big));
    let mut expected = earlier.clone();
    expected.sort();
    assert_eq!(
        store.list().into_iter().map(|(hash, _)| hash).collect::<Vec<_>>(),
        expected
    );
    for hash in &earlier {
        assert!(store.verify(hash).unwrap());
    }
    assert_eq!(files_under(&dir.path().join("blobs")).len(), earlier.len());
}
