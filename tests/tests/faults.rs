//! Faults a node meets on its own machine: its disk corrupts a blob it
//! holds. Real processes; the corruption is real bytes flipped on disk.
//! And a peer announcing jobs it has no right to.

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use kiln_tests::farm::{node_status, recipe, request, worker, BUILD};
use kiln_tests::{kiln, start_bootstrap, start_evil, start_node, wait_until, START};
use serde_json::Value;

/// Asks the node at `addr` for the range hashes of `hash`, as a fetcher
/// does first; the kind of its answer (`answer ...`).
fn ask_range_hashes(dir: &Path, boot: &str, addr: &str, hash: &str) -> String {
    let mut asker = start_evil("asker", dir, boot, "range", &format!("{addr}:{hash}:hashes"));
    asker.wait_line(START, |l| l.starts_with("answer "))
}

fn blob_file(dir: &Path, hash: &str) -> std::path::PathBuf {
    dir.join("blobs").join(&hash[..2]).join(hash)
}

/// A provider that found one of its blobs corrupt only refused to serve
/// it: it kept announcing it and re-hashed it on every request, and a
/// pinned blob (one the node needs) stayed broken. Now it is quarantined
/// (moved aside, forgotten, withdrawn), fetched again from another holder
/// since it is pinned, and the node's own status says so.
#[test]
fn a_corrupt_pinned_blob_is_quarantined_and_fetched_again() {
    let tmp = tempfile::tempdir().unwrap();
    let (_boot, boot) = start_bootstrap(&tmp.path().join("boot"));
    let c_dir = tmp.path().join("c");
    let (mut c, _) = start_node("coordinator", &c_dir, &boot, &["--coordinator"]);
    let (_w, _) = worker("worker", &tmp.path().join("w"), &boot, &[]);
    // The coordinator copies the artifact to itself and keeps it pinned;
    // the worker holds the other copy.
    let (ok, done, err) = request(&boot, &recipe("sleep"), "a@example.org", &["--wait", "-o", "secs=1"]);
    assert!(ok && done["state"] == "done", "{done} {err}");
    let artifact = done["artifact"].as_str().unwrap().to_string();
    let path = blob_file(&c_dir, &artifact);
    let good = std::fs::read(&path).unwrap();

    // The disk flips a byte while the node is down.
    c.terminate(START);
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 0x10;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&path, &bad).unwrap();
    let (_c, c_addr) = start_node("coordinator", &c_dir, &boot, &["--coordinator"]);
    assert!(
        node_status(&c_dir)["store"]["quarantined"]
            .as_array()
            .unwrap()
            .is_empty(),
        "nothing found yet"
    );

    // A fetcher asks it for the blob's range hashes: it notices, refuses.
    assert_eq!(
        ask_range_hashes(&tmp.path().join("asker"), &boot, &c_addr, &artifact),
        "answer not found"
    );

    // Quarantined, then fetched again from the worker.
    let mut last = Value::Null;
    wait_until(BUILD, "the node to fetch a good copy", || {
        last = node_status(&c_dir);
        last["store"]["quarantined"][0]["restored"] == true
    });
    let entry = &last["store"]["quarantined"][0];
    assert_eq!(entry["hash"], artifact.as_str(), "{last}");
    assert_eq!(entry["pinned"], true, "{last}");
    assert_ne!(entry["actual"], artifact.as_str(), "{last}");
    let kept = entry["kept"].as_str().unwrap();
    assert_eq!(std::fs::read(kept).unwrap(), bad, "the corrupt bytes are kept aside");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        good,
        "the good copy is back in the store"
    );
    let (ok, text, err) = kiln(&["status", "--node", "--data-dir", c_dir.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        text.contains("blobs found corrupt on disk (quarantined): 1") && text.contains("a good copy is back"),
        "{text}"
    );

    // Served again, checked against its hash.
    assert_eq!(
        ask_range_hashes(&tmp.path().join("asker2"), &boot, &c_addr, &artifact),
        "answer range hashes"
    );
}

#[test]
fn jobs_gossiped_by_a_peer_that_does_not_coordinate_are_dropped_with_nothing_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let (_boot, boot) = start_bootstrap(&tmp.path().join("boot"));
    let c_dir = tmp.path().join("c");
    let (c, _) = start_node("coordinator", &c_dir, &boot, &["--coordinator"]);
    let s_dir = tmp.path().join("s");
    let (_s, _) = start_node("standby", &s_dir, &boot, &[]);
    let rss = |pid: u32| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap()
    };
    let rss_before = rss(c.pid());
    // 200 well-formed jobs, each with its own build key, announced by a
    // peer that is not the coordinator.
    let mut flood = start_evil("flood", &tmp.path().join("flood"), &boot, "jobs", "200");
    flood.wait_line(START, |l| l == "jobs sent 200");
    for dir in [&c_dir, &s_dir] {
        let refused = |node: &Value| node["gossip_jobs_refused"].as_u64().unwrap_or(0);
        wait_until(Duration::from_secs(60), "every flooded job refused", || {
            refused(&node_status(dir)) >= 200
        });
        let node = node_status(dir);
        assert_eq!(node["jobs_total"], 0, "nothing kept: {node}");
        assert_eq!(node["input_fetches_started"], 0, "no task fetches inputs: {node}");
    }
    let (ok, out, err) = kiln(&["status", "--json", "--bootstrap", &boot]);
    assert!(ok, "{err}");
    let farm: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(farm["jobs_total"], 0, "{farm}");
    // No input fetch was started for any of them (each would be a task,
    // and the jobs and their fetches memory).
    let rss_after = rss(c.pid());
    println!("coordinator RSS {rss_before} KiB before the flood, {rss_after} KiB after");
    assert!(
        rss_after < rss_before + 8 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
    assert!(
        !c.stderr().contains("holding the inputs"),
        "an input fetch started for a flooded job"
    );
}
