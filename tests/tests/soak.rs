//! The chaos soak: a bootstrap, two nodes that may coordinate (both with a
//! real SMTP server), three workers and a stream of jobs, while the acting
//! coordinator or a random worker is SIGKILLed and restarted on a seeded
//! schedule. At the end: every job done, neither coordinator-capable node
//! lists any of them as open, every requester mailed exactly once, no mail
//! pending, and every artifact fetches by hash, verified, with the bytes
//! its build wrote.
//!
//! The test command runs a short soak with a fixed seed. A long one, with
//! a random seed it prints, is `scripts/soak.sh` (see BENCHMARKS.md); it
//! runs this same test with `KILN_SOAK_SECS` (the chaos window in seconds),
//! `KILN_SOAK_SEED` (a number, or `random`) and `KILN_SOAK_JOBS`.

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{recipients, Smtp};
use kiln_tests::farm::{recipe, request, try_node_status, worker};
use kiln_tests::{kiln, start_bootstrap, start_node, Proc};
use serde_json::Value;

/// The short soak's seed and length: long enough for several kills of
/// each kind with jobs running, short enough for every CI run.
const SEED: u64 = 20_261_201;
const CHAOS_SECS: u64 = 80;
const JOBS: usize = 8;
/// A killed node comes back this long after its kill (part of the fault
/// schedule, not a wait for an event).
const RESTART_AFTER: Duration = Duration::from_secs(3);
/// Between two kills: at least, and the span of the random part.
const KILL_GAP_MS_MIN: u64 = 10_000;
const KILL_GAP_MS_SPAN: u64 = 6_000;
/// How long the farm may take to settle after the last kill.
const SETTLE_MAX: Duration = Duration::from_secs(240);

/// xorshift64*: a small seeded generator, so a failing schedule replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn seed() -> u64 {
    match std::env::var("KILN_SOAK_SEED").as_deref() {
        Ok("random") => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            (nanos as u64) | 1
        }
        Ok(number) => number.parse().expect("KILN_SOAK_SEED: a number or `random`"),
        Err(_) => SEED,
    }
}

/// One node of the farm, killed and restarted on its own data dir.
struct Member {
    name: String,
    dir: PathBuf,
    args: Vec<String>,
    coordinates: bool,
    proc: Option<Proc>,
}

impl Member {
    fn start(&mut self, boot: &str) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let (proc, _) = if self.coordinates {
            start_node(&self.name, &self.dir, boot, &args)
        } else {
            worker(&self.name, &self.dir, boot, &args)
        };
        self.proc = Some(proc);
    }

    fn kill(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill();
        }
    }
}

/// What the soak did and found, printed whatever the outcome.
#[derive(Debug, Default)]
struct Figures {
    seed: u64,
    jobs: usize,
    coordinator_kills: u32,
    worker_kills: u32,
    lost_jobs: usize,
    duplicate_mails: usize,
    missing_mails: usize,
    settle_secs: f64,
}

impl Figures {
    fn line(&self) -> String {
        format!(
            "soak: seed {} jobs {} kills {} (coordinator {}, worker {}) lost jobs {} duplicate mails {} missing mails {} settled {:.1} s after the last kill",
            self.seed,
            self.jobs,
            self.coordinator_kills + self.worker_kills,
            self.coordinator_kills,
            self.worker_kills,
            self.lost_jobs,
            self.duplicate_mails,
            self.missing_mails,
            self.settle_secs
        )
    }
}

/// Job `i`'s options: distinct builds of the sleep recipe.
fn job_options(i: usize) -> (String, String) {
    let secs = ["3", "5", "1", "8"][(i / 20) % 4];
    (secs.to_string(), (i % 20 + 1).to_string())
}

fn address(i: usize) -> String {
    format!("soak-{i}@example.org")
}

/// Submits job `i` as a user would: again if no coordinator answered (one
/// may have just been killed). Its build key.
fn submit(boot: &str, i: usize) -> String {
    let (secs, n) = job_options(i);
    let extra = ["-o", &format!("secs={secs}"), "-o", &format!("n={n}")];
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (ok, answer, err) = request(boot, &recipe("sleep"), &address(i), &extra);
        if let (true, Some(key)) = (ok, answer["build_key"].as_str()) {
            return key.to_string();
        }
        assert!(Instant::now() < deadline, "job {i} was never accepted: {answer} {err}");
    }
}

/// Which coordinator-capable member acts now, by its own word.
fn acting(members: &[Member]) -> Option<usize> {
    members.iter().position(|m| {
        m.coordinates && m.proc.is_some() && try_node_status(&m.dir).is_some_and(|s| s["role"] == "coordinator")
    })
}

/// Whether the farm has settled: every coordinator-capable node runs,
/// lists no open job and has no mail pending, and `expected` messages
/// arrived.
fn settled(members: &[Member], smtp: &Smtp, expected: usize) -> bool {
    let quiet = members
        .iter()
        .filter(|m| m.coordinates)
        .all(|m| try_node_status(&m.dir).is_some_and(|s| s["jobs_total"] == 0 && s["mail"]["pending"] == 0));
    quiet && smtp.mails().len() >= expected
}

/// The one file a sleep build's artifact holds, by name.
fn artifact_files(archive: &Path) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    let mut tar = tar::Archive::new(std::fs::File::open(archive).unwrap());
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path().unwrap().display().to_string();
        let mut text = String::new();
        entry.read_to_string(&mut text).unwrap();
        files.insert(name, text);
    }
    files
}

#[test]
fn under_seeded_kills_every_job_is_built_once_mailed_once_and_listed_open_nowhere() {
    let seed = seed();
    let chaos = Duration::from_secs(env_u64("KILN_SOAK_SECS").unwrap_or(CHAOS_SECS));
    let jobs = env_u64("KILN_SOAK_JOBS").map_or(JOBS, |j| j as usize).clamp(1, 80);
    let mut rng = Rng(seed);
    let mut figures = Figures {
        seed,
        jobs,
        ..Figures::default()
    };
    println!("soak seed {seed}: {} s of kills, {jobs} jobs", chaos.as_secs());

    let tmp = tempfile::tempdir().unwrap();
    let mut smtp = Smtp::new(tmp.path().join("maildir"), None);
    smtp.start();
    let url = format!("smtp://127.0.0.1:{}", smtp.port);
    let (_boot, boot) = start_bootstrap(&tmp.path().join("boot"));
    let mut members: Vec<Member> = ["c1", "c2", "w1", "w2", "w3"]
        .iter()
        .map(|name| Member {
            name: name.to_string(),
            dir: tmp.path().join(name),
            args: if name.starts_with('c') {
                vec!["--smtp".into(), url.clone()]
            } else {
                vec![]
            },
            coordinates: name.starts_with('c'),
            proc: None,
        })
        .collect();
    for member in &mut members {
        member.start(&boot);
    }
    kiln_tests::farm::wait_status(&boot, "a coordinator that knows the three workers", |s| {
        s["workers"].as_array().is_some_and(|w| w.len() == 3)
    });

    // The schedule: jobs spread over nine tenths of the window, kills
    // over all of it; each at its time, in order.
    let start = Instant::now();
    let submit_span = chaos.as_millis() as u64 * 9 / 10;
    let mut events: Vec<(u64, Option<usize>)> = (0..jobs)
        .map(|i| (i as u64 * submit_span / jobs as u64, Some(i)))
        .collect();
    let mut at = 5_000 + rng.below(KILL_GAP_MS_SPAN);
    while at < chaos.as_millis() as u64 {
        events.push((at, None));
        at += KILL_GAP_MS_MIN + rng.below(KILL_GAP_MS_SPAN);
    }
    events.sort();
    let mut keys = vec![String::new(); jobs];
    let mut last_kill = start;
    for (at_ms, event) in events {
        let due = start + Duration::from_millis(at_ms);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        match event {
            Some(i) => keys[i] = submit(&boot, i),
            None => {
                let victim = match rng.below(2) {
                    0 => acting(&members),
                    _ => None,
                };
                let victim = victim.unwrap_or_else(|| 2 + rng.below(3) as usize);
                if members[victim].coordinates {
                    figures.coordinator_kills += 1;
                } else {
                    figures.worker_kills += 1;
                }
                println!(
                    "{:>5.1} s: kill {}",
                    start.elapsed().as_secs_f64(),
                    members[victim].name
                );
                members[victim].kill();
                last_kill = Instant::now();
                std::thread::sleep(RESTART_AFTER);
                members[victim].start(&boot);
            }
        }
    }

    // Settling: every job ends, every message goes out, once.
    let deadline = Instant::now() + SETTLE_MAX;
    while !settled(&members, &smtp, jobs) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    figures.settle_secs = last_kill.elapsed().as_secs_f64();
    let views: Vec<(String, Option<Value>)> = members
        .iter()
        .filter(|m| m.coordinates)
        .map(|m| (m.name.clone(), try_node_status(&m.dir)))
        .collect();
    let received = recipients(&smtp.mails());
    for i in 0..jobs {
        match received.get(&address(i)).copied().unwrap_or(0) {
            0 => figures.missing_mails += 1,
            1 => {}
            n => figures.duplicate_mails += n - 1,
        }
    }
    let strangers = received
        .keys()
        .filter(|a| !(0..jobs).any(|i| address(i) == **a))
        .count();

    // Every job done, as a user asking again sees it, and its artifact
    // fetched by hash into a fresh store, with what its build wrote.
    let mut problems = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let (secs, n) = job_options(i);
        let extra = ["-o", &format!("secs={secs}"), "-o", &format!("n={n}")];
        let (ok, answer, err) = request(&boot, &recipe("sleep"), &address(i), &extra);
        if !ok || answer["state"] != "done" || answer["build_key"] != key.as_str() {
            figures.lost_jobs += 1;
            problems.push(format!("job {i} ({key}) is not done: {answer} {err}"));
            continue;
        }
        let artifact = answer["artifact"].as_str().unwrap_or("").to_string();
        let out = tmp.path().join(format!("artifact-{i}.tar"));
        let (ok, _, err) = kiln(&[
            "fetch",
            &artifact,
            "--bootstrap",
            &boot,
            "--data-dir",
            tmp.path().join(format!("fetcher-{i}")).to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]);
        if !ok {
            problems.push(format!("the artifact {artifact} of job {i} cannot be fetched: {err}"));
            continue;
        }
        let files = artifact_files(&out);
        if files.get("out.txt").map(String::as_str) != Some(&format!("{n}\n")) {
            problems.push(format!("the artifact of job {i} holds {files:?}"));
        }
    }
    println!("{}", figures.line());
    for (name, view) in &views {
        match view {
            Some(v) if v["jobs_total"] == 0 && v["mail"]["pending"] == 0 => {}
            Some(v) => problems.push(format!(
                "{name} lists {} open jobs and {} pending messages: {}",
                v["jobs_total"], v["mail"]["pending"], v["jobs"]
            )),
            None => problems.push(format!("{name} does not answer")),
        }
    }
    if figures.missing_mails + figures.duplicate_mails + strangers > 0 {
        problems.push(format!("mail received per address: {received:?}"));
    }
    assert!(
        problems.is_empty(),
        "{}\nseed {seed} (replay: KILN_SOAK_SEED={seed} KILN_SOAK_SECS={} KILN_SOAK_JOBS={jobs}):\n{}",
        figures.line(),
        chaos.as_secs(),
        problems.join("\n")
    );
}
