//! The coordinator and the request flow, with real processes on 127.0.0.1:
//! a bootstrap peer, coordinators, workers building in their sandboxes, and
//! `kiln request` / `kiln status` as users run them.

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use kiln_tests::farm::{peer_of, recipe, request, request_waiting, status, wait_json, wait_status, worker, BUILD};
use kiln_tests::{bin, fetch, kiln, poll_until, start_bootstrap, start_node, wait_until, Proc, START};
use serde_json::Value;

fn open_job<'a>(status: &'a Value, build_key: &str) -> Option<&'a Value> {
    status["jobs"].as_array()?.iter().find(|j| j["build_key"] == build_key)
}

fn unpack(archive: &Path, into: &Path) {
    tar::Archive::new(std::fs::File::open(archive).unwrap())
        .unpack(into)
        .unwrap();
}

#[test]
fn a_request_is_built_once_merged_with_its_twin_replicated_and_then_answered_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (_boot, boot) = start_bootstrap(&tmp.path().join("boot"));
    let (mut c, _) = start_node("coordinator", &tmp.path().join("c"), &boot, &["--coordinator"]);
    let (mut w1, _) = worker("worker 1", &tmp.path().join("w1"), &boot, &[]);
    let (mut w2, _) = worker("worker 2", &tmp.path().join("w2"), &boot, &[]);

    // Two requesters (each its own key) ask for the same build: the second
    // joins the first.
    let key_dir = |name: &str| tmp.path().join(name).to_str().unwrap().to_string();
    let (a, b, c_key) = (key_dir("a"), key_dir("b"), key_dir("c-key"));
    let (ok, first, err) = request(
        &boot,
        &recipe("sleep"),
        "a@example.org",
        &["-o", "secs=3", "--data-dir", &a],
    );
    assert!(ok, "{err}");
    assert_eq!(first["merged"], false, "{first}");
    let build_key = first["build_key"].as_str().unwrap().to_string();
    let (ok, second, err) = request(
        &boot,
        &recipe("sleep"),
        "b@example.org",
        &["-o", "secs=3", "--data-dir", &b],
    );
    assert!(ok, "{err}");
    assert_eq!(second["build_key"], build_key.as_str());
    assert_eq!(second["merged"], true, "{second}");
    let mut follower = request_waiting(
        "follower",
        &boot,
        &recipe("sleep"),
        "c@example.org",
        &["-o", "secs=3", "--data-dir", &c_key],
    );
    let done = wait_json(&mut follower);
    assert_eq!(done["state"], "done", "{done}");
    follower.wait_stderr(START, "building on worker");
    let status = status(&boot);
    let recent = status["recent"].as_array().unwrap();
    assert_eq!(recent.len(), 1, "built once: {status}");
    assert_eq!(recent[0]["requesters"], 3, "every requester kept: {status}");
    // Once the coordinator holds a copy, the builder stops pinning its own.
    wait_until(BUILD, "the builder to release its pinned artifact", || {
        [&w1, &w2]
            .iter()
            .any(|w| w.stderr().contains("another peer holds this build now"))
    });

    // The C recipe, fetched as it ends; the program runs.
    let out = tmp.path().join("hello.tar");
    let mut hello = request_waiting(
        "hello",
        &boot,
        &recipe("hello-c"),
        "a@example.org",
        &["-o", "greeting=loud", "--fetch", out.to_str().unwrap()],
    );
    let built = wait_json(&mut hello);
    assert_eq!(built["state"], "done", "{built}");
    hello.wait_stderr(START, "artifact written to");
    unpack(&out, &tmp.path().join("hello"));
    let run = Command::new(tmp.path().join("hello/hello")).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&run.stdout), "HELLO FROM KILN!\n");

    // Both workers leave: the coordinator's replica still serves the artifact.
    w1.kill();
    w2.kill();
    let artifact = built["artifact"].as_str().unwrap();
    let again = tmp.path().join("again.tar");
    let (ok, _, err) = fetch(&tmp.path().join("f"), &boot, artifact, &again);
    assert!(ok, "fetch after the builder left: {err}");

    // Asked again: answered from the DHT record, without building.
    let (ok, existing, err) = request(&boot, &recipe("hello-c"), "d@example.org", &["-o", "greeting=loud"]);
    assert!(ok, "{err}");
    assert_eq!(existing["state"], "done", "{existing}");
    assert_eq!(existing["artifact"], artifact);
    assert_eq!(existing["attestation"]["build_key"], built["build_key"]);

    // Version 1.1.0 of the recipe: a new build, unless the requester
    // accepts the 1.x build that exists.
    let newer = tmp.path().join("hello-1.1");
    std::fs::create_dir_all(newer.join("src")).unwrap();
    let source = Path::new(&recipe("hello-c")).parent().unwrap().to_path_buf();
    std::fs::copy(source.join("src/hello.c"), newer.join("src/hello.c")).unwrap();
    let text = std::fs::read_to_string(source.join("recipe.toml")).unwrap();
    std::fs::write(
        newer.join("recipe.toml"),
        text.replace("version = \"1.0.0\"", "version = \"1.1.0\""),
    )
    .unwrap();
    let newer = newer.join("recipe.toml");
    let (ok, accepted, err) = request(
        &boot,
        newer.to_str().unwrap(),
        "d@example.org",
        &["-o", "greeting=loud", "--accept-versions", ">=1.0, <2"],
    );
    assert!(ok, "{err}");
    assert_eq!(accepted["state"], "done", "{accepted}");
    assert_eq!(accepted["artifact"], artifact);
    let (ok, fresh, err) = request(
        &boot,
        newer.to_str().unwrap(),
        "d@example.org",
        &["-o", "greeting=loud"],
    );
    assert!(ok, "{err}");
    assert_ne!(fresh["state"], "done", "a new version is a new build: {fresh}");
    assert_ne!(fresh["build_key"], built["build_key"]);
    let (ok, options, _) = kiln(&[
        "recipe",
        "options",
        existing["attestation"]["recipe_id"].as_str().unwrap(),
        "--bootstrap",
        &boot,
    ]);
    assert!(ok && options.contains("allowed: plain, loud"), "{options}");

    // Even with no coordinator at all, the DHT record answers.
    c.kill();
    let (ok, existing, err) = request(&boot, &recipe("hello-c"), "e@example.org", &["-o", "greeting=loud"]);
    assert!(ok, "{err}");
    assert_eq!(existing["artifact"], artifact);
}

#[test]
fn a_job_no_worker_matches_waits_says_why_and_runs_when_one_joins() {
    let tmp = tempfile::tempdir().unwrap();
    let (_boot, boot) = start_bootstrap(&tmp.path().join("boot"));
    let (c, _) = start_node("coordinator", &tmp.path().join("c"), &boot, &["--coordinator"]);
    let (_w1, _) = worker("worker 1", &tmp.path().join("w1"), &boot, &[]);
    wait_status(&boot, "the worker to be known", |s| {
        s["workers"].as_array().is_some_and(|w| w.len() == 1)
    });

    let (ok, queued, err) = request(
        &boot,
        &recipe("sleep"),
        "a@example.org",
        &["-o", "secs=1", "--target", "site=lab"],
    );
    assert!(ok, "{err}");
    let build_key = queued["build_key"].as_str().unwrap().to_string();
    let waiting = wait_status(&boot, "a reason to wait", |s| {
        open_job(s, &build_key).is_some_and(|j| j["waiting_because"].is_string())
    });
    let why = open_job(&waiting, &build_key).unwrap()["waiting_because"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(why.contains("no worker matches") && why.contains("site"), "{why}");
    let (ok, text, _) = kiln(&["status", "--bootstrap", &boot]);
    assert!(ok && text.contains("no worker matches"), "{text}");

    // A peer that does not coordinate gossips that the job failed: the
    // coordinator ignores it, and the job stays queued.
    let mut command = Command::new(bin("kiln-evil"));
    command
        .args(["settle", "--data-dir"])
        .arg(tmp.path().join("evil"))
        .args(["--bootstrap", &boot, &build_key]);
    let mut evil = Proc::spawn("evil", command);
    evil.wait_line(START, |l| l == "settlement sent");
    c.wait_stderr(START, "settlement from a peer that does not coordinate; ignored");
    evil.kill();
    assert!(open_job(&status(&boot), &build_key).is_some(), "the job was dropped");

    let mut follower = request_waiting(
        "follower",
        &boot,
        &recipe("sleep"),
        "b@example.org",
        &["-o", "secs=1", "--target", "site=lab"],
    );
    let (_w2, _) = worker("lab worker", &tmp.path().join("w2"), &boot, &["--label", "site=lab"]);
    let done = wait_json(&mut follower);
    assert_eq!(done["state"], "done", "{done}");
}

#[test]
fn a_worker_killed_mid_build_loses_the_job_to_another_worker() {
    let tmp = tempfile::tempdir().unwrap();
    let (_boot, boot) = start_bootstrap(&tmp.path().join("boot"));
    let (_c, _) = start_node("coordinator", &tmp.path().join("c"), &boot, &["--coordinator"]);
    let (w1, w1_addr) = worker("worker 1", &tmp.path().join("w1"), &boot, &[]);
    let (w2, w2_addr) = worker("worker 2", &tmp.path().join("w2"), &boot, &[]);
    let mut workers = vec![(peer_of(&w1_addr), w1), (peer_of(&w2_addr), w2)];
    wait_status(&boot, "both workers known", |s| {
        s["workers"].as_array().is_some_and(|w| w.len() == 2)
    });

    // Long enough that polling `kiln status` sees it building even when
    // the machine is loaded (each poll is a new client process).
    let mut follower = request_waiting("follower", &boot, &recipe("sleep"), "a@example.org", &["-o", "secs=20"]);
    let building = wait_status(&boot, "the job to be assigned", |s| {
        s["jobs"]
            .as_array()
            .is_some_and(|j| j.len() == 1 && j[0]["state"] == "building")
    });
    let victim = building["jobs"][0]["worker"].as_str().unwrap().to_string();
    let index = workers.iter().position(|(peer, _)| *peer == victim).unwrap();
    let (_, mut killed) = workers.remove(index);
    killed.kill();
    let done = wait_json(&mut follower);
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(
        done["attestation"]["worker_peer"],
        workers[0].0.as_str(),
        "built by the survivor"
    );
}

#[test]
fn a_failing_build_is_retried_on_the_other_worker_then_reported_with_its_log() {
    let tmp = tempfile::tempdir().unwrap();
    let (_boot, boot) = start_bootstrap(&tmp.path().join("boot"));
    let (_c, _) = start_node("coordinator", &tmp.path().join("c"), &boot, &["--coordinator"]);
    let (_w1, _) = worker("worker 1", &tmp.path().join("w1"), &boot, &[]);
    let (_w2, _) = worker("worker 2", &tmp.path().join("w2"), &boot, &[]);
    wait_status(&boot, "both workers known", |s| {
        s["workers"].as_array().is_some_and(|w| w.len() == 2)
    });

    let mut follower = request_waiting("follower", &boot, &recipe("fail"), "a@example.org", &[]);
    let failed = wait_json(&mut follower);
    assert_eq!(failed["state"], "failed", "{failed}");
    assert_eq!(failed["attempts"], 2, "tried once on each worker: {failed}");
    let reason = failed["reason"].as_str().unwrap();
    assert!(reason.contains("step 2 failed"), "{reason}");
    let log = failed["log"].as_str().unwrap();
    let saved = tmp.path().join("build.log");
    let (ok, _, err) = fetch(&tmp.path().join("f"), &boot, log, &saved);
    assert!(ok, "{err}");
    assert!(std::fs::read_to_string(&saved)
        .unwrap()
        .contains("error: deliberate compile error"));
    let recent = status(&boot)["recent"].clone();
    assert_eq!(recent[0]["state"], "failed", "{recent}");
}

#[test]
fn a_coordinator_killed_with_jobs_queued_and_running_loses_nothing_on_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let (_boot, boot) = start_bootstrap(&tmp.path().join("boot"));
    let (mut c, _) = start_node("coordinator", &tmp.path().join("c"), &boot, &["--coordinator"]);
    let (_w, _) = worker("worker", &tmp.path().join("w"), &boot, &[]);
    wait_status(&boot, "the worker known", |s| {
        s["workers"].as_array().is_some_and(|w| w.len() == 1)
    });
    let mut keys = Vec::new();
    for n in ["1", "2"] {
        let (ok, queued, err) = request(
            &boot,
            &recipe("sleep"),
            "a@example.org",
            &["-o", "secs=5", "-o", &format!("n={n}")],
        );
        assert!(ok, "{err}");
        keys.push(queued["build_key"].as_str().unwrap().to_string());
    }
    wait_status(&boot, "one running, one queued", |s| {
        let states: Vec<&Value> = s["jobs"].as_array().unwrap().iter().map(|j| &j["state"]).collect();
        states.len() == 2 && states.contains(&&Value::from("building")) && states.contains(&&Value::from("queued"))
    });
    c.kill();
    let (_c, _) = start_node("coordinator again", &tmp.path().join("c"), &boot, &["--coordinator"]);
    let after = status(&boot);
    for key in &keys {
        let known = open_job(&after, key).is_some()
            || after["recent"]
                .as_array()
                .unwrap()
                .iter()
                .any(|j| j["build_key"] == key.as_str());
        assert!(known, "job {key} lost in the restart: {after}");
    }
    wait_status(&boot, "both jobs done", |s| {
        s["jobs_total"] == 0
            && s["recent"]
                .as_array()
                .is_some_and(|r| r.iter().filter(|j| j["state"] == "done").count() == 2)
    });
}

#[test]
fn when_the_elected_coordinator_dies_another_takes_over_and_every_job_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let (_boot, boot) = start_bootstrap(&tmp.path().join("boot"));
    let mut candidates: Vec<(String, Proc)> = ["c1", "c2", "c3"]
        .iter()
        .map(|name| {
            let (proc, addr) = start_node(name, &tmp.path().join(name), &boot, &[]);
            (peer_of(&addr), proc)
        })
        .collect();
    let (_w, _) = worker("worker", &tmp.path().join("w"), &boot, &[]);
    let before = wait_status(&boot, "an elected coordinator that knows the worker", |s| {
        s["workers"].as_array().is_some_and(|w| w.len() == 1)
    });
    let elected = before["coordinator"].as_str().unwrap().to_string();
    assert_eq!(before["pinned"], false);

    let mut followers = Vec::new();
    for n in ["1", "2"] {
        let (ok, _, err) = request(
            &boot,
            &recipe("sleep"),
            "a@example.org",
            &["-o", "secs=3", "-o", &format!("n={n}")],
        );
        assert!(ok, "{err}");
    }
    for n in ["1", "2"] {
        followers.push(request_waiting(
            &format!("follower {n}"),
            &boot,
            &recipe("sleep"),
            "b@example.org",
            &["-o", "secs=3", "-o", &format!("n={n}")],
        ));
    }
    let running = wait_status(&boot, "a job running", |s| {
        s["jobs"]
            .as_array()
            .is_some_and(|j| j.iter().any(|j| j["state"] == "building"))
    });
    // Status shows the worker building that job.
    let job = running["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["state"] == "building")
        .unwrap();
    let shown = &running["workers"][0];
    assert_eq!(shown["state"], "building", "{running}");
    assert_eq!(shown["jobs"][0], job["build_key"], "{running}");
    let index = candidates.iter().position(|(peer, _)| *peer == elected).unwrap();
    candidates[index].1.kill();
    let after = wait_status(&boot, "a new coordinator", |s| s["coordinator"] != elected.as_str());
    assert_ne!(after["coordinator"], elected.as_str());
    for follower in &mut followers {
        let done = wait_json(follower);
        assert_eq!(done["state"], "done", "{done}");
    }
}

#[test]
fn a_node_that_starts_after_jobs_were_queued_catches_up_and_completes_them_when_the_coordinator_dies() {
    let tmp = tempfile::tempdir().unwrap();
    let (_boot, boot) = start_bootstrap(&tmp.path().join("boot"));
    let (mut first, first_addr) = start_node("first", &tmp.path().join("first"), &boot, &[]);
    // No worker yet: the jobs stay queued.
    let mut keys = Vec::new();
    for n in ["1", "2"] {
        let (ok, queued, err) = request(
            &boot,
            &recipe("sleep"),
            "a@example.org",
            &["-o", "secs=1", "-o", &format!("n={n}")],
        );
        assert!(ok, "{err}");
        keys.push(queued["build_key"].as_str().unwrap().to_string());
    }
    assert_eq!(status(&boot)["coordinator"], peer_of(&first_addr).as_str());

    // A second eligible node starts now: gossip alone would not tell it of
    // these jobs.
    let (late, _) = start_node("late", &tmp.path().join("late"), &boot, &[]);
    late.wait_stderr(BUILD, "caught up with the coordinator's open jobs");
    wait_until(BUILD, "the late node to hold both jobs' inputs", || {
        let log = late.stderr();
        keys.iter().all(|key| {
            log.lines()
                .any(|l| l.contains("holding the inputs of a job") && l.contains(key.as_str()))
        })
    });

    first.kill();
    let (_w, _) = worker("worker", &tmp.path().join("w"), &boot, &[]);
    wait_status(&boot, "both jobs done by the late node", |s| {
        s["coordinator"] != peer_of(&first_addr).as_str()
            && s["jobs_total"] == 0
            && s["recent"]
                .as_array()
                .is_some_and(|r| r.iter().filter(|j| j["state"] == "done").count() == 2)
    });
}

#[test]
fn bad_requests_are_refused_with_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let (_boot, boot) = start_bootstrap(&tmp.path().join("boot"));
    let (ok, _, err) = request(&boot, &recipe("hello-c"), "not-an-address", &[]);
    assert!(
        !ok && err.contains("\"not-an-address\" is not an email address"),
        "{err}"
    );
    let (ok, _, err) = request(&boot, &recipe("hello-c"), "a@example.org", &["-o", "opt=O9"]);
    assert!(!ok && err.contains("O0, O1, O2, Os"), "{err}");
    let (ok, _, err) = request(&boot, &recipe("hello-c"), "a@example.org", &["-o", "colour=red"]);
    assert!(!ok && err.contains("colour"), "{err}");
    // No coordinator anywhere: said plainly, after the election time.
    let (ok, _, err) = request(&boot, &recipe("hello-c"), "a@example.org", &[]);
    assert!(!ok && err.contains("kiln node --coordinator"), "{err}");
}

#[test]
fn a_requester_following_a_build_sees_its_log_as_it_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let (_boot, boot) = start_bootstrap(&tmp.path().join("boot"));
    let (_c, _) = start_node("coordinator", &tmp.path().join("c"), &boot, &["--coordinator"]);
    let (_w, _) = worker("worker", &tmp.path().join("w"), &boot, &[]);
    let mut follower = request_waiting("follower", &boot, &recipe("chatty"), "a@example.org", &[]);
    let done = wait_json(&mut follower);
    assert_eq!(done["state"], "done", "{done}");
    let seen = follower.stderr();
    assert!(seen.contains("kiln: log: $ sleep 5"), "{seen}");
}

/// Every node that may coordinate used to heartbeat every second and fetch
/// every job's inputs, so each node's traffic grew with the network. Now
/// a bounded coordination set does that (here 2 of 3 eligible nodes): the
/// third is a reserve that sends nothing on the coordinator topic and
/// holds no job input, and steps in when a member dies.
/// How often a test asks several nodes for `kiln status --node`.
const POLL: std::time::Duration = std::time::Duration::from_millis(250);

#[test]
fn only_the_coordination_set_heartbeats_and_holds_inputs_and_a_reserve_refills_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (_boot, boot) = start_bootstrap(&tmp.path().join("boot"));
    let names = ["e1", "e2", "e3"];
    let mut nodes: Vec<(String, Proc)> = names
        .iter()
        .map(|name| {
            let (proc, addr) = start_node(name, &tmp.path().join(name), &boot, &["--coordination-set", "2"]);
            (peer_of(&addr), proc)
        })
        .collect();
    let (_w, _) = worker("worker", &tmp.path().join("w"), &boot, &[]);
    let dirs: Vec<std::path::PathBuf> = names.iter().map(|n| tmp.path().join(n)).collect();
    let roles = |dirs: &[std::path::PathBuf]| -> Vec<Value> {
        dirs.iter()
            .map(|d| kiln_tests::farm::try_node_status(d).unwrap_or(Value::Null))
            .collect()
    };
    let mut views = Vec::new();
    // Settled: one of each role, and every node hears the same set of two
    // (so the reserve finds the set full and stays out).
    poll_until(BUILD, POLL, "one coordinator, one standby and one reserve", || {
        views = roles(&dirs);
        let mut seen: Vec<&str> = views.iter().map(|v| v["role"].as_str().unwrap_or("")).collect();
        seen.sort_unstable();
        let set = &views[0]["coordination_set"];
        seen == ["coordinator", "reserve", "standby"]
            && set.as_array().is_some_and(|s| s.len() == 2)
            && views.iter().all(|v| &v["coordination_set"] == set)
    });
    let reserve = views.iter().position(|v| v["role"] == "reserve").unwrap();
    let acting = views.iter().position(|v| v["role"] == "coordinator").unwrap();
    let beats_before = views[reserve]["heartbeats_sent"].as_u64().unwrap();
    wait_status(&boot, "the coordinator knows the worker", |s| {
        s["workers"].as_array().is_some_and(|w| w.len() == 1)
    });

    // A job runs to the end; the set holds its inputs, the reserve does not.
    let (ok, done, err) = request(&boot, &recipe("sleep"), "a@example.org", &["--wait", "-o", "secs=1"]);
    assert!(ok && done["state"] == "done", "{done} {err}");
    let after = roles(&dirs);
    assert_eq!(after[reserve]["role"], "reserve", "{after:?}");
    assert_eq!(
        after[reserve]["heartbeats_sent"], beats_before,
        "a reserve sends no heartbeat: {after:?}"
    );
    assert_eq!(
        after[reserve]["store"]["blobs"], 0,
        "a reserve holds no job input: {after:?}"
    );
    let standby = 3 - reserve - acting;
    assert!(after[standby]["store"]["blobs"].as_u64().unwrap() > 0, "{after:?}");
    // Each node is connected at least to the bootstrap peer.
    assert!(
        after
            .iter()
            .all(|v| v["connected_peers"].as_u64().is_some_and(|n| n >= 1)),
        "{after:?}"
    );

    // The coordinator dies: the standby takes over, the reserve steps in.
    nodes[acting].1.kill();
    poll_until(BUILD, POLL, "the set refilled", || {
        let now: Vec<Value> = [reserve, standby]
            .iter()
            .map(|i| kiln_tests::farm::try_node_status(&dirs[*i]).unwrap_or(Value::Null))
            .collect();
        now[0]["role"] == "standby" && now[1]["role"] == "coordinator"
    });
    let (ok, done, err) = request(
        &boot,
        &recipe("sleep"),
        "b@example.org",
        &["--wait", "-o", "secs=1", "-o", "n=2"],
    );
    assert!(ok && done["state"] == "done", "{done} {err}");
    let stepped_in = kiln_tests::farm::try_node_status(&dirs[reserve]).unwrap();
    assert!(
        stepped_in["heartbeats_sent"].as_u64().unwrap() > beats_before,
        "{stepped_in}"
    );
    poll_until(
        BUILD,
        POLL,
        "the node that stepped in to hold the new job's inputs",
        || {
            kiln_tests::farm::try_node_status(&dirs[reserve])
                .is_some_and(|s| s["store"]["blobs"].as_u64().unwrap_or(0) > 0)
        },
    );
    // Each requester was mailed once, by one member of the set.
    let mailed = |to: &str| -> usize {
        dirs.iter()
            .filter_map(|d| std::fs::read_dir(d.join("outbox")).ok())
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .filter(|mail| mail.contains(&format!("To: {to}")))
            .count()
    };
    poll_until(BUILD, POLL, "the second requester mailed", || {
        mailed("b@example.org") > 0
    });
    assert_eq!(mailed("a@example.org"), 1, "the first requester is mailed once");
    assert_eq!(mailed("b@example.org"), 1, "the second requester is mailed once");
}
