//! Mistakes a newcomer makes, each answered at once with what went wrong
//! and what to do (found by following the README on a clean checkout).

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_tests::{bin, kiln, start_bootstrap, start_node, START};

#[test]
fn a_dead_bootstrap_a_taken_port_and_a_bad_output_path_are_reported_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut boot_proc, boot) = start_bootstrap(&tmp.path().join("boot"));
    let port = boot.split('/').nth(4).unwrap().to_string();

    // A host:port where a multiaddr belongs says what one looks like.
    let (ok, _, err) = kiln(&["status", "--bootstrap", "127.0.0.1:4001"]);
    assert!(!ok);
    assert!(err.contains("write addresses as /ip4/127.0.0.1/tcp/4001"), "{err}");

    // A second process on a port already in use fails instead of sharing it.
    let taken = format!("/ip4/127.0.0.1/tcp/{port}");
    let d = tmp.path().join("second");
    let (ok, _, err) = kiln(&["node", "--listen", &taken, "--data-dir", d.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("Address already in use"), "{err}");

    // A pinned coordinator missing from its own trust list, and a peer id
    // that is none, are refused before the node starts.
    let (ok, other, _) = kiln(&["id", "--data-dir", tmp.path().join("other").to_str().unwrap()]);
    assert!(ok);
    let d = tmp.path().join("pinned");
    let node = |trusted: &str| {
        kiln(&[
            "node",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--coordinator",
            "--trust-coordinator",
            trusted,
            "--data-dir",
            d.to_str().unwrap(),
        ])
    };
    let (ok, _, err) = node(other.trim());
    assert!(!ok);
    assert!(
        err.contains("not in its own --trust-coordinator list") && err.contains("add --trust-coordinator 12D3KooW"),
        "{err}"
    );
    let (ok, _, err) = node("coordinator-1");
    assert!(!ok);
    assert!(err.contains("is not a peer id: `kiln id --data-dir DIR`"), "{err}");

    // A node that cannot reach its bootstrap peer says so in its log.
    let (node, _) = start_node("node", &tmp.path().join("n"), &boot, &[]);
    let hash = "0".repeat(64);
    boot_proc.kill();
    let started = Instant::now();
    for args in [
        vec!["status", "--bootstrap", &boot],
        vec![
            "fetch",
            &hash,
            "--bootstrap",
            &boot,
            "--data-dir",
            tmp.path().join("f").to_str().unwrap(),
        ],
    ] {
        let (ok, _, err) = kiln(&args);
        assert!(!ok);
        assert!(err.contains("cannot reach the bootstrap peer"), "{args:?}: {err}");
        assert!(err.contains("Connection refused"), "{err}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "told at once, not after a timeout"
    );
    drop(node);
    let mut lonely = start_node("lonely", &tmp.path().join("n2"), &boot, &[]).0;
    lonely.wait_stderr(START, "cannot reach a bootstrap peer");
    lonely.kill();

    // -o naming a directory, or a directory that does not exist.
    for (path, says) in [
        (tmp.path().to_path_buf(), "is a directory"),
        (tmp.path().join("no/such"), "does not exist"),
    ] {
        let (ok, _, err) = kiln(&["fetch", &hash, "-o", path.to_str().unwrap(), "--bootstrap", &boot]);
        assert!(!ok);
        assert!(err.contains(says), "{err}");
    }
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    // Like `kiln completions bash | head -0`: the reader is gone before
    // kiln writes (a socket whose other end is closed).
    let (stdout, reader) = std::os::unix::net::UnixStream::pair().unwrap();
    drop(reader);
    let out = Command::new(bin("kiln"))
        .args(["completions", "bash"])
        .env("KILN_CONFIG", "/dev/null")
        .stdout(Stdio::from(std::os::fd::OwnedFd::from(stdout)))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(13),
        "ended by SIGPIPE, as `cat` would be: {:?}",
        out.status
    );
}
