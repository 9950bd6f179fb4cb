//! Helpers for tests of the request flow: test recipes, workers,
//! `kiln request` and `kiln status` as a user runs them.

// A harness: a panic here is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::{bin, kiln, start_node, Proc};

/// Long enough for any build here (each takes seconds) plus a lease expiry.
pub const BUILD: Duration = Duration::from_secs(120);

pub fn recipe(name: &str) -> String {
    let path: PathBuf = match name {
        "hello-c" => concat!(env!("CARGO_MANIFEST_DIR"), "/../recipes/hello-c/recipe.toml").into(),
        other => format!("{}/recipes/{other}/recipe.toml", env!("CARGO_MANIFEST_DIR")).into(),
    };
    path.to_str().unwrap().to_string()
}

pub fn worker(name: &str, dir: &Path, boot: &str, extra: &[&str]) -> (Proc, String) {
    let mut args = vec!["--contribute", "--trust-any-recipe", "--no-coordinator"];
    args.extend_from_slice(extra);
    start_node(name, dir, boot, &args)
}

pub fn peer_of(addr: &str) -> String {
    addr.rsplit('/').next().unwrap().to_string()
}

/// `kiln request --json ...` to completion: (success, parsed stdout, stderr).
pub fn request(boot: &str, recipe: &str, email: &str, extra: &[&str]) -> (bool, Value, String) {
    let mut args = vec![
        "request",
        "--json",
        "--bootstrap",
        boot,
        "--email",
        email,
        "--recipe",
        recipe,
    ];
    args.extend_from_slice(extra);
    let (ok, out, err) = kiln(&args);
    let json = serde_json::from_str(out.trim()).unwrap_or(Value::Null);
    (ok, json, err)
}

/// `kiln request --json --wait ...` running in the background.
pub fn request_waiting(name: &str, boot: &str, recipe: &str, email: &str, extra: &[&str]) -> Proc {
    let mut command = Command::new(bin("kiln"));
    command
        .args([
            "request",
            "--json",
            "--wait",
            "--bootstrap",
            boot,
            "--email",
            email,
            "--recipe",
            recipe,
        ])
        .args(extra);
    Proc::spawn(name, command)
}

pub fn wait_json(proc: &mut Proc) -> Value {
    let line = proc.wait_line(BUILD, |l| l.starts_with('{'));
    serde_json::from_str(&line).unwrap()
}

pub fn status(boot: &str) -> Value {
    let (ok, out, err) = kiln(&["status", "--json", "--bootstrap", boot]);
    assert!(ok, "kiln status failed: {err}");
    serde_json::from_str(&out).unwrap()
}

/// Polls `kiln status` until `condition` holds for it; on a timeout the
/// failure shows the last status seen.
pub fn wait_status(boot: &str, what: &str, condition: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + BUILD;
    loop {
        let last = status(boot);
        if condition(&last) {
            return last;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {BUILD:?} waiting for {what}; the last status: {last}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `kiln status --node --json` of the node running on `dir`, or `None` if
/// none answers there (it is starting or was killed).
pub fn try_node_status(dir: &Path) -> Option<Value> {
    let (ok, out, _) = kiln(&["status", "--node", "--json", "--data-dir", dir.to_str().unwrap()]);
    ok.then(|| serde_json::from_str(&out).ok()).flatten()
}

/// `kiln status --node --json` of the node running on `dir`.
pub fn node_status(dir: &Path) -> Value {
    let (ok, out, err) = kiln(&["status", "--node", "--json", "--data-dir", dir.to_str().unwrap()]);
    assert!(ok, "kiln status --node failed: {err}");
    serde_json::from_str(&out).unwrap()
}
