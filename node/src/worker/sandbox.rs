//! The build sandbox: runs a recipe's steps on a contributor's machine
//! without harming it.
//!
//! Each build gets a fresh directory `DATA_DIR/builds/<id>/` holding `work/`
//! (the source and the steps' working directory), `home/` and `tmp/`. Steps
//! run under bubblewrap: the whole filesystem read-only, Kiln's data dir and
//! the contributor's home hidden behind empty tmpfs mounts, only the build
//! directory writable, new PID/IPC/UTS namespaces (the whole process tree
//! dies with the build), and a new network namespace unless the recipe needs
//! the network and the contributor allows it. The environment is cleared
//! except [`documented_env`]. Each step runs under `prlimit --as` (memory)
//! and the whole build under a wall-clock limit. Every build process runs at
//! idle CPU and I/O priority, within a process limit and, with `--cpus`, on
//! a subset of the CPUs ([`limits`](super::limits)). The log's first line
//! names every limit, and a build that meets one ends with a status that
//! names it. The worker steers a running build ([`Steer`]): it may pause
//! it (every process stopped where it is, the time limit's clock stopped
//! too), resume it, or give it up. Leftover build directories from a crash are removed when the
//! sandbox is created.
//!
//! Where bubblewrap is missing or cannot create namespaces, the sandbox says
//! so and refuses every build: there is no unisolated fallback.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::watch;
use tracing::{info, warn};

use super::limits::{BuildGroup, BuildLimits, Enforcement, WATCH_MS};
use crate::archive;

/// Most bytes of a build log kept (head and tail; the middle is cut).
pub const LOG_BYTES_MAX: usize = 1024 * 1024;
/// `SOURCE_DATE_EPOCH` given to every build: timestamps tools embed are fixed.
pub const SOURCE_DATE_EPOCH: u64 = 0;
/// Memory limit when neither the recipe nor the contributor names one.
pub const BUILD_MEMORY_BYTES_DEFAULT: u64 = 4 << 30;
/// The size of a build's `/tmp`, a memory-backed mount of its own (`TMPDIR`
/// points into the build directory, which is on disk and counted by
/// `--max-build-disk`).
pub const BUILD_TMP_BYTES: u64 = 1 << 30;
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why a build could not run at all (as opposed to failing).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("this machine cannot isolate builds ({0}); install bubblewrap (`apt-get install bubblewrap`) and allow user namespaces, then restart the worker")]
    NoIsolation(String),
    #[error("recipe needs the network while building, and this worker does not allow it (start it with --allow-network to allow it)")]
    NetworkRefused,
    #[error("cannot prepare the build directory {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("source: {0}")]
    Source(String),
    #[error("cannot set up the build's process and CPU limits: {0}")]
    Limits(String),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SandboxError + '_ {
    move |source| SandboxError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where a build's source comes from, already on this machine.
pub enum SourceInput {
    None,
    /// A deterministic archive (`kiln publish DIR`), unpacked into `work/`.
    Archive(PathBuf),
    /// A git repository (a `file://` URL or a path) checked out at a commit.
    Git {
        url: String,
        rev: String,
    },
}

/// What to build.
pub struct BuildSpec {
    pub steps: Vec<String>,
    pub outputs: BTreeSet<String>,
    pub options: BTreeMap<String, String>,
    pub network: bool,
    pub timeout: Duration,
    /// 0: the sandbox's default.
    pub memory_bytes: u64,
    pub source: SourceInput,
}

/// How a build ended.
#[derive(Debug, PartialEq, Eq)]
pub enum BuildStatus {
    /// Every step exited 0 and every output exists: the archive is at the path.
    Succeeded { artifact: PathBuf },
    /// A step exited non-zero (or was killed by a signal).
    StepFailed { step: usize, status: String },
    /// The wall-clock limit passed; the whole process tree was killed.
    TimedOut { after: Duration },
    /// A declared output was not produced.
    MissingOutput { output: String },
    /// The build met one of the contributor's limits and was stopped, with
    /// its whole process tree; `reason` says which ("it tried to run more
    /// than 512 processes at once ...").
    Stopped { reason: String },
    /// The worker gave the build up ([`Steer::GiveUp`]): not the recipe's
    /// fault, so another worker may build it.
    GivenUp { reason: String },
}

/// What the worker wants of a running build, besides its limits: sent on a
/// [`watch`] channel, so only the newest wish counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Steer {
    /// Run (or resume).
    #[default]
    Run,
    /// Stop every process of the build where it is until `Run`; the reason
    /// goes into the log. The time limit does not count paused time.
    Pause(String),
    /// Kill the build: it ends [`BuildStatus::GivenUp`] with this reason.
    GiveUp(String),
}

/// A finished build: its status and its (size-capped) log.
pub struct BuildResult {
    pub status: BuildStatus,
    pub log: Vec<u8>,
    /// The CPU time its processes used, where a cgroup counted it.
    pub cpu_time: Option<Duration>,
    /// How long it was paused in all.
    pub paused: Duration,
    /// The build's directory; removed when the result is dropped.
    pub dir: BuildDir,
}

/// A build directory, removed on drop.
pub struct BuildDir(PathBuf);

impl BuildDir {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for BuildDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            warn!(dir = %self.0.display(), error = %e, "cannot remove a build directory");
        }
    }
}

/// The sandbox of one worker.
pub struct Sandbox {
    builds_dir: PathBuf,
    /// Paths hidden from builds (Kiln's data dir, the contributor's home).
    hidden: Vec<PathBuf>,
    bwrap: Result<PathBuf, String>,
    allow_network: bool,
    memory_bytes_default: u64,
    enforcement: Enforcement,
}

impl Sandbox {
    /// [`Sandbox::with_limits`] with the default limits.
    pub fn new(data_dir: &Path, allow_network: bool) -> Result<Sandbox, SandboxError> {
        Sandbox::with_limits(data_dir, allow_network, BuildLimits::default())
    }

    /// Prepares `data_dir/builds`, removing what a crash left there, checks
    /// that builds can be isolated here, and finds how `limits` will be
    /// enforced.
    pub fn with_limits(data_dir: &Path, allow_network: bool, limits: BuildLimits) -> Result<Sandbox, SandboxError> {
        let builds_dir = data_dir.join("builds");
        if builds_dir.exists() {
            let leftovers = std::fs::read_dir(&builds_dir).map_err(io_error(&builds_dir))?.count();
            if leftovers > 0 {
                info!(count = leftovers, "removing build directories left by an earlier run");
            }
            std::fs::remove_dir_all(&builds_dir).map_err(io_error(&builds_dir))?;
        }
        std::fs::create_dir_all(&builds_dir).map_err(io_error(&builds_dir))?;
        let data_dir = std::fs::canonicalize(data_dir).map_err(io_error(data_dir))?;
        let mut hidden = vec![data_dir];
        if let Some(home) = std::env::var_os("HOME")
            .map(PathBuf::from)
            .and_then(|h| std::fs::canonicalize(h).ok())
            .filter(|h| h.is_dir() && h != Path::new("/"))
        {
            hidden.push(home);
        }
        // A path under another hidden one is hidden with it (the default
        // data dir is under the home): one mount each, so that each can be
        // remounted read-only.
        let covering = hidden.clone();
        hidden.retain(|path| !covering.iter().any(|other| other != path && path.starts_with(other)));
        let bwrap = find_bubblewrap().and_then(|path| {
            super::limits::check_priorities()
                .map(|()| path)
                .map_err(|why| format!("builds cannot run at idle priority: {why}"))
        });
        if let Err(why) = &bwrap {
            warn!(
                why,
                "builds cannot be isolated on this machine; every build will be refused"
            );
        }
        Ok(Sandbox {
            builds_dir: std::fs::canonicalize(&builds_dir).map_err(io_error(&builds_dir))?,
            hidden,
            bwrap,
            allow_network,
            memory_bytes_default: BUILD_MEMORY_BYTES_DEFAULT,
            enforcement: Enforcement::detect(limits),
        })
    }

    /// How this sandbox enforces its limits, in one line for the start log.
    pub fn limits_summary(&self) -> String {
        self.enforcement.describe()
    }

    /// The CPUs a build sees, where `--cpus` narrows them.
    pub fn build_cpus(&self) -> Option<u32> {
        self.enforcement.build_cpus()
    }

    /// Why builds are refused here, if they are.
    pub fn isolation_problem(&self) -> Option<&str> {
        self.bwrap.as_ref().err().map(String::as_str)
    }

    /// Runs a build to its end. `Err` only when it could not start.
    pub async fn run(&self, spec: &BuildSpec) -> Result<BuildResult, SandboxError> {
        self.run_logged(spec, &Log::default()).await
    }

    /// [`Sandbox::run`], writing the log into `log` as the build goes, so
    /// its tail can be shown while it runs.
    pub async fn run_logged(&self, spec: &BuildSpec, log: &Log) -> Result<BuildResult, SandboxError> {
        let (_steer, steered) = watch::channel(Steer::Run);
        self.run_steered(spec, log, steered).await
    }

    /// [`Sandbox::run_logged`], paused, resumed or given up as `steer`
    /// says while it runs.
    pub async fn run_steered(
        &self,
        spec: &BuildSpec,
        log: &Log,
        mut steer: watch::Receiver<Steer>,
    ) -> Result<BuildResult, SandboxError> {
        let bwrap = self
            .bwrap
            .as_ref()
            .map_err(|why| SandboxError::NoIsolation(why.clone()))?;
        if spec.network && !self.allow_network {
            return Err(SandboxError::NetworkRefused);
        }
        let name = unique_name();
        let dir = BuildDir(self.builds_dir.join(&name));
        for sub in ["work", "home", "tmp"] {
            std::fs::create_dir_all(dir.0.join(sub)).map_err(io_error(&dir.0))?;
        }
        prepare_source(&spec.source, &dir.0.join("work"), log).await?;
        let mut group = self
            .enforcement
            .prepare(&name, &dir.0)
            .map_err(|e| SandboxError::Limits(e.to_string()))?;
        log.line(&format!("kiln: limits: {}", self.describe_limits(spec)));
        let mut pauses = Pauses::default();
        let mut status = self
            .run_steps(bwrap, spec, &dir.0, log, &mut group, &mut steer, &mut pauses)
            .await;
        if matches!(status, BuildStatus::Succeeded { .. }) {
            if let Some(reason) = group.check_disk_now().await {
                status = BuildStatus::Stopped { reason };
            }
        }
        let cpu_time = group.cpu_time();
        group.remove().await;
        let status = match status {
            BuildStatus::Succeeded { .. } => pack_outputs(&dir.0, &spec.outputs, log)?,
            other => other,
        };
        log.line(&format!("kiln: {}", describe(&status)));
        Ok(BuildResult {
            status,
            log: log.to_bytes(),
            cpu_time,
            paused: pauses.total,
            dir,
        })
    }

    /// Every limit a build runs under, in words, for the first line of its
    /// log.
    fn describe_limits(&self, spec: &BuildSpec) -> String {
        let limits = self.enforcement.limits();
        let cpus = match self.enforcement.build_cpus() {
            Some(1) => "1 CPU".to_string(),
            Some(n) => format!("{n} CPUs"),
            None => "every CPU".to_string(),
        };
        format!(
            "{} s in all, {} MiB of memory per process, {} processes at once, {} in the build directory, {} in /tmp, {cpus}, idle CPU and I/O priority",
            spec.timeout.as_secs(),
            self.memory_bytes(spec) >> 20,
            limits.processes_max,
            kiln_protocol::system::format_bytes(limits.disk_bytes_max),
            kiln_protocol::system::format_bytes(BUILD_TMP_BYTES),
        )
    }

    fn memory_bytes(&self, spec: &BuildSpec) -> u64 {
        if spec.memory_bytes > 0 {
            spec.memory_bytes
        } else {
            self.memory_bytes_default
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_steps(
        &self,
        bwrap: &Path,
        spec: &BuildSpec,
        dir: &Path,
        log: &Log,
        group: &mut BuildGroup,
        steer: &mut watch::Receiver<Steer>,
        pauses: &mut Pauses,
    ) -> BuildStatus {
        // Moved later by each pause: paused time is not the build's.
        let mut deadline = tokio::time::Instant::now() + spec.timeout;
        for (index, step) in spec.steps.iter().enumerate() {
            if let Steer::GiveUp(reason) = &*steer.borrow() {
                return BuildStatus::GivenUp { reason: reason.clone() };
            }
            log.line(&format!("$ {step}"));
            let mut command = self.command(bwrap, spec, dir, step);
            group.apply(&mut command);
            let mut run = Run {
                log,
                group: &mut *group,
                steer: &mut *steer,
                pauses: &mut *pauses,
                deadline: &mut deadline,
            };
            match run.step(&mut command).await {
                Ok(Ended::Exited(status)) if status.success() => {}
                Ok(Ended::Exited(status)) => {
                    return BuildStatus::StepFailed {
                        step: index + 1,
                        status: status.to_string(),
                    }
                }
                Ok(Ended::TimedOut) => return BuildStatus::TimedOut { after: spec.timeout },
                Ok(Ended::Stopped(reason)) => return BuildStatus::Stopped { reason },
                Ok(Ended::GivenUp(reason)) => return BuildStatus::GivenUp { reason },
                Err(e) => {
                    return BuildStatus::StepFailed {
                        step: index + 1,
                        status: format!("could not start: {e}"),
                    }
                }
            }
        }
        BuildStatus::Succeeded {
            artifact: dir.join("artifact.tar"),
        }
    }

    fn command(&self, bwrap: &Path, spec: &BuildSpec, dir: &Path, step: &str) -> Command {
        let mut command = Command::new(bwrap);
        // No --new-session: the child starts its own session before
        // bubblewrap runs, and lowers that session's autogroup (limits.rs).
        command.args(["--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts"]);
        if !spec.network {
            command.arg("--unshare-net");
        }
        command.args([
            "--ro-bind",
            "/",
            "/",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
            "--size",
            &BUILD_TMP_BYTES.to_string(),
            "--tmpfs",
            "/tmp",
        ]);
        for hidden in &self.hidden {
            command.arg("--tmpfs").arg(hidden);
        }
        command.arg("--bind").arg(dir).arg(dir);
        // The empty mounts that hide paths take no writes (the build
        // directory bound inside one of them stays writable: the remount
        // is not recursive). Memory-backed, they would otherwise hold
        // whatever a build wrote there, outside every limit.
        for hidden in &self.hidden {
            command.arg("--remount-ro").arg(hidden);
        }
        command.arg("--chdir").arg(dir.join("work"));
        command.arg("--clearenv");
        for (name, value) in documented_env(dir, &spec.options) {
            command.arg("--setenv").arg(name).arg(value);
        }
        let memory = self.memory_bytes(spec);
        command.args(["--", "prlimit", &format!("--as={memory}"), "--", "/bin/sh", "-c", step]);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }
}

/// The whole environment a build step sees.
pub fn documented_env(dir: &Path, options: &BTreeMap<String, String>) -> Vec<(String, String)> {
    let mut env = vec![
        ("PATH".to_string(), PATH.to_string()),
        ("HOME".to_string(), dir.join("home").display().to_string()),
        ("TMPDIR".to_string(), dir.join("tmp").display().to_string()),
        ("SOURCE_DATE_EPOCH".to_string(), SOURCE_DATE_EPOCH.to_string()),
        ("LC_ALL".to_string(), "C".to_string()),
        ("TZ".to_string(), "UTC".to_string()),
    ];
    for (name, value) in options {
        env.push((format!("KILN_OPTION_{}", name.to_ascii_uppercase()), value.clone()));
    }
    env
}

/// Finds bubblewrap and checks that it can create the namespaces we use.
fn find_bubblewrap() -> Result<PathBuf, String> {
    let path = ["/usr/bin/bwrap", "/usr/local/bin/bwrap", "/bin/bwrap"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| "bubblewrap (bwrap) is not installed".to_string())?;
    let trial = std::process::Command::new(&path)
        .args([
            "--ro-bind",
            "/",
            "/",
            "--dev",
            "/dev",
            "--unshare-pid",
            "--unshare-net",
            "--",
            "/bin/true",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("bubblewrap does not start: {e}"))?;
    if trial.status.success() {
        Ok(path)
    } else {
        Err(format!(
            "bubblewrap cannot create namespaces here: {}",
            String::from_utf8_lossy(&trial.stderr).trim()
        ))
    }
}

fn unique_name() -> String {
    let mut bytes = [0u8; 8];
    let _ = getrandom::getrandom(&mut bytes);
    format!("build-{}", kiln_protocol::hash::to_hex(&bytes))
}

/// How one step's process ended.
enum Ended {
    Exited(std::process::ExitStatus),
    /// Killed at the build's time limit.
    TimedOut,
    /// Killed at another limit, named by the reason.
    Stopped(String),
    /// Killed because the worker gave the build up.
    GivenUp(String),
}

/// The build's pauses so far.
#[derive(Default)]
struct Pauses {
    /// Since when it is paused, if it is.
    since: Option<tokio::time::Instant>,
    total: Duration,
}

/// One step being run: what it is checked against and steered by.
struct Run<'a> {
    log: &'a Log,
    group: &'a mut BuildGroup,
    steer: &'a mut watch::Receiver<Steer>,
    pauses: &'a mut Pauses,
    /// The build's time limit, moved later by each pause.
    deadline: &'a mut tokio::time::Instant,
}

impl Run<'_> {
    /// Runs one command, copying both output streams into the log, until
    /// the build's deadline, checking it against its group's limits every
    /// [`WATCH_MS`] and following the worker's [`Steer`].
    async fn step(&mut self, command: &mut Command) -> std::io::Result<Ended> {
        let mut child = command.spawn()?;
        let root = child.id();
        let stdout = child
            .stdout
            .take()
            .map(|s| tokio::spawn(copy_into(s, self.log.clone())));
        let stderr = child
            .stderr
            .take()
            .map(|s| tokio::spawn(copy_into(s, self.log.clone())));
        let mut watch = tokio::time::interval(Duration::from_millis(WATCH_MS));
        let mut steer_open = true;
        // What the worker wants now, then each change.
        let mut wish = Some(self.steer.borrow_and_update().clone());
        let ended = loop {
            if let Some(wish) = wish.take() {
                if let Some(ended) = self.follow(wish, root).await {
                    break ended;
                }
            }
            let paused = self.pauses.since.is_some();
            tokio::select! {
                status = child.wait() => match status {
                    Ok(status) => break Ended::Exited(status),
                    Err(e) => {
                        self.unpause("ended").await;
                        let _ = child.kill().await;
                        return Err(e);
                    }
                },
                () = tokio::time::sleep_until(*self.deadline), if !paused => break Ended::TimedOut,
                _ = watch.tick() => {
                    if let Some(reason) = self.group.breach(root) {
                        break Ended::Stopped(reason);
                    }
                }
                changed = self.steer.changed(), if steer_open => match changed {
                    Ok(()) => wish = Some(self.steer.borrow_and_update().clone()),
                    // Nobody steers any more: the build runs to its end.
                    Err(_) => {
                        steer_open = false;
                        wish = Some(Steer::Run);
                    }
                },
            }
        };
        // A fork refused since the last check stops the build too, even if
        // the step then exited (a fork bomb whose shells give up ends
        // quickly).
        let ended = match ended {
            Ended::Exited(_) => self.group.breach(None).map_or(ended, Ended::Stopped),
            other => other,
        };
        // Frozen processes cannot die, and the next step starts unpaused
        // (and is paused again at once if the worker still wants it).
        let exited = matches!(ended, Ended::Exited(_));
        self.unpause(if exited { "resumed" } else { "ended" }).await;
        if !exited {
            // bwrap runs the step as PID 1 of its own namespace with
            // --die-with-parent: killing bwrap ends the whole tree.
            let _ = child.kill().await;
        }
        for task in [stdout, stderr].into_iter().flatten() {
            let _ = task.await;
        }
        Ok(ended)
    }

    /// Does what the worker wants; how the step ends, if it must.
    async fn follow(&mut self, wish: Steer, root: Option<u32>) -> Option<Ended> {
        match wish {
            Steer::Run => self.unpause("resumed").await,
            Steer::Pause(reason) if self.pauses.since.is_none() => {
                if let Err(problem) = self.group.pause(root).await {
                    // Not paused: let whatever stopped run again, and keep
                    // the time limit running.
                    warn!(problem, "a build could not be paused");
                    let _ = self.group.resume().await;
                    self.log
                        .line(&format!("kiln: could not pause ({problem}); the build runs on"));
                    return None;
                }
                self.pauses.since = Some(tokio::time::Instant::now());
                // Written once every process is stopped.
                self.log.line(&format!("kiln: paused: {reason}"));
            }
            Steer::Pause(_) => {}
            Steer::GiveUp(reason) => return Some(Ended::GivenUp(reason)),
        }
        None
    }

    /// Ends a pause, if the build is paused: its processes run again and
    /// the deadline moves by the time it was paused.
    async fn unpause(&mut self, word: &str) {
        let Some(since) = self.pauses.since.take() else {
            return;
        };
        if let Err(problem) = self.group.resume().await {
            warn!(problem, "a build did not resume entirely");
        }
        let paused = since.elapsed();
        *self.deadline += paused;
        self.pauses.total += paused;
        self.log
            .line(&format!("kiln: {word} after {} s paused", paused.as_secs()));
    }
}

async fn copy_into(mut stream: impl AsyncRead + Unpin, log: Log) {
    let mut buffer = vec![0u8; 16 * 1024];
    while let Ok(n) = stream.read(&mut buffer).await {
        if n == 0 {
            break;
        }
        log.append(&buffer[..n]);
    }
}

async fn prepare_source(source: &SourceInput, work: &Path, log: &Log) -> Result<(), SandboxError> {
    match source {
        SourceInput::None => Ok(()),
        SourceInput::Archive(path) => {
            let (path, work) = (path.clone(), work.to_path_buf());
            tokio::task::spawn_blocking(move || {
                let file = std::fs::File::open(&path)
                    .map_err(|e| SandboxError::Source(format!("cannot open the source: {e}")))?;
                tar::Archive::new(file).unpack(&work).map_err(|e| {
                    SandboxError::Source(format!(
                        "the source is not a Kiln archive (publish a directory with `kiln publish DIR`): {e}"
                    ))
                })
            })
            .await
            .map_err(|e| SandboxError::Source(e.to_string()))?
        }
        SourceInput::Git { url, rev } => {
            log.line(&format!("kiln: git clone {url} at {rev}"));
            for args in [
                vec![
                    "clone".to_string(),
                    "--quiet".into(),
                    "--no-checkout".into(),
                    "--".into(),
                    url.clone(),
                    work.display().to_string(),
                ],
                vec![
                    "-C".to_string(),
                    work.display().to_string(),
                    "checkout".into(),
                    "--quiet".into(),
                    "--detach".into(),
                    rev.clone(),
                ],
            ] {
                let out = Command::new("git")
                    .args(&args)
                    .env("GIT_ALLOW_PROTOCOL", "https:http:git:ssh:file")
                    .env("GIT_TERMINAL_PROMPT", "0")
                    .stdin(Stdio::null())
                    .output()
                    .await
                    .map_err(|e| SandboxError::Source(format!("cannot run git: {e}")))?;
                if !out.status.success() {
                    return Err(SandboxError::Source(format!(
                        "git {} failed: {}",
                        args[0],
                        String::from_utf8_lossy(&out.stderr).trim()
                    )));
                }
            }
            let _ = std::fs::remove_dir_all(work.join(".git"));
            Ok(())
        }
    }
}

fn pack_outputs(dir: &Path, outputs: &BTreeSet<String>, log: &Log) -> Result<BuildStatus, SandboxError> {
    let work = dir.join("work");
    if let Some(missing) = outputs
        .iter()
        .find(|o| std::fs::symlink_metadata(work.join(o)).is_err())
    {
        return Ok(BuildStatus::MissingOutput {
            output: missing.clone(),
        });
    }
    let artifact = dir.join("artifact.tar");
    let file = std::fs::File::create(&artifact).map_err(io_error(&artifact))?;
    if let Err(e) = archive::pack_paths(&work, outputs, std::io::BufWriter::new(file)) {
        log.line(&format!("kiln: cannot pack the outputs: {e}"));
        return Err(SandboxError::Io {
            path: artifact,
            source: std::io::Error::other(e.to_string()),
        });
    }
    Ok(BuildStatus::Succeeded { artifact })
}

fn describe(status: &BuildStatus) -> String {
    match status {
        BuildStatus::Succeeded { .. } => "build succeeded".into(),
        BuildStatus::StepFailed { step, status } => format!("step {step} failed: {status}"),
        BuildStatus::TimedOut { after } => format!("build killed: it ran past its time limit of {} s", after.as_secs()),
        BuildStatus::MissingOutput { output } => {
            format!("build failed: the recipe's output {output:?} was not produced")
        }
        BuildStatus::Stopped { reason } => format!("build stopped: {reason}"),
        BuildStatus::GivenUp { reason } => format!("build given up: {reason}"),
    }
}

/// A build log capped at [`LOG_BYTES_MAX`]: the first half and the last
/// half are kept, and a line says how much was cut between them.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<LogBuffer>>);

impl Log {
    /// The last `bytes` bytes of the log (cut at a character boundary), and
    /// how many bytes the log has had so far.
    pub fn tail(&self, bytes: usize) -> (String, u64) {
        let Ok(log) = self.0.lock() else {
            return (String::new(), 0);
        };
        let from_tail = log.tail.len().min(bytes);
        let from_head = (bytes - from_tail).min(log.head.len());
        let mut last: Vec<u8> = log.head[log.head.len() - from_head..].to_vec();
        last.extend(log.tail.iter().skip(log.tail.len() - from_tail));
        let total = log.head.len() as u64 + log.tail.len() as u64 + log.cut_bytes;
        (String::from_utf8_lossy(&last).into_owned(), total)
    }

    fn append(&self, bytes: &[u8]) {
        if let Ok(mut log) = self.0.lock() {
            log.append(bytes);
        }
    }

    fn line(&self, text: &str) {
        self.append(format!("{text}\n").as_bytes());
    }

    fn to_bytes(&self) -> Vec<u8> {
        self.0.lock().map(|log| log.to_bytes()).unwrap_or_default()
    }
}

#[derive(Default)]
pub struct LogBuffer {
    head: Vec<u8>,
    tail: std::collections::VecDeque<u8>,
    cut_bytes: u64,
}

impl LogBuffer {
    pub fn append(&mut self, mut bytes: &[u8]) {
        let half = LOG_BYTES_MAX / 2;
        if self.head.len() < half {
            let take = (half - self.head.len()).min(bytes.len());
            self.head.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        }
        self.tail.extend(bytes);
        while self.tail.len() > half {
            let excess = self.tail.len() - half;
            self.tail.drain(..excess);
            self.cut_bytes += excess as u64;
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.head.clone();
        if self.cut_bytes > 0 {
            out.extend_from_slice(format!("\n[kiln: {} bytes of log cut here]\n", self.cut_bytes).as_bytes());
        }
        out.extend(self.tail.iter());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_keeps_its_head_and_tail_within_the_cap() {
        let mut log = LogBuffer::default();
        log.append(b"start\n");
        for _ in 0..3000 {
            log.append(&[b'x'; 1000]);
        }
        log.append(b"\nthe end\n");
        let bytes = log.to_bytes();
        assert!(bytes.len() <= LOG_BYTES_MAX + 100);
        assert!(bytes.starts_with(b"start\n"));
        assert!(bytes.ends_with(b"the end\n"));
        assert!(String::from_utf8_lossy(&bytes).contains("bytes of log cut here"));
    }

    #[test]
    fn the_environment_is_the_documented_list() {
        let env = documented_env(
            Path::new("/b"),
            &BTreeMap::from([("opt".to_string(), "O2".to_string())]),
        );
        let names: Vec<&str> = env.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "PATH",
                "HOME",
                "TMPDIR",
                "SOURCE_DATE_EPOCH",
                "LC_ALL",
                "TZ",
                "KILN_OPTION_OPT"
            ]
        );
        assert!(env.contains(&("HOME".to_string(), "/b/home".to_string())));
    }
}
