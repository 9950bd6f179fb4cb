//! Mail to requesters, with real processes on 127.0.0.1: the `.eml` outbox
//! a coordinator without `--smtp` writes, and a real SMTP server (aiosmtpd,
//! `tests/smtp/server.py`) that requires a login, goes down and comes back,
//! with coordinators killed in between. Every message is parsed.

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{mail_settled, outbox, recipients, Mail, Smtp};

use kiln_tests::farm::{peer_of, recipe, request, request_waiting, wait_json, wait_status, worker, BUILD};
use kiln_tests::{kiln, start_bootstrap, start_node, wait_until, Proc, START};
use serde_json::Value;

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(a, n)| (a.to_string(), *n)).collect()
}

#[test]
fn every_requester_is_mailed_once_with_what_they_need() {
    let tmp = tempfile::tempdir().unwrap();
    let (_boot, boot) = start_bootstrap(&tmp.path().join("boot"));
    let c_dir = tmp.path().join("c");
    let (c, _) = start_node("coordinator", &c_dir, &boot, &["--coordinator"]);
    let (_w, w_addr) = worker("worker", &tmp.path().join("w"), &boot, &[]);

    // One requester names a@ twice and b@; another joins the running build
    // with b@ and c@: three messages, one per address.
    let (ok, first, err) = request(
        &boot,
        &recipe("sleep"),
        "a@example.org",
        &["--email", "b@example.org", "--email", "a@example.org", "-o", "secs=3"],
    );
    assert!(ok, "{err}");
    assert_eq!(first["merged"], false, "{first}");
    let mut second = request_waiting(
        "second requester",
        &boot,
        &recipe("sleep"),
        "b@example.org",
        &["--email", "c@example.org", "-o", "secs=3"],
    );
    let done = wait_json(&mut second);
    assert_eq!(done["state"], "done", "{done}");
    let artifact = done["artifact"].as_str().unwrap();
    wait_status(&boot, "three messages delivered", |s| mail_settled(s, 3));
    c.wait_stderr(START, "mail written to the outbox folder");

    let mails = outbox(&c_dir);
    assert_eq!(
        recipients(&mails),
        counts(&[("a@example.org", 1), ("b@example.org", 1), ("c@example.org", 1)])
    );
    let builder = peer_of(&w_addr);
    for mail in &mails {
        assert!(
            mail.subject.contains("sleep 1 for os=linux") && mail.subject.ends_with("is built"),
            "{mail:?}"
        );
        for needle in [
            format!("Artifact:   {artifact}"),
            format!("kiln fetch {artifact}"),
            "secs=3".to_string(),
            format!("worker {builder}"),
            "Build time:".to_string(),
            "Signed envelope (hex):".to_string(),
        ] {
            assert!(mail.body.contains(&needle), "{needle:?} missing from {mail:?}");
        }
    }

    // A build that fails: its mail says what failed and quotes the log.
    let mut failing = request_waiting("failing", &boot, &recipe("fail"), "d@example.org", &[]);
    let failed = wait_json(&mut failing);
    assert_eq!(failed["state"], "failed", "{failed}");
    wait_status(&boot, "the failure mail delivered", |s| mail_settled(s, 4));
    let mails = outbox(&c_dir);
    let to_d: Vec<&Mail> = mails.iter().filter(|m| m.to == "d@example.org").collect();
    assert_eq!(to_d.len(), 1, "{mails:?}");
    let mail = to_d[0];
    assert!(
        mail.subject.contains("fail 1 for os=linux") && mail.subject.ends_with("failed"),
        "{mail:?}"
    );
    assert!(mail.body.contains("What failed:"), "{mail:?}");
    assert!(
        mail.body.contains("error: deliberate compile error"),
        "the log's last lines: {mail:?}"
    );

    // A malformed address is refused when the request is made.
    let (ok, _, err) = request(&boot, &recipe("sleep"), "a@example.org", &["--email", "b@@example.org"]);
    assert!(
        !ok && err.contains("\"b@@example.org\" is not an email address"),
        "{err}"
    );
}

#[test]
fn mail_waits_out_an_smtp_outage_and_a_coordinator_restart_and_goes_once() {
    let tmp = tempfile::tempdir().unwrap();
    let password = "pw-7f3a9c-secret";
    let mut smtp = Smtp::new(tmp.path().join("maildir"), Some(&format!("kiln:{password}")));
    let password_file = tmp.path().join("smtp-password");
    std::fs::write(&password_file, format!("{password}\n")).unwrap();
    let url = format!("smtp://kiln@127.0.0.1:{}", smtp.port);
    let args = [
        "--coordinator",
        "--smtp",
        &url,
        "--smtp-password-file",
        password_file.to_str().unwrap(),
        "--mail-from",
        "Kiln <kiln@example.org>",
    ];
    let (_boot, boot) = start_bootstrap(&tmp.path().join("boot"));
    let c_dir = tmp.path().join("c");
    let (mut c, _) = start_node("coordinator", &c_dir, &boot, &args);
    let (_w, _) = worker("worker", &tmp.path().join("w"), &boot, &[]);

    // The build ends while the SMTP server is down: the mail waits.
    let mut requester = request_waiting(
        "requester",
        &boot,
        &recipe("sleep"),
        "a@example.org",
        &["--email", "b@example.org", "-o", "secs=1"],
    );
    let done = wait_json(&mut requester);
    assert_eq!(done["state"], "done", "{done}");
    let down = wait_status(&boot, "two messages waiting, with the reason", |s| {
        s["mail"]["pending"] == 2 && s["mail"]["last_error"].is_string()
    });
    assert!(
        down["mail"]["last_error"].as_str().unwrap().contains("127.0.0.1"),
        "{down}"
    );

    // The coordinator dies and comes back: the outbox is still there.
    c.kill();
    let first_log = c.stderr();
    let (c2, _) = start_node("coordinator again", &c_dir, &boot, &args);
    wait_status(&boot, "the outbox restored", |s| s["mail"]["pending"] == 2);

    // The server comes back: each message goes out once.
    smtp.start();
    wait_status(&boot, "both messages delivered", |s| mail_settled(s, 2));
    let mails = smtp.mails();
    assert_eq!(
        recipients(&mails),
        counts(&[("a@example.org", 1), ("b@example.org", 1)])
    );
    for mail in &mails {
        assert_eq!(mail.envelope_to.as_deref(), Some(mail.to.as_str()), "{mail:?}");
        assert!(mail.subject.ends_with("is built"), "{mail:?}");
    }

    // The password shows nowhere.
    let (ok, shown, err) = kiln(&["status", "--bootstrap", &boot]);
    assert!(ok, "{err}");
    assert!(shown.contains("mail: 0 pending, 2 delivered"), "{shown}");
    for text in [first_log, c2.stderr(), shown] {
        assert!(!text.contains(password), "the SMTP password leaked: {text}");
    }
}

/// A running SMTP server, a bootstrap peer, two nodes that may coordinate
/// (both sending through that server) and a worker, once the coordinator
/// knows the worker.
struct TwoCoordinators {
    smtp: Smtp,
    url: String,
    _boot: Proc,
    boot: String,
    /// Each node's peer id and process.
    nodes: Vec<(String, Proc)>,
    /// The one worker (its log says which coordinator gave it a job).
    worker: Proc,
    /// The first status that lists the worker.
    status: Value,
}

impl TwoCoordinators {
    fn start(dir: &Path) -> TwoCoordinators {
        let mut smtp = Smtp::new(dir.join("maildir"), None);
        smtp.start();
        let url = format!("smtp://127.0.0.1:{}", smtp.port);
        let (boot_proc, boot) = start_bootstrap(&dir.join("boot"));
        let nodes = ["c1", "c2"]
            .iter()
            .map(|name| {
                let (proc, addr) = start_node(name, &dir.join(name), &boot, &["--smtp", &url]);
                (peer_of(&addr), proc)
            })
            .collect();
        let (worker, _) = worker("worker", &dir.join("w"), &boot, &[]);
        let status = wait_status(&boot, "an elected coordinator that knows the worker", |s| {
            s["workers"].as_array().is_some_and(|w| w.len() == 1)
        });
        TwoCoordinators {
            smtp,
            url,
            _boot: boot_proc,
            boot,
            nodes,
            worker,
            status,
        }
    }
}

#[test]
fn a_coordinator_that_takes_over_sends_what_the_old_one_had_not_and_nothing_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let farm = TwoCoordinators::start(tmp.path());
    let (mut smtp, boot, mut candidates) = (farm.smtp, farm.boot, farm.nodes);
    let before = farm.status;
    let elected = before["coordinator"].as_str().unwrap().to_string();
    let acting = candidates.iter().position(|(peer, _)| *peer == elected).unwrap();
    let standby = 1 - acting;

    // The first build's mail goes out, and the standby hears that it did.
    let mut first = request_waiting("first", &boot, &recipe("sleep"), "a@example.org", &["-o", "secs=1"]);
    assert_eq!(wait_json(&mut first)["state"], "done");
    wait_until(BUILD, "the first message received", || smtp.mails().len() == 1);
    wait_until(BUILD, "the standby to record the delivery", || {
        candidates[standby]
            .1
            .stderr()
            .contains("mail delivered by the coordinator")
    });

    // The second build's mail cannot go out; the standby has it queued.
    smtp.stop();
    let mut second = request_waiting(
        "second",
        &boot,
        &recipe("sleep"),
        "b@example.org",
        &["-o", "secs=1", "-o", "n=2"],
    );
    let done = wait_json(&mut second);
    assert_eq!(done["state"], "done", "{done}");
    let build_key = done["build_key"].as_str().unwrap().to_string();
    wait_status(&boot, "the second message waiting", |s| s["mail"]["pending"] == 1);
    wait_until(BUILD, "the standby to queue the second message", || {
        let log = candidates[standby].1.stderr();
        log.lines().any(|l| l.contains("mail queued") && l.contains(&build_key))
    });

    // The coordinator dies; the standby takes over and sends only what
    // was not sent.
    candidates[acting].1.kill();
    wait_status(&boot, "the standby coordinating", |s| {
        s["coordinator"] != elected.as_str() && s["mail"]["pending"] == 1
    });
    smtp.start();
    wait_status(&boot, "every message delivered", |s| mail_settled(s, 2));
    assert_eq!(
        recipients(&smtp.mails()),
        counts(&[("a@example.org", 1), ("b@example.org", 1)])
    );
}

/// A node that joins after a job ended used to have no outbox entry for
/// it: if the coordinator died before sending the mail, nobody sent it.
/// Now a standby's catch-up adopts the coordinator's outbox (which
/// messages wait, which went out), and sends what waits when it takes
/// over, once.
#[test]
fn a_standby_that_joined_after_the_job_ended_sends_its_mail_when_the_coordinator_dies() {
    let tmp = tempfile::tempdir().unwrap();
    let mut smtp = Smtp::new(tmp.path().join("maildir"), None);
    let url = format!("smtp://127.0.0.1:{}", smtp.port);
    let (_boot, boot) = start_bootstrap(&tmp.path().join("boot"));
    let (mut first, first_addr) = start_node("first coordinator", &tmp.path().join("c1"), &boot, &["--smtp", &url]);
    let (_w, _) = worker("worker", &tmp.path().join("w"), &boot, &[]);
    wait_status(&boot, "the first node coordinating, with the worker", |s| {
        s["coordinator"] == peer_of(&first_addr).as_str() && s["workers"].as_array().is_some_and(|w| w.len() == 1)
    });

    // The SMTP server is down: the job ends and its mail waits.
    let mut requester = request_waiting(
        "requester",
        &boot,
        &recipe("sleep"),
        "late@example.org",
        &["-o", "secs=1"],
    );
    assert_eq!(wait_json(&mut requester)["state"], "done");
    wait_status(&boot, "the message waiting", |s| s["mail"]["pending"] == 1);

    // A second node joins only now, catches up, then the first dies.
    let (second, _) = start_node("second coordinator", &tmp.path().join("c2"), &boot, &["--smtp", &url]);
    second.wait_stderr(BUILD, "caught up with the coordinator's outbox");
    assert!(second.stderr().contains("messages=1"), "{}", second.stderr());
    first.kill();
    smtp.start();
    wait_status(&boot, "the second node coordinating, the message sent", |s| {
        s["coordinator"] != peer_of(&first_addr).as_str() && mail_settled(s, 1)
    });
    assert_eq!(recipients(&smtp.mails()), counts(&[("late@example.org", 1)]));
}

/// A job building under the acting node of `farm`, which is then killed;
/// the other node settles the job and mails `email`. The killed node's
/// index and peer id, and the requester's final answer.
fn settled_by_the_standby(farm: &mut TwoCoordinators, email: &str) -> (usize, String, Value) {
    let boot = farm.boot.clone();
    let mut requester = request_waiting("requester", &boot, &recipe("sleep"), email, &["-o", "secs=8"]);
    // The worker's own log says when it took the job, and from which
    // coordinator (polling the status for the "building" phase missed all
    // 8 s of it in one CI run).
    let taken = |log: &str| {
        log.lines()
            .find(|l| l.contains("assignment") && l.contains("reply=Accepted"))
            .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("peer=")))
            .map(str::to_string)
    };
    wait_until(BUILD, "the worker to take the job", || {
        taken(&farm.worker.stderr()).is_some()
    });
    let first = taken(&farm.worker.stderr()).unwrap();
    let a = farm.nodes.iter().position(|(peer, _)| *peer == first).unwrap();
    farm.nodes[a].1.kill();
    let done = wait_json(&mut requester);
    assert_eq!(done["state"], "done", "{done}");
    wait_status(&boot, "the other node's mail sent", |s| {
        s["coordinator"] != first.as_str() && mail_settled(s, 1)
    });
    (a, first, done)
}

/// The stale job of a chaos soak: a coordinator killed with a job in
/// flight came back after the other node had settled that job, restored it
/// from disk as "building", and kept it open for good (mailing again if it
/// rebuilt it). Now its catch-up asks the acting coordinator where such a
/// job stands and settles it, so when it acts again nothing is open and
/// nobody is mailed twice.
#[test]
fn a_coordinator_back_after_its_job_was_settled_elsewhere_does_not_reopen_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut farm = TwoCoordinators::start(tmp.path());
    let (a, first, _) = settled_by_the_standby(&mut farm, "once@example.org");
    let b = 1 - a;
    let (smtp, boot, url, mut nodes) = (farm.smtp, farm.boot, farm.url, farm.nodes);

    // The first node comes back and settles the job it kept: from the
    // DHT's record as it restores it, or else from the coordinator's word
    // in its catch-up, whichever answers first.
    let name = if a == 0 { "c1" } else { "c2" };
    let (back, _) = start_node("back", &tmp.path().join(name), &boot, &["--smtp", &url]);
    wait_until(BUILD, "the node back to settle the job it kept", || {
        let log = back.stderr();
        log.contains("an open job kept here had ended at the coordinator; settled here too")
            || log.contains("a job restored from disk was built while this node was down; settled from its record")
    });
    back.wait_stderr(BUILD, "caught up with the coordinator's outbox");
    nodes[b].1.kill();
    let acting = wait_status(&boot, "the first node coordinating again", |s| {
        s["coordinator"] == first.as_str()
    });
    assert_eq!(acting["jobs_total"], 0, "nothing open: {acting}");
    wait_status(&boot, "its outbox knows the mail went", |s| mail_settled(s, 1));
    assert_eq!(recipients(&smtp.mails()), counts(&[("once@example.org", 1)]));
}

/// The neighbour of the test above with no one to ask: the node that
/// settled the job is gone too when the first comes back alone. It finds
/// the job's record in the DHT before it assigns it and settles it from
/// there: not built again, not left open. No living node knows whether the
/// mail went, so it is composed again (mail is at least once: a message
/// the dead node never sent is not lost).
#[test]
fn a_coordinator_back_alone_settles_a_job_built_meanwhile_from_the_dht() {
    let tmp = tempfile::tempdir().unwrap();
    let mut farm = TwoCoordinators::start(tmp.path());
    let (a, first, done) = settled_by_the_standby(&mut farm, "alone@example.org");
    let b = 1 - a;
    let (smtp, boot, url, mut nodes) = (farm.smtp, farm.boot, farm.url, farm.nodes);
    wait_until(BUILD, "the message received", || smtp.mails().len() == 1);
    nodes[b].1.kill();

    // Back alone: its kept job is checked against the DHT, not rebuilt.
    let name = if a == 0 { "c1" } else { "c2" };
    let (back, _) = start_node("back", &tmp.path().join(name), &boot, &["--smtp", &url]);
    back.wait_stderr(
        BUILD,
        "a job restored from disk was built while this node was down; settled from its record",
    );
    let acting = wait_status(&boot, "the first node coordinating again", |s| {
        s["coordinator"] == first.as_str()
    });
    assert_eq!(acting["jobs_total"], 0, "nothing open: {acting}");
    let recent = acting["recent"].as_array().unwrap();
    assert!(
        recent
            .iter()
            .any(|j| j["build_key"] == done["build_key"] && j["state"] == "done"),
        "{acting}"
    );
    wait_status(&boot, "its outbox settled", |s| s["mail"]["pending"] == 0);
    assert!(
        !back.stderr().contains("assigning"),
        "not built again: {}",
        back.stderr()
    );
    wait_until(BUILD, "the message composed again", || smtp.mails().len() == 2);
    assert_eq!(recipients(&smtp.mails()), counts(&[("alone@example.org", 2)]));
}

#[test]
fn a_fork_bomb_is_stopped_at_the_workers_process_limit_and_the_mail_names_the_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let (_boot, boot) = start_bootstrap(&tmp.path().join("boot"));
    let c_dir = tmp.path().join("c");
    let (_c, _) = start_node("coordinator", &c_dir, &boot, &["--coordinator"]);
    let (w, _) = worker("worker", &tmp.path().join("w"), &boot, &["--max-build-processes", "32"]);
    w.wait_stderr(START, "at most 32 processes per build");

    let started = std::time::Instant::now();
    let mut bomb = request_waiting("fork bomb", &boot, &recipe("forkbomb"), "e@example.org", &[]);
    let failed = wait_json(&mut bomb);
    assert_eq!(failed["state"], "failed", "{failed}");
    let reason = failed["reason"].as_str().unwrap();
    assert!(reason.contains("more than 32 processes at once"), "{reason}");
    // Far inside the recipe's 10 minute time limit, with every attempt.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(90),
        "{:?}",
        started.elapsed()
    );
    wait_status(&boot, "the failure mail written", |s| mail_settled(s, 1));
    let mails = outbox(&c_dir);
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert!(
        mails[0].body.contains("more than 32 processes at once"),
        "the mail does not name the limit: {:?}",
        mails[0]
    );
    // The worker takes the next job.
    let mut next = request_waiting("next", &boot, &recipe("sleep"), "f@example.org", &["-o", "secs=1"]);
    let done = wait_json(&mut next);
    assert_eq!(done["state"], "done", "{done}");
}
