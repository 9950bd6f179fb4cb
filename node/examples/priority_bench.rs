//! The owner's speed beside a build: a CPU-bound program of the owner's (one
//! thread per core, a fixed amount of work) timed alone, beside a CPU-bound
//! build in the sandbox (one busy loop per core, at the sandbox's idle
//! priority), and beside the same busy loops at normal priority (how builds
//! ran before they were given the idle priority: the baseline). Rounds
//! alternate the three; prints medians and the owner's speed as a fraction
//! of its speed alone.
//!
//! cargo run --release -p kiln-node --example priority_bench [ROUNDS] [WORK]

use std::collections::{BTreeMap, BTreeSet};
use std::hint::black_box;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use kiln_node::worker::sandbox::{BuildSpec, Log, Sandbox, SourceInput};

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// The owner's program: `threads` threads, each `work` rounds of xorshift.
fn owner(threads: usize, work: u64) -> Duration {
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|seed| {
            std::thread::spawn(move || {
                let mut x = seed as u64 + 0x9e37_79b9_7f4a_7c15;
                for _ in 0..work {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    black_box(x);
                }
                x
            })
        })
        .collect();
    for handle in handles {
        let _ = handle.join();
    }
    start.elapsed()
}

fn busy_loops(cores: usize) -> String {
    format!("echo busy; for i in $(seq {cores}); do (while :; do :; done) & done; wait")
}

/// The same loops started directly, at normal priority.
fn normal_priority_load(cores: usize) -> std::io::Result<Child> {
    Command::new("/bin/sh")
        .args(["-c", &format!("exec setsid sh -c '{}'", busy_loops(cores))])
        .stdout(std::process::Stdio::null())
        .spawn()
}

fn stop(mut child: Child) {
    // The loops run in their own session: kill the whole group.
    let _ = Command::new("pkill")
        .args(["-KILL", "-s", &child.id().to_string()])
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds: usize = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(5);
    let work: u64 = std::env::args()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or(400_000_000);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let dir = tempfile::tempdir()?;
    let sandbox = std::sync::Arc::new(Sandbox::new(dir.path(), false)?);
    println!("{}", sandbox.limits_summary());
    let spec = std::sync::Arc::new(BuildSpec {
        steps: vec![busy_loops(cores)],
        outputs: BTreeSet::from(["never".to_string()]),
        options: BTreeMap::new(),
        network: false,
        timeout: Duration::from_secs(3600),
        memory_bytes: 0,
        source: SourceInput::None,
    });
    let (mut alone, mut beside_build, mut beside_normal) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        alone.push(owner(cores, work));

        let log = Log::default();
        let build = {
            let (sandbox, spec, log) = (sandbox.clone(), spec.clone(), log.clone());
            tokio::spawn(async move { sandbox.run_logged(&spec, &log).await.map(|r| r.status) })
        };
        while !log.tail(4096).0.contains("\nbusy") {
            if build.is_finished() {
                return Err(format!("the build ended early: {:?}", build.await?).into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        beside_build.push(tokio::task::spawn_blocking(move || owner(cores, work)).await?);
        // Dropping the build's future kills bubblewrap, and with it the tree.
        build.abort();
        let _ = build.await;

        let load = normal_priority_load(cores)?;
        std::thread::sleep(Duration::from_millis(200));
        beside_normal.push(owner(cores, work));
        stop(load);
        println!(
            "round {}: alone {:.2} s, beside the sandboxed build {:.2} s, beside normal-priority loops {:.2} s",
            round + 1,
            alone[round].as_secs_f64(),
            beside_build[round].as_secs_f64(),
            beside_normal[round].as_secs_f64()
        );
    }
    let (alone, build, normal) = (median(alone), median(beside_build), median(beside_normal));
    println!("{rounds} rounds, {cores} owner threads and {cores} busy loops, medians:");
    println!("owner alone                          {:6.2} s", alone.as_secs_f64());
    println!(
        "owner beside a build in the sandbox  {:6.2} s  (owner's speed {:5.1} % of alone)",
        build.as_secs_f64(),
        100.0 * alone.as_secs_f64() / build.as_secs_f64()
    );
    println!(
        "owner beside normal-priority loops   {:6.2} s  (owner's speed {:5.1} % of alone; the baseline)",
        normal.as_secs_f64(),
        100.0 * alone.as_secs_f64() / normal.as_secs_f64()
    );
    Ok(())
}
