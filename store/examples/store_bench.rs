//! Measures the store on one file: `put_file` (hash while writing, fsync,
//! rename) and a verified read (open, read everything, check the hash),
//! each `RUNS` times in a fresh store under DIR, printing the median.
//!
//! Run: `cargo run --release -p kiln-store --example store_bench -- FILE DIR [RUNS]`
//! Reads come from the page cache when the file fits in memory; compare
//! with `b3sum FILE` and `cp FILE DIR/x && sync` (see `store/bench.sh`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use kiln_store::{Store, StoreError, COPY_BUFFER_BYTES};

const RUNS_DEFAULT: usize = 5;
const MIB_BYTES: f64 = 1024.0 * 1024.0;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (file, dir) = match (args.first(), args.get(1)) {
        (Some(file), Some(dir)) => (PathBuf::from(file), PathBuf::from(dir)),
        _ => {
            eprintln!("usage: store_bench FILE DIR [RUNS]");
            return ExitCode::from(2);
        }
    };
    let runs = match args.get(2).map(|text| text.parse::<usize>()) {
        None => RUNS_DEFAULT,
        Some(Ok(runs)) if runs > 0 => runs,
        Some(_) => {
            eprintln!("RUNS must be a positive number");
            return ExitCode::from(2);
        }
    };
    match run(&file, &dir, runs) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("store_bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(file: &Path, dir: &Path, runs: usize) -> Result<(), Box<dyn std::error::Error>> {
    let size_bytes = std::fs::metadata(file)?.len();
    let store_dir = dir.join("kiln-store-bench");
    let mut puts = Vec::new();
    let mut reads = Vec::new();
    for run in 1..=runs {
        if store_dir.exists() {
            std::fs::remove_dir_all(&store_dir)?;
        }
        let store = Store::open(&store_dir)?;
        let started = Instant::now();
        let (hash, _) = store.put_file(file, None)?;
        let put = started.elapsed();
        let started = Instant::now();
        verified_read(&store, &hash)?;
        let read = started.elapsed();
        println!(
            "run {run}: put_file {:.3} s ({:.0} MiB/s), verified read {:.3} s ({:.0} MiB/s)  {hash}",
            put.as_secs_f64(),
            rate(size_bytes, put),
            read.as_secs_f64(),
            rate(size_bytes, read),
        );
        puts.push(put);
        reads.push(read);
    }
    std::fs::remove_dir_all(&store_dir)?;
    let (put, read) = (median(&mut puts), median(&mut reads));
    println!(
        "median put_file: {:.3} s, {:.0} MiB/s",
        put.as_secs_f64(),
        rate(size_bytes, put)
    );
    println!(
        "median verified read: {:.3} s, {:.0} MiB/s",
        read.as_secs_f64(),
        rate(size_bytes, read)
    );
    Ok(())
}

fn verified_read(store: &Store, hash: &kiln_protocol::Hash) -> Result<(), StoreError> {
    let mut reader = store.open_reader(hash)?.ok_or(StoreError::Missing { hash: *hash })?;
    let mut buffer = vec![0u8; COPY_BUFFER_BYTES];
    loop {
        match reader.read(&mut buffer) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) => {
                return Err(StoreError::Io {
                    operation: "reading back",
                    path: store.dir().to_path_buf(),
                    source: e,
                })
            }
        }
    }
}

fn rate(size_bytes: u64, elapsed: Duration) -> f64 {
    size_bytes as f64 / MIB_BYTES / elapsed.as_secs_f64().max(1e-9)
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}
