//! What a person at a terminal sees: `kiln request --wait` and `kiln fetch`
//! draw progress on a terminal (a pseudo-terminal made by `script`), and
//! nothing of it on a pipe.

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};

use kiln_tests::farm::{recipe, worker};
use kiln_tests::{bin, kiln, output_within, start_bootstrap, start_node, test_bytes, COMMAND_TIME_MAX};

/// Runs `kiln ARGS` with stdout and stderr on a pseudo-terminal; returns
/// (success, everything the terminal showed).
fn on_terminal(args: &[&str]) -> (bool, String) {
    let mut line = bin("kiln").to_str().unwrap().to_string();
    for arg in args {
        line.push_str(&format!(" '{arg}'"));
    }
    let out = output_within(
        Command::new("script")
            .args(["--quiet", "--return", "--command", &line, "/dev/null"])
            .env("KILN_CONFIG", "/dev/null")
            .env("TERM", "xterm-256color")
            .stdin(Stdio::null()),
        COMMAND_TIME_MAX,
    );
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// An ANSI control sequence: what a progress bar or spinner redraws with.
const ESC: char = '\u{1b}';

#[test]
fn progress_is_drawn_on_a_terminal_and_never_into_a_pipe() {
    let tmp = tempfile::tempdir().unwrap();
    let (_boot, boot) = start_bootstrap(&tmp.path().join("boot"));
    let (_c, _) = start_node("coordinator", &tmp.path().join("c"), &boot, &["--coordinator"]);
    let (_w, _) = worker("worker", &tmp.path().join("w"), &boot, &[]);

    // request --wait: states above a spinner that counts the seconds.
    let r = recipe("sleep");
    let wait_for = |secs| {
        let args = [
            "request",
            "--wait",
            "--bootstrap",
            &boot,
            "--email",
            "a@example.org",
            "--recipe",
            &r,
            "-o",
            secs,
        ];
        args.map(String::from)
    };
    let args = wait_for("secs=3");
    let (ok, screen) = on_terminal(&args.each_ref().map(String::as_str));
    assert!(ok, "{screen}");
    assert!(screen.contains("kiln: building on worker"), "{screen}");
    assert!(screen.contains("kiln: done"), "{screen}");
    assert!(screen.contains(ESC), "a spinner is drawn on a terminal: {screen:?}");
    assert!(
        ["   1s ", "   2s ", "   3s "].iter().any(|t| screen.contains(t)),
        "the spinner shows elapsed time: {screen:?}"
    );

    // The same on a pipe: the same lines, no control sequences.
    let args = wait_for("secs=1");
    let (ok, out, err) = kiln(&args.each_ref().map(String::as_str));
    assert!(ok, "{err}");
    assert!(err.contains("kiln: building on worker"), "{err}");
    assert!(
        !err.contains(ESC) && !out.contains(ESC),
        "nothing drawn into a pipe: {err:?}"
    );

    // fetch: a progress bar with the bytes.
    let blob = tmp.path().join("blob");
    std::fs::write(&blob, test_bytes(96 << 20, 7)).unwrap();
    let (ok, hash, err) = kiln(&[
        "publish",
        "--data-dir",
        tmp.path().join("w").to_str().unwrap(),
        blob.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let hash = hash.trim().to_string();
    let out = tmp.path().join("fetched");
    let fetcher = tmp.path().join("f");
    let args = [
        "fetch",
        &hash,
        "-o",
        out.to_str().unwrap(),
        "--bootstrap",
        &boot,
        "--data-dir",
        fetcher.to_str().unwrap(),
    ];
    let (ok, screen) = on_terminal(&args);
    assert!(ok, "{screen}");
    assert!(screen.contains("fetching"), "the bar names the blob: {screen:?}");
    assert!(screen.contains("MiB"), "the bar counts bytes: {screen:?}");
    assert_eq!(std::fs::read(&out).unwrap().len(), 96 << 20);
}
