//! Attestations, durable records and partial blobs: what the index keeps
//! across restarts.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;

use common::{bytes, files_under, Rng};
use kiln_protocol::{wire, Attestation, Hash, SecretKey, Signed};
use kiln_store::{RecordTable, Store, StoreError, StoreOptions, RECORD_VALUE_BYTES_MAX};

fn attestation(worker: &SecretKey, build_key: Hash, artifact: &[u8]) -> Signed<Attestation> {
    let attestation = Attestation {
        build_key,
        recipe_id: Hash::of(b"recipe"),
        artifact: Hash::of(artifact),
        artifact_bytes: artifact.len() as u64,
        log: Hash::of(b"log"),
        worker: worker.public(),
        system_digest: Hash::of(b"system"),
        started_at_ms: 1,
        finished_at_ms: 2,
    };
    Signed::sign(worker, &attestation)
}

#[test]
fn attestations_are_kept_side_by_side_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let build_key = Hash::of(b"build");
    let other_key = Hash::of(b"other build");
    let workers: Vec<SecretKey> = (1..=3).map(|seed| SecretKey::from_bytes(&[seed; 32])).collect();
    let signed: Vec<Signed<Attestation>> = workers
        .iter()
        .enumerate()
        .map(|(i, worker)| attestation(worker, build_key, &[i as u8]))
        .collect();
    {
        let store = Store::open(dir.path()).unwrap();
        for one in &signed {
            assert!(store.put_attestation(one).unwrap());
        }
        assert!(!store.put_attestation(&signed[1]).unwrap(), "same bytes are kept once");
        assert!(store
            .put_attestation(&attestation(&workers[0], other_key, b"x"))
            .unwrap());
    }
    let store = Store::open(dir.path()).unwrap();
    let mut kept = store.attestations(&build_key).unwrap();
    assert_eq!(kept.len(), 3);
    for one in &signed {
        assert!(kept.contains(one));
    }
    kept.iter_mut()
        .for_each(|one| assert_eq!(one.verify().unwrap().build_key, build_key));
    assert_eq!(store.attestations(&other_key).unwrap().len(), 1);
    assert!(store.attestations(&Hash::of(b"nothing")).unwrap().is_empty());
    let mut keys = vec![build_key, other_key];
    keys.sort();
    assert_eq!(store.attested_build_keys().unwrap(), keys);
}

#[test]
fn a_forged_attestation_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let signed = attestation(&SecretKey::from_bytes(&[1; 32]), Hash::of(b"b"), b"a");
    let mut encoded = wire::encode(&signed).unwrap();
    let last = encoded.len() - 1;
    encoded[last] ^= 1; // a bit of the signature
    let forged: Signed<Attestation> = wire::decode::<_, 4096>(&encoded).unwrap();
    let err = store.put_attestation(&forged).unwrap_err();
    assert!(matches!(err, StoreError::BadAttestation(_)), "{err}");
    assert!(store.attestations(&Hash::of(b"b")).unwrap().is_empty());
}

#[test]
fn records_are_durable_per_table() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        assert!(!store.put_record(RecordTable::Queue, b"job-2", b"second").unwrap());
        assert!(!store.put_record(RecordTable::Queue, b"job-1", b"first").unwrap());
        assert!(store.put_record(RecordTable::Queue, b"job-1", b"first again").unwrap());
        store.put_record(RecordTable::Outbox, b"mail", b"hello").unwrap();
        store.put_record(RecordTable::Results, b"gone", b"soon").unwrap();
        assert!(store.remove_record(RecordTable::Results, b"gone").unwrap());
        assert!(!store.remove_record(RecordTable::Results, b"gone").unwrap());
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        store.records(RecordTable::Queue).unwrap(),
        vec![
            (b"job-1".to_vec(), b"first again".to_vec()),
            (b"job-2".to_vec(), b"second".to_vec())
        ]
    );
    assert_eq!(
        store.get_record(RecordTable::Outbox, b"mail").unwrap(),
        Some(b"hello".to_vec())
    );
    assert_eq!(store.get_record(RecordTable::Queue, b"mail").unwrap(), None);
    assert!(store.records(RecordTable::Results).unwrap().is_empty());
    let too_big = vec![0u8; RECORD_VALUE_BYTES_MAX + 1];
    let err = store.put_record(RecordTable::Queue, b"k", &too_big).unwrap_err();
    assert!(matches!(err, StoreError::RecordTooLarge { .. }), "{err}");
}

/// Ranges of `total` bytes in `step`-byte pieces, shuffled.
fn shuffled_ranges(total: usize, step: usize, rng: &mut Rng) -> Vec<(usize, usize)> {
    let mut ranges: Vec<(usize, usize)> = (0..total)
        .step_by(step)
        .map(|at| (at, (at + step).min(total)))
        .collect();
    for i in (1..ranges.len()).rev() {
        let j = rng.between(0, i as u64) as usize;
        ranges.swap(i, j);
    }
    ranges
}

#[test]
fn partial_blob_resumes_across_reopens_in_any_order() {
    let dir = tempfile::tempdir().unwrap();
    let data = bytes(3 * 1024 * 1024 + 5, 42);
    let hash = Hash::of(&data);
    let total = data.len() as u64;
    let mut rng = Rng::from_os("partial");
    let ranges = shuffled_ranges(data.len(), 300 * 1024 + 7, &mut rng);
    for pair in ranges.chunks(2) {
        // A fresh store each time: progress must come back from disk.
        let store = Store::open(dir.path()).unwrap();
        let mut partial = store.begin_partial(&hash, total).unwrap();
        let before = partial.done_bytes();
        for (start, end) in pair {
            partial.write_at(*start as u64, &data[*start..*end]).unwrap();
        }
        let written: usize = pair.iter().map(|(start, end)| end - start).sum();
        assert_eq!(partial.done_bytes(), before + written as u64);
        assert!(matches!(
            store.begin_partial(&hash, total),
            Err(StoreError::PartialBusy { .. })
        ));
        drop(partial);
        let infos = store.partials().unwrap();
        assert_eq!(infos.len(), 1);
        assert_eq!(infos[0].done_bytes, before + written as u64);
    }
    let store = Store::open(dir.path()).unwrap();
    let partial = store.begin_partial(&hash, total).unwrap();
    assert!(partial.is_complete());
    assert!(partial.missing_ranges().is_empty());
    assert_eq!(partial.finish().unwrap(), total);
    assert!(store.verify(&hash).unwrap());
    assert_eq!(store.read(&hash).unwrap(), data);
    assert!(store.partials().unwrap().is_empty());
    assert!(files_under(&dir.path().join("partial")).is_empty());
}

#[test]
fn a_verified_partial_is_committed_without_rehashing_and_must_be_complete() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let data = bytes(2 * 1024 * 1024 + 3, 9);
    let hash = Hash::of(&data);
    let mut partial = store.begin_partial(&hash, data.len() as u64).unwrap();
    partial.write_at(0, &data[..1000]).unwrap();
    let err = partial.finish_verified().err().unwrap();
    assert!(matches!(err, StoreError::PartialIncomplete { .. }), "{err}");
    assert!(!store.has(&hash));

    let mut partial = store.begin_partial(&hash, data.len() as u64).unwrap();
    partial.write_at(1000, &data[1000..]).unwrap();
    assert_eq!(partial.finish_verified().unwrap(), data.len() as u64);
    assert!(store.verify(&hash).unwrap());
    assert!(store.partials().unwrap().is_empty());
    assert!(files_under(&dir.path().join("partial")).is_empty());
}

#[test]
fn finishing_a_partial_with_wrong_bytes_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let data = bytes(100_000, 1);
    let hash = Hash::of(&data);
    let mut partial = store.begin_partial(&hash, 100_000).unwrap();
    partial.write_at(0, &data[..50_000]).unwrap();
    partial.write_at(50_000, &bytes(50_000, 2)).unwrap(); // a lying source
    drop(partial);
    let err = store.finish_partial(&hash).unwrap_err();
    assert!(
        matches!(err, StoreError::HashMismatch { expected, .. } if expected == hash),
        "{err}"
    );
    assert!(!store.has(&hash));
    assert!(store.list().is_empty());
    assert!(store.partials().unwrap().is_empty());
    assert!(files_under(&dir.path().join("partial")).is_empty());
    assert!(files_under(&dir.path().join("blobs")).is_empty());
}

#[test]
fn partial_refuses_writes_outside_and_early_finish() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let data = bytes(1000, 1);
    let hash = Hash::of(&data);
    let mut partial = store.begin_partial(&hash, 1000).unwrap();
    assert!(matches!(
        partial.write_at(990, &data[..20]),
        Err(StoreError::BadRange { .. })
    ));
    partial.write_at(0, &data[..400]).unwrap();
    assert_eq!(partial.missing_ranges(), vec![400..1000]);
    let err = partial.finish().unwrap_err();
    assert!(
        matches!(err, StoreError::PartialIncomplete { missing_bytes: 600, .. }),
        "{err}"
    );
    // Starting over with another size throws the old progress away.
    let partial = store.begin_partial(&hash, 2000).unwrap();
    assert_eq!(partial.done_bytes(), 0);
    drop(partial);
    assert!(store.abort_partial(&hash).unwrap());
    assert!(store.partials().unwrap().is_empty());
    assert!(fs::read_dir(dir.path().join("partial")).unwrap().next().is_none());
    assert!(matches!(store.finish_partial(&hash), Err(StoreError::NoPartial { .. })));
}

#[test]
fn a_partial_too_big_for_the_cap_is_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(
        dir.path(),
        StoreOptions {
            size_cap_bytes: Some(1000),
        },
    )
    .unwrap();
    let err = store.begin_partial(&Hash::of(b"x"), 1001).err().unwrap();
    assert!(matches!(err, StoreError::Full { .. }), "{err}");
}
