//! The volunteer's side, with real processes on 127.0.0.1: an idle-only
//! worker pauses a running build while the machine's owner works (real
//! CPU-bound processes at normal priority stand for the owner), resumes it
//! when they end, and gives it to another worker when the pause lasts past
//! its `--max-pause`; each requester is mailed once.

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{mail_settled, outbox};
use kiln_tests::farm::{peer_of, recipe, request_waiting, status, wait_json, wait_status, worker};
use kiln_tests::{fetch, kiln, start_bootstrap, start_node, START};
use serde_json::Value;

/// The machine's owner at work: one busy loop per CPU at normal priority,
/// killed when dropped.
struct Owner(Vec<Child>);

impl Owner {
    fn busy() -> Owner {
        // The CPUs the worker counts (its /proc/stat), which a container's
        // CPU limit may put above what this process may use.
        let cpus = kiln_node::worker::CpuTicks::now().map_or(2, |t| t.cpus as usize);
        Owner(
            (0..cpus)
                .map(|_| Command::new("sh").args(["-c", "while :; do :; done"]).spawn().unwrap())
                .collect(),
        )
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The open job in a status, if there is one.
fn open_job(s: &Value) -> Option<&Value> {
    s["jobs"].as_array().and_then(|jobs| jobs.first())
}

fn worker_line<'a>(s: &'a Value, peer: &str) -> Option<&'a Value> {
    s["workers"].as_array()?.iter().find(|w| w["peer"] == peer)
}

fn building_on(s: &Value, peer: &str) -> bool {
    open_job(s).is_some_and(|j| j["state"] == "building" && j["worker"] == peer)
}

#[test]
fn an_idle_only_worker_pauses_for_its_owner_resumes_after_and_hands_on_a_build_paused_too_long() {
    let tmp = tempfile::tempdir().unwrap();
    let (_boot, boot) = start_bootstrap(&tmp.path().join("boot"));
    let c_dir = tmp.path().join("c");
    let (_c, _) = start_node("coordinator", &c_dir, &boot, &["--coordinator"]);
    let (w1, w1_addr) = worker("patient worker", &tmp.path().join("w1"), &boot, &["--idle-only"]);
    let w1_peer = peer_of(&w1_addr);

    // 1. Paused while the owner works, its lease held, resumed after.
    let mut first = request_waiting("first", &boot, &recipe("ticks"), "first@example.org", &[]);
    wait_status(&boot, "the build running on the worker", |s| building_on(s, &w1_peer));
    let owner = Owner::busy();
    let owner_started = Instant::now();
    let paused = wait_status(&boot, "the worker saying it paused its build", |s| {
        worker_line(s, &w1_peer).is_some_and(|w| {
            w["waiting_because"]
                .as_str()
                .is_some_and(|r| r.starts_with("paused 1 build for the owner: idle-only"))
        })
    });
    assert!(building_on(&paused, &w1_peer), "{paused}");
    eprintln!("paused {:?} after the owner started", owner_started.elapsed());
    // Past the lease (8 s) and its grace: the job stays with the worker,
    // on its first attempt.
    let held = Instant::now();
    while held.elapsed() < Duration::from_secs(10) {
        let s = status(&boot);
        let job = open_job(&s).unwrap_or(&Value::Null);
        assert!(
            building_on(&s, &w1_peer) && job["attempt"] == 1,
            "the paused build lost its lease: {s}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(owner);
    let owner_stopped = Instant::now();
    w1.wait_stderr(Duration::from_secs(60), "resuming the build");
    eprintln!("resumed {:?} after the owner stopped", owner_stopped.elapsed());
    let done = wait_json(&mut first);
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["attestation"]["worker_peer"], w1_peer.as_str(), "{done}");
    let log_file = tmp.path().join("first.log");
    let (ok, _, err) = fetch(
        &tmp.path().join("fetcher"),
        &boot,
        done["attestation"]["log"].as_str().unwrap(),
        &log_file,
    );
    assert!(ok, "{err}");
    let log = std::fs::read_to_string(&log_file).unwrap();
    assert!(
        log.contains("kiln: paused: idle-only: the machine's owner is using it") && log.contains("kiln: resumed after"),
        "the log does not name the pause: {log}"
    );
    assert!(log.contains("tick 20"), "{log}");

    // 2. Paused past --max-pause: given up, built by another worker.
    let (w3, w3_addr) = worker(
        "hasty worker",
        &tmp.path().join("w3"),
        &boot,
        &["--idle-only", "--max-pause", "3s"],
    );
    let w3_peer = peer_of(&w3_addr);
    drop(w1);
    // Long enough to be running still when the pause (within 10 s) has
    // lasted past --max-pause.
    let mut second = request_waiting(
        "second",
        &boot,
        &recipe("ticks"),
        "second@example.org",
        &["-o", "n=2", "-o", "secs=30"],
    );
    wait_status(&boot, "the build running on the hasty worker", |s| {
        building_on(s, &w3_peer)
    });
    let (_w2, w2_addr) = worker("plain worker", &tmp.path().join("w2"), &boot, &[]);
    let owner = Owner::busy();
    w3.wait_stderr(Duration::from_secs(60), "giving the build up");
    drop(owner);
    let done = wait_json(&mut second);
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["attestation"]["worker_peer"], peer_of(&w2_addr).as_str(), "{done}");
    w3.wait_stderr(START, "paused for longer than 3 s (the worker's --max-pause)");

    // Each requester got one mail.
    wait_status(&boot, "both mails written", |s| mail_settled(s, 2));
    let mails = outbox(&c_dir);
    let to: Vec<&str> = mails.iter().map(|m| m.to.as_str()).collect();
    assert_eq!(mails.len(), 2, "{to:?}");
    assert!(
        to.contains(&"first@example.org") && to.contains(&"second@example.org"),
        "{to:?}"
    );
}

fn contributions(args: &[&str]) -> (bool, Value, String) {
    let mut all = vec!["contributions", "--json"];
    all.extend_from_slice(args);
    let (ok, out, err) = kiln(&all);
    (ok, serde_json::from_str(out.trim()).unwrap_or(Value::Null), err)
}

#[test]
fn a_worker_shows_what_it_gave_and_its_proof_checks_and_a_changed_one_does_not() {
    let tmp = tempfile::tempdir().unwrap();
    let (_boot, boot) = start_bootstrap(&tmp.path().join("boot"));
    let (_c, _) = start_node("coordinator", &tmp.path().join("c"), &boot, &["--coordinator"]);
    let w_dir = tmp.path().join("w");
    let (mut w, w_addr) = worker("worker", &w_dir, &boot, &[]);
    let w_peer = peer_of(&w_addr);
    let counts_cpu = w.stderr().contains("CPU time counted by cgroup");

    let mut built = request_waiting("built", &boot, &recipe("sleep"), "a@example.org", &["-o", "secs=1"]);
    assert_eq!(wait_json(&mut built)["state"], "done");
    let mut failed = request_waiting("failed", &boot, &recipe("fail"), "b@example.org", &[]);
    assert_eq!(wait_json(&mut failed)["state"], "failed");

    // Asked of the running worker.
    let proof = tmp.path().join("proof.bin");
    let w_dir_text = w_dir.to_str().unwrap();
    let (ok, gave, err) = contributions(&["--data-dir", w_dir_text, "--proof", proof.to_str().unwrap()]);
    assert!(ok, "{err}");
    for period in ["all_time", "recent"] {
        let t = &gave[period];
        assert_eq!(t["builds_done"], 1, "{gave}");
        assert!(t["builds_failed"].as_u64().unwrap() >= 1, "{gave}");
        assert!(t["build_ms"].as_u64().unwrap() >= 1_000, "{gave}");
        assert!(t["attested_ms"].as_u64().unwrap() >= 1_000, "{gave}");
        // The coordinator copied the artifact from the worker.
        assert!(t["served_bytes"].as_u64().unwrap() > 0, "{gave}");
        if counts_cpu {
            assert!(t["cpu_counted_builds"].as_u64().unwrap() >= 2, "{gave}");
        }
    }
    assert_eq!(gave["builds"][0]["ended"], "failed", "newest first: {gave}");

    // Anyone can check the proof; a changed one fails, saying why.
    let (ok, checked, err) = contributions(&["--verify", proof.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(checked["verified"], true, "{checked}");
    assert_eq!(checked["builds_done"], 1, "{checked}");
    assert_eq!(checked["worker"], gave["worker"], "{checked}");
    let mut bytes = std::fs::read(&proof).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let changed = tmp.path().join("changed.bin");
    std::fs::write(&changed, &bytes).unwrap();
    let (ok, _, err) = contributions(&["--verify", changed.to_str().unwrap()]);
    assert!(!ok && err.contains("does not hold"), "{err}");

    // The coordinator lists the worker among its top contributors.
    let s = status(&boot);
    let top = &s["contributors"][0];
    assert_eq!(top["peer"], w_peer.as_str(), "{s}");
    assert_eq!(top["builds"], 1, "{s}");

    // Kept across a restart: read from the data dir once the node stopped.
    w.interrupt(START);
    let (ok, after, err) = contributions(&["--data-dir", w_dir_text]);
    assert!(ok, "{err}");
    assert_eq!(after["all_time"]["builds_done"], 1, "{after}");
    assert!(
        after["all_time"]["served_bytes"].as_u64() >= gave["all_time"]["served_bytes"].as_u64(),
        "the bytes served were saved when the node stopped: {after}"
    );
}
