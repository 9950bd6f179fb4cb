//! The README's commands, run as a reader would run them: every line of
//! every `sh` block is listed below with what it must do, in an order that
//! builds a small network (the README's own bootstrap, coordinator and
//! workers), and is run through `sh` with only these placeholders filled
//! in: MULTIADDR (the bootstrap peer's address), KEY (a publisher key),
//! HASH (the artifact of the first request), PW (a password file). A
//! command added to the README without a line here fails this test, and so
//! does a line here that the README no longer shows.

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use kiln_tests::farm::BUILD;
use kiln_tests::{bin_dir, output_within, wait_until, Proc, COMMAND_TIME_MAX, START};
use serde_json::Value;

/// What a README command must do.
enum Expect {
    /// Starts, prints its listen addresses, keeps running (part of the
    /// network for the commands after it), and stops cleanly on SIGTERM.
    Listens,
    /// Runs to success and prints this.
    Succeeds(&'static str),
    /// Keeps running and prints this on stderr (it is then stopped).
    WaitsSaying(&'static str),
    /// Run by another file (a test or CI, from the repository root), which
    /// holds this text.
    RunBy(&'static str, &'static str),
}
use Expect::*;

const COMMANDS: &[(&str, Expect)] = &[
    ("cargo test --workspace --locked -- --test-threads=2", RunBy(".ci/run", "\ncargo test --workspace --locked -- --test-threads=2\n")),
    ("cargo run --bin kiln -- demo", RunBy("tests/tests/demo.rs", ".arg(\"demo\")")),
    ("kiln-bootstrap --listen /ip4/0.0.0.0/tcp/4001 --data-dir ~/kiln-bootstrap", Listens),
    ("kiln node --coordinator --bootstrap MULTIADDR --http 8180 --data-dir ~/kiln-coordinator", Listens),
    ("kiln system", Succeeds("pointer_width")),
    ("kiln node --contribute --trust-publisher KEY --bootstrap MULTIADDR --data-dir ~/kiln-worker1", Listens),
    ("kiln node --contribute --trust-any-recipe --bootstrap MULTIADDR --data-dir ~/kiln-worker2", Listens),
    (
        "kiln request --email me@example.org --recipe recipes/hello-c/recipe.toml -o greeting=loud --bootstrap MULTIADDR",
        Succeeds("me@example.org will be emailed when it ends"),
    ),
    ("kiln status --bootstrap MULTIADDR", Succeeds("coordinator ")),
    (
        "kiln request --email me@example.org --recipe recipes/hello-c/recipe.toml --target arch=aarch64 --wait --fetch hello.tar --bootstrap MULTIADDR",
        WaitsSaying("queued: no worker matches its requirements"),
    ),
    ("kiln fetch HASH -o hello.tar --bootstrap MULTIADDR", Succeeds("")),
    ("kiln contributions --data-dir ~/kiln-worker2", Succeeds("signed statement (hex)")),
    ("kiln node --smtp smtp://mail.example.org:25 --mail-from \"Kiln <kiln@example.org>\"", Listens),
    ("kiln node --smtp \"smtp://kiln@mail.example.org:587?tls=required\" --smtp-password-file PW", Listens),
    ("kiln node --smtp smtps://kiln:PASSWORD@mail.example.org", Listens),
    (
        "kiln service install --unit-dir units -- --trust-publisher KEY --bootstrap MULTIADDR --cpus 2",
        Succeeds("not enabled"),
    ),
    ("kiln recipe options recipes/pypy/recipe.toml", Succeeds("-o opt=VALUE")),
    ("kiln recipe id recipes/pypy/recipe.toml", Succeeds("")),
];

/// Every command line in the README's `sh` blocks, without its comment.
fn readme_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let mut commands = Vec::new();
    let mut in_sh = false;
    for line in readme.lines() {
        match line.trim() {
            "```sh" => in_sh = true,
            "```" => in_sh = false,
            text if in_sh && !text.is_empty() => {
                let command = match text.find(" #") {
                    Some(at) => &text[..at],
                    None => text,
                };
                commands.push(command.trim().to_string());
            }
            _ => {}
        }
    }
    commands
}

/// A place to run commands as a reader would: a home, a data dir per
/// command, and the repository's recipes in the working directory.
struct Reader {
    home: std::path::PathBuf,
    work: std::path::PathBuf,
    data: std::path::PathBuf,
    count: usize,
}

impl Reader {
    fn command(&mut self, line: &str) -> Command {
        self.count += 1;
        let path = format!("{}:{}", bin_dir().display(), std::env::var("PATH").unwrap_or_default());
        let mut command = Command::new("sh");
        command
            .args(["-c", &format!("exec {line}")])
            .current_dir(&self.work)
            .env("PATH", path)
            .env("HOME", &self.home)
            .env("KILN_DATA_DIR", self.data.join(self.count.to_string()))
            .env("KILN_CONFIG", "/dev/null")
            .env_remove("KILN_BOOTSTRAP")
            .env_remove("KILN_SMTP_URL")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        command
    }
}

fn get(url_path: &str) -> Option<Value> {
    let mut stream = std::net::TcpStream::connect("127.0.0.1:8180").ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(stream, "GET {url_path} HTTP/1.0\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    serde_json::from_str(response.split_once("\r\n\r\n")?.1).ok()
}

/// The artifact of the first finished build, from the README coordinator's
/// dashboard.
fn first_artifact() -> String {
    let mut artifact = None;
    wait_until(BUILD, "the README's first request to be built", || {
        artifact = get("/api/status").and_then(|s| s["farm"]["recent"][0]["artifact"].as_str().map(String::from));
        artifact.is_some()
    });
    artifact.unwrap()
}

#[test]
fn every_command_in_the_readme_does_what_it_says() {
    let shown: BTreeSet<String> = readme_commands().into_iter().collect();
    let listed: BTreeSet<String> = COMMANDS.iter().map(|(c, _)| c.to_string()).collect();
    let untested: Vec<_> = shown.difference(&listed).collect();
    let stale: Vec<_> = listed.difference(&shown).collect();
    assert!(
        untested.is_empty(),
        "README commands this test does not run: {untested:#?}"
    );
    assert!(
        stale.is_empty(),
        "commands listed here that the README no longer shows: {stale:#?}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let mut reader = Reader {
        home: tmp.path().join("home"),
        work: tmp.path().join("work"),
        data: tmp.path().join("data"),
        count: 0,
    };
    for dir in [&reader.home, &reader.work] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let recipes = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../recipes"))
        .canonicalize()
        .unwrap();
    std::os::unix::fs::symlink(recipes, reader.work.join("recipes")).unwrap();
    let password = tmp.path().join("smtp-password");
    std::fs::write(&password, "secret\n").unwrap();
    let key_file = tmp.path().join("publisher.key");
    let out = Command::new(bin_dir().join("kiln"))
        .args(["keygen", "--key", key_file.to_str().unwrap()])
        .env("KILN_CONFIG", "/dev/null")
        .output()
        .unwrap();
    let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(key.len(), 64, "kiln keygen prints the public key: {out:?}");

    let mut multiaddr = None;
    let mut running: Vec<Proc> = Vec::new();
    for (line, expect) in COMMANDS {
        let mut filled = line.replace("KEY", &key).replace("PW", password.to_str().unwrap());
        if filled.contains("MULTIADDR") {
            let addr: &String = multiaddr
                .as_ref()
                .expect("the bootstrap peer runs before MULTIADDR is used");
            filled = filled.replace("MULTIADDR", addr);
        }
        if filled.contains("HASH") {
            filled = filled.replace("HASH", &first_artifact());
        }
        match expect {
            RunBy(file, runs) => {
                let runner = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join(file);
                let text = std::fs::read_to_string(&runner).unwrap_or_else(|e| panic!("{line}: {file}: {e}"));
                assert!(text.contains(runs), "{file} no longer runs {line:?}");
            }
            Listens => {
                let mut proc = Proc::spawn(line, reader.command(&filled));
                let addr = proc.wait_line(START, |l| l.starts_with("/ip4/127.0.0.1/") && l.contains("/p2p/"));
                if line.starts_with("kiln-bootstrap") {
                    multiaddr = Some(addr);
                }
                running.push(proc);
            }
            Succeeds(needle) => {
                let out = output_within(&mut reader.command(&filled), COMMAND_TIME_MAX);
                let (stdout, stderr) = (
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr),
                );
                assert!(out.status.success(), "{line}\nfailed: {stderr}");
                assert!(
                    stdout.contains(needle) || stderr.contains(needle),
                    "{line}\ndid not print {needle:?}:\n{stdout}\n{stderr}"
                );
            }
            WaitsSaying(needle) => {
                let mut proc = Proc::spawn(line, reader.command(&filled));
                proc.wait_stderr(BUILD, needle);
                proc.kill();
            }
        }
    }
    // The README's fetch wrote the artifact where it said.
    let fetched = std::fs::read(reader.work.join("hello.tar")).unwrap();
    assert_eq!(kiln_protocol::Hash::of(&fetched).to_string(), first_artifact());
    // The README's coordinator serves the dashboard where it said.
    let status = get("/api/status").expect("the dashboard on 127.0.0.1:8180");
    assert!(status["farm"].is_object(), "{status}");
    // Both workers, once each has heard the coordinator's heartbeat and
    // sent it its advert.
    wait_until(BUILD, "the dashboard to list both workers", || {
        get("/api/status").is_some_and(|s| s["farm"]["workers"].as_array().map(Vec::len) == Some(2))
    });

    for mut proc in running.into_iter().rev() {
        let status = proc.terminate(START);
        assert!(
            status.success(),
            "{} did not stop cleanly: {status}; {}",
            proc.name,
            proc.stderr()
        );
    }
}
