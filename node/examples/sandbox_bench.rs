//! Sandbox overhead: a trivial recipe (one command, one small output) built
//! in the sandbox — build directory, bubblewrap namespaces, prlimit, log
//! capture, packing the output — against the same command run directly
//! with `sh -c`. Prints medians.
//!
//! cargo run --release -p kiln-node --example sandbox_bench [RUNS]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kiln_node::worker::sandbox::{BuildSpec, BuildStatus, Sandbox, SourceInput};

const STEP: &str = "echo hello > out.txt";

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runs: usize = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(50);
    let dir = tempfile::tempdir()?;
    let sandbox = Sandbox::new(dir.path(), false)?;
    let spec = BuildSpec {
        steps: vec![STEP.to_string()],
        outputs: BTreeSet::from(["out.txt".to_string()]),
        options: BTreeMap::new(),
        network: false,
        timeout: Duration::from_secs(60),
        memory_bytes: 0,
        source: SourceInput::None,
    };
    let mut sandboxed = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let result = sandbox.run(&spec).await?;
        if !matches!(result.status, BuildStatus::Succeeded { .. }) {
            return Err(format!("build failed: {:?}", result.status).into());
        }
        drop(result);
        sandboxed.push(start.elapsed());
    }
    let work = dir.path().join("direct");
    std::fs::create_dir_all(&work)?;
    let mut direct = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let status = std::process::Command::new("/bin/sh")
            .args(["-c", STEP])
            .current_dir(&work)
            .status()?;
        if !status.success() {
            return Err("direct run failed".into());
        }
        direct.push(start.elapsed());
    }
    let (sandboxed, direct) = (median(sandboxed), median(direct));
    println!("{runs} runs each, medians:");
    println!("sh -c directly           {:8.2} ms", direct.as_secs_f64() * 1000.0);
    println!("sandboxed build + pack   {:8.2} ms", sandboxed.as_secs_f64() * 1000.0);
    println!(
        "overhead                 {:8.2} ms ({:.1}x)",
        (sandboxed - direct).as_secs_f64() * 1000.0,
        sandboxed.as_secs_f64() / direct.as_secs_f64()
    );
    Ok(())
}
