//! The coordinator's decisions, with no I/O: the open jobs, the workers it
//! has heard from, matching by the subset rule (least loaded first,
//! skipping workers that refused or failed the job), merging identical
//! requests, leases kept alive by worker adverts, and bounded retries.
//!
//! The coordinator task feeds it events and carries out what it decides;
//! standby nodes feed it the same gossip so a new coordinator starts from
//! the same pending set. Not for: the network, the disk, the clock (every
//! call takes `now_ms`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use kiln_protocol::coord::{JobPhase, JobView, WorkerView, STATUS_WORKER_JOBS_MAX};
use kiln_protocol::messages::{JobRequest, WorkerAdvert, EMAILS_MAX};
use kiln_protocol::{wire, Attestation, Hash, PublicKey, Signed};
use serde::{Deserialize, Serialize};

/// A worker unheard of this long loses the jobs leased to it. Workers
/// advertise every 2 s, so this is four missed adverts.
pub const LEASE_MS: u64 = 8_000;
/// A worker's advert may lag an assignment by this much before the
/// assignment, missing from the advert, counts as lost.
pub const ADVERT_GRACE_MS: u64 = 5_000;
/// A worker unheard of this long is forgotten.
pub const WORKER_GONE_MS: u64 = 30_000;
/// A worker that refused a job is not asked again for this long.
pub const REFUSAL_SKIP_MS: u64 = 60_000;
/// Failed builds of one job, each on a different worker, before it is
/// reported failed.
pub const FAILED_ATTEMPTS_MAX: u32 = 3;
/// Workers lost (killed, cut off) while building one job before it is
/// reported failed: a recipe that kills its workers is not retried forever.
pub const LOST_ATTEMPTS_MAX: u32 = 5;
/// How long a worker that could not fetch a job's inputs is not offered
/// that job again (the inputs' holders may be changing hands).
pub const ABORTED_SKIP_MS: u64 = 3_000;
/// Open jobs (queued or running) one coordinator holds.
pub const OPEN_JOBS_MAX: usize = 1_000_000;
/// Workers one coordinator tracks.
pub const WORKERS_MAX: usize = 100_000;
/// Addresses notified for one build (several requesters merge).
pub const REQUESTERS_EMAILS_MAX: usize = 16 * EMAILS_MAX;

/// Where an open job stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    Queued,
    Assigned {
        worker: PublicKey,
        attempt: u32,
        since_ms: u64,
    },
    /// Built by `attestation`'s worker; being copied to a second peer.
    Replicating {
        /// Boxed: most jobs are queued, and this keeps every job small.
        attestation: Box<Signed<Attestation>>,
    },
    /// Given up; the coordinator reports the failure and removes it.
    GaveUp {
        reason: String,
    },
}

/// An open job, as kept durably by the coordinator and its standbys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub request: JobRequest,
    pub state: JobState,
    pub failed_attempts: u32,
    pub lost_attempts: u32,
    /// Workers whose build of this job failed: never asked again.
    pub failed_on: BTreeSet<PublicKey>,
    pub last_failure: Option<(String, Option<Hash>)>,
    /// Submission order.
    pub sequence: u64,
    /// Workers that refused it, and until when they are skipped.
    #[serde(skip)]
    refused_until: BTreeMap<PublicKey, u64>,
    #[serde(skip)]
    waiting_because: Option<String>,
    #[serde(skip, default = "unset_digest")]
    requirements_digest: Hash,
}

impl Job {
    fn attempt(&self) -> u32 {
        self.failed_attempts + self.lost_attempts + 1
    }

    fn skips(&self, worker: &PublicKey, now_ms: u64) -> bool {
        self.failed_on.contains(worker) || self.refused_until.get(worker).is_some_and(|until| *until > now_ms)
    }

    pub fn phase(&self) -> JobPhase {
        match &self.state {
            JobState::Queued => JobPhase::Queued {
                waiting_because: self.waiting_because.clone(),
            },
            JobState::Assigned { worker, attempt, .. } => JobPhase::Assigned {
                worker: *worker,
                attempt: *attempt,
            },
            JobState::Replicating { attestation } => match attestation.verify() {
                Ok(a) => JobPhase::Replicating { artifact: a.artifact },
                Err(_) => JobPhase::Unknown,
            },
            JobState::GaveUp { reason } => JobPhase::Failed {
                reason: reason.clone(),
                log: self.last_failure.as_ref().and_then(|(_, log)| *log),
                attempts: self.failed_attempts,
            },
        }
    }

    pub fn view(&self) -> JobView {
        JobView {
            build_key: self.request.build_key,
            recipe_name: self.request.recipe_name.clone(),
            recipe_version: self.request.recipe_version.clone(),
            options: self.request.options.clone(),
            phase: self.phase(),
            requesters: self.request.emails.len() as u32,
            failed_attempts: self.failed_attempts,
            requested_at_ms: self.request.requested_at_ms,
        }
    }
}

struct WorkerEntry {
    advert: WorkerAdvert,
    seen_at_ms: u64,
    /// Jobs this coordinator leased to it.
    assigned: BTreeSet<Hash>,
}

impl WorkerEntry {
    fn load(&self) -> u32 {
        (self.advert.running.len() as u32).max(self.assigned.len() as u32)
    }

    fn free(&self) -> u32 {
        if self.advert.waiting_because.is_some() {
            return 0;
        }
        self.advert.max_jobs.saturating_sub(self.load())
    }
}

/// What the coordinator should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Lease the job to the worker (already recorded as assigned).
    Assign {
        build_key: Hash,
        worker: PublicKey,
        attempt: u32,
    },
}

/// What a submission did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Submitted {
    New,
    /// Joined an open job; these addresses were new to it.
    Merged {
        new_emails: Vec<String>,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScheduleError {
    #[error("the coordinator holds {OPEN_JOBS_MAX} open jobs, its limit; try again later")]
    Full,
}

/// The open jobs and the known workers.
#[derive(Default)]
pub struct Schedule {
    /// Boxed, so the table's spare capacity costs a pointer per slot.
    jobs: HashMap<Hash, Box<Job>>,
    /// Queued jobs by submission order.
    queue: BTreeMap<u64, Hash>,
    workers: HashMap<PublicKey, WorkerEntry>,
    /// Workers matching each requirement set (by digest); cleared when a
    /// worker joins, leaves or changes its system.
    matching: HashMap<Hash, Arc<[PublicKey]>>,
    /// Jobs built or given up, not yet settled.
    ended: BTreeSet<Hash>,
    next_sequence: u64,
}

fn unset_digest() -> Hash {
    Hash::of(b"")
}

fn requirements_digest(request: &JobRequest) -> Hash {
    Hash::derive("kiln 2026 requirements v1", &wire::canonical(&request.requirements))
}

impl Schedule {
    pub fn new() -> Schedule {
        Schedule::default()
    }

    pub fn job(&self, build_key: &Hash) -> Option<&Job> {
        self.jobs.get(build_key).map(|job| &**job)
    }

    pub fn open_jobs(&self) -> usize {
        self.jobs.len()
    }

    pub fn queued_jobs(&self) -> usize {
        self.queue.len()
    }

    /// Open jobs, oldest first.
    pub fn jobs(&self) -> Vec<&Job> {
        let mut jobs: Vec<&Job> = self.jobs.values().map(|job| &**job).collect();
        jobs.sort_by_key(|j| j.sequence);
        jobs
    }

    /// Takes a new request, or merges its addresses into the open job with
    /// the same build key.
    pub fn submit(&mut self, request: JobRequest) -> Result<Submitted, ScheduleError> {
        if let Some(job) = self.jobs.get_mut(&request.build_key) {
            let mut new_emails = Vec::new();
            for email in request.emails {
                if !job.request.emails.contains(&email) && job.request.emails.len() < REQUESTERS_EMAILS_MAX {
                    job.request.emails.push(email.clone());
                    new_emails.push(email);
                }
            }
            return Ok(Submitted::Merged { new_emails });
        }
        if self.jobs.len() >= OPEN_JOBS_MAX {
            return Err(ScheduleError::Full);
        }
        let sequence = self.next_sequence;
        let job = Job {
            requirements_digest: requirements_digest(&request),
            request,
            state: JobState::Queued,
            failed_attempts: 0,
            lost_attempts: 0,
            failed_on: BTreeSet::new(),
            last_failure: None,
            sequence,
            refused_until: BTreeMap::new(),
            waiting_because: None,
        };
        self.insert(job);
        Ok(Submitted::New)
    }

    /// Puts back a job kept on disk (or learned from another coordinator).
    /// An assignment is kept, its lease starting now.
    pub fn restore(&mut self, mut job: Job, now_ms: u64) {
        if self.jobs.contains_key(&job.request.build_key) {
            return;
        }
        job.requirements_digest = requirements_digest(&job.request);
        job.sequence = self.next_sequence;
        if let JobState::Assigned { since_ms, worker, .. } = &mut job.state {
            *since_ms = now_ms;
            if let Some(entry) = self.workers.get_mut(worker) {
                entry.assigned.insert(job.request.build_key);
            }
        }
        self.insert(job);
    }

    fn insert(&mut self, job: Job) {
        self.next_sequence = self.next_sequence.max(job.sequence) + 1;
        match job.state {
            JobState::Queued => {
                self.queue.insert(job.sequence, job.request.build_key);
            }
            JobState::Replicating { .. } | JobState::GaveUp { .. } => {
                self.ended.insert(job.request.build_key);
            }
            JobState::Assigned { .. } => {}
        }
        self.jobs.insert(job.request.build_key, Box::new(job));
    }

    /// Removes an ended job.
    pub fn remove(&mut self, build_key: &Hash) -> Option<Job> {
        self.ended.remove(build_key);
        let job = self.jobs.remove(build_key)?;
        self.queue.remove(&job.sequence);
        if let JobState::Assigned { worker, .. } = &job.state {
            if let Some(entry) = self.workers.get_mut(worker) {
                entry.assigned.remove(build_key);
            }
        }
        Some(*job)
    }

    /// Back to the queue, from wherever it was.
    fn requeue(&mut self, build_key: &Hash) {
        let Some(job) = self.jobs.get_mut(build_key) else {
            return;
        };
        if let JobState::Assigned { worker, .. } = &job.state {
            if let Some(entry) = self.workers.get_mut(worker) {
                entry.assigned.remove(build_key);
            }
        }
        job.state = JobState::Queued;
        self.queue.insert(job.sequence, *build_key);
    }

    /// A worker's advert: its system, capacity, and (its lease heartbeat)
    /// the builds it runs. Returns the jobs leased to it that it no longer
    /// runs, which go back to the queue.
    pub fn advert(&mut self, worker: PublicKey, advert: WorkerAdvert, now_ms: u64) -> Vec<Hash> {
        let digest = advert.system.digest();
        if !self.workers.contains_key(&worker) && self.workers.len() >= WORKERS_MAX {
            return Vec::new();
        }
        match self.workers.get_mut(&worker) {
            Some(entry) => {
                if entry.advert.system.digest() != digest {
                    self.matching.clear();
                }
                entry.advert = advert;
                entry.seen_at_ms = now_ms;
            }
            None => {
                self.matching.clear();
                self.workers.insert(
                    worker,
                    WorkerEntry {
                        advert,
                        seen_at_ms: now_ms,
                        assigned: BTreeSet::new(),
                    },
                );
            }
        }
        let Some(entry) = self.workers.get(&worker) else {
            return Vec::new();
        };
        let running: BTreeSet<&Hash> = entry.advert.running.iter().collect();
        let lost: Vec<Hash> = entry
            .assigned
            .iter()
            .filter(|key| !running.contains(key))
            .filter(|key| {
                matches!(
                    self.jobs.get(key).map(|j| &j.state),
                    Some(JobState::Assigned { since_ms, .. }) if now_ms.saturating_sub(*since_ms) > ADVERT_GRACE_MS
                )
            })
            .copied()
            .collect();
        self.lose(&lost);
        lost
    }

    fn lose(&mut self, build_keys: &[Hash]) {
        for key in build_keys {
            if let Some(job) = self.jobs.get_mut(key) {
                job.lost_attempts += 1;
            }
            self.requeue(key);
        }
    }

    /// Another coordinator leased a job (heard over gossip).
    pub fn assigned(&mut self, build_key: &Hash, worker: PublicKey, attempt: u32, now_ms: u64) {
        let Some(job) = self.jobs.get(build_key) else {
            return;
        };
        if !matches!(job.state, JobState::Queued | JobState::Assigned { .. }) {
            return;
        }
        self.requeue(build_key);
        self.queue_remove(build_key);
        if let Some(job) = self.jobs.get_mut(build_key) {
            job.state = JobState::Assigned {
                worker,
                attempt,
                since_ms: now_ms,
            };
        }
        if let Some(entry) = self.workers.get_mut(&worker) {
            entry.assigned.insert(*build_key);
        }
    }

    fn queue_remove(&mut self, build_key: &Hash) {
        if let Some(job) = self.jobs.get(build_key) {
            self.queue.remove(&job.sequence);
        }
    }

    /// The worker refused the assignment (or could not be reached).
    pub fn refused(&mut self, build_key: &Hash, worker: PublicKey, reason: &str, now_ms: u64) {
        let Some(job) = self.jobs.get_mut(build_key) else {
            return;
        };
        if !matches!(&job.state, JobState::Assigned { worker: w, .. } if *w == worker) {
            return;
        }
        job.refused_until.insert(worker, now_ms + REFUSAL_SKIP_MS);
        job.waiting_because = Some(format!("last refused by a worker: {reason}"));
        self.requeue(build_key);
    }

    /// The worker could not start the build (its inputs were out of reach):
    /// back in the queue, counted with the lost attempts, not the failed.
    /// The worker is not asked again for [`ABORTED_SKIP_MS`].
    pub fn aborted(&mut self, build_key: &Hash, worker: PublicKey, reason: &str, now_ms: u64) {
        let Some(job) = self.jobs.get_mut(build_key) else {
            return;
        };
        if !matches!(&job.state, JobState::Assigned { worker: w, .. } if *w == worker) {
            return;
        }
        job.refused_until.insert(worker, now_ms + ABORTED_SKIP_MS);
        job.waiting_because = Some(format!("the last attempt could not start: {reason}"));
        self.lose(&[*build_key]);
    }

    /// A worker reported a failed build: it is retried elsewhere, or given
    /// up once it failed [`FAILED_ATTEMPTS_MAX`] times.
    pub fn failed(&mut self, build_key: &Hash, worker: PublicKey, reason: &str, log: Option<Hash>) {
        let Some(job) = self.jobs.get_mut(build_key) else {
            return;
        };
        if !matches!(&job.state, JobState::Assigned { worker: w, .. } if *w == worker) {
            return;
        }
        job.failed_attempts += 1;
        job.failed_on.insert(worker);
        job.last_failure = Some((reason.to_string(), log));
        if job.failed_attempts >= FAILED_ATTEMPTS_MAX {
            let reason = format!("failed on {} workers; last failure: {reason}", job.failed_attempts);
            self.give_up(build_key, reason);
        } else {
            self.requeue(build_key);
        }
    }

    fn give_up(&mut self, build_key: &Hash, reason: String) {
        self.requeue(build_key);
        self.queue_remove(build_key);
        if let Some(job) = self.jobs.get_mut(build_key) {
            job.state = JobState::GaveUp { reason };
            self.ended.insert(*build_key);
        }
    }

    /// Jobs given up or built, waiting for the coordinator to settle them.
    pub fn ended(&self) -> Vec<Hash> {
        self.ended.iter().copied().collect()
    }

    /// A worker reported a finished build: the job waits for replication.
    pub fn built(&mut self, build_key: &Hash, attestation: Signed<Attestation>) -> bool {
        self.queue_remove(build_key);
        let Some(job) = self.jobs.get_mut(build_key) else {
            return false;
        };
        if let JobState::Assigned { worker, .. } = &job.state {
            if let Some(entry) = self.workers.get_mut(worker) {
                entry.assigned.remove(build_key);
            }
        }
        job.state = JobState::Replicating {
            attestation: Box::new(attestation),
        };
        self.ended.insert(*build_key);
        true
    }

    /// The artifact could not be copied (its builder vanished): build again.
    pub fn replication_failed(&mut self, build_key: &Hash) {
        self.ended.remove(build_key);
        self.lose(&[*build_key]);
    }

    /// Expires leases of workers not heard from, and forgets workers gone
    /// for long. Returns the jobs put back in the queue.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Hash> {
        let mut lost = Vec::new();
        for entry in self.workers.values() {
            if now_ms.saturating_sub(entry.seen_at_ms) > LEASE_MS {
                lost.extend(entry.assigned.iter().copied());
            }
        }
        // Jobs leased to workers this coordinator never heard of.
        for (key, job) in &self.jobs {
            if let JobState::Assigned { worker, since_ms, .. } = &job.state {
                if !self.workers.contains_key(worker) && now_ms.saturating_sub(*since_ms) > LEASE_MS {
                    lost.push(*key);
                }
            }
        }
        lost.sort();
        lost.dedup();
        self.lose(&lost);
        let before = self.workers.len();
        self.workers
            .retain(|_, entry| now_ms.saturating_sub(entry.seen_at_ms) <= WORKER_GONE_MS);
        if self.workers.len() != before {
            self.matching.clear();
        }
        lost
    }

    /// Matches queued jobs to free workers, oldest job first.
    pub fn plan(&mut self, now_ms: u64) -> Vec<Decision> {
        let mut decisions = Vec::new();
        let mut free_total: u64 = self
            .workers
            .values()
            .filter(|w| now_ms.saturating_sub(w.seen_at_ms) <= LEASE_MS)
            .map(|w| u64::from(w.free()))
            .sum();
        let queued: Vec<(u64, Hash)> = self.queue.iter().map(|(s, k)| (*s, *k)).collect();
        for (sequence, build_key) in queued {
            if free_total == 0 {
                break;
            }
            match self.match_one(&build_key, now_ms) {
                Match::Worker(worker) => {
                    free_total -= 1;
                    decisions.push(self.lease(sequence, build_key, worker, now_ms));
                }
                Match::Wait(reason) => {
                    if let Some(job) = self.jobs.get_mut(&build_key) {
                        job.waiting_because = Some(reason);
                    }
                }
                Match::GiveUp(reason) => self.give_up(&build_key, reason),
            }
        }
        decisions
    }

    fn lease(&mut self, sequence: u64, build_key: Hash, worker: PublicKey, now_ms: u64) -> Decision {
        self.queue.remove(&sequence);
        let mut attempt = 1;
        if let Some(job) = self.jobs.get_mut(&build_key) {
            attempt = job.attempt();
            job.waiting_because = None;
            job.state = JobState::Assigned {
                worker,
                attempt,
                since_ms: now_ms,
            };
        }
        if let Some(entry) = self.workers.get_mut(&worker) {
            entry.assigned.insert(build_key);
        }
        Decision::Assign {
            build_key,
            worker,
            attempt,
        }
    }

    /// The workers that satisfy a job's requirements: computed once per
    /// requirement set until the workers change, then shared.
    fn matching_workers(&mut self, build_key: &Hash) -> Arc<[PublicKey]> {
        let Some(job) = self.jobs.get(build_key) else {
            return Arc::from([]);
        };
        if let Some(found) = self.matching.get(&job.requirements_digest) {
            return found.clone();
        }
        let mut found: Vec<PublicKey> = self
            .workers
            .iter()
            .filter(|(_, w)| job.request.requirements.check(&w.advert.system).is_ok())
            .map(|(k, _)| *k)
            .collect();
        found.sort();
        let found: Arc<[PublicKey]> = found.into();
        self.matching.insert(job.requirements_digest, found.clone());
        found
    }

    fn match_one(&mut self, build_key: &Hash, now_ms: u64) -> Match {
        let Some(job) = self.jobs.get(build_key) else {
            return Match::Wait(String::new());
        };
        if job.lost_attempts >= LOST_ATTEMPTS_MAX {
            return Match::GiveUp(format!(
                "{} workers were lost (killed or cut off) while building it",
                job.lost_attempts
            ));
        }
        let matching = self.matching_workers(build_key);
        let Some(job) = self.jobs.get(build_key) else {
            return Match::Wait(String::new());
        };
        let untried = || matching.iter().filter(|w| !job.failed_on.contains(w));
        if job.failed_attempts > 0 && untried().next().is_none() {
            let last = job.last_failure.as_ref().map(|(r, _)| r.as_str()).unwrap_or("?");
            return Match::GiveUp(format!(
                "failed on {} worker(s), and no other worker matches; last failure: {last}",
                job.failed_attempts
            ));
        }
        let best = untried()
            .filter(|w| !job.skips(w, now_ms))
            .filter_map(|w| self.workers.get(w).map(|entry| (*w, entry)))
            .filter(|(_, entry)| entry.free() > 0 && now_ms.saturating_sub(entry.seen_at_ms) <= LEASE_MS)
            .min_by_key(|(w, entry)| (entry.load() * 1000 / entry.advert.max_jobs.max(1), *w));
        match best {
            Some((worker, _)) => Match::Worker(worker),
            None => Match::Wait(self.why_waiting(job, &matching)),
        }
    }

    /// Why no worker takes `job` now, for `kiln status` and the requester.
    fn why_waiting(&self, job: &Job, matching: &[PublicKey]) -> String {
        if self.workers.is_empty() {
            return "no worker has joined the network yet".into();
        }
        if matching.is_empty() {
            let mut reasons: BTreeSet<String> = BTreeSet::new();
            for entry in self.workers.values() {
                if let Err(why) = job.request.requirements.check(&entry.advert.system) {
                    reasons.extend(why);
                }
            }
            let listed: Vec<String> = reasons.into_iter().take(4).collect();
            return format!(
                "no worker matches its requirements ({}); none of the {} workers qualifies: {}",
                job.request.requirements,
                self.workers.len(),
                listed.join("; ")
            );
        }
        if let Some(reason) = &job.waiting_because {
            if reason.starts_with("last refused") {
                return reason.clone();
            }
        }
        format!("all {} matching workers are busy", matching.len())
    }

    /// Every known worker, for `kiln status`.
    pub fn worker_views(&self, now_ms: u64) -> Vec<WorkerView> {
        let mut views: Vec<WorkerView> = self
            .workers
            .iter()
            .map(|(key, entry)| WorkerView {
                worker: *key,
                system: entry.advert.system.summary(),
                running_jobs: entry.load(),
                max_jobs: entry.advert.max_jobs,
                waiting_because: entry.advert.waiting_because.clone(),
                seen_ms_ago: now_ms.saturating_sub(entry.seen_at_ms),
                jobs: entry
                    .assigned
                    .iter()
                    .chain(entry.advert.running.iter().filter(|k| !entry.assigned.contains(k)))
                    .take(STATUS_WORKER_JOBS_MAX)
                    .copied()
                    .collect(),
            })
            .collect();
        views.sort_by_key(|v| v.worker);
        views
    }

    /// Jobs running on (or leased to) each worker.
    pub fn running_jobs(&self) -> usize {
        self.jobs
            .values()
            .filter(|j| !matches!(j.state, JobState::Queued))
            .count()
    }
}

enum Match {
    Worker(PublicKey),
    Wait(String),
    GiveUp(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_protocol::{Requirements, SecretKey, SystemInfo};

    fn worker(n: u8) -> PublicKey {
        SecretKey::from_bytes(&[n; 32]).public()
    }

    fn advert(arch: &str, max_jobs: u32, running: Vec<Hash>) -> WorkerAdvert {
        WorkerAdvert {
            system: SystemInfo {
                os: "linux".into(),
                arch: arch.into(),
                ..SystemInfo::default()
            },
            max_jobs,
            running_jobs: running.len() as u32,
            waiting_because: None,
            sequence: 0,
            running,
        }
    }

    fn job(name: &str, arch: &str, email: &str) -> JobRequest {
        let mut requirements = Requirements::new();
        requirements.set_from_str(&format!("arch={arch}")).unwrap();
        JobRequest {
            build_key: Hash::of(format!("{name}/{arch}").as_bytes()),
            recipe_id: Hash::of(name.as_bytes()),
            recipe_name: name.into(),
            recipe_version: "1".into(),
            publisher: None,
            options: BTreeMap::new(),
            requirements,
            emails: vec![email.into()],
            requested_at_ms: 0,
        }
    }

    fn assigned_to(decisions: &[Decision]) -> Vec<(Hash, PublicKey)> {
        decisions
            .iter()
            .map(|Decision::Assign { build_key, worker, .. }| (*build_key, *worker))
            .collect()
    }

    #[test]
    fn jobs_go_to_matching_workers_least_loaded_first() {
        let mut s = Schedule::new();
        s.advert(worker(1), advert("x86_64", 2, vec![]), 0);
        s.advert(worker(2), advert("x86_64", 2, vec![]), 0);
        s.advert(worker(3), advert("aarch64", 1, vec![]), 0);
        let a = job("a", "x86_64", "a@example.org");
        let b = job("b", "x86_64", "b@example.org");
        let c = job("c", "aarch64", "c@example.org");
        for j in [&a, &b, &c] {
            assert_eq!(s.submit(j.clone()), Ok(Submitted::New));
        }
        let plan = assigned_to(&s.plan(1));
        assert_eq!(plan.len(), 3);
        assert_eq!(plan[0].0, a.build_key);
        assert_ne!(plan[0].1, plan[1].1, "the load is spread over both x86_64 workers");
        assert_eq!(plan[2], (c.build_key, worker(3)));
        assert!(s.plan(2).is_empty());
    }

    #[test]
    fn identical_requests_merge_their_addresses() {
        let mut s = Schedule::new();
        let a = job("a", "x86_64", "a@example.org");
        s.submit(a.clone()).unwrap();
        let mut again = a.clone();
        again.emails = vec!["b@example.org".into(), "a@example.org".into()];
        assert_eq!(
            s.submit(again),
            Ok(Submitted::Merged {
                new_emails: vec!["b@example.org".into()]
            })
        );
        assert_eq!(s.job(&a.build_key).unwrap().request.emails.len(), 2);
        assert_eq!(s.open_jobs(), 1);
    }

    #[test]
    fn a_job_no_worker_matches_waits_and_says_why() {
        let mut s = Schedule::new();
        let c = job("c", "aarch64", "c@example.org");
        s.submit(c.clone()).unwrap();
        s.plan(0);
        s.advert(worker(1), advert("x86_64", 1, vec![]), 0);
        assert!(s.plan(1).is_empty());
        let JobPhase::Queued {
            waiting_because: Some(why),
        } = s.job(&c.build_key).unwrap().phase()
        else {
            panic!("not waiting")
        };
        assert!(why.contains("arch=x86_64 (wanted arch=aarch64)"), "{why}");
        // A matching worker joins: dispatched at once.
        s.advert(worker(2), advert("aarch64", 1, vec![]), 2);
        assert_eq!(assigned_to(&s.plan(3)), vec![(c.build_key, worker(2))]);
    }

    #[test]
    fn a_failing_build_is_retried_on_other_workers_then_given_up() {
        let mut s = Schedule::new();
        for n in 1..=4 {
            s.advert(worker(n), advert("x86_64", 1, vec![]), 0);
        }
        let a = job("a", "x86_64", "a@example.org");
        s.submit(a.clone()).unwrap();
        let mut tried = BTreeSet::new();
        for attempt in 1..=FAILED_ATTEMPTS_MAX {
            let plan = s.plan(u64::from(attempt));
            let [Decision::Assign { worker, attempt: n, .. }] = plan.as_slice() else {
                panic!("attempt {attempt}: {plan:?}")
            };
            assert_eq!(*n, attempt);
            assert!(tried.insert(*worker), "retried on a worker that failed it");
            s.failed(&a.build_key, *worker, "exit status 1", None);
        }
        assert!(matches!(s.job(&a.build_key).unwrap().state, JobState::GaveUp { .. }));
        assert_eq!(s.ended(), vec![a.build_key]);
    }

    #[test]
    fn a_failure_with_no_other_matching_worker_is_final() {
        let mut s = Schedule::new();
        s.advert(worker(1), advert("x86_64", 1, vec![]), 0);
        let a = job("a", "x86_64", "a@example.org");
        s.submit(a.clone()).unwrap();
        s.plan(1);
        s.failed(&a.build_key, worker(1), "exit status 1", None);
        assert!(s.plan(2).is_empty());
        let JobPhase::Failed { reason, .. } = s.job(&a.build_key).unwrap().phase() else {
            panic!("not failed")
        };
        assert!(reason.contains("no other worker matches"), "{reason}");
    }

    #[test]
    fn a_refusing_worker_is_skipped_for_a_while() {
        let mut s = Schedule::new();
        s.advert(worker(1), advert("x86_64", 1, vec![]), 0);
        s.advert(worker(2), advert("x86_64", 1, vec![]), 0);
        let a = job("a", "x86_64", "a@example.org");
        s.submit(a.clone()).unwrap();
        let first = assigned_to(&s.plan(1))[0].1;
        s.refused(&a.build_key, first, "busy", 2);
        let second = assigned_to(&s.plan(3))[0].1;
        assert_ne!(first, second);
        s.refused(&a.build_key, second, "busy", 4);
        assert!(s.plan(5).is_empty(), "both refused just now");
        let later = 5 + REFUSAL_SKIP_MS;
        s.advert(worker(1), advert("x86_64", 1, vec![]), later);
        s.advert(worker(2), advert("x86_64", 1, vec![]), later);
        assert_eq!(s.plan(later).len(), 1);
    }

    #[test]
    fn a_silent_worker_loses_its_lease_and_a_worker_that_dropped_the_job_too() {
        let mut s = Schedule::new();
        s.advert(worker(1), advert("x86_64", 1, vec![]), 0);
        let a = job("a", "x86_64", "a@example.org");
        s.submit(a.clone()).unwrap();
        s.plan(0);
        // Heartbeats listing the job keep the lease.
        s.advert(worker(1), advert("x86_64", 1, vec![a.build_key]), LEASE_MS);
        assert!(s.tick(LEASE_MS + 1).is_empty());
        // Silence past the lease: back in the queue.
        assert_eq!(s.tick(2 * LEASE_MS + 1), vec![a.build_key]);
        assert_eq!(s.job(&a.build_key).unwrap().lost_attempts, 1);
        // A worker that restarted and no longer lists the job loses it too.
        s.advert(worker(2), advert("x86_64", 1, vec![]), 2 * LEASE_MS + 2);
        let plan = assigned_to(&s.plan(2 * LEASE_MS + 3));
        assert_eq!(plan, vec![(a.build_key, worker(2))]);
        let late = 2 * LEASE_MS + 3 + ADVERT_GRACE_MS + 1;
        assert_eq!(
            s.advert(worker(2), advert("x86_64", 1, vec![]), late),
            vec![a.build_key]
        );
    }

    #[test]
    fn kept_jobs_come_back_with_their_assignment_and_history() {
        let mut s = Schedule::new();
        s.advert(worker(1), advert("x86_64", 1, vec![]), 0);
        s.advert(worker(2), advert("x86_64", 1, vec![]), 0);
        let a = job("a", "x86_64", "a@example.org");
        s.submit(a.clone()).unwrap();
        let first = assigned_to(&s.plan(0))[0].1;
        s.failed(&a.build_key, first, "exit status 1", None);
        let second = assigned_to(&s.plan(1))[0].1;
        let bytes = wire::encode(s.job(&a.build_key).unwrap()).unwrap();

        let mut restarted = Schedule::new();
        let kept: Job = wire::decode::<_, 65536>(&bytes).unwrap();
        restarted.restore(kept, 100);
        let job = restarted.job(&a.build_key).unwrap();
        assert_eq!(job.failed_on, BTreeSet::from([first]));
        assert!(matches!(job.state, JobState::Assigned { worker, since_ms: 100, .. } if worker == second));
        restarted.advert(second, advert("x86_64", 1, vec![a.build_key]), 200);
        assert!(restarted.tick(300).is_empty());
    }
}
