//! `kiln demo`, the README's one command, run as a newcomer runs it: with
//! nothing configured, to the end, and interrupted with Ctrl-C.

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use kiln_tests::{bin, Proc};

/// The whole demo: four nodes start, one build, a fetch.
const DEMO: Duration = Duration::from_secs(240);

fn demo(tmp: &std::path::Path) -> Proc {
    let mut command = Command::new(bin("kiln"));
    command
        .arg("demo")
        .env("TMPDIR", tmp)
        .env_remove("KILN_BOOTSTRAP")
        .env_remove("KILN_DATA_DIR")
        .env_remove("RUST_LOG");
    Proc::spawn("kiln demo", command)
}

/// The demo's directory, from its first line.
fn demo_dir(proc: &mut Proc) -> PathBuf {
    let line = proc.wait_line(DEMO, |l| l.starts_with("==> a local Kiln network in "));
    PathBuf::from(line.trim_start_matches("==> a local Kiln network in "))
}

#[test]
fn the_demo_builds_mails_fetches_and_runs_the_example_then_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    let mut proc = demo(tmp.path());
    let dir = demo_dir(&mut proc);
    assert!(dir.starts_with(tmp.path()), "{dir:?}");
    proc.wait_line(DEMO, |l| l.starts_with("Subject: kiln: hello-c 1.0.0 for os=linux"));
    proc.wait_line(DEMO, |l| l.starts_with("Fetch it:   kiln fetch "));
    proc.wait_line(DEMO, |l| l == "HELLO FROM KILN!");
    proc.wait_line(DEMO, |l| l.starts_with("==> removed "));
    let status = proc.wait_exit(DEMO);
    assert!(status.success(), "{status}; stderr: {}", proc.stderr());
    assert!(!dir.exists(), "the demo left {dir:?} behind");
}

#[test]
fn ctrl_c_stops_the_demo_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let mut proc = demo(tmp.path());
    let dir = demo_dir(&mut proc);
    // Interrupted once its network runs.
    proc.wait_line(DEMO, |l| l.starts_with("==> worker 2 "));
    let status = proc.interrupt(Duration::from_secs(30));
    assert!(!status.success(), "an interrupted demo does not report success");
    proc.wait_stderr(Duration::from_secs(5), "interrupted");
    assert!(!dir.exists(), "the demo left {dir:?} behind");
}
