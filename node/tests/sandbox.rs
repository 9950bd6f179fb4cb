//! The build sandbox, for real: bubblewrap namespaces, the real `cc`, real
//! processes killed at their limits.

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_node::archive;
use kiln_node::worker::limits::BuildLimits;
use kiln_node::worker::sandbox::{BuildSpec, BuildStatus, Log, Sandbox, SourceInput, Steer};
use kiln_protocol::Hash;
use tokio::sync::watch;

fn spec(steps: &[&str], outputs: &[&str]) -> BuildSpec {
    BuildSpec {
        steps: steps.iter().map(|s| s.to_string()).collect(),
        outputs: outputs.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>(),
        options: BTreeMap::new(),
        network: false,
        timeout: Duration::from_secs(60),
        memory_bytes: 0,
        source: SourceInput::None,
    }
}

fn log_text(log: &[u8]) -> String {
    String::from_utf8_lossy(log).into_owned()
}

fn hello_source(dir: &Path) -> PathBuf {
    let source = dir.join("hello-src.tar");
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/../recipes/hello-c/src");
    archive::pack_dir(Path::new(src), std::fs::File::create(&source).unwrap()).unwrap();
    source
}

/// Waits (at most 10 s) until no process's command line holds `marker`.
fn wait_until_gone(marker: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = std::process::Command::new("pgrep")
            .args(["-f", marker])
            .output()
            .unwrap();
        if !found.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still running: {}",
            String::from_utf8_lossy(&found.stdout)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_c_recipe_built_in_two_sandboxes_gives_one_artifact_hash() {
    let tmp = tempfile::tempdir().unwrap();
    let source = hello_source(tmp.path());
    let mut hashes = Vec::new();
    for worker in ["one", "two"] {
        let sandbox = Sandbox::new(&tmp.path().join(worker), false).unwrap();
        let mut build = spec(
            &[
                "cc -${opt} -DGREETING_loud -o hello hello.c"
                    .replace("${opt}", "O2")
                    .as_str(),
                "./hello > greeting.txt",
            ],
            &["hello", "greeting.txt"],
        );
        build.source = SourceInput::Archive(source.clone());
        build.options.insert("opt".into(), "O2".into());
        let result = runtime().block_on(sandbox.run(&build)).unwrap();
        let BuildStatus::Succeeded { artifact } = &result.status else {
            panic!("build failed: {:?}\n{}", result.status, log_text(&result.log));
        };
        hashes.push(Hash::of(&std::fs::read(artifact).unwrap()));
        assert!(log_text(&result.log).contains("$ ./hello > greeting.txt"));
    }
    assert_eq!(
        hashes[0], hashes[1],
        "the same recipe built twice gives different bytes"
    );
}

#[test]
fn a_build_cannot_reach_the_network_without_permission() {
    let tmp = tempfile::tempdir().unwrap();
    // A listener on the host's loopback: inside the sandbox's own network
    // namespace, 127.0.0.1 is another machine's loopback and nothing listens.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let sandbox = Sandbox::new(tmp.path(), false).unwrap();
    let step = format!(
        "bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}' || {{ echo 'network unreachable from the sandbox'; exit 7; }}"
    );
    let result = runtime().block_on(sandbox.run(&spec(&[&step], &["out"]))).unwrap();
    assert_eq!(
        result.status,
        BuildStatus::StepFailed {
            step: 1,
            status: "exit status: 7".into()
        },
        "{}",
        log_text(&result.log)
    );
    assert!(log_text(&result.log).contains("network unreachable from the sandbox"));
    assert!(listener.accept().is_err(), "the build reached the host's network");

    let mut needs_network = spec(&["true"], &["out"]);
    needs_network.network = true;
    let err = runtime()
        .block_on(sandbox.run(&needs_network))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("--allow-network"), "{err}");
}

#[test]
fn a_build_past_its_time_limit_is_killed_with_its_whole_process_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(tmp.path(), false).unwrap();
    let marker = format!("kiln-sleeper-{}", std::process::id());
    let step =
        format!("echo going to sleep; bash -c 'exec -a {marker} sleep 300' & bash -c 'exec -a {marker} sleep 300'");
    let mut build = spec(&[&step], &["out"]);
    build.timeout = Duration::from_secs(2);
    let started = Instant::now();
    let result = runtime().block_on(sandbox.run(&build)).unwrap();
    assert_eq!(
        result.status,
        BuildStatus::TimedOut {
            after: Duration::from_secs(2)
        }
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    let log = log_text(&result.log);
    assert!(
        log.contains("going to sleep") && log.contains("ran past its time limit of 2 s"),
        "{log}"
    );
    // Every process of the build is gone, including the one in the background.
    wait_until_gone(&marker);
}

#[test]
fn a_build_cannot_touch_the_contributors_home_or_kilns_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    std::fs::write(data_dir.join("node.key"), b"secret").unwrap();
    let home = PathBuf::from(std::env::var("HOME").unwrap());
    let escape = format!("kiln-escape-{}", std::process::id());
    let sandbox = Sandbox::new(&data_dir, false).unwrap();
    let steps = [
        format!("cat {}/node.key > stolen || echo 'data dir hidden'", data_dir.display()),
        format!(
            "echo x > {}/{escape} ; echo x > {}/{escape} ; echo x > /etc/{escape} ; echo x > /usr/{escape} ; true",
            home.display(),
            data_dir.display()
        ),
        "touch out".to_string(),
    ];
    let steps: Vec<&str> = steps.iter().map(String::as_str).collect();
    let result = runtime().block_on(sandbox.run(&spec(&steps, &["out"]))).unwrap();
    assert!(
        matches!(result.status, BuildStatus::Succeeded { .. }),
        "{:?}: {}",
        result.status,
        log_text(&result.log)
    );
    assert!(
        log_text(&result.log).contains("data dir hidden"),
        "{}",
        log_text(&result.log)
    );
    for place in [
        home.clone(),
        data_dir.clone(),
        PathBuf::from("/etc"),
        PathBuf::from("/usr"),
    ] {
        assert!(
            !place.join(&escape).exists(),
            "the build wrote into {}",
            place.display()
        );
    }
    assert_eq!(std::fs::read(data_dir.join("node.key")).unwrap(), b"secret");
}

#[test]
fn a_failing_step_is_reported_with_its_log_and_later_steps_do_not_run() {
    let tmp = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(tmp.path(), false).unwrap();
    let result = runtime()
        .block_on(sandbox.run(&spec(
            &["echo compiling; echo 'error: it broke' >&2; exit 2", "echo never"],
            &["out"],
        )))
        .unwrap();
    assert_eq!(
        result.status,
        BuildStatus::StepFailed {
            step: 1,
            status: "exit status: 2".into()
        }
    );
    let log = log_text(&result.log);
    assert!(
        log.contains("compiling") && log.contains("error: it broke") && log.contains("step 1 failed"),
        "{log}"
    );
    assert!(!log.contains("$ echo never"), "{log}");

    let result = runtime()
        .block_on(sandbox.run(&spec(&["true"], &["missing.bin"])))
        .unwrap();
    assert_eq!(
        result.status,
        BuildStatus::MissingOutput {
            output: "missing.bin".into()
        }
    );
}

#[test]
fn leftover_build_directories_are_removed_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("builds/build-crashed/work")).unwrap();
    let _sandbox = Sandbox::new(tmp.path(), false).unwrap();
    assert!(!tmp.path().join("builds/build-crashed").exists());
}

#[test]
fn a_git_source_is_checked_out_at_its_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args([
                "-c",
                "user.name=kiln",
                "-c",
                "user.email=kiln@example.org",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(&repo)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    git(&["init", "-q"]);
    std::fs::write(repo.join("version.txt"), "first\n").unwrap();
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "first"]);
    let first = git(&["rev-parse", "HEAD"]);
    std::fs::write(repo.join("version.txt"), "second\n").unwrap();
    git(&["commit", "-q", "-am", "second"]);

    let sandbox = Sandbox::new(&tmp.path().join("data"), false).unwrap();
    let mut build = spec(&["cp version.txt out.txt"], &["out.txt"]);
    build.source = SourceInput::Git {
        url: format!("file://{}", repo.display()),
        rev: first,
    };
    let result = runtime().block_on(sandbox.run(&build)).unwrap();
    let BuildStatus::Succeeded { artifact } = &result.status else {
        panic!("{:?}: {}", result.status, log_text(&result.log));
    };
    let mut archive = tar::Archive::new(std::fs::File::open(artifact).unwrap());
    let mut entry = archive.entries().unwrap().next().unwrap().unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut entry, &mut text).unwrap();
    assert_eq!(text, "first\n", "the build used another commit");
}

#[test]
fn a_build_over_its_memory_limit_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(tmp.path(), false).unwrap();
    let mut build = spec(
        &["python3 -c 'x = bytearray(1024 * 1024 * 1024)' || { echo 'allocation refused'; exit 3; }"],
        &["out"],
    );
    build.memory_bytes = 256 * 1024 * 1024;
    let result = runtime().block_on(sandbox.run(&build)).unwrap();
    assert_eq!(
        result.status,
        BuildStatus::StepFailed {
            step: 1,
            status: "exit status: 3".into()
        }
    );
    let log = log_text(&result.log);
    assert!(
        log.contains("MemoryError") && log.contains("allocation refused"),
        "{log}"
    );
}

/// Reads a file the build wrote into its artifact.
fn artifact_file(artifact: &Path, name: &str) -> String {
    let mut archive = tar::Archive::new(std::fs::File::open(artifact).unwrap());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap() == Path::new(name) {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut entry, &mut text).unwrap();
            return text;
        }
    }
    panic!("{name} is not in the artifact");
}

fn succeeded(result: &kiln_node::worker::sandbox::BuildResult) -> &Path {
    match &result.status {
        BuildStatus::Succeeded { artifact } => artifact,
        other => panic!("build failed: {other:?}\n{}", log_text(&result.log)),
    }
}

#[test]
fn every_build_process_runs_at_idle_cpu_and_io_priority() {
    let tmp = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(tmp.path(), false).unwrap();
    // A process the step starts in the background, read from the host's
    // /proc by the step's own view: a grandchild of bubblewrap inherits.
    let build = spec(
        &[
            "sh -c 'cat /proc/self/stat' > stat.txt; ionice -p $$ > io.txt; nice > nice.txt; \
           cat /proc/self/autogroup > autogroup.txt 2>/dev/null || echo none > autogroup.txt",
        ],
        &["stat.txt", "io.txt", "nice.txt", "autogroup.txt"],
    );
    let result = runtime().block_on(sandbox.run(&build)).unwrap();
    let artifact = succeeded(&result);
    let stat = artifact_file(artifact, "stat.txt");
    // Fields after the command name: state is field 3, so field N is
    // index N - 3 here. nice is field 19, policy field 41 (SCHED_IDLE = 5).
    let after_name: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    assert_eq!(after_name[19 - 3], "19", "nice: {stat}");
    assert_eq!(after_name[41 - 3], "5", "scheduling policy (5 is SCHED_IDLE): {stat}");
    assert_eq!(artifact_file(artifact, "io.txt").trim(), "idle");
    assert_eq!(artifact_file(artifact, "nice.txt").trim(), "19");
    // Where the kernel shares CPU time between sessions first, the build's
    // session is lowered too.
    if Path::new("/proc/self/autogroup").exists() {
        let autogroup = artifact_file(artifact, "autogroup.txt");
        assert!(autogroup.trim().ends_with("nice 19"), "{autogroup}");
    }
    assert!(
        log_text(&result.log).contains("idle CPU and I/O priority"),
        "the log does not name the priority: {}",
        log_text(&result.log)
    );
}

#[test]
fn a_fork_bomb_is_stopped_at_the_process_limit_within_seconds() {
    let tmp = tempfile::tempdir().unwrap();
    let limits = BuildLimits {
        processes_max: 64,
        ..BuildLimits::default()
    };
    let sandbox = Sandbox::with_limits(tmp.path(), false, limits).unwrap();
    let marker = format!("kiln-bomb-{}", std::process::id());
    // Each shell starts two more and waits; nothing ever exits.
    let step = format!("bash -c 'exec -a {marker} bash -c \"b() {{ b & b & wait; }}; b\"'");
    let mut build = spec(&[&step], &["out"]);
    build.timeout = Duration::from_secs(300);
    let started = Instant::now();
    let result = runtime().block_on(sandbox.run(&build)).unwrap();
    let took = started.elapsed();
    let BuildStatus::Stopped { reason } = &result.status else {
        panic!(
            "the fork bomb was not stopped: {:?}\n{}",
            result.status,
            log_text(&result.log)
        );
    };
    assert!(reason.contains("more than 64 processes"), "{reason}");
    assert!(took < Duration::from_secs(20), "stopped only after {took:?}");
    let log = log_text(&result.log);
    assert!(
        log.contains("64 processes at once") && log.contains("build stopped: it tried to run more than 64"),
        "{log}"
    );
    // Every process of the bomb is gone.
    wait_until_gone(&marker);
    // A build within the limit still runs on this sandbox.
    let fine = runtime()
        .block_on(sandbox.run(&spec(
            &["for i in 1 2 3 4; do sleep 0.1 & done; wait; touch out"],
            &["out"],
        )))
        .unwrap();
    succeeded(&fine);
}

#[test]
fn a_build_given_one_cpu_sees_one_and_cannot_use_more() {
    let tmp = tempfile::tempdir().unwrap();
    let limits = BuildLimits {
        cpus: Some(1),
        ..BuildLimits::default()
    };
    let sandbox = Sandbox::with_limits(tmp.path(), false, limits).unwrap();
    assert_eq!(sandbox.build_cpus(), Some(1));
    // Two busy loops for 2 s of wall time; the shell that waited for them
    // then reads its children's CPU time (fields 16 and 17, in ticks).
    // Each loop's `timeout` exits 124: it really ran for its 2 s.
    let step = "nproc > nproc.txt; \
        for i in 1 2; do (timeout 2 sh -c 'while :; do :; done'; echo $? >> rc.txt) & done; wait; \
        cat /proc/$$/stat > stat.txt; getconf CLK_TCK > tck.txt";
    let result = runtime()
        .block_on(sandbox.run(&spec(&[step], &["nproc.txt", "stat.txt", "tck.txt", "rc.txt"])))
        .unwrap();
    let artifact = succeeded(&result);
    assert_eq!(artifact_file(artifact, "nproc.txt").trim(), "1");
    assert_eq!(artifact_file(artifact, "rc.txt"), "124\n124\n");
    let stat = artifact_file(artifact, "stat.txt");
    let after_name: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: f64 = after_name[16 - 3].parse::<f64>().unwrap() + after_name[17 - 3].parse::<f64>().unwrap();
    let tck: f64 = artifact_file(artifact, "tck.txt").trim().parse().unwrap();
    let cpu_s = ticks / tck;
    // One CPU for 2 s is at most 2 s of CPU time (and some slack for the
    // tick's rounding); both loops together on two CPUs would take 4 s.
    assert!(cpu_s <= 2.4, "the build used {cpu_s:.2} s of CPU in 2 s on one CPU");
    assert!(log_text(&result.log).contains("1 CPU,"), "{}", log_text(&result.log));
}

#[test]
fn a_build_writing_more_than_its_disk_limit_is_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let limits = BuildLimits {
        disk_bytes_max: 8 << 20,
        ..BuildLimits::default()
    };
    let sandbox = Sandbox::with_limits(tmp.path(), false, limits).unwrap();
    // Still running when the watch sees it.
    let mut build = spec(&["head -c 32M /dev/zero > big; echo written; sleep 60"], &["out"]);
    build.timeout = Duration::from_secs(300);
    let started = Instant::now();
    let result = runtime().block_on(sandbox.run(&build)).unwrap();
    let BuildStatus::Stopped { reason } = &result.status else {
        panic!("not stopped: {:?}\n{}", result.status, log_text(&result.log));
    };
    assert!(
        reason.contains("more than 8.0 MiB into its build directory"),
        "{reason}"
    );
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
    assert!(log_text(&result.log).contains("build stopped: it wrote more than 8.0 MiB"));

    // Done before the watch looks again: checked once more after the last step.
    let result = runtime()
        .block_on(sandbox.run(&spec(&["head -c 32M /dev/zero > out"], &["out"])))
        .unwrap();
    assert!(
        matches!(result.status, BuildStatus::Stopped { .. }),
        "{:?}",
        result.status
    );

    // Within the limit, it builds.
    succeeded(
        &runtime()
            .block_on(sandbox.run(&spec(&["head -c 1M /dev/zero > out"], &["out"])))
            .unwrap(),
    );
}

#[test]
fn a_builds_cpu_time_is_counted_as_niced_not_as_the_owners() {
    use kiln_node::worker::CpuTicks;
    let tmp = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(tmp.path(), false).unwrap();
    let step = "for i in 1 2; do timeout 2 sh -c 'while :; do :; done' & done; wait; cat /proc/$$/stat > stat.txt";
    let before = CpuTicks::now().unwrap();
    let result = runtime().block_on(sandbox.run(&spec(&[step], &["stat.txt"]))).unwrap();
    let after = CpuTicks::now().unwrap();
    let stat = artifact_file(succeeded(&result), "stat.txt");
    let after_name: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    // The build's user time (cutime, field 16), in the same clock ticks.
    let build_user: u64 = after_name[16 - 3].parse().unwrap();
    assert!(build_user > 0, "the loops did not run: {stat}");
    // Other niced processes can only add to the machine's niced time, so
    // it holds at least the build's (less a tick per process for rounding).
    let niced = after.nice - before.nice;
    assert!(
        niced + 5 >= build_user,
        "the build used {build_user} ticks, but only {niced} niced ticks passed: its time would count as the owner's"
    );
}

/// How many "tick N" lines the log has.
fn ticks(log: &Log) -> usize {
    let (tail, _) = log.tail(64 * 1024);
    tail.lines().filter(|l| l.starts_with("tick ")).count()
}

/// Waits (at most 30 s) until `log` holds `needle`.
fn wait_log(log: &Log, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !log.tail(64 * 1024).0.contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the log: {}",
            log.tail(64 * 1024).0
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `build` on `runtime`, steered by the sender returned, its log
/// readable while it runs.
fn start_steered(
    runtime: &tokio::runtime::Runtime,
    sandbox: &Arc<Sandbox>,
    build: BuildSpec,
) -> (
    watch::Sender<Steer>,
    Log,
    tokio::task::JoinHandle<Result<kiln_node::worker::sandbox::BuildResult, kiln_node::worker::sandbox::SandboxError>>,
) {
    let (steer, steered) = watch::channel(Steer::Run);
    let log = Log::default();
    let running = runtime.spawn({
        let (sandbox, log) = (sandbox.clone(), log.clone());
        async move { sandbox.run_steered(&build, &log, steered).await }
    });
    (steer, log, running)
}

#[test]
fn a_paused_build_stops_where_it_is_its_clock_stops_and_it_finishes_after_resuming() {
    let tmp = tempfile::tempdir().unwrap();
    let sandbox = Arc::new(Sandbox::new(tmp.path(), false).unwrap());
    let marker = format!("kiln-ticks-{}", std::process::id());
    // About 1.5 s of work, in a time limit of 4 s: a pause of 4.5 s that
    // counted against the limit would kill it.
    let step = format!(
        "bash -c 'exec -a {marker} bash -c \"for i in \\$(seq 1 20); do echo tick \\$i; sleep 0.05; done\"'; touch out"
    );
    let mut build = spec(&[&step], &["out"]);
    build.timeout = Duration::from_secs(4);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (steer, log, running) = start_steered(&runtime, &sandbox, build);
    wait_log(&log, "tick 3\n");
    steer.send_replace(Steer::Pause("the test's owner is busy".into()));
    wait_log(&log, "kiln: paused: the test's owner is busy");
    // Lines written just before the freeze may still be in the pipe.
    std::thread::sleep(Duration::from_millis(300));
    let at_pause = ticks(&log);
    assert!(at_pause < 20, "the build ended before it was paused");
    // The pause lasts past the time limit; nothing runs meanwhile.
    std::thread::sleep(Duration::from_millis(4_500));
    assert_eq!(ticks(&log), at_pause, "the build ran on while paused");
    steer.send_replace(Steer::Run);
    let result = runtime.block_on(running).unwrap().unwrap();
    succeeded(&result);
    assert_eq!(ticks(&log), 20);
    let text = log_text(&result.log);
    let paused_s: u64 = text
        .split("kiln: resumed after ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no resume in the log: {text}"));
    assert!(paused_s >= 4, "{text}");
    assert!(result.paused >= Duration::from_millis(4_500), "{:?}", result.paused);
    if sandbox.limits_summary().contains("CPU time counted by cgroup") {
        assert!(
            result.cpu_time.is_some_and(|t| t > Duration::ZERO),
            "{:?}",
            result.cpu_time
        );
    }

    // Given up while paused: killed, whole tree, with the reason.
    let mut build = spec(&[&step], &["out"]);
    build.timeout = Duration::from_secs(60);
    let (steer, log, running) = start_steered(&runtime, &sandbox, build);
    wait_log(&log, "tick 2\n");
    steer.send_replace(Steer::Pause("busy".into()));
    wait_log(&log, "kiln: paused: busy");
    steer.send_replace(Steer::GiveUp("paused too long".into()));
    let result = runtime.block_on(running).unwrap().unwrap();
    assert_eq!(
        result.status,
        BuildStatus::GivenUp {
            reason: "paused too long".into()
        }
    );
    assert!(log_text(&result.log).contains("build given up: paused too long"));
    wait_until_gone(&marker);
}
