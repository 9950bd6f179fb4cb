//! The contributor's rules (`--max-jobs`, `--idle-only`, trusted
//! publishers) and the decision whether to take a job: a plain function,
//! tested without a network.

use std::collections::BTreeSet;

use kiln_protocol::messages::JobRequest;
use kiln_protocol::{PublicKey, SystemInfo};
use libp2p::PeerId;

/// Which recipes a contributor runs.
#[derive(Clone, Debug)]
pub enum Trust {
    /// Any recipe (`--trust-any-recipe`): logged loudly at start.
    AnyRecipe,
    /// Only recipes signed by one of these publishers (`--trust-publisher`).
    Publishers(BTreeSet<PublicKey>),
}

/// The contributor's rules.
#[derive(Clone, Debug)]
pub struct WorkerPolicy {
    pub max_jobs: u32,
    /// Take work only while the machine is otherwise idle (`--idle-only`).
    pub idle_only: bool,
    pub trust: Trust,
    pub allow_network: bool,
    /// Take assignments only from these peers (`--trust-coordinator`);
    /// `None`: from any peer.
    pub coordinators: Option<BTreeSet<PeerId>>,
    /// With `idle_only`: how long a build stays paused for the owner
    /// before the worker gives it up to another worker (`--max-pause`).
    pub pause_max: std::time::Duration,
}

/// How long an idle-only worker keeps a build paused for its owner when
/// the contributor names no bound.
pub const PAUSE_MAX_DEFAULT: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// The owner's CPU use, per CPU, above which an idle-only worker counts
/// the machine as busy.
pub const IDLE_LOAD_PER_CPU_MAX: f64 = 0.5;
/// The owner's CPU use is measured over at least this long.
pub const OWNER_WINDOW_MS: u64 = 5_000;

/// Why an idle-only worker waits, if it does: the CPUs' worth the owner's
/// programs use against the machine's CPU count.
pub fn busy_because(used: f64, cpus: u32) -> Option<String> {
    let cpus = cpus.max(1);
    (used / f64::from(cpus) > IDLE_LOAD_PER_CPU_MAX).then(|| {
        format!(
            "idle-only: the machine's owner is using it ({used:.2} of {cpus} CPUs busy outside Kiln's builds; waits below {:.2})",
            IDLE_LOAD_PER_CPU_MAX * f64::from(cpus)
        )
    })
}

/// The machine's CPU time so far, from `/proc/stat`'s `cpu` line, in
/// clock ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuTicks {
    /// What the owner's programs used: user, system, irq and softirq time.
    /// Not `nice`, where the kernel counts niced processes: Kiln's builds
    /// run at nice 19. (A build's system time is counted here; it is small
    /// next to its user time.)
    pub owner: u64,
    /// Time of niced processes (Kiln's builds among them).
    pub nice: u64,
    /// All of it, idle included.
    pub total: u64,
    /// The machine's CPUs (its `cpuN` lines).
    pub cpus: u32,
}

impl CpuTicks {
    /// Reads `/proc/stat`.
    pub fn now() -> Option<CpuTicks> {
        CpuTicks::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    pub fn parse(stat: &str) -> Option<CpuTicks> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let f: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
        // user nice system idle iowait irq softirq steal (guest time is
        // already in user).
        let field = |i: usize| f.get(i).copied().unwrap_or(0);
        let cpus = stat
            .lines()
            .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
            .count();
        Some(CpuTicks {
            owner: field(0) + field(2) + field(5) + field(6),
            nice: field(1),
            total: (0..8).map(field).sum(),
            cpus: u32::try_from(cpus).unwrap_or(u32::MAX).max(1),
        })
    }

    /// The CPUs' worth the owner used from `earlier` to `self`.
    pub fn owner_cpus_since(&self, earlier: &CpuTicks) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return 0.0;
        }
        self.owner.saturating_sub(earlier.owner) as f64 / total as f64 * f64::from(self.cpus)
    }
}

/// The owner's CPU use over the last window of at least
/// [`OWNER_WINDOW_MS`], from readings taken whenever it is asked for.
#[derive(Default)]
pub struct OwnerLoad {
    since: Option<(u64, CpuTicks)>,
    used: Option<f64>,
}

impl OwnerLoad {
    /// Takes a reading at `now_ms`; the owner's use, in CPUs, over the
    /// newest complete window, if one has passed.
    pub fn read(&mut self, now_ms: u64, ticks: CpuTicks) -> Option<f64> {
        match self.since {
            Some((at, earlier)) if now_ms.saturating_sub(at) >= OWNER_WINDOW_MS => {
                self.used = Some(ticks.owner_cpus_since(&earlier));
                self.since = Some((now_ms, ticks));
            }
            Some(_) => {}
            None => self.since = Some((now_ms, ticks)),
        }
        self.used
    }
}

/// Whether to take `job`; `Err` carries the reason a requester is shown.
/// `busy` is why an idle-only worker waits right now, if it does.
pub fn decide(
    policy: &WorkerPolicy,
    system: &SystemInfo,
    job: &JobRequest,
    running: u32,
    busy: Option<String>,
) -> Result<(), String> {
    if let Some(why) = busy.filter(|_| policy.idle_only) {
        return Err(why);
    }
    if running >= policy.max_jobs {
        return Err(format!(
            "worker is busy: running {running} of at most {} jobs (--max-jobs)",
            policy.max_jobs
        ));
    }
    if let Trust::Publishers(trusted) = &policy.trust {
        let Some(signature) = &job.publisher else {
            return Err("recipe is not signed, and this worker runs only recipes signed by publishers it trusts (--trust-publisher)".into());
        };
        if signature.verify(&job.recipe_id).is_err() {
            return Err("recipe signature does not verify against the recipe id".into());
        }
        if !trusted.contains(&signature.publisher) {
            return Err(format!(
                "recipe publisher {} is not trusted by this worker",
                signature.publisher
            ));
        }
    }
    job.requirements
        .check(system)
        .map_err(|reasons| format!("worker does not match: {}", reasons.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_protocol::{Hash, PublisherSignature, Requirements, SecretKey};
    use std::collections::BTreeMap;

    fn job(publisher: Option<PublisherSignature>, requirement: &str) -> JobRequest {
        let mut requirements = Requirements::new();
        requirements.set_from_str(requirement).unwrap();
        JobRequest {
            build_key: Hash::of(b"k"),
            recipe_id: Hash::of(b"recipe"),
            recipe_name: "r".into(),
            recipe_version: "1".into(),
            publisher,
            options: BTreeMap::new(),
            requirements,
            emails: vec![],
            requested_at_ms: 0,
        }
    }

    fn system() -> SystemInfo {
        SystemInfo {
            os: "linux".into(),
            arch: "x86_64".into(),
            ..SystemInfo::default()
        }
    }

    #[test]
    fn refusals_say_why() {
        let publisher = SecretKey::from_bytes(&[3; 32]);
        let stranger = SecretKey::from_bytes(&[4; 32]);
        let policy = WorkerPolicy {
            max_jobs: 1,
            idle_only: false,
            trust: Trust::Publishers(BTreeSet::from([publisher.public()])),
            allow_network: false,
            coordinators: None,
            pause_max: PAUSE_MAX_DEFAULT,
        };
        let signed = Some(PublisherSignature::sign(&publisher, &Hash::of(b"recipe")));
        assert_eq!(
            decide(&policy, &system(), &job(signed.clone(), "os=linux"), 0, None),
            Ok(())
        );
        let busy = decide(&policy, &system(), &job(signed.clone(), "os=linux"), 1, None).unwrap_err();
        assert!(busy.contains("--max-jobs"), "{busy}");
        let unsigned = decide(&policy, &system(), &job(None, "os=linux"), 0, None).unwrap_err();
        assert!(unsigned.contains("not signed"), "{unsigned}");
        let other = Some(PublisherSignature::sign(&stranger, &Hash::of(b"recipe")));
        assert!(decide(&policy, &system(), &job(other, "os=linux"), 0, None)
            .unwrap_err()
            .contains("not trusted"));
        let wrong_recipe = Some(PublisherSignature::sign(&publisher, &Hash::of(b"another recipe")));
        assert!(decide(&policy, &system(), &job(wrong_recipe, "os=linux"), 0, None)
            .unwrap_err()
            .contains("does not verify"));
        let mismatch = decide(&policy, &system(), &job(signed, "arch=aarch64"), 0, None).unwrap_err();
        assert!(mismatch.contains("arch=x86_64 (wanted arch=aarch64)"), "{mismatch}");
        let open = WorkerPolicy {
            trust: Trust::AnyRecipe,
            ..policy
        };
        assert_eq!(decide(&open, &system(), &job(None, "os=linux"), 0, None), Ok(()));
        let busy = busy_because(1.7, 2);
        assert_eq!(
            decide(&open, &system(), &job(None, "os=linux"), 0, busy.clone()),
            Ok(()),
            "not idle-only"
        );
        let idle_only = WorkerPolicy {
            idle_only: true,
            ..open
        };
        let waits = decide(&idle_only, &system(), &job(None, "os=linux"), 0, busy).unwrap_err();
        assert!(
            waits.contains("idle-only: the machine's owner is using it (1.70 of 2 CPUs busy outside Kiln's builds"),
            "{waits}"
        );
        assert_eq!(busy_because(0.9, 2), None);
    }

    #[test]
    fn the_owners_cpu_use_leaves_out_niced_time_and_is_read_over_a_window() {
        let stat = "cpu  100 900 50 1000 10 5 5 0 0 0\ncpu0 50 450 25 500 5 2 3 0 0 0\ncpu1 50 450 25 500 5 3 2 0 0 0\nintr 1\n";
        let ticks = CpuTicks::parse(stat).unwrap();
        assert_eq!(
            ticks,
            CpuTicks {
                owner: 160,
                nice: 900,
                total: 2070,
                cpus: 2
            }
        );
        assert!(CpuTicks::now().is_some());
        // 1 s on 2 CPUs (200 ticks): the owner used 100, builds (nice) 100.
        let later = CpuTicks {
            owner: 260,
            nice: 1000,
            total: 2270,
            cpus: 2,
        };
        assert!((later.owner_cpus_since(&ticks) - 1.0).abs() < 1e-9);
        let mut load = OwnerLoad::default();
        assert_eq!(load.read(0, ticks), None);
        assert_eq!(load.read(OWNER_WINDOW_MS - 1, later), None, "the window has not passed");
        assert_eq!(load.read(OWNER_WINDOW_MS, later), Some(1.0));
        assert_eq!(
            load.read(OWNER_WINDOW_MS + 1, later),
            Some(1.0),
            "kept until the next window"
        );
    }
}
