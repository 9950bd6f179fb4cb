//! Crash safety: a child process writes blobs (whole and partial) in a
//! loop and is SIGKILLed at random points; after every kill the store must
//! open cleanly, hold only whole blobs under real names, and its partial
//! progress must never claim bytes that are not on disk.
//!
//! The child is this test binary itself, re-run with an environment
//! variable and `--exact crash_writer_child`.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::env;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_blob_files_match_names, bytes, files_under, ChildGuard, Rng};
use kiln_protocol::Hash;
use kiln_store::{AlignedBuffer, RecordTable, Store, StoreOptions};

const CHILD_DIR_ENV: &str = "KILN_STORE_CRASH_CHILD_DIR";
const CHILD_SEED_ENV: &str = "KILN_STORE_CRASH_CHILD_SEED";
const KILLS: u32 = 30;
const CAP_BYTES: u64 = 8 * 1024 * 1024;
const BLOB_BYTES_MAX: u64 = 5 * 1024 * 1024 / 2;
const PROGRESS_STEP_BYTES: usize = 64 * 1024;
const TEST_TIME_MAX: Duration = Duration::from_secs(60);

/// The bytes the child writes in `round`: the parent can make them again.
fn round_data(seed: u64, round: u64) -> Vec<u8> {
    let mut rng = Rng::seeded(seed ^ round.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let size = rng.between(0, BLOB_BYTES_MAX) as usize;
    bytes(size, seed.wrapping_add(round))
}

/// Hands out data in small steps and says so on stdout, so the parent can
/// kill the child in the middle of a put.
struct Announcing<'a> {
    data: &'a [u8],
    sent: usize,
}

impl Read for Announcing<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = (self.data.len() - self.sent).min(PROGRESS_STEP_BYTES).min(out.len());
        out[..n].copy_from_slice(&self.data[self.sent..self.sent + n]);
        self.sent += n;
        println!("progress {}", self.sent);
        Ok(n)
    }
}

fn child_round(store: &Store, seed: u64, round: u64) {
    println!("round {round}");
    let data = round_data(seed, round);
    let hash = Hash::of(&data);
    if round % 3 == 2 {
        println!("partial {seed} {round} {hash}");
        let mut partial = store.begin_partial(&hash, data.len() as u64).unwrap();
        // Back to front, so progress has holes until the end. Chunks start
        // at multiples of `chunk` and come from an aligned buffer, so all
        // but the short last one are written past the page cache.
        let chunk = PROGRESS_STEP_BYTES * 3;
        let mut buffer = AlignedBuffer::with_len(chunk);
        let mut end = data.len();
        while end > 0 {
            let start = (end - 1) / chunk * chunk;
            buffer.set_len(end - start);
            buffer.copy_from_slice(&data[start..end]);
            partial.write_at(start as u64, &buffer).unwrap();
            if (start / chunk) % 2 == 0 {
                partial.flush().unwrap();
            }
            println!("progress {}", data.len() - start);
            end = start;
        }
        partial.finish().unwrap();
    } else {
        let reader = Announcing { data: &data, sent: 0 };
        store.put_reader(reader, Some(hash)).unwrap();
    }
    store
        .put_record(RecordTable::Queue, &round.to_be_bytes(), hash.as_bytes())
        .unwrap();
    println!("stored {hash}");
}

/// Not a test on its own: the body of the child process.
#[test]
fn crash_writer_child() {
    let Some(dir) = env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    let seed: u64 = env::var(CHILD_SEED_ENV).unwrap().parse().unwrap();
    let store = Store::open_with(
        &dir,
        StoreOptions {
            size_cap_bytes: Some(CAP_BYTES),
        },
    )
    .unwrap();
    println!("began");
    std::io::stdout().flush().unwrap();
    for round in 0.. {
        child_round(&store, seed, round);
    }
}

fn spawn_child(dir: &Path, seed: u64) -> ChildGuard {
    let child = Command::new(env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_writer_child",
            "--nocapture",
            "--test-threads=1",
            "--quiet",
        ])
        .env(CHILD_DIR_ENV, dir)
        .env(CHILD_SEED_ENV, seed.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    ChildGuard(child)
}

/// Runs one child until it has printed `began` and then `lines_after`
/// more lines, kills it, and returns everything it printed.
fn run_and_kill(dir: &Path, seed: u64, lines_after: u64) -> Vec<String> {
    let mut guard = spawn_child(dir, seed);
    let stdout = guard.0.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let began = line == "began";
        seen.push(line);
        if began {
            break;
        }
    }
    assert!(seen.iter().any(|line| line == "began"), "child never began: {seen:?}");
    for line in lines.by_ref().take(lines_after as usize) {
        seen.push(line.unwrap());
    }
    guard.0.kill().unwrap();
    guard.0.wait().unwrap();
    // The child is gone: what is left in the pipe ends.
    seen.extend(lines.map_while(Result::ok));
    seen
}

/// Every partial's recorded progress must hold the bytes it was meant to.
fn check_partials(store: &Store, partial_rounds: &HashMap<Hash, (u64, u64)>) {
    for info in store.partials().unwrap() {
        let (seed, round) = partial_rounds[&info.hash];
        let data = round_data(seed, round);
        let partial = store.begin_partial(&info.hash, data.len() as u64).unwrap();
        let mut done_start = 0;
        let file_path = store.dir().join("partial").join(info.hash.to_string());
        let on_disk = std::fs::read(&file_path).unwrap();
        for missing in partial
            .missing_ranges()
            .into_iter()
            .chain(std::iter::once(data.len() as u64..u64::MAX))
        {
            let (start, end) = (done_start as usize, missing.start as usize);
            assert_eq!(
                on_disk[start..end],
                data[start..end],
                "partial {} claims bytes it lacks",
                info.hash
            );
            done_start = missing.end;
        }
    }
}

/// Checks the store after a kill; returns whether the kill landed in the
/// middle of a put (a temporary file was left behind).
fn check_after_crash(dir: &Path, partial_rounds: &HashMap<Hash, (u64, u64)>) -> bool {
    assert_blob_files_match_names(dir);
    let mid_put = !files_under(&dir.join("tmp")).is_empty();
    let store = Store::open_with(
        dir,
        StoreOptions {
            size_cap_bytes: Some(CAP_BYTES),
        },
    )
    .unwrap();
    assert!(files_under(&dir.join("tmp")).is_empty(), "tmp/ not cleared on open");
    let listed = store.list();
    assert_eq!(listed.len(), files_under(&dir.join("blobs")).len());
    let report = store.verify_all().unwrap();
    assert!(report.corrupt.is_empty() && report.missing.is_empty(), "{report:?}");
    assert_eq!(report.good, listed.len() as u64);
    assert!(store.total_bytes() <= CAP_BYTES);
    for (_, value) in store.records(RecordTable::Queue).unwrap() {
        assert_eq!(value.len(), 32);
    }
    check_partials(&store, partial_rounds);
    mid_put
}

#[test]
fn killed_writers_never_leave_a_half_blob() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::from_os("crash");
    let mut partial_rounds = HashMap::new();
    let mut stored_total = 0;
    let mut mid_put_kills = 0;
    for kill in 0..KILLS {
        let seed = rng.next();
        let lines_after = rng.between(0, 60);
        let printed = run_and_kill(dir.path(), seed, lines_after);
        for line in &printed {
            let words: Vec<&str> = line.split(' ').collect();
            if let ["partial", seed, round, hash] = words[..] {
                let hash: Hash = hash.parse().unwrap();
                partial_rounds.insert(hash, (seed.parse().unwrap(), round.parse().unwrap()));
            }
            stored_total += u64::from(line.starts_with("stored "));
        }
        mid_put_kills += u32::from(check_after_crash(dir.path(), &partial_rounds));
        assert!(
            started.elapsed() < TEST_TIME_MAX,
            "too slow: {kill} kills took {:?}",
            started.elapsed()
        );
    }
    eprintln!(
        "{KILLS} kills ({mid_put_kills} in the middle of a put), {stored_total} blobs stored, in {:?}",
        started.elapsed()
    );
    assert!(stored_total > 0, "no child ever finished a blob");
    assert!(mid_put_kills > 0, "no kill landed in the middle of a put");
}
