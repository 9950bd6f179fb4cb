//! What a build may take of the contributor's machine, and how each limit is
//! enforced, so that the owner never competes with Kiln for their own
//! machine and a hostile recipe cannot take it either.
//!
//! - **Priority.** Every build process runs under `SCHED_IDLE`, nice 19 and
//!   the idle I/O class. They are set in the forked child before bubblewrap
//!   starts, so everything the build starts inherits them: the owner's
//!   programs always run first. The child also starts the build's own
//!   session here (not bubblewrap's `--new-session`) and sets that
//!   session's autogroup to nice 19: where the kernel groups processes by
//!   session (`sched_autogroup`), CPU time is shared between sessions first,
//!   and a build in a session of normal weight took half the CPU from the
//!   owner's session despite `SCHED_IDLE` (measured: 47 % of the owner's
//!   speed left, BENCHMARKS.md "Priority"). Under cgroup v2 the same holds
//!   between groups: a worker's unit needs a low `CPUWeight=` (the unit
//!   `kiln service install` writes has 1).
//! - **Processes** (`--max-build-processes`). Each build gets its own pids
//!   cgroup: cgroup v2 where this node may create groups (a systemd unit
//!   with `Delegate=`, or root), else the v1 `pids` hierarchy. A fork past
//!   the limit fails, and the sandbox stops the build as soon as one did
//!   ([`BuildGroup::breach`], every [`WATCH_MS`] and when each step ends),
//!   even if the build would have recovered. Without a pids cgroup the
//!   sandbox counts the build's process tree every [`WATCH_MS`] instead and
//!   stops it once it is over the limit; that count is not a hard cap, so a
//!   fork bomb then runs for up to one interval. Which of the two is in use
//!   is logged when the worker starts.
//! - **CPUs** (`--cpus N`). Each build gets a cpuset cgroup holding N of the
//!   CPUs this node may use, which the build cannot widen. Without a cpuset
//!   cgroup, the build's CPU affinity is set to those N CPUs instead; a
//!   build could widen its own affinity, and the start log says so. Either
//!   way a build's `nproc` prints N.
//! - **Disk** (`--max-build-disk SIZE`). A task measures the space the
//!   build's directory takes (allocated blocks, symbolic links not followed)
//!   off the async threads, waiting between two measurements
//!   [`DISK_WATCH_COST`] times as long as the last one took and at least
//!   [`DISK_WATCH_MS_MIN`], so it costs at most about 2 % of one core
//!   however large the tree. A build over the limit is stopped at the next
//!   check, and once more after its last step, before its outputs are packed.
//!
//! Not for: the memory and time limits (`prlimit` and the deadline, in the
//! sandbox).

// The one place Kiln calls the C library directly: setting the priority,
// the affinity and the cgroup of a forked child before it runs bubblewrap.
// Each call is a plain system call on values prepared before the fork.
#![allow(unsafe_code)]

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tracing::warn;

/// Processes a build may run at once when the contributor names no limit.
/// A parallel C++ build runs a few per core; a fork bomb reaches this in
/// milliseconds.
pub const BUILD_PROCESSES_MAX_DEFAULT: u32 = 512;
/// How often a running build is checked against its process limit.
pub const WATCH_MS: u64 = 250;
/// Bytes a build may keep in its build directory when the contributor names
/// no limit: a PyPy translation needs a few GiB.
pub const BUILD_DISK_BYTES_DEFAULT: u64 = 32 << 30;
/// The least time between two measurements of a build's disk use.
pub const DISK_WATCH_MS_MIN: u64 = 1_000;
/// A measurement that took t is followed by a wait of this many times t.
pub const DISK_WATCH_COST: u32 = 50;
/// bubblewrap's own processes in a build's group (the outer process and the
/// init of the build's PID namespace), not counted against the limit.
const BWRAP_PROCESSES: u32 = 2;
/// How long a finished build's group may take to empty before it is left.
const EMPTY_MS_MAX: u64 = 10_000;
/// How long a pause or a resume may take to reach every process of a build.
const FREEZE_MS_MAX: u64 = 5_000;

/// What a contributor lets one build take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuildLimits {
    /// CPUs a build may use (`--cpus`); `None`: all of this node's.
    pub cpus: Option<u32>,
    /// Processes a build may run at once (`--max-build-processes`).
    pub processes_max: u32,
    /// Bytes a build may keep in its build directory (`--max-build-disk`).
    pub disk_bytes_max: u64,
}

impl Default for BuildLimits {
    fn default() -> Self {
        BuildLimits {
            cpus: None,
            processes_max: BUILD_PROCESSES_MAX_DEFAULT,
            disk_bytes_max: BUILD_DISK_BYTES_DEFAULT,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

impl Version {
    fn name(self) -> &'static str {
        match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        }
    }
}

/// A cgroup under which this node may create one group per build.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Parent {
    dir: PathBuf,
    version: Version,
}

/// How this machine enforces [`BuildLimits`], chosen once at start.
#[derive(Debug)]
pub struct Enforcement {
    limits: BuildLimits,
    pids: Option<Parent>,
    cpuset: Option<Parent>,
    /// Where a build's group is frozen to pause it: the pids group itself
    /// under v2 (`cgroup.freeze`), else the v1 `freezer` hierarchy.
    freezer: Option<Parent>,
    /// Where a build's CPU time is read: the pids group itself under v2
    /// (`cpu.stat`), else the v1 `cpuacct` hierarchy.
    cpuacct: Option<Parent>,
    /// The CPUs a build gets (empty: no `--cpus`).
    cpu_list: Vec<usize>,
    /// The CPUs a build may use, as the kernel's list ("2-3").
    cpu_text: String,
}

impl Enforcement {
    /// Finds where this node may create build groups and which CPUs a build
    /// gets.
    pub fn detect(limits: BuildLimits) -> Enforcement {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let pids = usable_parent("pids", &mountinfo, &own);
        let cpuset = limits.cpus.and_then(|_| usable_parent("cpuset", &mountinfo, &own));
        // A v2 group has both as core files: no controller to find.
        let (freezer, cpuacct) = match &pids {
            Some(parent) if parent.version == Version::V2 => (Some(parent.clone()), Some(parent.clone())),
            _ => (
                usable_parent("freezer", &mountinfo, &own),
                usable_parent("cpuacct", &mountinfo, &own),
            ),
        };
        let available = match &cpuset {
            Some(parent) => cpuset_cpus(parent),
            None => allowed_cpus(),
        };
        let cpu_list: Vec<usize> = match limits.cpus {
            // The last N: the owner's interactive work tends to land on the
            // first CPUs.
            Some(n) => available.iter().rev().take(n.max(1) as usize).rev().copied().collect(),
            None => Vec::new(),
        };
        let cpu_text = format_cpu_list(&cpu_list);
        let enforcement = Enforcement {
            limits,
            pids,
            cpuset,
            freezer,
            cpuacct,
            cpu_list,
            cpu_text,
        };
        enforcement.remove_leftovers();
        enforcement
    }

    pub fn limits(&self) -> BuildLimits {
        self.limits
    }

    /// How many CPUs a build sees, if `--cpus` narrows them.
    pub fn build_cpus(&self) -> Option<u32> {
        (!self.cpu_list.is_empty()).then_some(self.cpu_list.len() as u32)
    }

    /// One line for the worker's start log.
    pub fn describe(&self) -> String {
        let processes = match &self.pids {
            Some(parent) => format!(
                "at most {} processes per build (pids cgroup {} under {})",
                self.limits.processes_max,
                parent.version.name(),
                parent.dir.display()
            ),
            None => format!(
                "at most {} processes per build, counted every {WATCH_MS} ms (no pids cgroup this node may create: not a hard cap)",
                self.limits.processes_max
            ),
        };
        let cpus = match (&self.cpuset, self.cpu_list.is_empty()) {
            (_, true) => "every CPU".to_string(),
            (Some(parent), false) => format!(
                "CPUs {} (cpuset cgroup {} under {})",
                self.cpu_text,
                parent.version.name(),
                parent.dir.display()
            ),
            (None, false) => format!(
                "CPUs {} by affinity (no cpuset cgroup this node may create: a build could widen it)",
                self.cpu_text
            ),
        };
        let pause = match &self.freezer {
            Some(parent) => format!(
                "paused by freezing their cgroup ({} under {})",
                parent.version.name(),
                parent.dir.display()
            ),
            None => "paused by stopping each process (SIGSTOP; no freezer cgroup this node may create)".to_string(),
        };
        let cpu_time = match &self.cpuacct {
            Some(parent) => format!(
                "CPU time counted by cgroup ({} under {})",
                parent.version.name(),
                parent.dir.display()
            ),
            None => "CPU time not counted (no cpuacct cgroup this node may create)".to_string(),
        };
        format!("builds run at idle CPU and I/O priority; {processes}; {cpus}; {pause}; {cpu_time}")
    }

    /// The groups of one build, created before its first step runs, and
    /// the watch over the disk its directory `dir` takes. Must be called
    /// within the tokio runtime.
    pub fn prepare(&self, build: &str, dir: &Path) -> std::io::Result<BuildGroup> {
        let name = format!("kiln-{}-{build}", std::process::id());
        let mut group = BuildGroup {
            dirs: Vec::new(),
            procs: Vec::new(),
            pids_events: None,
            processes_max: self.limits.processes_max,
            affinity: None,
            disk: DiskWatch::start(dir.to_path_buf(), self.limits.disk_bytes_max),
            freeze: None,
            cpu_usage: None,
            stopped: Vec::new(),
        };
        if let Some(parent) = &self.pids {
            let dir = group.create(&parent.dir.join(&name))?;
            std::fs::write(
                dir.join("pids.max"),
                (self.limits.processes_max + BWRAP_PROCESSES).to_string(),
            )?;
            group.pids_events = Some(dir.join("pids.events"));
        }
        if !self.cpu_list.is_empty() {
            match &self.cpuset {
                Some(parent) => {
                    let dir = group.create(&parent.dir.join(&name))?;
                    if parent.version == Version::V1 {
                        // A v1 cpuset group starts with no memory nodes and
                        // takes no process until it has some.
                        let mems = std::fs::read_to_string(parent.dir.join("cpuset.mems"))?;
                        std::fs::write(dir.join("cpuset.mems"), mems.trim())?;
                    }
                    std::fs::write(dir.join("cpuset.cpus"), &self.cpu_text)?;
                }
                None => group.affinity = Some(cpu_set(&self.cpu_list)),
            }
        }
        if let Some(parent) = &self.freezer {
            let dir = group.create(&parent.dir.join(&name))?;
            group.freeze = match parent.version {
                Version::V1 => Some(Freeze::V1(dir.join("freezer.state"))),
                // Kernels before 5.2 have no v2 freezer: SIGSTOP then.
                Version::V2 => dir
                    .join("cgroup.freeze")
                    .exists()
                    .then(|| Freeze::V2(dir.join("cgroup.freeze"), dir.join("cgroup.events"))),
            };
        }
        if let Some(parent) = &self.cpuacct {
            let dir = group.create(&parent.dir.join(&name))?;
            group.cpu_usage = match parent.version {
                Version::V1 => Some(CpuUsage::V1(dir.join("cpuacct.usage"))),
                Version::V2 => dir
                    .join("cpu.stat")
                    .exists()
                    .then(|| CpuUsage::V2(dir.join("cpu.stat"))),
            };
        }
        for dir in &group.dirs {
            group
                .procs
                .push(std::fs::OpenOptions::new().write(true).open(dir.join("cgroup.procs"))?);
        }
        Ok(group)
    }

    /// Removes the empty build groups of Kiln processes that are gone (a
    /// crash leaves them).
    fn remove_leftovers(&self) {
        for parent in [&self.pids, &self.cpuset, &self.freezer, &self.cpuacct]
            .into_iter()
            .flatten()
        {
            let Ok(entries) = std::fs::read_dir(&parent.dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(pid) = name
                    .strip_prefix("kiln-")
                    .and_then(|rest| rest.split('-').next())
                    .and_then(|pid| pid.parse::<u32>().ok())
                else {
                    continue;
                };
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    // A build frozen when its worker died stays frozen
                    // (and its processes cannot die) until thawed.
                    let _ = std::fs::write(entry.path().join("freezer.state"), "THAWED");
                    let _ = std::fs::write(entry.path().join("cgroup.freeze"), "0");
                    let _ = std::fs::remove_dir(entry.path());
                }
            }
        }
    }
}

/// The cgroups of one build, and the watch over its process count.
pub struct BuildGroup {
    /// Distinct group directories (one in v2; one per hierarchy in v1).
    dirs: Vec<PathBuf>,
    /// Each group's `cgroup.procs`, open for the child to write itself into.
    procs: Vec<File>,
    pids_events: Option<PathBuf>,
    processes_max: u32,
    affinity: Option<libc::cpu_set_t>,
    disk: DiskWatch,
    freeze: Option<Freeze>,
    cpu_usage: Option<CpuUsage>,
    /// The processes a pause without a freezer stopped (to continue them).
    stopped: Vec<u32>,
}

/// How a build's group is frozen.
enum Freeze {
    /// `freezer.state`: FROZEN or THAWED.
    V1(PathBuf),
    /// `cgroup.freeze` (1 or 0) and `cgroup.events` ("frozen 1").
    V2(PathBuf, PathBuf),
}

impl Freeze {
    /// Freezes or thaws the group, and waits until the kernel says it is.
    async fn set(&self, frozen: bool) -> Result<(), String> {
        let verb = if frozen { "freeze" } else { "thaw" };
        let (file, value, state, done): (&Path, &str, &Path, &str) = match (self, frozen) {
            (Freeze::V1(state), true) => (state, "FROZEN", state, "FROZEN"),
            (Freeze::V1(state), false) => (state, "THAWED", state, "THAWED"),
            (Freeze::V2(freeze, events), true) => (freeze, "1", events, "frozen 1"),
            (Freeze::V2(freeze, events), false) => (freeze, "0", events, "frozen 0"),
        };
        std::fs::write(file, value).map_err(|e| format!("cannot {verb} the build's cgroup: {e}"))?;
        wait_file(
            state,
            |text| text.lines().any(|l| l.trim() == done),
            &format!("the build's cgroup did not {verb}"),
        )
        .await
    }
}

/// Where a build's CPU time is read.
enum CpuUsage {
    /// `cpuacct.usage`: nanoseconds.
    V1(PathBuf),
    /// `cpu.stat`: `usage_usec`.
    V2(PathBuf),
}

impl BuildGroup {
    fn create(&mut self, dir: &Path) -> std::io::Result<PathBuf> {
        if !self.dirs.iter().any(|d| d == dir) {
            std::fs::create_dir(dir)?;
            self.dirs.push(dir.to_path_buf());
        }
        Ok(dir.to_path_buf())
    }

    /// Makes `command`'s child join this build's groups, take the idle
    /// priorities and the CPU affinity, before it runs anything.
    pub fn apply(&self, command: &mut tokio::process::Command) {
        let setup = ChildSetup {
            procs: self.procs.iter().map(AsRawFd::as_raw_fd).collect(),
            affinity: self.affinity,
        };
        // SAFETY: the closure runs in the forked child before exec. It only
        // makes system calls (write, sched_setscheduler, setpriority,
        // ioprio_set, sched_setaffinity) on values prepared before the fork;
        // it allocates nothing and takes no lock. The descriptors stay open
        // in the parent (`self.procs`) until the child has been spawned.
        unsafe {
            command.pre_exec(move || setup.run());
        }
    }

    /// Why the build must be stopped now, if it must: it tried to run more
    /// processes than it may. `root` is bubblewrap's process, used where no
    /// pids cgroup counts for us.
    pub fn breach(&self, root: Option<u32>) -> Option<String> {
        if let Some(reason) = self.disk.over.get() {
            return Some(reason.clone());
        }
        let over = match &self.pids_events {
            Some(events) => std::fs::read_to_string(events)
                .ok()
                .and_then(|text| refused_forks(&text))
                .is_some_and(|refused| refused > 0),
            None => root.is_some_and(|pid| {
                tree_size(pid, (self.processes_max + BWRAP_PROCESSES) as usize + 1)
                    > (self.processes_max + BWRAP_PROCESSES) as usize
            }),
        };
        over.then(|| {
            format!(
                "it tried to run more than {} processes at once (a fork bomb, or a build that needs the worker's --max-build-processes raised)",
                self.processes_max
            )
        })
    }

    /// Stops every process of the build where it is, until [`resume`]:
    /// the freezer cgroup freezes the whole group at once (a process
    /// forked meanwhile is frozen too); without one, each process of the
    /// tree under `root` gets SIGSTOP, in rounds until a round finds none
    /// new. Returns once every process is stopped, or after
    /// [`FREEZE_MS_MAX`] with the reason it is not.
    ///
    /// [`resume`]: BuildGroup::resume
    pub async fn pause(&mut self, root: Option<u32>) -> Result<(), String> {
        let Some(freeze) = &self.freeze else {
            return self.stop_tree(root).await;
        };
        match freeze.set(true).await {
            Ok(()) => Ok(()),
            // A freezer that does not settle (a process in uninterruptible
            // sleep on a loaded disk can hold it in FREEZING): thawed, and
            // each process stopped by signal instead.
            Err(problem) => {
                let _ = freeze.set(false).await;
                warn!(
                    problem,
                    "the freezer did not settle; stopping the build's processes by signal"
                );
                self.stop_tree(root).await
            }
        }
    }

    /// Stops every process of the build's tree with SIGSTOP, again until no
    /// new one appears (one may fork meanwhile), within [`FREEZE_MS_MAX`].
    async fn stop_tree(&mut self, root: Option<u32>) -> Result<(), String> {
        let Some(root) = root else { return Ok(()) };
        let deadline = Instant::now() + Duration::from_millis(FREEZE_MS_MAX);
        loop {
            let tree = tree_pids(root, (self.processes_max + BWRAP_PROCESSES) as usize * 2);
            let new: Vec<u32> = tree.into_iter().filter(|p| !self.stopped.contains(p)).collect();
            if new.is_empty() {
                return Ok(());
            }
            for pid in new {
                if let Ok(pid_t) = libc::pid_t::try_from(pid) {
                    // SAFETY: kill(2) with a pid read from /proc and a
                    // constant signal.
                    unsafe { libc::kill(pid_t, libc::SIGSTOP) };
                }
                self.stopped.push(pid);
            }
            if Instant::now() >= deadline {
                return Err("the build's processes did not all stop".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Lets a paused build run again: its group thawed, and every process
    /// stopped by signal continued.
    pub async fn resume(&mut self) -> Result<(), String> {
        let thawed = match &self.freeze {
            Some(freeze) => freeze.set(false).await,
            None => Ok(()),
        };
        for pid in std::mem::take(&mut self.stopped) {
            if let Ok(pid_t) = libc::pid_t::try_from(pid) {
                // SAFETY: as in `stop_tree`.
                unsafe { libc::kill(pid_t, libc::SIGCONT) };
            }
        }
        thawed
    }

    /// Whether the build's processes are frozen by the group itself (else
    /// a pause stops each process).
    pub fn freezes_group(&self) -> bool {
        self.freeze.is_some()
    }

    /// The CPU time the build's processes used so far, where a cgroup
    /// counts it.
    pub fn cpu_time(&self) -> Option<Duration> {
        match self.cpu_usage.as_ref()? {
            CpuUsage::V1(path) => {
                let ns: u64 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
                Some(Duration::from_nanos(ns))
            }
            CpuUsage::V2(path) => {
                let text = std::fs::read_to_string(path).ok()?;
                let usec: u64 = text
                    .lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))?
                    .trim()
                    .parse()
                    .ok()?;
                Some(Duration::from_micros(usec))
            }
        }
    }

    /// Waits until every process of the build is gone, then removes its
    /// groups. (A group dropped without this is removed if it is empty by
    /// then, or else when a worker next starts.)
    pub async fn remove(mut self) {
        let deadline = Instant::now() + Duration::from_millis(EMPTY_MS_MAX);
        for dir in std::mem::take(&mut self.dirs) {
            loop {
                let empty = std::fs::read_to_string(dir.join("cgroup.procs"))
                    .map(|procs| procs.trim().is_empty())
                    .unwrap_or(true);
                if empty || Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if let Err(e) = std::fs::remove_dir(&dir) {
                warn!(group = %dir.display(), error = %e, "cannot remove a build's cgroup");
            }
        }
    }
}

impl Drop for BuildGroup {
    fn drop(&mut self) {
        // A frozen process cannot die: thaw first, so the group empties.
        match &self.freeze {
            Some(Freeze::V1(state)) => {
                let _ = std::fs::write(state, "THAWED");
            }
            Some(Freeze::V2(freeze, _)) => {
                let _ = std::fs::write(freeze, "0");
            }
            None => {}
        }
        for dir in &self.dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// The task that measures a build's disk use, stopped when it is dropped.
struct DiskWatch {
    /// Set once, when the build is found over its limit.
    over: Arc<OnceLock<String>>,
    dir: PathBuf,
    max: u64,
    task: tokio::task::JoinHandle<()>,
}

impl DiskWatch {
    fn start(dir: PathBuf, max: u64) -> DiskWatch {
        let over = Arc::new(OnceLock::new());
        let task = tokio::spawn({
            let (over, dir) = (over.clone(), dir.clone());
            async move {
                loop {
                    let started = Instant::now();
                    let Some(reason) = measure(&dir, max).await else {
                        return;
                    };
                    if let Err(reason) = reason {
                        let _ = over.set(reason);
                        return;
                    }
                    let wait = (started.elapsed() * DISK_WATCH_COST).max(Duration::from_millis(DISK_WATCH_MS_MIN));
                    tokio::time::sleep(wait).await;
                }
            }
        });
        DiskWatch { over, dir, max, task }
    }
}

impl Drop for DiskWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Measures `dir` off the async threads: `Err(reason)` when it takes more
/// than `max`; `None` when the measurement could not run.
async fn measure(dir: &Path, max: u64) -> Option<Result<(), String>> {
    let dir = dir.to_path_buf();
    let used = tokio::task::spawn_blocking(move || disk_use(&dir, max)).await.ok()?;
    Some(if used > max {
        Err(format!(
            "it wrote more than {} into its build directory (the worker's --max-build-disk)",
            kiln_protocol::system::format_bytes(max)
        ))
    } else {
        Ok(())
    })
}

impl BuildGroup {
    /// Measures the build's disk use now, once, and stops it if it is over
    /// the limit: for the end of the last step, before packing.
    pub async fn check_disk_now(&self) -> Option<String> {
        if let Some(Err(reason)) = measure(&self.disk.dir, self.disk.max).await {
            let _ = self.disk.over.set(reason);
        }
        self.disk.over.get().cloned()
    }
}

/// The space the tree under `dir` takes on disk (allocated blocks; links
/// not followed), counting no further than just past `stop_above`.
fn disk_use(dir: &Path, stop_above: u64) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut used = 0u64;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            used = used.saturating_add(meta.blocks().saturating_mul(512));
            if used > stop_above {
                return used;
            }
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    used
}

/// What the forked child does before exec.
struct ChildSetup {
    procs: Vec<RawFd>,
    affinity: Option<libc::cpu_set_t>,
}

/// `IOPRIO_WHO_PROCESS` and the idle class, from `linux/ioprio.h`.
const IOPRIO_WHO_PROCESS: libc::c_long = 1;
const IOPRIO_IDLE: libc::c_long = 3 << 13;

impl ChildSetup {
    fn run(&self) -> std::io::Result<()> {
        for fd in &self.procs {
            // "0": the writing process itself, in cgroup v1 and v2.
            // SAFETY: a write of two bytes from a static buffer.
            if unsafe { libc::write(*fd, b"0".as_ptr().cast(), 1) } != 1 {
                return Err(std::io::Error::last_os_error());
            }
        }
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: plain system calls on this process, with valid pointers;
        // the path is a static NUL-terminated string.
        unsafe {
            // A session of its own: no controlling terminal to inject
            // input into, and an autogroup of its own, which is lowered.
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            let autogroup = libc::open(c"/proc/self/autogroup".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if autogroup >= 0 {
                // Absent where the kernel has no autogroups: nothing to lower.
                let written = libc::write(autogroup, b"19".as_ptr().cast(), 2);
                libc::close(autogroup);
                if written != 2 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setpriority(libc::PRIO_PROCESS, 0, 19) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, IOPRIO_IDLE) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(set) = &self.affinity {
                if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }
}

/// Checks that this machine lets a child take the idle priorities (a
/// seccomp filter could refuse them): runs `/bin/true` with them.
pub fn check_priorities() -> Result<(), String> {
    let setup = ChildSetup {
        procs: Vec::new(),
        affinity: None,
    };
    let mut command = std::process::Command::new("/bin/true");
    // SAFETY: as in `BuildGroup::apply`.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, move || setup.run());
    }
    match command.status() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!("a process at idle priority did not run ({status})")),
        Err(e) => Err(format!("cannot start a process at idle CPU and I/O priority: {e}")),
    }
}

fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is a plain bit array, valid all zero; CPU_SET only
    // sets a bit, and every CPU number here came from the kernel's lists.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            if cpu < libc::CPU_SETSIZE as usize {
                libc::CPU_SET(cpu, &mut set);
            }
        }
        set
    }
}

/// Waits until `path` reads as `done` says, for at most [`FREEZE_MS_MAX`].
async fn wait_file(path: &Path, done: impl Fn(&str) -> bool, failed: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_millis(FREEZE_MS_MAX);
    loop {
        if std::fs::read_to_string(path).is_ok_and(|text| done(&text)) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("{failed} within {FREEZE_MS_MAX} ms"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The `max` count in a `pids.events` file: forks the limit refused.
fn refused_forks(events: &str) -> Option<u64> {
    events
        .lines()
        .find_map(|line| line.strip_prefix("max "))
        .and_then(|n| n.trim().parse().ok())
}

/// How many processes are in the tree under `root` (itself included),
/// counting no further than `stop_at`.
fn tree_size(root: u32, stop_at: usize) -> usize {
    tree_pids(root, stop_at).len()
}

/// The processes in the tree under `root` (itself first), at most
/// `stop_at` of them.
fn tree_pids(root: u32, stop_at: usize) -> Vec<u32> {
    let mut seen = Vec::new();
    let mut pending = vec![root];
    while let Some(pid) = pending.pop() {
        seen.push(pid);
        if seen.len() >= stop_at {
            break;
        }
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            if let Ok(children) = std::fs::read_to_string(task.path().join("children")) {
                pending.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
            }
        }
    }
    seen
}

/// The cgroup under which this node may create build groups with
/// `controller`: v2 first, then v1.
fn usable_parent(controller: &str, mountinfo: &str, own: &str) -> Option<Parent> {
    candidates(controller, mountinfo, own)
        .into_iter()
        .find(|parent| usable(parent, controller))
}

/// Where `controller`'s groups would go, from `/proc/self/mountinfo` and
/// `/proc/self/cgroup`, in the order to try them.
fn candidates(controller: &str, mountinfo: &str, own: &str) -> Vec<Parent> {
    let mut found = Vec::new();
    for line in mountinfo.lines() {
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = before.split(' ').collect();
        let after: Vec<&str> = after.split(' ').collect();
        let (Some(root), Some(mount), Some(fstype)) = (fields.get(3), fields.get(4), after.first()) else {
            continue;
        };
        let (version, path) = match *fstype {
            "cgroup2" => (Version::V2, own_path(own, None)),
            "cgroup" => {
                let options = after.get(2).copied().unwrap_or("");
                if !options.split(',').any(|o| o == controller) {
                    continue;
                }
                (Version::V1, own_path(own, Some(controller)))
            }
            _ => continue,
        };
        let Some(path) = path else { continue };
        // Inside a cgroup namespace the mount's root is a prefix of ours.
        let relative = path.strip_prefix(root).unwrap_or(&path).trim_start_matches('/');
        let dir = Path::new(mount).join(relative);
        found.push(Parent { dir, version });
    }
    found.sort_by_key(|parent| parent.version == Version::V1);
    found
}

/// This process's cgroup path in the v2 hierarchy (`None`) or in the v1
/// hierarchy of `controller`.
fn own_path(own: &str, controller: Option<&str>) -> Option<String> {
    own.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = match controller {
            None => controllers.is_empty(),
            Some(c) => controllers.split(',').any(|x| x == c),
        };
        matches.then(|| path.to_string())
    })
}

/// Whether a build group with `controller` can be created under `parent`:
/// tried for real, with a probe group removed at once. For v2 the
/// controller is enabled for children first; if our own group holds
/// processes (ours), this node first moves itself into a leaf `kiln-node`
/// group, as a systemd unit with `Delegate=` expects.
fn usable(parent: &Parent, controller: &str) -> bool {
    if parent.version == Version::V2 {
        let listed = std::fs::read_to_string(parent.dir.join("cgroup.controllers"))
            .is_ok_and(|text| text.split_whitespace().any(|c| c == controller));
        if !listed {
            return false;
        }
        let enabled = || {
            std::fs::read_to_string(parent.dir.join("cgroup.subtree_control"))
                .is_ok_and(|text| text.split_whitespace().any(|c| c == controller))
        };
        let enable = || {
            std::fs::OpenOptions::new()
                .write(true)
                .open(parent.dir.join("cgroup.subtree_control"))
                .and_then(|mut f| f.write_all(format!("+{controller}").as_bytes()))
        };
        if !enabled() && enable().is_err() {
            let leaf = parent.dir.join("kiln-node");
            let moved = (leaf.is_dir() || std::fs::create_dir(&leaf).is_ok())
                && std::fs::write(leaf.join("cgroup.procs"), std::process::id().to_string()).is_ok();
            if !moved || enable().is_err() {
                return false;
            }
        }
    }
    let probe = parent.dir.join(format!("kiln-{}-probe", std::process::id()));
    if std::fs::create_dir(&probe).is_err() {
        return false;
    }
    let file = match controller {
        "pids" => "pids.max",
        "cpuset" => "cpuset.cpus",
        "freezer" => "freezer.state",
        "cpuacct" => "cpuacct.usage",
        _ => "cgroup.procs",
    };
    let works = probe.join(file).exists();
    let _ = std::fs::remove_dir(&probe);
    works
}

/// The CPUs a group under `parent` may be given.
fn cpuset_cpus(parent: &Parent) -> Vec<usize> {
    let file = match parent.version {
        Version::V1 => "cpuset.effective_cpus",
        Version::V2 => "cpuset.cpus.effective",
    };
    std::fs::read_to_string(parent.dir.join(file))
        .ok()
        .map(|text| parse_cpu_list(&text))
        .filter(|cpus| !cpus.is_empty())
        .unwrap_or_else(allowed_cpus)
}

/// The CPUs this process may run on (`Cpus_allowed_list`).
fn allowed_cpus() -> Vec<usize> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(parse_cpu_list)
        })
        .filter(|cpus| !cpus.is_empty())
        .unwrap_or_else(|| (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect())
}

/// The kernel's CPU list format: "0-3,6,8-9".
fn parse_cpu_list(text: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let range = match part.split_once('-') {
            Some((a, b)) => a.trim().parse::<usize>().ok().zip(b.trim().parse::<usize>().ok()),
            None => part.trim().parse::<usize>().ok().map(|a| (a, a)),
        };
        if let Some((a, b)) = range {
            cpus.extend(a..=b.min(a + libc::CPU_SETSIZE as usize));
        }
    }
    cpus
}

fn format_cpu_list(cpus: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        let mut end = start;
        while i + 1 < cpus.len() && cpus[i + 1] == end + 1 {
            i += 1;
            end = cpus[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTS: &str = "\
25 24 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
30 25 0:27 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
31 25 0:28 / /sys/fs/cgroup/cpuset rw,nosuid - cgroup cgroup rw,cpuset
40 22 8:1 / / rw,relatime - ext4 /dev/sda1 rw";
    const HYBRID_OWN: &str = "8:pids:/user.slice\n3:cpuset:/\n0::/user.slice/session-1.scope\n";

    /// A process's state letter, from `/proc/PID/stat` (`T`: stopped).
    fn state(pid: u32) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(')')?.1.trim_start().chars().next()
    }

    async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn without_a_freezer_a_pause_stops_every_process_of_the_tree_and_a_resume_continues_them() {
        let dir = tempfile::tempdir().unwrap();
        // As detected where no freezer (nor any) cgroup may be created.
        let enforcement = Enforcement {
            limits: BuildLimits::default(),
            pids: None,
            cpuset: None,
            freezer: None,
            cpuacct: None,
            cpu_list: Vec::new(),
            cpu_text: String::new(),
        };
        let mut group = enforcement.prepare("pause-test", dir.path()).unwrap();
        assert!(!group.freezes_group());
        let mut child = tokio::process::Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30 & wait"])
            .spawn()
            .unwrap();
        let root = child.id().unwrap();
        wait_for("the shell's two children", || tree_pids(root, 16).len() == 3).await;
        let tree = tree_pids(root, 16);
        group.pause(Some(root)).await.unwrap();
        wait_for("every process stopped", || tree.iter().all(|p| state(*p) == Some('T'))).await;
        group.resume().await.unwrap();
        wait_for("every process running again", || {
            tree.iter().all(|p| state(*p).is_some_and(|s| s != 'T'))
        })
        .await;
        for pid in tree.iter().skip(1) {
            // SAFETY: kill(2) on the test's own children.
            unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
        }
        let _ = child.kill().await;
    }

    #[test]
    fn candidates_are_found_in_both_hierarchies_v2_first() {
        let found = candidates("pids", HYBRID_MOUNTS, HYBRID_OWN);
        assert_eq!(
            found,
            vec![
                Parent {
                    dir: PathBuf::from("/sys/fs/cgroup/unified/user.slice/session-1.scope"),
                    version: Version::V2
                },
                Parent {
                    dir: PathBuf::from("/sys/fs/cgroup/pids/user.slice"),
                    version: Version::V1
                },
            ]
        );
        let cpuset = candidates("cpuset", HYBRID_MOUNTS, HYBRID_OWN);
        assert_eq!(cpuset[1].dir, PathBuf::from("/sys/fs/cgroup/cpuset"));
    }

    #[test]
    fn a_cgroup_namespace_root_is_stripped_from_our_path() {
        let mounts = "26 25 0:23 /system.slice /sys/fs/cgroup rw - cgroup2 cgroup2 rw";
        let own = "0::/system.slice/kiln.service\n";
        assert_eq!(
            candidates("pids", mounts, own),
            vec![Parent {
                dir: PathBuf::from("/sys/fs/cgroup/kiln.service"),
                version: Version::V2
            }]
        );
    }

    #[test]
    fn cpu_lists_parse_and_print_as_the_kernel_writes_them() {
        assert_eq!(parse_cpu_list("0-3,6,8-9\n"), vec![0, 1, 2, 3, 6, 8, 9]);
        assert_eq!(parse_cpu_list(""), Vec::<usize>::new());
        assert_eq!(parse_cpu_list("x,2"), vec![2]);
        assert_eq!(format_cpu_list(&[0, 1, 2, 3, 6, 8, 9]), "0-3,6,8-9");
        assert_eq!(format_cpu_list(&[1]), "1");
    }

    #[test]
    fn disk_use_counts_allocated_bytes_and_stops_counting_past_the_limit() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("a/b")).unwrap();
        std::fs::write(tmp.path().join("a/b/big"), vec![7u8; 1 << 20]).unwrap();
        std::fs::write(tmp.path().join("small"), b"x").unwrap();
        // A sparse file takes almost nothing.
        let sparse = std::fs::File::create(tmp.path().join("sparse")).unwrap();
        sparse.set_len(1 << 30).unwrap();
        let used = disk_use(tmp.path(), u64::MAX);
        assert!((1 << 20..(1 << 20) + (1 << 18)).contains(&used), "{used}");
        assert!(disk_use(tmp.path(), 1000) > 1000);
    }

    #[test]
    fn refused_forks_are_read_from_pids_events() {
        assert_eq!(refused_forks("max 0\n"), Some(0));
        assert_eq!(refused_forks("max 17\n"), Some(17));
        assert_eq!(refused_forks(""), None);
    }

    #[test]
    fn the_tree_of_this_process_counts_itself_and_its_children() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let size = tree_size(std::process::id(), 1000);
        let _ = child.kill();
        let _ = child.wait();
        assert!(size >= 2, "{size}");
        assert_eq!(tree_size(std::process::id(), 1), 1);
    }
}
