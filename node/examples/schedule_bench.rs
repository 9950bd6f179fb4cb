//! The coordinator's matching alone (`kiln_node::coordinator::schedule`): JOBS queued
//! jobs against WORKERS workers with varied systems (4 arches, 3 libcs, 8
//! memory sizes, 3 compiler versions, labels), jobs with 48 distinct
//! requirement sets and 3 addresses each. Workers take 100 jobs each, so
//! every job gets a decision. Prints decisions per second (median of
//! RUNS plans over a fresh queue each) and the heap bytes per queued job,
//! counted by a wrapping allocator.
//!
//! cargo run --release -p kiln-node --example schedule_bench [JOBS] [WORKERS] [RUNS] [REQUESTERS]
//!
//! REQUESTERS (default 100): the jobs are spread over that many requester
//! keys, so the plan serves them in turn (fair share); 0 submits them with
//! no requester.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use kiln_node::coordinator::schedule::{Decision, Schedule, Submitted};
use kiln_protocol::coord::Priority;
use kiln_protocol::messages::{JobRequest, WorkerAdvert};
use kiln_protocol::{build_key, Hash, Requirements, SecretKey, SystemInfo};

/// Counts live heap bytes.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged and only
// counts sizes on the side.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same layout contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const ARCHES: [&str; 4] = ["x86_64", "aarch64", "riscv64", "ppc64le"];
const LIBCS: [&str; 3] = ["glibc", "musl", "bionic"];

fn system(n: usize) -> SystemInfo {
    SystemInfo {
        os: "linux".into(),
        arch: ARCHES[n % 4].into(),
        endian: "little".into(),
        pointer_width: 64,
        libc: LIBCS[n / 4 % 3].into(),
        libc_version: format!("2.{}", 30 + n % 9),
        cpus: 1 << (n % 6),
        memory_bytes: (1u64 << 30) * (1 + (n as u64 % 8) * 4),
        features: ["sse2", "avx2"].iter().take(1 + n % 2).map(|s| s.to_string()).collect(),
        tools: [("cc".to_string(), format!("{}.1.0", 10 + n % 3))]
            .into_iter()
            .collect(),
        labels: [("site".to_string(), format!("s{}", n % 10))].into_iter().collect(),
    }
}

fn job(n: usize) -> JobRequest {
    let mut requirements = Requirements::new();
    for text in [
        format!("arch={}", ARCHES[n % 4]),
        format!("libc={}", LIBCS[n / 4 % 3]),
        format!("memory>={}GiB", 1 + (n / 12 % 4) * 4),
    ] {
        requirements.set_from_str(&text).unwrap_or_default();
    }
    let recipe_id = Hash::of(format!("recipe {}", n % 100).as_bytes());
    let options: BTreeMap<String, String> = [("n".to_string(), n.to_string())].into_iter().collect();
    JobRequest {
        build_key: build_key(&recipe_id, &options, &requirements),
        recipe_id,
        recipe_name: "bench".into(),
        recipe_version: "1.0.0".into(),
        publisher: None,
        options,
        requirements,
        emails: vec![
            "first@example.org".into(),
            "second@example.org".into(),
            "third.person@example.org".into(),
        ],
        requested_at_ms: n as u64,
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>().unwrap_or(0));
    let jobs = args.next().filter(|n| *n > 0).unwrap_or(100_000);
    let workers = args.next().filter(|n| *n > 0).unwrap_or(1_000);
    let runs = args.next().filter(|n| *n > 0).unwrap_or(5);
    // Requesters the jobs are spread over, in turn (0: none, as a job from
    // a coordinator that does not say).
    let requesters = args.next().unwrap_or(100);
    let keys: Vec<_> = (0..workers)
        .map(|n| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(n as u64).to_le_bytes());
            SecretKey::from_bytes(&seed).public()
        })
        .collect();
    let requests: Vec<JobRequest> = (0..jobs).map(job).collect();
    let askers: Vec<_> = (0..requesters)
        .map(|n| {
            let mut seed = [1u8; 32];
            seed[..8].copy_from_slice(&(n as u64).to_le_bytes());
            (SecretKey::from_bytes(&seed).public(), Priority::Normal)
        })
        .collect();
    let mut timings = Vec::new();
    let mut decided = 0;
    let mut per_job = 0;
    for _ in 0..runs {
        let mut schedule = Schedule::new();
        for (n, key) in keys.iter().enumerate() {
            let advert = WorkerAdvert {
                system: system(n),
                max_jobs: 100,
                running_jobs: 0,
                waiting_because: None,
                sequence: 0,
                running: vec![],
            };
            schedule.advert(*key, advert, 0);
        }
        let before = LIVE_BYTES.load(Ordering::Relaxed);
        for (n, request) in requests.iter().enumerate() {
            let asker = (!askers.is_empty()).then(|| askers[n % askers.len()]);
            let submitted = schedule.submit(request.clone(), 1, asker);
            assert_eq!(submitted, Ok(Submitted::New));
        }
        per_job = (LIVE_BYTES.load(Ordering::Relaxed) - before) / jobs as isize;
        let start = Instant::now();
        decided = schedule
            .plan(1)
            .iter()
            .filter(|d| matches!(d, Decision::Assign { .. }))
            .count();
        timings.push(start.elapsed());
    }
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    let copies: Vec<JobRequest> = requests.clone();
    let request_bytes = (LIVE_BYTES.load(Ordering::Relaxed) - before) / jobs as isize;
    drop(copies);
    let took = median(timings);
    println!("jobs {jobs}, workers {workers}, runs {runs}, requesters {requesters}");
    println!("decisions {decided} (the other jobs wait: every worker that matches them is full), median plan {took:?}");
    println!(
        "size of a Job {} bytes, of a JobRequest {} bytes",
        std::mem::size_of::<kiln_node::coordinator::schedule::Job>(),
        std::mem::size_of::<JobRequest>()
    );
    println!("decisions per second {:.0}", decided as f64 / took.as_secs_f64());
    println!("heap bytes per queued job {per_job}, of which the job request itself (inline and heap) {request_bytes}");
}
