//! Test harness for Kiln's multi-process tests: finds the `kiln` and
//! `kiln-bootstrap` binaries, starts them on 127.0.0.1 with OS-chosen ports,
//! reads the addresses they print, waits on events with deadlines, and
//! kills every child it started when dropped.

// A harness: a panic here is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod farm;

/// The directory holding the workspace's binaries (`target/debug`).
pub fn bin_dir() -> PathBuf {
    // Test executables live in target/<profile>/deps/.
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir").to_path_buf();
    for name in ["kiln", "kiln-bootstrap", "kiln-evil", "kiln-assign"] {
        assert!(
            dir.join(name).exists(),
            "{} is missing: run the tests with `cargo test --workspace`, which builds it",
            dir.join(name).display()
        );
    }
    dir
}

pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// Polls `condition` until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, what: &str, condition: impl FnMut() -> bool) {
    poll_until(timeout, Duration::from_millis(20), what, condition);
}

/// [`wait_until`], asking every `every`: for a condition that costs
/// processes (`kiln status` of several nodes), so the asking does not load
/// the machine the nodes run on.
pub fn poll_until(timeout: Duration, every: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(every);
    }
}

/// Runs `step`; if it panics, prints the last lines each of `procs` logged
/// (their stderr, without debug lines) before the panic goes on, so a
/// failure that depends on what several nodes believed can be read.
pub fn logs_on_failure<T>(procs: &[&Proc], step: impl FnOnce() -> T) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(step)) {
        Ok(value) => value,
        Err(panic) => {
            for proc in procs {
                let log = proc.stderr();
                let lines: Vec<&str> = log.lines().filter(|l| !l.contains("DEBUG")).collect();
                let from = lines.len().saturating_sub(LOG_LINES_ON_FAILURE);
                eprintln!("===== {}: its last {} log lines", proc.name, lines.len() - from);
                for line in &lines[from..] {
                    eprintln!("{line}");
                }
            }
            std::panic::resume_unwind(panic)
        }
    }
}

/// Lines of each process's log [`logs_on_failure`] prints.
pub const LOG_LINES_ON_FAILURE: usize = 200;

/// A child process whose stdout lines are collected as they come; killed
/// (SIGKILL) and reaped on drop.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    pub fn spawn(name: &str, mut command: Command) -> Proc {
        // The tester's own config file does not apply.
        command.env("KILN_CONFIG", "/dev/null");
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr_pipe = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Proc {
            name: name.to_string(),
            child: Some(child),
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    /// Waits for a stdout line matching `predicate` and returns it.
    pub fn wait_line(&mut self, timeout: Duration, predicate: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        if let Some(line) = self.seen.iter().find(|l| predicate(l)) {
            return line.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if predicate(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "{}: no matching line within {timeout:?}; stdout so far: {:?}; stderr: {}",
                    self.name,
                    self.seen,
                    self.stderr()
                ),
            }
        }
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stderr contains `needle`.
    pub fn wait_stderr(&self, timeout: Duration, needle: &str) {
        wait_until(timeout, &format!("{} to log {needle:?}", self.name), || {
            self.stderr().contains(needle)
        });
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits (up to `timeout`) for a clean exit.
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        self.signal("-TERM", timeout)
    }

    /// Sends SIGINT (Ctrl-C) and waits (up to `timeout`) for an exit.
    pub fn interrupt(&mut self, timeout: Duration) -> std::process::ExitStatus {
        self.signal("-INT", timeout)
    }

    /// Waits (up to `timeout`) for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        self.signal("-0", timeout)
    }

    fn signal(&mut self, signal: &str, timeout: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("process still running");
        let _ = Command::new("kill").arg(signal).arg(child.id().to_string()).status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "{} did not stop within {timeout:?} of kill {signal}; stderr: {}",
                    self.name,
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A full listen address line: `/ip4/127.0.0.1/tcp/PORT/p2p/PEER`.
pub fn is_listen_line(line: &str) -> bool {
    line.starts_with("/ip4/127.0.0.1/tcp/") && line.contains("/p2p/")
}

pub const START: Duration = Duration::from_secs(20);

/// Starts a bootstrap peer on 127.0.0.1 and returns it with its address.
pub fn start_bootstrap(data_dir: &Path) -> (Proc, String) {
    let mut command = Command::new(bin("kiln-bootstrap"));
    command
        .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--data-dir"])
        .arg(data_dir);
    let mut proc = Proc::spawn("bootstrap", command);
    let addr = proc.wait_line(START, is_listen_line);
    (proc, addr)
}

/// Starts the misbehaving peer `kiln-evil MODE --data-dir DIR --bootstrap
/// BOOT TARGET` (see its file for the modes).
pub fn start_evil(name: &str, dir: &Path, boot: &str, mode: &str, target: &str) -> Proc {
    let mut command = Command::new(bin("kiln-evil"));
    command
        .arg(mode)
        .arg("--data-dir")
        .arg(dir)
        .args(["--bootstrap", boot, target]);
    Proc::spawn(name, command)
}

/// Starts `kiln node` on 127.0.0.1 joined to `bootstrap`.
pub fn start_node(name: &str, data_dir: &Path, bootstrap: &str, extra: &[&str]) -> (Proc, String) {
    let mut command = Command::new(bin("kiln"));
    command
        .args([
            "node",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--bootstrap",
            bootstrap,
            "--data-dir",
        ])
        .arg(data_dir)
        .args(extra);
    let mut proc = Proc::spawn(name, command);
    let addr = proc.wait_line(START, is_listen_line);
    (proc, addr)
}

/// Longest a one-shot command (`kiln fetch`, `kiln request --wait`, ...)
/// may run in a test before it is killed and the test fails.
pub const COMMAND_TIME_MAX: Duration = Duration::from_secs(180);

/// Runs `command` to completion, like [`Command::output`] (empty stdin,
/// both outputs captured), but kills it and fails the test if it runs longer than
/// `limit`: a hang shows as a failure with what the command printed, not as
/// a stuck test suite.
pub fn output_within(command: &mut Command, limit: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let stdout = Drain::start(child.stdout.take().expect("piped stdout"));
    let stderr = Drain::start(child.stderr.take().expect("piped stderr"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the command") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{command:?} still ran after {limit:?}; killed it. stdout:\n{}\nstderr:\n{}",
                stdout.text(),
                stderr.text()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: stdout.finish(deadline),
        stderr: stderr.finish(deadline),
    }
}

/// A pipe read to its end on a thread of its own, readable at any time.
struct Drain {
    bytes: Arc<Mutex<Vec<u8>>>,
    done: mpsc::Receiver<()>,
}

impl Drain {
    fn start(mut pipe: impl Read + Send + 'static) -> Drain {
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let (done_tx, done) = mpsc::channel();
        let sink = bytes.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            loop {
                match pipe.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => sink.lock().unwrap().extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
            let _ = done_tx.send(());
        });
        Drain { bytes, done }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes.lock().unwrap()).into_owned()
    }

    /// Everything read, once the pipe has ended. A pipe still open at
    /// `deadline` (held by a process the command left behind) fails the
    /// test.
    fn finish(self, deadline: Instant) -> Vec<u8> {
        let left = deadline.saturating_duration_since(Instant::now());
        if self.done.recv_timeout(left).is_err() {
            panic!(
                "the command exited, but a process it left behind still held its output:\n{}",
                self.text()
            );
        }
        std::mem::take(&mut *self.bytes.lock().unwrap())
    }
}

/// Runs `kiln ARGS` to completion and returns (success, stdout, stderr).
pub fn kiln(args: &[&str]) -> (bool, String, String) {
    let out = output_within(
        Command::new(bin("kiln"))
            .args(args)
            .env("KILN_CONFIG", "/dev/null")
            .stdin(Stdio::null()),
        COMMAND_TIME_MAX,
    );
    let mut err = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() && err.trim().is_empty() {
        // A failure with nothing said (killed by a signal, say): the status says what.
        err = format!("(nothing on stderr; {})", out.status);
    }
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        err,
    )
}

/// `kiln fetch HASH -o OUTPUT --bootstrap BOOTSTRAP --data-dir DATA_DIR` to
/// completion: (success, stdout, stderr).
pub fn fetch(data_dir: &Path, bootstrap: &str, hash: impl std::fmt::Display, output: &Path) -> (bool, String, String) {
    let hash = hash.to_string();
    kiln(&[
        "fetch",
        &hash,
        "-o",
        output.to_str().expect("a UTF-8 path"),
        "--bootstrap",
        bootstrap,
        "--data-dir",
        data_dir.to_str().expect("a UTF-8 path"),
    ])
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn test_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Writes an encoded request frame on a Kiln stream and reads one answer
/// frame whole (its length header included), as the test peers do.
pub async fn exchange_frame(stream: &mut libp2p::Stream, request: &[u8]) -> std::io::Result<Vec<u8>> {
    use futures::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(request).await?;
    stream.flush().await?;
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).await?;
    let mut frame = header.to_vec();
    frame.resize(4 + u32::from_le_bytes(header) as usize, 0);
    stream.read_exact(&mut frame[4..]).await?;
    Ok(frame)
}
