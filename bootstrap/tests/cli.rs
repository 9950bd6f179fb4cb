//! `kiln-bootstrap`'s contract: help, and a clear error for a bad address.

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

#[test]
fn help_describes_the_peer() {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln-bootstrap"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("stable entry point"));
}

#[test]
fn an_unusable_listen_address_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kiln-bootstrap"))
        .args(["--listen", "/ip4/256.0.0.1/tcp/0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("256.0.0.1"), "{stderr}");
}
