//! Blob round trips, hash checks, dedup, corruption, pins and eviction.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;

use common::{assert_blob_files_match_names, bytes, files_under};
use kiln_protocol::Hash;
use kiln_store::{Store, StoreError, StoreOptions, COPY_BUFFER_BYTES};

/// The boundary sizes every blob path must handle.
fn sizes() -> Vec<usize> {
    vec![
        0,
        1,
        COPY_BUFFER_BYTES - 1,
        COPY_BUFFER_BYTES,
        COPY_BUFFER_BYTES + 1,
        3 * COPY_BUFFER_BYTES + 17,
    ]
}

/// A reader that hands out at most `step` bytes per call.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.data.len().min(self.step).min(out.len());
        out[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fn assert_stored(store: &Store, data: &[u8], hash: Hash, size: u64) {
    assert_eq!(hash, Hash::from(blake3::hash(data)));
    assert_eq!(size, data.len() as u64);
    assert!(store.has(&hash));
    assert_eq!(store.size(&hash), Some(size));
    assert!(store.list().contains(&(hash, size)));
    assert_eq!(store.read(&hash).unwrap(), data);
    assert!(store.verify(&hash).unwrap());
    let mut via_reader = Vec::new();
    store
        .open_reader(&hash)
        .unwrap()
        .unwrap()
        .read_to_end(&mut via_reader)
        .unwrap();
    assert_eq!(via_reader, data);
    let mut via_file = Vec::new();
    store
        .open_blob(&hash)
        .unwrap()
        .unwrap()
        .read_to_end(&mut via_file)
        .unwrap();
    assert_eq!(via_file, data);
}

#[test]
fn round_trip_over_boundary_sizes_and_every_put() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for (seed, size) in sizes().into_iter().enumerate() {
        let data = bytes(size, seed as u64);
        let (hash, stored) = store.put_bytes(&data, None).unwrap();
        assert_stored(&store, &data, hash, stored);
        store.remove(&hash).unwrap();

        let reader = Trickle {
            data: &data,
            step: 4093,
        };
        let (hash, stored) = store.put_reader(reader, Some(Hash::of(&data))).unwrap();
        assert_stored(&store, &data, hash, stored);
        store.remove(&hash).unwrap();

        let source = dir.path().join("source");
        fs::write(&source, &data).unwrap();
        let (hash, stored) = store.put_file(&source, None).unwrap();
        assert_stored(&store, &data, hash, stored);
    }
    assert_eq!(store.list().len(), sizes().len());
    assert_eq!(store.total_bytes(), sizes().iter().map(|s| *s as u64).sum::<u64>());
    assert!(files_under(&dir.path().join("tmp")).is_empty());
    assert_blob_files_match_names(dir.path());
    let report = store.verify_all().unwrap();
    assert_eq!(report.good, sizes().len() as u64);
    assert!(report.corrupt.is_empty() && report.missing.is_empty());
}

#[test]
fn blobs_are_files_named_by_hash_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let data = bytes(5000, 1);
    let hash = Store::open(dir.path()).unwrap().put_bytes(&data, None).unwrap().0;
    let name = hash.to_string();
    let path = dir.path().join("blobs").join(&name[..2]).join(&name);
    assert_eq!(fs::read(&path).unwrap(), data);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.list(), vec![(hash, 5000)]);
    assert_eq!(store.read(&hash).unwrap(), data);
}

#[test]
fn expected_hash_mismatch_stores_nothing() {
    for size in sizes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data = bytes(size, 7);
        let wrong = Hash::of(b"something else");
        let err = store.put_bytes(&data, Some(wrong)).unwrap_err();
        match &err {
            StoreError::HashMismatch { expected, actual } => {
                assert_eq!(*expected, wrong);
                assert_eq!(*actual, Hash::of(&data));
            }
            other => panic!("expected a hash mismatch, got {other}"),
        }
        assert!(err.to_string().contains("nothing was stored"), "{err}");
        assert!(!store.has(&Hash::of(&data)));
        assert!(store.list().is_empty());
        assert!(files_under(&dir.path().join("blobs")).is_empty());
        assert!(files_under(&dir.path().join("tmp")).is_empty());
    }
}

#[test]
fn storing_twice_keeps_one_copy() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let data = bytes(COPY_BUFFER_BYTES + 1, 3);
    let first = store.put_bytes(&data, None).unwrap();
    let second = store.put_reader(&data[..], Some(first.0)).unwrap();
    assert_eq!(first, second);
    assert_eq!(store.list(), vec![first]);
    assert_eq!(files_under(&dir.path().join("blobs")).len(), 1);
    assert!(files_under(&dir.path().join("tmp")).is_empty());
}

/// Flips one byte of a stored blob's file; its path.
fn damage(dir: &std::path::Path, hash: &Hash) -> std::path::PathBuf {
    let name = hash.to_string();
    let path = dir.join("blobs").join(&name[..2]).join(&name);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let mut damaged = fs::read(&path).unwrap();
    damaged[100] ^= 1;
    fs::write(&path, &damaged).unwrap();
    path
}

#[test]
fn a_blob_that_no_longer_matches_its_name_is_quarantined_and_listed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let told = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = told.clone();
    store.on_quarantined(std::sync::Arc::new(move |hash, pinned| {
        sink.lock().unwrap().push((hash, pinned))
    }));
    let good = store.put_bytes(&bytes(3000, 1), None).unwrap().0;
    let bad = store.put_bytes(&bytes(3000, 2), None).unwrap().0;
    store.pin(&bad, "needed").unwrap();
    let path = damage(dir.path(), &bad);

    let err = store.read(&bad).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { hash, .. } if hash == bad), "{err}");
    assert!(!store.has(&bad));
    assert!(!path.exists());
    // Kept aside, listed as pinned (the pin stays: a good copy is pinned
    // again), and the node told.
    let listed = store.quarantined();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].hash, listed[0].pinned, listed[0].size_bytes),
        (bad, true, 3000)
    );
    assert_ne!(listed[0].actual, bad);
    let kept = listed[0].kept.clone().unwrap();
    assert_eq!(kept, dir.path().join("quarantine").join(bad.to_string()));
    assert!(kept.exists());
    assert!(store.is_pinned(&bad));
    assert_eq!(*told.lock().unwrap(), vec![(bad, true)]);
    store.note_quarantined(&bad, "fetched a good copy");
    assert_eq!(store.quarantined()[0].note.as_deref(), Some("fetched a good copy"));
    // A second reader that finds it gone does not list it twice.
    let _ = store.quarantine(&bad, listed[0].actual);
    assert_eq!(store.quarantined().len(), 1);

    // Same damage found by a full check; few corrupt files are kept.
    let mut found = vec![bad];
    for seed in 3..3 + kiln_store::QUARANTINE_FILES_MAX as u64 + 1 {
        let bad = store.put_bytes(&bytes(3000, seed), None).unwrap().0;
        damage(dir.path(), &bad);
        let report = store.verify_all().unwrap();
        assert_eq!(report.corrupt, vec![bad]);
        assert_eq!(report.good, 1);
        found.push(bad);
    }
    assert_eq!(store.list(), vec![(good, 3000)]);
    let hashes: Vec<Hash> = store.quarantined().iter().map(|q| q.hash).collect();
    assert_eq!(hashes, found);
    assert!(files_under(&dir.path().join("quarantine")).len() <= kiln_store::QUARANTINE_FILES_MAX);
}

#[test]
fn ranges_are_read_inside_the_blob_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let data = bytes(10_000, 9);
    let hash = store.put_bytes(&data, None).unwrap().0;
    assert_eq!(store.read_range(&hash, 0, 10).unwrap(), &data[..10]);
    assert_eq!(store.read_range(&hash, 9_990, 10).unwrap(), &data[9_990..]);
    assert_eq!(store.read_range(&hash, 10_000, 0).unwrap(), Vec::<u8>::new());
    assert!(matches!(
        store.read_range(&hash, 9_995, 10),
        Err(StoreError::BadRange { .. })
    ));
    assert!(matches!(
        store.read_range(&hash, u64::MAX, 2),
        Err(StoreError::BadRange { .. })
    ));
    let missing = Hash::of(b"absent");
    assert!(matches!(
        store.read_range(&missing, 0, 1),
        Err(StoreError::Missing { .. })
    ));
    assert!(store.open_blob(&missing).unwrap().is_none());
}

fn kib(seed: u64) -> Vec<u8> {
    bytes(1000, seed)
}

#[test]
fn eviction_is_least_recently_used_first_and_spares_pins() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        size_cap_bytes: Some(3500),
    };
    let store = Store::open_with(dir.path(), options).unwrap();
    let a = store.put_bytes(&kib(1), None).unwrap().0;
    let b = store.put_bytes(&kib(2), None).unwrap().0;
    let c = store.put_bytes(&kib(3), None).unwrap().0;
    store.read(&a).unwrap(); // a is now more recent than b and c

    let d = store.put_bytes(&kib(4), None).unwrap().0;
    assert!(!store.has(&b), "b was least recently used");
    assert!(store.has(&a) && store.has(&c) && store.has(&d));

    store.pin(&c, "test keeps it").unwrap();
    assert!(store.is_pinned(&c));
    let e = store.put_bytes(&kib(5), None).unwrap().0;
    assert!(!store.has(&a), "a was the least recently used unpinned blob");
    assert!(store.has(&c) && store.has(&d) && store.has(&e));
    assert_eq!(store.total_bytes(), 3000);

    // Eviction never touches a pin, and the cap holds across a reopen.
    drop(store);
    let store = Store::open_with(
        dir.path(),
        StoreOptions {
            size_cap_bytes: Some(3500),
        },
    )
    .unwrap();
    assert!(store.is_pinned(&c));
    assert_eq!(store.pins().unwrap(), vec![(c, "test keeps it".to_string())]);
    for seed in 10..20 {
        store.put_bytes(&kib(seed), None).unwrap();
        assert!(store.has(&c));
        assert!(store.total_bytes() <= 3500);
    }
    assert!(store.unpin(&c).unwrap());
    assert!(!store.unpin(&c).unwrap());
    store.set_size_cap(Some(1000)).unwrap();
    assert_eq!(store.list().len(), 1);
    assert!(files_under(&dir.path().join("blobs")).len() == 1);
}

#[test]
fn a_put_that_pins_leave_no_room_for_fails_with_full() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(
        dir.path(),
        StoreOptions {
            size_cap_bytes: Some(3500),
        },
    )
    .unwrap();
    let pinned: Vec<Hash> = (1..=3)
        .map(|seed| store.put_bytes(&kib(seed), None).unwrap().0)
        .collect();
    for hash in &pinned {
        store.pin(hash, "keep").unwrap();
    }
    let before = store.list();
    let err = store.put_bytes(&kib(4), None).unwrap_err();
    match &err {
        StoreError::Full {
            blob_bytes,
            cap_bytes,
            pinned_bytes,
        } => assert_eq!((*blob_bytes, *cap_bytes, *pinned_bytes), (1000, 3500, 3000)),
        other => panic!("expected Full, got {other}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("unpin") && message.contains("--max-store-size"),
        "{message}"
    );
    assert_eq!(store.list(), before);
    assert!(files_under(&dir.path().join("tmp")).is_empty());

    // A blob bigger than the cap is refused before it is written at all.
    let source = dir.path().join("big");
    fs::write(&source, bytes(5000, 5)).unwrap();
    assert!(matches!(store.put_file(&source, None), Err(StoreError::Full { .. })));
    assert!(matches!(
        store.put_reader(&bytes(5000, 5)[..], None),
        Err(StoreError::Full { .. })
    ));
    assert_eq!(store.list(), before);
    assert!(files_under(&dir.path().join("tmp")).is_empty());

    // Pinning alone never removes anything, even over the cap.
    store.unpin(&pinned[0]).unwrap();
    store.put_bytes(&kib(4), None).unwrap();
    assert!(!store.has(&pinned[0]));
}

#[test]
fn unpinned_blob_just_written_is_not_evicted_for_itself() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(
        dir.path(),
        StoreOptions {
            size_cap_bytes: Some(1000),
        },
    )
    .unwrap();
    let first = store.put_bytes(&kib(1), None).unwrap().0;
    let second = store.put_bytes(&kib(2), None).unwrap().0;
    assert!(!store.has(&first));
    assert!(store.has(&second));
    assert_eq!(store.total_bytes(), 1000);
}

#[test]
fn a_second_process_handle_is_refused_while_open() {
    let dir = tempfile::tempdir().unwrap();
    let _store = Store::open(dir.path()).unwrap();
    let err = Store::open(dir.path()).err().unwrap();
    assert!(matches!(err, StoreError::InUse { .. }), "{err}");
    assert!(err.to_string().contains("--data-dir"));
}

#[test]
fn a_missing_source_file_names_the_file_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let missing = dir.path().join("no-such-file");
    let err = store.put_file(&missing, None).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, StoreError::SourceFile { .. }), "{message}");
    assert!(
        message.contains("no-such-file") && message.contains("opening"),
        "{message}"
    );
    assert!(store.list().is_empty());
    assert!(files_under(&dir.path().join("tmp")).is_empty());
}

#[test]
fn export_links_on_the_same_filesystem_and_copies_across() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let data = b"an artifact".repeat(1000);
    let (hash, _) = store.put_bytes(&data, None).unwrap();

    let linked = dir.path().join("out.bin");
    fs::write(&linked, b"old contents are replaced").unwrap();
    assert_eq!(store.export(&hash, &linked).unwrap(), kiln_store::Exported::Linked);
    assert_eq!(fs::read(&linked).unwrap(), data);
    assert!(
        fs::metadata(&linked).unwrap().permissions().readonly(),
        "a linked output shares the read-only blob"
    );
    assert!(fs::metadata(&linked).unwrap().nlink() >= 2);

    // /dev/shm is a tmpfs: another filesystem, so the blob is copied.
    let elsewhere = tempfile::tempdir_in("/dev/shm").unwrap();
    let copied = elsewhere.path().join("out.bin");
    assert_eq!(store.export(&hash, &copied).unwrap(), kiln_store::Exported::Copied);
    assert_eq!(fs::read(&copied).unwrap(), data);
    assert_eq!(fs::metadata(&copied).unwrap().permissions().mode() & 0o777, 0o644);
    assert_eq!(
        fs::read_dir(elsewhere.path()).unwrap().count(),
        1,
        "no staged file left behind"
    );

    let missing = Hash::of(b"not stored");
    assert!(matches!(
        store.export(&missing, &copied),
        Err(StoreError::Missing { .. })
    ));
    assert_eq!(fs::read(&copied).unwrap(), data);
}

#[test]
fn bytes_are_written_durably_beside_the_output_and_a_store_is_looked_into_without_opening_it() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.bin");
    fs::write(&output, b"old contents are replaced").unwrap();
    kiln_store::write_durably(&output, b"fetched into memory").unwrap();
    assert_eq!(fs::read(&output).unwrap(), b"fetched into memory");
    assert!(!fs::metadata(&output).unwrap().permissions().readonly());
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no staged file left behind"
    );
    let nowhere = dir.path().join("no/such/dir/out.bin");
    assert!(kiln_store::write_durably(&nowhere, b"x").is_err());

    let store_dir = dir.path().join("store");
    let (hash, _) = Store::open(&store_dir).unwrap().put_bytes(b"kept", None).unwrap();
    assert!(Store::holds(&store_dir, &hash));
    assert!(!Store::holds(&store_dir, &Hash::of(b"not kept")));
    assert!(!Store::holds(&dir.path().join("no store here"), &hash));
}
