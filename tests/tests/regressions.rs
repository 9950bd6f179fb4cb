//! Regressions, each named after what broke, each with real processes:
//! defects a review of the node found, fixed with the layout by role.

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use kiln_tests::farm::{recipe, request, worker, BUILD};
use kiln_tests::{bin, kiln, start_bootstrap, start_evil, start_node, test_bytes, wait_until, Proc, START};

/// Writes `len` test bytes to `file` and publishes them through the node
/// running on `node_dir`; the blob's hash.
fn publish(node_dir: &Path, file: &Path, len: usize, seed: u64) -> String {
    std::fs::write(file, test_bytes(len, seed)).unwrap();
    let (ok, out, err) = kiln(&[
        "publish",
        "--data-dir",
        node_dir.to_str().unwrap(),
        file.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    out.split_whitespace().find(|w| w.len() == 64).unwrap().to_string()
}

/// Watch streams used to hold one of the coordinator's 64 stream permits
/// each for as long as they lasted: 64 `kiln request --wait` clients
/// blocked every submission and every `kiln status`.
#[test]
fn held_watches_do_not_block_status_or_submissions() {
    let tmp = tempfile::tempdir().unwrap();
    let (_boot, boot) = start_bootstrap(&tmp.path().join("boot"));
    let (_c, c_addr) = start_node("coordinator", &tmp.path().join("c"), &boot, &["--coordinator"]);
    // Two jobs that stay queued (no worker matches), 40 watchers each.
    let mut keys = Vec::new();
    for n in ["1", "2"] {
        let extra = ["-o", "secs=1", "-o", &format!("n={n}"), "--target", "site=nowhere"];
        let (ok, queued, err) = request(&boot, &recipe("sleep"), "a@example.org", &extra);
        assert!(ok, "{err}");
        keys.push(queued["build_key"].as_str().unwrap().to_string());
    }
    let target = format!("{c_addr}:{}", keys.join(","));
    let mut watchers = start_evil("watchers", &tmp.path().join("evil"), &boot, "watch", &target);
    watchers.wait_line(START, |l| l == "watching 80");
    let (ok, text, err) = kiln(&["status", "--bootstrap", &boot]);
    assert!(ok && text.contains("open jobs: 2"), "status: {text} {err}");
    let extra = ["-o", "secs=1", "-o", "n=3", "--target", "site=nowhere"];
    let (ok, queued, err) = request(&boot, &recipe("sleep"), "b@example.org", &extra);
    assert!(ok && queued["build_key"].is_string(), "submission: {queued} {err}");
}

/// The protocol allowed ranges of 64 MiB while the store read at most
/// 16 MiB: a provider asked for 17 MiB said it did not hold the blob.
/// Now one limit holds for both, and a longer range is a bad range.
#[test]
fn a_range_over_the_limit_is_refused_as_a_bad_range() {
    let tmp = tempfile::tempdir().unwrap();
    let (_boot, boot) = start_bootstrap(&tmp.path().join("boot"));
    let node_dir = tmp.path().join("node");
    let (_node, addr) = start_node("node", &node_dir, &boot, &[]);
    let hash = publish(&node_dir, &tmp.path().join("blob"), 20 << 20, 7);
    let limit = kiln_protocol::messages::RANGE_BYTES_MAX;
    assert_eq!(limit, kiln_store::RANGE_BYTES_MAX, "one limit");
    for (length, answer) in [(limit, "answer data"), (limit + (1 << 20), "answer bad range")] {
        let target = format!("{addr}:{hash}:{length}");
        let mut asker = start_evil(
            "asker",
            &tmp.path().join(format!("evil{length}")),
            &boot,
            "range",
            &target,
        );
        let line = asker.wait_line(START, |l| l.starts_with("answer "));
        assert_eq!(line, answer, "a range of {length} bytes");
    }
}

/// The coordinator pinned a job's source blob but unpinned only its recipe
/// when the job ended: sources stayed pinned forever.
#[test]
fn a_finished_job_leaves_none_of_its_inputs_pinned() {
    let tmp = tempfile::tempdir().unwrap();
    let (_boot, boot) = start_bootstrap(&tmp.path().join("boot"));
    let c_dir = tmp.path().join("c");
    let (mut c, _) = start_node("coordinator", &c_dir, &boot, &["--coordinator"]);
    let (_w, _) = worker("worker", &tmp.path().join("w"), &boot, &[]);
    let (ok, done, err) = request(&boot, &recipe("hello-c"), "a@example.org", &["--wait"]);
    assert!(ok && done["state"] == "done", "{done} {err}");
    // The outbox is written when the job ends; stop the node cleanly to
    // read its store.
    c.wait_stderr(BUILD, "mail queued");
    c.terminate(START);
    let store = kiln_store::Store::open(&c_dir).unwrap();
    let pins = store.pins().unwrap();
    assert!(
        pins.iter().all(|(_, reason)| !reason.starts_with("input of job")),
        "inputs still pinned: {pins:?}"
    );
    assert!(
        pins.iter().any(|(_, reason)| reason.starts_with("artifact of build")),
        "the artifact stays pinned: {pins:?}"
    );
}

/// Nothing withdrew a provider record: a blob the store evicted was
/// announced again forever (to a bootstrap peer that came back, and every
/// hour), sending fetchers to a node that no longer holds it.
#[test]
fn an_evicted_blob_is_no_longer_announced() {
    let tmp = tempfile::tempdir().unwrap();
    let boot_dir = tmp.path().join("boot");
    let (mut boot_proc, boot) = start_bootstrap(&boot_dir);
    let node_dir = tmp.path().join("node");
    let cap = (3 << 20).to_string();
    let (node, _) = start_node("node", &node_dir, &boot, &["--max-store-size", &cap]);
    let mut hashes = Vec::new();
    for seed in [1, 2] {
        hashes.push(publish(
            &node_dir,
            &tmp.path().join(format!("blob{seed}")),
            2 << 20,
            seed,
        ));
    }
    let (evicted, kept) = (&hashes[0], &hashes[1]);
    // The bootstrap peer restarts on the same address and key, empty: the
    // node announces what it provides again.
    boot_proc.terminate(START);
    let port = boot.split('/').nth(4).unwrap().to_string();
    let mut command = Command::new(bin("kiln-bootstrap"));
    command
        .args(["--listen", &format!("/ip4/127.0.0.1/tcp/{port}"), "--data-dir"])
        .arg(&boot_dir);
    let mut again = Proc::spawn("bootstrap again", command);
    again.wait_line(START, |l| l == boot);
    node.wait_stderr(START, "bootstrap peer back; announcing provided blobs again");
    let out = tmp.path().join("out");
    wait_until(START, "the kept blob announced again", || {
        let dir = tmp.path().join(format!("client-{}", std::process::id()));
        let (ok, _, _) = kiln_tests::fetch(&dir, &boot, kept, &out);
        let _ = std::fs::remove_dir_all(&dir);
        ok
    });
    let (ok, _, err) = kiln_tests::fetch(&tmp.path().join("client"), &boot, evicted, &out);
    assert!(!ok, "the evicted blob was fetched");
    assert!(err.contains("no peer in the network holds"), "{err}");
}
