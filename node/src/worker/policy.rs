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
}

/// Load per CPU above which an idle-only worker counts the machine as busy.
pub const IDLE_LOAD_PER_CPU_MAX: f64 = 0.5;

/// Why an idle-only worker waits, if it does: the 1-minute load average
/// against the CPU count.
pub fn busy_because(load: f64, cpus: u32) -> Option<String> {
    let cpus = cpus.max(1);
    (load / f64::from(cpus) > IDLE_LOAD_PER_CPU_MAX).then(|| {
        format!(
            "idle-only: the machine is in use (load {load:.2} on {cpus} cpus; waits below {:.2})",
            IDLE_LOAD_PER_CPU_MAX * f64::from(cpus)
        )
    })
}

/// The 1-minute load average, from `/proc/loadavg`.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
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
            waits.contains("idle-only: the machine is in use (load 1.70 on 2 cpus"),
            "{waits}"
        );
        assert_eq!(busy_because(0.9, 2), None);
        assert!(load_average().is_some());
    }
}
