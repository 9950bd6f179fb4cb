//! Fair under load, with real processes on 127.0.0.1: requesters are told
//! apart by the key in their data dir; one requester's single job is built
//! within two dispatches of another's fifty; a requester over its bounds
//! is refused with the bound, the figure and when to try again; and a
//! requester cancels what it asked for (queued, running, merged), while a
//! stranger cannot.

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::outbox;
use kiln_tests::farm::{recipe, wait_status, worker, BUILD};
use kiln_tests::{kiln, start_bootstrap, start_node, wait_until, Proc};
use serde_json::Value;

/// `kiln request --json` (no wait) as the requester whose key is in `dir`.
fn submit(boot: &str, dir: &Path, email: &str, options: &[&str]) -> (bool, Value, String) {
    let mut args = vec![
        "request",
        "--json",
        "--bootstrap",
        boot,
        "--data-dir",
        dir.to_str().unwrap(),
        "--email",
        email,
    ];
    let sleep = recipe("sleep");
    args.extend(["--recipe", sleep.as_str()]);
    for option in options {
        args.extend(["-o", option]);
    }
    let (ok, out, err) = kiln(&args);
    let value = serde_json::from_str(out.trim()).unwrap_or(Value::Null);
    (ok, value, err)
}

fn submitted(boot: &str, dir: &Path, email: &str, options: &[&str]) -> String {
    let (ok, value, err) = submit(boot, dir, email, options);
    assert!(ok, "request failed: {err}");
    value["build_key"].as_str().unwrap().to_string()
}

/// `kiln cancel --json BUILD_KEY` as the requester whose key is in `dir`.
fn cancel(boot: &str, dir: &Path, build_key: &str) -> (bool, Value, String) {
    let (ok, out, err) = kiln(&[
        "cancel",
        "--json",
        build_key,
        "--bootstrap",
        boot,
        "--data-dir",
        dir.to_str().unwrap(),
    ]);
    (ok, serde_json::from_str(out.trim()).unwrap_or(Value::Null), err)
}

/// The build keys the coordinator assigned, in order, from its log.
fn assignments(coordinator: &Proc) -> Vec<String> {
    coordinator
        .stderr()
        .lines()
        .filter(|l| l.contains("assigning"))
        .filter_map(|l| l.split("job=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn recent_state(s: &Value, build_key: &str) -> Option<String> {
    s["recent"]
        .as_array()?
        .iter()
        .find(|j| j["build_key"] == build_key)
        .map(|j| j["state"].as_str().unwrap_or("").to_string())
}

#[test]
fn one_requesters_job_goes_before_anothers_fifty_and_each_cancels_only_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let (_boot, boot) = start_bootstrap(&tmp.path().join("boot"));
    let c_dir = tmp.path().join("c");
    let (c, _) = start_node(
        "coordinator",
        &c_dir,
        &boot,
        &["--coordinator", "--max-requester-rate", "1000"],
    );
    let (w, _) = worker("worker", &tmp.path().join("w"), &boot, &["--max-jobs", "1"]);
    wait_status(&boot, "the worker listed", |s| {
        s["workers"].as_array().is_some_and(|w| w.len() == 1)
    });
    let (a, b, stranger) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("x"));

    // A queues 50 distinct builds of 3 to 8 s each.
    let mut mine = Vec::new();
    'fifty: for secs in ["3", "5", "8"] {
        for n in 1..=20 {
            if mine.len() == 50 {
                break 'fifty;
            }
            let (secs, n) = (format!("secs={secs}"), format!("n={n}"));
            mine.push(submitted(&boot, &a, "a@example.org", &[&secs, &n]));
        }
    }
    assert!(
        a.join("requester.key").exists(),
        "the requester key is kept in its data dir"
    );
    // B then queues one.
    let before = assignments(&c).len();
    let theirs = submitted(&boot, &b, "b@example.org", &["secs=1", "n=1"]);
    wait_until(BUILD, "B's job assigned", || assignments(&c).contains(&theirs));
    let after: Vec<String> = assignments(&c)[before..].to_vec();
    let at = after.iter().position(|k| *k == theirs).unwrap();
    assert!(
        at <= 1,
        "B's job was dispatch {} after it was queued: {after:?}",
        at + 1
    );
    println!("B's job was dispatch {} after its submission", at + 1);

    // Status shows the queue per requester.
    let s = wait_status(&boot, "B's job done", |s| {
        recent_state(s, &theirs).as_deref() == Some("done")
    });
    let requesters = s["requesters"].as_array().unwrap();
    assert!(requesters[0]["queued"].as_u64().unwrap() >= 40, "{s}");
    assert!(
        requesters
            .iter()
            .any(|r| r["share_last_hour"].as_f64().unwrap_or(0.0) > 0.0),
        "{s}"
    );

    // Nobody else can cancel A's request.
    let queued = mine.last().unwrap().clone();
    let (ok, _, err) = cancel(&boot, &stranger, &queued);
    assert!(!ok && err.contains("no requester key"), "{err}");
    let (ok, _, err) = cancel(&boot, &b, &queued);
    assert!(
        !ok && err.contains("you did not request this build"),
        "B cancelled A's build: {err}"
    );

    // A cancels a queued job: dropped.
    let (ok, out, err) = cancel(&boot, &a, &queued);
    assert!(ok, "{err}");
    assert_eq!(out["state"], "dropped", "{out}");

    // B asks for one of A's queued builds too; A cancels it: it goes on
    // for B alone, and only B is mailed.
    let shared = mine[mine.len() - 2].clone();
    let (secs, n) = ("secs=8", format!("n={}", mine.len() - 2 - 40 + 1));
    let joined = submitted(&boot, &b, "b2@example.org", &[secs, &n]);
    assert_eq!(joined, shared, "B joined A's queued build");
    let (ok, out, err) = cancel(&boot, &a, &shared);
    assert!(ok, "{err}");
    assert_eq!(out["state"], "still wanted", "{out}");

    // A cancels its running build: stopped on the worker, which takes the
    // next job.
    let s = wait_status(&boot, "one of A's builds running", |s| {
        s["workers"][0]["jobs"]
            .as_array()
            .and_then(|j| j.first())
            .and_then(|k| k.as_str())
            .is_some_and(|k| mine.iter().any(|m| m == k) && *k != shared)
    });
    let running = s["workers"][0]["jobs"][0].as_str().unwrap().to_string();
    let assigned_before = assignments(&c).len();
    let asked = Instant::now();
    let (ok, out, err) = cancel(&boot, &a, &running);
    assert!(ok, "{err}");
    assert_eq!(out["state"], "stopped", "{out}");
    w.wait_stderr(BUILD, "build abandoned");
    let stopped_after = asked.elapsed();
    assert!(w.stderr().contains("cancelled: every requester"), "{}", w.stderr());
    assert!(
        stopped_after < Duration::from_secs(10),
        "stopped after {stopped_after:?}"
    );
    wait_until(BUILD, "the worker took the next job", || {
        assignments(&c).len() > assigned_before
    });
    println!("the running build was stopped {stopped_after:?} after the cancel");

    // The build B still wants is built next (B's turn), and mailed to B
    // only.
    wait_status(&boot, "the shared build done", |s| {
        recent_state(s, &shared).as_deref() == Some("done")
    });
    wait_until(BUILD, "the shared build's mail", || {
        outbox(&c_dir).iter().any(|m| m.to == "b2@example.org")
    });
    let mails = outbox(&c_dir);
    assert!(
        !mails
            .iter()
            .any(|m| m.to == "a@example.org" && m.body.contains(&shared)),
        "A cancelled the shared build and was still mailed"
    );
    let s = kiln_tests::farm::status(&boot);
    assert!(
        s["recent"]
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["build_key"] != queued || j["state"] == "cancelled"),
        "{s}"
    );
}

#[test]
fn a_requester_over_its_bounds_is_told_which_the_figure_and_when_to_try_again() {
    let tmp = tempfile::tempdir().unwrap();
    let (_boot, boot) = start_bootstrap(&tmp.path().join("boot"));
    let (_c, _) = start_node(
        "coordinator",
        &tmp.path().join("c"),
        &boot,
        &[
            "--coordinator",
            "--max-requester-jobs",
            "2",
            "--max-requester-rate",
            "3",
        ],
    );
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    // No worker: the jobs stay open.
    let first = submitted(&boot, &a, "a@example.org", &["n=1"]);
    submitted(&boot, &a, "a@example.org", &["n=2"]);
    let (ok, _, err) = submit(&boot, &a, "a@example.org", &["n=3"]);
    assert!(!ok);
    assert!(
        err.contains("you have 2 open jobs")
            && err.contains("--max-requester-jobs is 2")
            && err.contains("kiln cancel"),
        "{err}"
    );
    // Another requester is not held up.
    submitted(&boot, &b, "b@example.org", &["n=4"]);
    // Joining one's own open job again is no new job.
    assert_eq!(submitted(&boot, &a, "a@example.org", &["n=1"]), first);
    // Under the job bound again, but over the rate: 3 submissions counted.
    let (ok, _, err) = cancel(&boot, &a, &first);
    assert!(ok, "{err}");
    let (ok, _, err) = submit(&boot, &a, "a@example.org", &["n=5"]);
    assert!(!ok);
    assert!(
        err.contains("you submitted 3 jobs in the last minute")
            && err.contains("--max-requester-rate is 3")
            && err.contains("try again in"),
        "{err}"
    );
}
