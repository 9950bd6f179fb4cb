//! Workers, with real processes: a contributed machine takes an assignment
//! over the work protocol, builds the recipe in its sandbox, and reports a
//! signed outcome over gossip. (A stand-in, `kiln-assign`, plays the
//! coordinator, so a test can offer exactly the jobs it wants.)

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kiln_protocol::Hash;
use kiln_tests::{bin, fetch, is_listen_line, kiln, start_bootstrap, start_node, Proc, START};

const BUILD: Duration = Duration::from_secs(120);

fn peer_of(addr: &str) -> String {
    addr.rsplit('/').next().unwrap().to_string()
}

fn hello_recipe() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../recipes/hello-c/recipe.toml").to_string()
}

fn assign(data_dir: &Path, bootstrap: &str, recipe: &str, signed: bool, workers: &[String]) -> Proc {
    let mut command = Command::new(bin("kiln-assign"));
    command
        .arg(data_dir)
        .arg(bootstrap)
        .arg(recipe)
        .arg(if signed { "signed" } else { "unsigned" })
        .args(workers);
    let mut proc = Proc::spawn("assign", command);
    proc.wait_line(START, |l| l.starts_with("job "));
    proc
}

fn worker(name: &str, dir: &Path, bootstrap: &str, trust: &[&str]) -> (Proc, String) {
    let mut args = vec!["--contribute"];
    args.extend_from_slice(trust);
    let (proc, addr) = start_node(name, dir, bootstrap, &args);
    (proc, peer_of(&addr))
}

#[test]
fn the_c_recipe_built_on_two_workers_gives_one_hash_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let (_boot, boot_addr) = start_bootstrap(&tmp.path().join("boot"));
    let (_w1, peer1) = worker("worker 1", &tmp.path().join("w1"), &boot_addr, &["--trust-any-recipe"]);
    let (_w2, peer2) = worker("worker 2", &tmp.path().join("w2"), &boot_addr, &["--trust-any-recipe"]);

    let mut coordinator = assign(
        &tmp.path().join("c"),
        &boot_addr,
        &hello_recipe(),
        false,
        &[peer1.clone(), peer2.clone()],
    );
    coordinator.wait_line(START, |l| l == format!("accepted {peer1}"));
    coordinator.wait_line(START, |l| l == format!("accepted {peer2}"));
    let first = coordinator.wait_line(BUILD, |l| l.starts_with("done "));
    let second = coordinator.wait_line(BUILD, |l| l.starts_with("done ") && l != first);
    let artifact = |line: &str| line.split(' ').nth(2).unwrap().to_string();
    assert_ne!(
        first.split(' ').nth(1),
        second.split(' ').nth(1),
        "two different workers built it"
    );
    assert_eq!(
        artifact(&first),
        artifact(&second),
        "the same recipe and options built on two workers differ"
    );

    // Anyone fetches the artifact by hash; it holds the program, which runs.
    let output = tmp.path().join("artifact.tar");
    let (ok, _, err) = fetch(&tmp.path().join("f"), &boot_addr, artifact(&first), &output);
    assert!(ok, "{err}");
    let unpacked = tmp.path().join("unpacked");
    tar::Archive::new(std::fs::File::open(&output).unwrap())
        .unpack(&unpacked)
        .unwrap();
    let run = Command::new(unpacked.join("hello")).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&run.stdout), "hello from kiln\n");
    assert_eq!(
        std::fs::read_to_string(unpacked.join("greeting.txt")).unwrap(),
        "hello from kiln\n"
    );
}

#[test]
fn a_worker_that_trusts_publishers_refuses_an_unsigned_recipe_and_runs_a_signed_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (_boot, boot_addr) = start_bootstrap(&tmp.path().join("boot"));
    // The stand-in coordinator signs with its node key: learn it first.
    let (ok, _, _) = kiln(&["id", "--data-dir", tmp.path().join("c").to_str().unwrap()]);
    assert!(ok);
    let publisher = kiln_protocol::SecretKey::from_bytes(
        &std::fs::read(tmp.path().join("c/node.key"))
            .unwrap()
            .try_into()
            .unwrap(),
    )
    .public()
    .to_string();
    let (_w, peer) = worker(
        "careful worker",
        &tmp.path().join("w"),
        &boot_addr,
        &["--trust-publisher", &publisher],
    );

    let mut unsigned = assign(
        &tmp.path().join("c"),
        &boot_addr,
        &hello_recipe(),
        false,
        std::slice::from_ref(&peer),
    );
    let refusal = unsigned.wait_line(START, |l| l.starts_with("refused"));
    assert!(refusal.contains("recipe is not signed"), "{refusal}");
    unsigned.kill();

    let mut signed = assign(&tmp.path().join("c"), &boot_addr, &hello_recipe(), true, &[peer]);
    signed.wait_line(START, |l| l.starts_with("accepted"));
    signed.wait_line(BUILD, |l| l.starts_with("done "));
}

#[test]
fn a_worker_given_trusted_coordinators_takes_work_only_from_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (_boot, boot_addr) = start_bootstrap(&tmp.path().join("boot"));
    let (ok, trusted, err) = kiln(&["id", "--data-dir", tmp.path().join("c").to_str().unwrap()]);
    assert!(ok, "{err}");
    let (_w, peer) = worker(
        "worker",
        &tmp.path().join("w"),
        &boot_addr,
        &["--trust-any-recipe", "--trust-coordinator", trusted.trim()],
    );

    let mut stranger = assign(
        &tmp.path().join("stranger"),
        &boot_addr,
        &hello_recipe(),
        false,
        std::slice::from_ref(&peer),
    );
    let refusal = stranger.wait_line(START, |l| l.starts_with("refused"));
    assert!(refusal.contains("--trust-coordinator"), "{refusal}");
    stranger.kill();

    let mut trusted = assign(&tmp.path().join("c"), &boot_addr, &hello_recipe(), false, &[peer]);
    trusted.wait_line(START, |l| l.starts_with("accepted"));
}

#[test]
fn a_failing_build_is_reported_with_its_log() {
    let tmp = tempfile::tempdir().unwrap();
    let (_boot, boot_addr) = start_bootstrap(&tmp.path().join("boot"));
    let (_w, peer) = worker("worker", &tmp.path().join("w"), &boot_addr, &["--trust-any-recipe"]);
    let recipe = tmp.path().join("broken.toml");
    std::fs::write(
        &recipe,
        "name = \"broken\"\nversion = \"1\"\n[build]\nsteps = [\"echo compiling; echo 'cc: error: it broke' >&2; exit 2\"]\noutputs = [\"out\"]\n",
    )
    .unwrap();
    let mut coordinator = assign(
        &tmp.path().join("c"),
        &boot_addr,
        recipe.to_str().unwrap(),
        false,
        &[peer],
    );
    coordinator.wait_line(START, |l| l.starts_with("accepted"));
    let failed = coordinator.wait_line(BUILD, |l| l.starts_with("failed "));
    assert!(failed.ends_with("step 1 failed: exit status: 2"), "{failed}");
    let log: Hash = failed.split(' ').nth(2).unwrap().parse().unwrap();
    let output = tmp.path().join("build.log");
    let (ok, _, err) = fetch(&tmp.path().join("f"), &boot_addr, log, &output);
    assert!(ok, "{err}");
    let text = std::fs::read_to_string(&output).unwrap();
    assert!(
        text.contains("cc: error: it broke") && text.contains("kiln: step 1 failed"),
        "{text}"
    );
}

#[test]
fn contributing_without_a_trust_rule_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, _, err) = kiln(&[
        "node",
        "--contribute",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--data-dir",
        tmp.path().to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("--trust-publisher KEY") && err.contains("--trust-any-recipe"),
        "{err}"
    );
    let _ = is_listen_line;
}

/// Regression: a worker used to hold one of its 16 assignment-stream
/// permits for the whole of each build, so with `--max-jobs` above 16 the
/// offers past 16 running builds were dropped unanswered.
#[test]
fn a_worker_answers_offers_past_sixteen_running_builds() {
    let tmp = tempfile::tempdir().unwrap();
    let (_boot, boot_addr) = start_bootstrap(&tmp.path().join("boot"));
    let (_w, peer) = worker(
        "worker",
        &tmp.path().join("w"),
        &boot_addr,
        &["--trust-any-recipe", "--max-jobs", "20"],
    );
    let recipe = concat!(env!("CARGO_MANIFEST_DIR"), "/recipes/sleep/recipe.toml");
    let mut command = Command::new(bin("kiln-assign"));
    command
        .arg(tmp.path().join("c"))
        .arg(&boot_addr)
        .arg(recipe)
        .arg("unsigned")
        .arg(&peer)
        .env("KILN_ASSIGN_JOBS", "18");
    let mut coordinator = Proc::spawn("assign", command);
    // Each build sleeps 20 s, and the offers come one after another: the
    // 17th and 18th arrive while 16 or more builds run.
    // An offer the worker drops is never answered, and this times out.
    let answered = std::cell::Cell::new(0);
    coordinator.wait_line(START, |l| {
        if l.starts_with("accepted ") || l.starts_with("refused ") {
            answered.set(answered.get() + 1);
        }
        answered.get() == 18
    });
    let accepted = coordinator
        .seen
        .iter()
        .filter(|l| **l == format!("accepted {peer}"))
        .count();
    assert_eq!(accepted, 18, "answers: {:?}", coordinator.seen);
}
