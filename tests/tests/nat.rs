//! Behind a home router: real network namespaces with NAT (nftables
//! masquerading), removed at the end even when a test fails.
//!
//! A "public" namespace holds the bootstrap peer and the coordinator on a
//! bridge (203.0.113.0/24). LAN A (198.51.100.0/24) holds a worker behind
//! router A; LAN B (192.0.2.0/24) holds the requester behind router B.
//! Each router masquerades its LAN behind its address on the bridge and
//! drops connections it was not asked for, as home routers do. Traffic
//! only ever goes between the test's own namespaces.
//!
//! Two NATs: one that keeps a connection's source port (hole punching
//! works, and the artifact comes over a direct connection), and one that
//! gives each destination a random port (symmetric: the artifact comes
//! through the bootstrap peer's relay, and a blob larger than the relay
//! lets through is refused with the reason).
//!
//! `KILN_TEST_LOG=FILTER` sets every process's `RUST_LOG` (for instance
//! `kiln_node=debug,libp2p_dcutr=debug`) when a case needs looking into.

// A test: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_protocol::Hash;
use kiln_tests::farm::{recipe, wait_json};
use kiln_tests::{bin, logs_on_failure, output_within, test_bytes, Proc, COMMAND_TIME_MAX, START};

/// How the routers map their LAN's connections.
#[derive(Clone, Copy, PartialEq)]
enum Nat {
    /// A connection keeps its source port where it can (Linux's default
    /// masquerading): the port one peer sees is the port every peer sees.
    KeepsPort,
    /// Each connection gets a random port (`fully-random`): symmetric.
    RandomPort,
}

/// The namespaces of one test, deleted when dropped.
struct Lab {
    prefix: String,
    made: Vec<String>,
}

const PUBLIC: &str = "203.0.113.1";

impl Lab {
    fn new(case: &str, nat: Nat) -> Lab {
        for tool in ["ip", "nft"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            assert!(
                found,
                "the NAT tests need `{tool}` (packages iproute2 and nftables) and root; .ci/run installs them"
            );
        }
        let mut lab = Lab {
            prefix: format!("kiln{}{case}", std::process::id()),
            made: Vec::new(),
        };
        for name in ["pub", "ra", "rb", "ha", "hb"] {
            let ns = lab.ns(name);
            ip(&["netns", "add", &ns]);
            lab.made.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        let (public, ra, rb, ha, hb) = (lab.ns("pub"), lab.ns("ra"), lab.ns("rb"), lab.ns("ha"), lab.ns("hb"));
        ip(&["-n", &public, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &public, "addr", "add", &format!("{PUBLIC}/24"), "dev", "br0"]);
        ip(&["-n", &public, "link", "set", "br0", "up"]);
        for (router, wan, port, host, lan_net) in [
            (&ra, "203.0.113.2", "ra", &ha, "198.51.100"),
            (&rb, "203.0.113.3", "rb", &hb, "192.0.2"),
        ] {
            // The router's WAN side on the public bridge.
            ip(&[
                "-n", router, "link", "add", "wan", "type", "veth", "peer", "name", port, "netns", &public,
            ]);
            ip(&["-n", &public, "link", "set", port, "master", "br0"]);
            ip(&["-n", &public, "link", "set", port, "up"]);
            ip(&["-n", router, "addr", "add", &format!("{wan}/24"), "dev", "wan"]);
            ip(&["-n", router, "link", "set", "wan", "up"]);
            // Its LAN, with one host.
            ip(&[
                "-n", router, "link", "add", "lan", "type", "veth", "peer", "name", "eth0", "netns", host,
            ]);
            ip(&["-n", router, "addr", "add", &format!("{lan_net}.1/24"), "dev", "lan"]);
            ip(&["-n", router, "link", "set", "lan", "up"]);
            ip(&["-n", host, "addr", "add", &format!("{lan_net}.2/24"), "dev", "eth0"]);
            ip(&["-n", host, "link", "set", "eth0", "up"]);
            ip(&["-n", host, "route", "add", "default", "via", &format!("{lan_net}.1")]);
            run(
                Command::new("ip").args(["netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=1"]),
                "enable forwarding",
            );
            let masquerade = match nat {
                Nat::KeepsPort => "masquerade",
                Nat::RandomPort => "masquerade fully-random",
            };
            // The LAN goes out masqueraded; from outside, only replies come
            // in (a connection the router was not asked for is dropped).
            let rules = format!(
                "table ip kiln_nat {{
                    chain post {{ type nat hook postrouting priority srcnat; policy accept; oifname \"wan\" {masquerade}; }}
                    chain forward {{ type filter hook forward priority filter; policy drop;
                        ct state established,related accept; iifname \"lan\" oifname \"wan\" accept; }}
                    chain input {{ type filter hook input priority filter; policy accept;
                        iifname \"wan\" ct state new drop; }}
                }}"
            );
            let mut nft = Command::new("ip")
                .args(["netns", "exec", router, "nft", "-f", "-"])
                .stdin(Stdio::piped())
                .spawn()
                .unwrap();
            nft.stdin.take().unwrap().write_all(rules.as_bytes()).unwrap();
            assert!(nft.wait().unwrap().success(), "nft refused the router's rules");
        }
        lab
    }

    fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// `BINARY ARGS` run inside namespace `name`.
    fn command(&self, name: &str, binary: &str, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.ns(name)])
            .arg(bin(binary))
            .args(args)
            .env("KILN_CONFIG", "/dev/null");
        if let Ok(filter) = std::env::var("KILN_TEST_LOG") {
            command.env("RUST_LOG", filter);
        }
        command
    }

    /// Starts a long-lived process in `name` and waits for its listen line
    /// on `ip`.
    fn start(&self, name: &str, what: &str, binary: &str, args: &[&str], ip: &str) -> (Proc, String) {
        let mut proc = Proc::spawn(what, self.command(name, binary, args));
        let prefix = format!("/ip4/{ip}/tcp/");
        let addr = proc.wait_line(START, |l| l.starts_with(&prefix) && l.contains("/p2p/"));
        (proc, addr)
    }

    /// `kiln ARGS` to completion inside `name`: (success, stdout, stderr).
    fn kiln(&self, name: &str, args: &[&str]) -> (bool, String, String) {
        let out = output_within(&mut self.command(name, "kiln", args), COMMAND_TIME_MAX);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.made.drain(..) {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args), &format!("ip {}", args.join(" ")));
}

fn run(command: &mut Command, what: &str) {
    let out = command.output().unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The farm of both tests: a bootstrap peer and a pinned coordinator in
/// the public namespace, a worker behind router A, found to be behind NAT
/// and holding a relay slot.
struct Farm {
    lab: Lab,
    dir: tempfile::TempDir,
    boot: String,
    bootstrap: Proc,
    coordinator: Proc,
    worker: Proc,
}

fn farm(case: &str, nat: Nat) -> Farm {
    let lab = Lab::new(case, nat);
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (bootstrap, boot) = lab.start(
        "pub",
        "bootstrap",
        "kiln-bootstrap",
        &[
            "--listen",
            &format!("/ip4/{PUBLIC}/tcp/4001"),
            "--data-dir",
            &d("boot"),
            "-v",
        ],
        PUBLIC,
    );
    let (coordinator, _) = lab.start(
        "pub",
        "coordinator",
        "kiln",
        &[
            "node",
            "--listen",
            &format!("/ip4/{PUBLIC}/tcp/0"),
            "--bootstrap",
            &boot,
            "--data-dir",
            &d("coordinator"),
            "--coordinator",
        ],
        PUBLIC,
    );
    let (worker, _) = lab.start(
        "ha",
        "worker",
        "kiln",
        &[
            "node",
            "--listen",
            "/ip4/0.0.0.0/tcp/0",
            "--bootstrap",
            &boot,
            "--data-dir",
            &d("worker"),
            "--contribute",
            "--trust-any-recipe",
            "--no-coordinator",
        ],
        "198.51.100.2",
    );
    Farm {
        lab,
        dir,
        boot,
        bootstrap,
        coordinator,
        worker,
    }
}

impl Farm {
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }

    /// The worker finds out it is behind NAT and takes a relay slot.
    fn worker_behind_nat(&self) {
        let procs = [&self.bootstrap, &self.coordinator, &self.worker];
        logs_on_failure(&procs, || {
            self.worker
                .wait_stderr(Duration::from_secs(60), "cannot be dialled from outside");
            self.worker.wait_stderr(START, "reserved a slot on the relay");
        });
        let status = kiln_tests::farm::node_status(Path::new(&self.path("worker")));
        let network = &status["network"];
        assert_eq!(network["reachability"], "private", "{status}");
        let relayed = network["relayed_addresses"].as_array().unwrap();
        assert!(
            relayed.iter().any(|a| a.as_str().unwrap().contains("/p2p-circuit")),
            "the worker's relayed address is known: {status}"
        );
    }

    /// Requests the C recipe from LAN B; the worker behind NAT A builds it.
    /// Returns the artifact's hash.
    fn build_from_lan_b(&self) -> String {
        let hello = recipe("hello-c");
        let mut request = Proc::spawn(
            "request",
            self.lab.command(
                "hb",
                "kiln",
                &[
                    "request",
                    "--json",
                    "--wait",
                    "--bootstrap",
                    &self.boot,
                    "--email",
                    "nat@example.org",
                    "--recipe",
                    &hello,
                    "--data-dir",
                    &self.path("requester"),
                ],
            ),
        );
        let procs = [&self.bootstrap, &self.coordinator, &self.worker];
        let done = logs_on_failure(&procs, || wait_json(&mut request));
        assert_eq!(done["state"], "done", "{done}; {}", request.stderr());
        done["artifact"].as_str().unwrap().to_string()
    }

    /// `kiln -v fetch HASH` from LAN B into a fresh data dir: (success,
    /// stderr, seconds).
    fn fetch_from_lan_b(&self, hash: &str, name: &str) -> (bool, String, f64) {
        let out = self.path(&format!("{name}.out"));
        let started = Instant::now();
        let (ok, _, err) = self.lab.kiln(
            "hb",
            &[
                "-v",
                "fetch",
                hash,
                "-o",
                &out,
                "--bootstrap",
                &self.boot,
                "--data-dir",
                &self.path(name),
            ],
        );
        (ok, err, started.elapsed().as_secs_f64())
    }

    /// The worker stores and announces `bytes` (through its control socket).
    fn publish_on_worker(&self, name: &str, bytes: &[u8]) -> String {
        let file = self.dir.path().join(name);
        std::fs::write(&file, bytes).unwrap();
        let (ok, out, err) = kiln_tests::kiln(&["publish", file.to_str().unwrap(), "--data-dir", &self.path("worker")]);
        assert!(ok, "publish on the worker: {err}");
        let hash = out.trim().to_string();
        assert_eq!(hash, Hash::of(bytes).to_string());
        hash
    }
}

/// Seconds into the day of a log line's timestamp (`...T04:42:47.269987Z`).
fn log_time(line: &str) -> Option<f64> {
    let time = line.get(11..26)?;
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// From a `kiln -v fetch` log and its whole time: when the download
/// started (the path to the provider settled, the hole punch over; the
/// first range follows at once), and how long the rest took.
fn phases(log: &str, secs: f64) -> String {
    let first = log.lines().find_map(log_time);
    let path = log
        .lines()
        .find(|l| l.contains("fetching from this provider"))
        .and_then(log_time);
    match (first, path) {
        (Some(first), Some(path)) => format!(
            "download started {:.3} s after the process's first log line, then {:.3} s to a verified file",
            path - first,
            secs - (path - first)
        ),
        _ => "phases not in the log".into(),
    }
}

#[test]
fn behind_nats_that_keep_ports_the_artifact_comes_over_a_hole_punched_connection() {
    let mut farm = farm("k", Nat::KeepsPort);
    farm.worker_behind_nat();
    let artifact = farm.build_from_lan_b();
    // Only the worker behind NAT A holds the artifact now.
    farm.coordinator.kill();

    let (ok, err, secs) = farm.fetch_from_lan_b(&artifact, "fetch");
    logs_on_failure(&[&farm.bootstrap, &farm.worker], || {
        assert!(ok, "fetch from LAN B: {err}")
    });
    assert!(
        err.contains("direct after a hole punch"),
        "the artifact came over a hole-punched connection: {err}"
    );
    assert!(!err.contains("path=\"relayed\""), "{err}");
    eprintln!(
        "artifact fetched through NAT A and NAT B, hole punched, in {secs:.2} s ({})",
        phases(&err, secs)
    );

    // A larger blob: the direct path has no relay limit.
    let big = test_bytes(8 << 20, 17);
    let hash = farm.publish_on_worker("big", &big);
    let (ok, err, secs) = farm.fetch_from_lan_b(&hash, "fetch-big");
    logs_on_failure(&[&farm.bootstrap, &farm.worker], || {
        assert!(ok, "8 MiB from LAN A to LAN B: {err}")
    });
    assert!(err.contains("direct after a hole punch"), "{err}");
    assert_eq!(std::fs::read(farm.path("fetch-big.out")).unwrap(), big);
    eprintln!(
        "8 MiB fetched hole punched in {secs:.2} s ({:.1} MiB/s, process start to verified file; {})",
        8.0 / secs,
        phases(&err, secs)
    );
    let status = kiln_tests::farm::node_status(Path::new(&farm.path("worker")));
    assert!(
        status["network"]["hole_punch_successes"].as_u64().unwrap() >= 1,
        "the worker counted the hole punches: {status}"
    );
}

#[test]
fn behind_a_symmetric_nat_the_artifact_comes_through_the_relay_and_a_larger_blob_is_refused_with_the_reason() {
    let mut farm = farm("r", Nat::RandomPort);
    farm.worker_behind_nat();
    let artifact = farm.build_from_lan_b();
    farm.coordinator.kill();

    let (ok, err, secs) = farm.fetch_from_lan_b(&artifact, "fetch");
    assert!(ok, "fetch from LAN B through the relay: {err}");
    assert!(
        err.contains("path=\"relayed\""),
        "the artifact came through the relay: {err}"
    );
    eprintln!(
        "artifact fetched through the relay in {secs:.2} s ({})",
        phases(&err, secs)
    );
    let status = kiln_tests::farm::node_status(Path::new(&farm.path("worker")));
    let network = &status["network"];
    // The worker's hole punch attempts time out (each direct dial waits
    // 10 s for an answer that the other router drops); the fetcher stops
    // waiting for them after HOLE_PUNCH_WAIT_MS_MAX and goes through the relay.
    assert!(network["hole_punch_attempts"].as_u64().unwrap() >= 1, "{status}");
    assert_eq!(network["hole_punch_successes"], 0, "{status}");
    assert!(network["relayed_bytes"].as_u64().unwrap() > 0, "{status}");

    // Larger than one relayed circuit may carry (1 MiB by default): refused
    // before any byte moves, saying why and what to do.
    let big = test_bytes(2 << 20, 18);
    let hash = farm.publish_on_worker("big", &big);
    let (ok, err, _) = farm.fetch_from_lan_b(&hash, "fetch-big");
    assert!(!ok, "2 MiB cannot cross a 1 MiB relay");
    assert!(err.contains("reachable only through a relay"), "{err}");
    assert!(err.contains("--relay-circuit-bytes"), "{err}");
}
