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

use kiln_protocol::build::{builders_needed, stricter, Check, CHECK_BUILDS_MAX, VERIFY_AUTO, VERIFY_MAX};
use kiln_protocol::coord::{JobPhase, JobView, Priority, RequesterShare, REQUESTERS_PER_JOB_MAX};
use kiln_protocol::messages::{JobRequest, WorkerAdvert, ADVERT_IDLE_MS, EMAILS_MAX, REQUESTER_EMAILS_MAX};
use kiln_protocol::{wire, Attestation, Hash, PublicKey, Signed};
use serde::{Deserialize, Serialize};

use super::verification::{judge, Verdict};

/// A job's worker unheard of this long (since its last advert, or the
/// lease if later) loses it: a worker that builds advertises every
/// [`kiln_protocol::messages::ADVERT_BUSY_MS`], so this is four missed adverts.
pub const LEASE_MS: u64 = 8_000;
/// A worker unheard of this long is offered no more work: an idle worker
/// refreshes its advert every [`ADVERT_IDLE_MS`], so this is two missed
/// refreshes and a half. (A worker that died idle within it is offered at
/// most one job; the failed offer sends that job to another worker.)
pub const WORKER_ALIVE_MS: u64 = 5 * ADVERT_IDLE_MS / 2;
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
/// Queued jobs a plan looks at past the point where no worker is free, to
/// say why they wait (a fresh submission has no reason yet).
pub const REASONS_PER_PLAN_MAX: usize = 64;
/// Open jobs (queued or running) one coordinator holds.
pub const OPEN_JOBS_MAX: usize = 1_000_000;
/// Workers one coordinator tracks.
pub const WORKERS_MAX: usize = 100_000;
/// Addresses notified for one build (several requesters merge).
pub const REQUESTERS_EMAILS_MAX: usize = REQUESTER_EMAILS_MAX;
/// Longest a job restored from disk waits, unassigned, for the check of
/// whether it was built elsewhere meanwhile (see [`Schedule::hold_for_check`]).
pub const RESTORED_CHECK_MS_MAX: u64 = 10_000;

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
    /// Its builds disagree and no artifact can reach the builders needed
    /// (`Job::built` holds them all); reported, then removed.
    NotReproducible,
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
    /// Builders with distinct keys that must report the same artifact
    /// (`--verify N`; 1 for a job that is built once), or
    /// [`VERIFY_AUTO`]: two, unless the first builder's streak lets it
    /// build alone (decided by the acting coordinator, see
    /// [`Schedule::built`]).
    pub verify: u32,
    /// The builds reported so far, one per worker, while the builders
    /// needed do not agree yet (at most [`CHECK_BUILDS_MAX`]).
    pub built: Vec<Signed<Attestation>>,
    /// Who asked for it, first asker first (its owner in the fair share;
    /// at most [`REQUESTERS_PER_JOB_MAX`]). Empty for a job heard from a
    /// coordinator that did not say.
    pub requesters: Vec<RequesterShare>,
}

/// A job as kept on disk before it had `requesters`.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct JobV2 {
    request: JobRequest,
    state: JobState,
    failed_attempts: u32,
    lost_attempts: u32,
    failed_on: BTreeSet<PublicKey>,
    last_failure: Option<(String, Option<Hash>)>,
    sequence: u64,
    verify: u32,
    built: Vec<Signed<Attestation>>,
}

/// A job as kept on disk before it had `verify` and `built`: read, so
/// the queue kept by an older version is not lost.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct JobV1 {
    request: JobRequest,
    state: JobState,
    failed_attempts: u32,
    lost_attempts: u32,
    failed_on: BTreeSet<PublicKey>,
    last_failure: Option<(String, Option<Hash>)>,
    sequence: u64,
}

impl From<JobV1> for JobV2 {
    fn from(old: JobV1) -> JobV2 {
        JobV2 {
            request: old.request,
            state: old.state,
            failed_attempts: old.failed_attempts,
            lost_attempts: old.lost_attempts,
            failed_on: old.failed_on,
            last_failure: old.last_failure,
            sequence: old.sequence,
            verify: 1,
            built: Vec::new(),
        }
    }
}

impl Job {
    /// A job from its bytes on disk, in this layout or one of the two
    /// before. (Each older layout is a prefix of the next, and trailing
    /// bytes are refused, so no two read each other's bytes.)
    pub fn decode<const LIMIT: usize>(bytes: &[u8]) -> Result<Job, wire::WireError> {
        wire::decode::<Job, LIMIT>(bytes).or_else(|e| {
            let old = match wire::decode::<JobV2, LIMIT>(bytes) {
                Ok(old) => old,
                Err(_) => wire::decode::<JobV1, LIMIT>(bytes).map_err(|_| e)?.into(),
            };
            Ok(Job {
                requirements_digest: requirements_digest(&old.request),
                request: old.request,
                state: old.state,
                failed_attempts: old.failed_attempts,
                lost_attempts: old.lost_attempts,
                failed_on: old.failed_on,
                last_failure: old.last_failure,
                sequence: old.sequence,
                refused_until: BTreeMap::new(),
                waiting_because: None,
                verify: old.verify,
                built: old.built,
                requesters: Vec::new(),
            })
        })
    }

    /// Whose turn it takes: its first requester.
    pub fn owner(&self) -> fair::Owner {
        self.requesters.first().map(|r| r.key)
    }

    /// Where it stands among its owner's jobs.
    pub fn priority(&self) -> Priority {
        self.requesters.first().map(|r| r.priority).unwrap_or_default()
    }
}

impl Job {
    fn attempt(&self) -> u32 {
        self.failed_attempts + self.lost_attempts + 1
    }

    fn skips(&self, worker: &PublicKey, now_ms: u64) -> bool {
        self.failed_on.contains(worker)
            || self.built_by(worker)
            || self.refused_until.get(worker).is_some_and(|until| *until > now_ms)
    }

    /// Whether this worker's build is among those being checked.
    fn built_by(&self, worker: &PublicKey) -> bool {
        self.built.iter().any(|a| a.signer() == *worker)
    }

    /// Each build so far, by its worker, with its artifact.
    fn results(&self) -> Vec<(PublicKey, Hash)> {
        self.built
            .iter()
            .filter_map(|signed| signed.verify().ok().map(|a| (a.worker, a.artifact)))
            .collect()
    }

    /// Builders that must agree: `verify`, and 2 for `auto`.
    pub fn needed(&self) -> u32 {
        builders_needed(self.verify)
    }

    /// How the builds so far stand against the builders needed.
    pub fn verdict(&self) -> Verdict<PublicKey> {
        judge(&self.results(), self.needed())
    }

    /// Accepted on its first builder's word alone (`--verify auto`, a
    /// worker with a streak): the one build there is.
    pub fn trusted_alone(&self) -> bool {
        self.verify == VERIFY_AUTO && self.built.len() == 1 && matches!(self.state, JobState::Replicating { .. })
    }

    /// The check of an accepted result: who agreed, who did not. `None`
    /// while the builds do not agree yet.
    pub fn check(&self) -> Option<Check> {
        let Verdict::Accepted { artifact, .. } = self.verdict() else {
            return None;
        };
        let (agreed, disagreed) = self
            .built
            .iter()
            .cloned()
            .partition(|signed| signed.verify().is_ok_and(|a| a.artifact == artifact));
        Some(Check {
            needed: self.needed(),
            agreed,
            disagreed,
        })
    }

    /// Whether two builds reported different artifacts.
    fn disagrees(&self) -> bool {
        let results = self.results();
        results.iter().any(|(_, artifact)| *artifact != results[0].1)
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
            JobState::NotReproducible => JobPhase::NotReproducible {
                needed: self.needed(),
                attestations: self.built.clone(),
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
            requesters: self.requesters.len().max(1) as u32,
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
    /// Why the job waits changed: tell whoever follows it.
    Waits { build_key: Hash },
}

/// What a reported build did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Built {
    /// Not from the job's worker, a repeat, or for no open job.
    Ignored,
    /// The builders needed agree: the job is to be replicated.
    Accepted,
    /// Another builder is needed.
    NeedMore,
    /// The builds disagree past the builders allowed.
    NotReproducible,
}

/// The most builders that agree on one artifact.
fn agreeing_most(results: &[(PublicKey, Hash)]) -> usize {
    results
        .iter()
        .map(|(_, artifact)| results.iter().filter(|(_, a)| a == artifact).count())
        .max()
        .unwrap_or(0)
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
    #[error("this build already has {REQUESTERS_PER_JOB_MAX} requesters, its limit; follow it with `kiln status`, or fetch it by hash once it is done")]
    TooManyRequesters,
}

/// What a cancel did to the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cancelled {
    /// Nobody wants it any more: removed (the job as it was).
    Dropped(Box<Job>),
    /// Others still want it: these requesters are left.
    StillWanted(u32),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CancelError {
    #[error("no open job has this build key (it may have ended already: `kiln status` lists recent builds)")]
    NoSuchJob,
    #[error("you did not request this build (it has {0} requester(s)); only a requester can cancel its own request")]
    NotARequester(usize),
}

/// The open jobs and the known workers.
#[derive(Default)]
pub struct Schedule {
    /// Boxed, so the table's spare capacity costs a pointer per slot.
    jobs: HashMap<Hash, Box<Job>>,
    /// Queued jobs, by owner in turn (see `fair.rs`).
    queue: fair::FairQueue,
    /// Open jobs per requester key, for its bound.
    open_by: HashMap<PublicKey, u32>,
    /// Who the busy workers worked for over the last hour.
    shares: fair::Shares,
    /// What each open job's recipe and source take, where known (the
    /// acting coordinator fetched them), by recipe id.
    recipe_bytes: HashMap<Hash, u64>,
    /// Open jobs per owner and recipe: an owner holds a recipe's inputs
    /// while it owns an open job of it.
    owner_recipes: HashMap<(PublicKey, Hash), (u32, u64)>,
    /// Bytes of inputs held for each owner's open jobs, each recipe once.
    held_by: HashMap<PublicKey, u64>,
    workers: HashMap<PublicKey, WorkerEntry>,
    /// Workers matching each requirement set (by digest); cleared when a
    /// worker joins, leaves or changes its system.
    matching: HashMap<Hash, Arc<[PublicKey]>>,
    /// Jobs built or given up, not yet settled.
    ended: BTreeSet<Hash>,
    /// Jobs leased to workers this schedule has not heard from (yet): a
    /// job restored from disk, or an assignment heard before the worker's
    /// first advert. Moved to the worker's entry when its first advert
    /// arrives, and lost after a lease if it never does. (May hold keys of
    /// jobs since reassigned: each is checked against the job's state.)
    unknown_assignments: HashMap<PublicKey, BTreeSet<Hash>>,
    /// Open jobs per recipe id: a recipe (and its source) is an input to
    /// hold while any open job uses it.
    recipes: HashMap<Hash, u32>,
    next_sequence: u64,
    /// Restored jobs not to be assigned before this time (or until
    /// checked): a job built elsewhere while this node was down is settled
    /// from the DHT's record rather than built again.
    checking: HashMap<Hash, u64>,
    /// Workers' streaks of agreed results and disagreements, as the
    /// coordinator told them (see [`Schedule::note_streak`]); at most
    /// [`WORKERS_MAX`].
    streaks: HashMap<PublicKey, (u32, u32)>,
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
    /// `verify`: builders that must agree, or [`VERIFY_AUTO`] (when
    /// requests merge, the policy that checks more wins: see
    /// [`stricter`]).
    /// `requester`: who asks, and the priority it gives the job among its
    /// own (`None`: a job heard from a coordinator that did not say).
    pub fn submit(
        &mut self,
        request: JobRequest,
        verify: u32,
        requester: Option<(PublicKey, Priority)>,
    ) -> Result<Submitted, ScheduleError> {
        let verify = if verify == VERIFY_AUTO {
            VERIFY_AUTO
        } else {
            verify.clamp(1, VERIFY_MAX)
        };
        if let Some(job) = self.jobs.get(&request.build_key) {
            let new_requester = requester.is_some_and(|(key, _)| !job.requesters.iter().any(|r| r.key == key));
            if new_requester && job.requesters.len() >= REQUESTERS_PER_JOB_MAX {
                return Err(ScheduleError::TooManyRequesters);
            }
        }
        if let Some(job) = self.jobs.get_mut(&request.build_key) {
            let verify = stricter(job.verify, verify);
            if verify != job.verify {
                job.verify = verify;
                // Accepted on fewer builders than now needed: built again.
                if matches!(job.state, JobState::Replicating { .. }) {
                    self.recheck(&request.build_key);
                }
            }
            let Some(job) = self.jobs.get_mut(&request.build_key) else {
                return Ok(Submitted::Merged { new_emails: Vec::new() });
            };
            let mut new_emails = Vec::new();
            let mut given = Vec::new();
            for email in request.emails {
                if !job.request.emails.contains(&email) && job.request.emails.len() < REQUESTERS_EMAILS_MAX {
                    job.request.emails.push(email.clone());
                    new_emails.push(email.clone());
                }
                if let Some(index) = job.request.emails.iter().position(|e| *e == email) {
                    given.push(index as u8);
                }
            }
            if let Some((key, priority)) = requester {
                // Through `set_requesters`: a first requester of a job
                // that had none becomes its owner, which moves its queue
                // entry and its inputs' charge.
                let mut requesters = job.requesters.clone();
                match requesters.iter_mut().find(|r| r.key == key) {
                    Some(known) => {
                        for index in given {
                            if !known.emails.contains(&index) && known.emails.len() < EMAILS_MAX {
                                known.emails.push(index);
                            }
                        }
                    }
                    None => {
                        given.truncate(EMAILS_MAX);
                        requesters.push(RequesterShare {
                            key,
                            priority,
                            emails: given,
                        });
                    }
                }
                let build_key = job.request.build_key;
                self.set_requesters(&build_key, requesters);
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
            verify,
            built: Vec::new(),
            requesters: Vec::new(),
        };
        let mut job = job;
        if let Some((key, priority)) = requester {
            let emails = (0..job.request.emails.len().min(EMAILS_MAX)).map(|i| i as u8).collect();
            job.requesters.push(RequesterShare { key, priority, emails });
        }
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
            let worker = *worker;
            self.note_assigned(job.request.build_key, worker);
        }
        self.insert(job);
    }

    fn insert(&mut self, job: Job) {
        self.next_sequence = self.next_sequence.max(job.sequence) + 1;
        match job.state {
            JobState::Queued => {
                self.queue
                    .insert(job.owner(), job.priority(), job.sequence, job.request.build_key);
            }
            JobState::Replicating { .. } | JobState::GaveUp { .. } | JobState::NotReproducible => {
                self.ended.insert(job.request.build_key);
            }
            JobState::Assigned { .. } => {}
        }
        let recipe_id = job.request.recipe_id;
        let requesters: Vec<PublicKey> = job.requesters.iter().map(|r| r.key).collect();
        let owner = job.owner();
        if self.jobs.insert(job.request.build_key, Box::new(job)).is_none() {
            *self.recipes.entry(recipe_id).or_insert(0) += 1;
            for key in requesters {
                *self.open_by.entry(key).or_insert(0) += 1;
            }
            self.charge(owner, recipe_id, true);
        }
    }

    /// Whether an open job uses this recipe.
    pub fn uses_recipe(&self, recipe_id: &Hash) -> bool {
        self.recipes.contains_key(recipe_id)
    }

    /// Removes an ended job.
    /// Keeps a restored job from being assigned until [`Schedule::checked`]
    /// or `until_ms`, whichever comes first.
    pub fn hold_for_check(&mut self, build_key: Hash, until_ms: u64) {
        if self.jobs.contains_key(&build_key) {
            self.checking.insert(build_key, until_ms);
        }
    }

    /// The check of a restored job is done: it may be assigned.
    pub fn checked(&mut self, build_key: &Hash) {
        self.checking.remove(build_key);
    }

    pub fn remove(&mut self, build_key: &Hash) -> Option<Job> {
        self.ended.remove(build_key);
        self.checking.remove(build_key);
        let job = self.jobs.remove(build_key)?;
        self.queue.remove(job.owner(), job.priority(), job.sequence);
        for requester in &job.requesters {
            self.uncount(&requester.key);
        }
        self.charge(job.owner(), job.request.recipe_id, false);
        if let Some(count) = self.recipes.get_mut(&job.request.recipe_id) {
            *count -= 1;
            if *count == 0 {
                self.recipes.remove(&job.request.recipe_id);
                self.recipe_bytes.remove(&job.request.recipe_id);
            }
        }
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
        self.queue.insert(job.owner(), job.priority(), job.sequence, *build_key);
    }

    /// An owner's open job of `recipe` opened (`open`) or ended: its
    /// inputs are held for the owner while it has one.
    fn charge(&mut self, owner: fair::Owner, recipe: Hash, open: bool) {
        let Some(owner) = owner else {
            return;
        };
        let known = self.recipe_bytes.get(&recipe).copied().unwrap_or(0);
        // The bytes charged are kept, so the same are taken off again.
        let (count, bytes) = self.owner_recipes.entry((owner, recipe)).or_insert((0, known));
        if open {
            *count += 1;
            if *count == 1 {
                *self.held_by.entry(owner).or_insert(0) += *bytes;
            }
            return;
        }
        *count = count.saturating_sub(1);
        let bytes = *bytes;
        if *count == 0 {
            self.owner_recipes.remove(&(owner, recipe));
            if let Some(held) = self.held_by.get_mut(&owner) {
                *held = held.saturating_sub(bytes);
                if *held == 0 {
                    self.held_by.remove(&owner);
                }
            }
        }
    }

    /// What a recipe's inputs take (the acting coordinator fetched them).
    /// (Taken while unknown: after a restart, the jobs restored count it
    /// once a submission of the recipe measures it.)
    pub fn note_input_bytes(&mut self, recipe: Hash, bytes: u64) {
        let known = self.recipe_bytes.entry(recipe).or_insert(0);
        if *known == 0 {
            *known = bytes;
        }
    }

    /// Forgets a recipe's size noted for a submission that was not taken.
    pub fn forget_input_bytes(&mut self, recipe: &Hash) {
        if !self.recipes.contains_key(recipe) {
            self.recipe_bytes.remove(recipe);
        }
    }

    /// The bytes of inputs held for `owner`'s open jobs if it opened a job
    /// of `recipe`, whose inputs take `bytes`.
    pub fn inputs_held_with(&self, owner: &PublicKey, recipe: &Hash, bytes: u64) -> u64 {
        let held = self.held_by.get(owner).copied().unwrap_or(0);
        if self.owner_recipes.contains_key(&(*owner, *recipe)) {
            held
        } else {
            held.saturating_add(self.recipe_bytes.get(recipe).copied().unwrap_or(bytes))
        }
    }

    fn uncount(&mut self, key: &PublicKey) {
        if let Some(count) = self.open_by.get_mut(key) {
            *count -= 1;
            if *count == 0 {
                self.open_by.remove(key);
            }
        }
    }

    /// Open jobs this requester asked for (and has not cancelled).
    pub fn open_jobs_of(&self, key: &PublicKey) -> u32 {
        self.open_by.get(key).copied().unwrap_or(0)
    }

    /// The requesters of an open job and their addresses, as the
    /// coordinator announced them (gossip `JobV3`): both replace what was
    /// kept (a cancel takes some away).
    pub fn announced(&mut self, build_key: &Hash, requesters: Vec<RequesterShare>, emails: Vec<String>) {
        self.set_requesters(build_key, requesters);
        if let Some(job) = self.jobs.get_mut(build_key) {
            job.request.emails = emails;
            job.request.emails.truncate(REQUESTERS_EMAILS_MAX);
        }
    }

    /// The requesters of an open job: the list replaces the one kept.
    fn set_requesters(&mut self, build_key: &Hash, requesters: Vec<RequesterShare>) {
        let Some(job) = self.jobs.get(build_key) else {
            return;
        };
        let old: Vec<PublicKey> = job.requesters.iter().map(|r| r.key).collect();
        let queued = matches!(job.state, JobState::Queued);
        let (owner, priority, sequence) = (job.owner(), job.priority(), job.sequence);
        let recipe = job.request.recipe_id;
        let new_owner = requesters.first().map(|r| r.key);
        if new_owner != owner {
            self.charge(owner, recipe, false);
            self.charge(new_owner, recipe, true);
        }
        if queued {
            self.queue.remove(owner, priority, sequence);
        }
        for key in &old {
            self.uncount(key);
        }
        let mut requesters = requesters;
        requesters.truncate(REQUESTERS_PER_JOB_MAX);
        for requester in &requesters {
            *self.open_by.entry(requester.key).or_insert(0) += 1;
        }
        if let Some(job) = self.jobs.get_mut(build_key) {
            job.requesters = requesters;
            if queued {
                self.queue.insert(job.owner(), job.priority(), job.sequence, *build_key);
            }
        }
    }

    /// Takes `key` off the job's requesters, and its addresses (those no
    /// other requester gave) off the job's mail. A job nobody wants any
    /// more is removed.
    pub fn cancel(&mut self, build_key: &Hash, key: &PublicKey) -> Result<Cancelled, CancelError> {
        let Some(job) = self.jobs.get(build_key) else {
            return Err(CancelError::NoSuchJob);
        };
        let Some(position) = job.requesters.iter().position(|r| r.key == *key) else {
            return Err(CancelError::NotARequester(job.requesters.len()));
        };
        let mut requesters = job.requesters.clone();
        let leaving = requesters.remove(position);
        // Addresses someone else gave, or nobody (a job from an older
        // coordinator), stay.
        let given_by_others: BTreeSet<u8> = requesters.iter().flat_map(|r| r.emails.iter().copied()).collect();
        let keep: Vec<bool> = (0..job.request.emails.len())
            .map(|i| {
                let i = i as u8;
                given_by_others.contains(&i) || !leaving.emails.contains(&i)
            })
            .collect();
        if requesters.is_empty() && !keep.iter().any(|k| *k) {
            return match self.remove(build_key) {
                Some(job) => Ok(Cancelled::Dropped(Box::new(job))),
                None => Err(CancelError::NoSuchJob),
            };
        }
        // Renumber the addresses that stay.
        let mut renumbered: Vec<Option<u8>> = Vec::with_capacity(keep.len());
        let mut next = 0usize;
        for kept in &keep {
            renumbered.push(kept.then(|| {
                next += 1;
                // At most REQUESTERS_EMAILS_MAX (256) addresses: fits.
                u8::try_from(next - 1).unwrap_or(u8::MAX)
            }));
        }
        for requester in &mut requesters {
            requester.emails = requester
                .emails
                .iter()
                .filter_map(|i| renumbered.get(usize::from(*i)).copied().flatten())
                .collect();
        }
        let left = requesters.len() as u32;
        self.set_requesters(build_key, requesters);
        if let Some(job) = self.jobs.get_mut(build_key) {
            let emails = std::mem::take(&mut job.request.emails);
            job.request.emails = emails
                .into_iter()
                .zip(keep)
                .filter_map(|(email, kept)| kept.then_some(email))
                .collect();
        }
        Ok(Cancelled::StillWanted(left))
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
                // Its leases from before it was known (a restart, or an
                // assignment heard before this advert) are checked too.
                let assigned = self.take_unknown_assignments(&worker);
                self.workers.insert(
                    worker,
                    WorkerEntry {
                        advert,
                        seen_at_ms: now_ms,
                        assigned,
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
        self.note_assigned(*build_key, worker);
    }

    /// Records that `build_key` is leased to `worker`, known or not yet.
    fn note_assigned(&mut self, build_key: Hash, worker: PublicKey) {
        match self.workers.get_mut(&worker) {
            Some(entry) => {
                entry.assigned.insert(build_key);
            }
            None => {
                self.unknown_assignments.entry(worker).or_default().insert(build_key);
            }
        }
    }

    /// The jobs still leased to `worker` among those noted before it was
    /// known.
    fn take_unknown_assignments(&mut self, worker: &PublicKey) -> BTreeSet<Hash> {
        let noted = self.unknown_assignments.remove(worker).unwrap_or_default();
        noted
            .into_iter()
            .filter(|key| self.is_assigned_to(key, worker))
            .collect()
    }

    fn is_assigned_to(&self, build_key: &Hash, worker: &PublicKey) -> bool {
        matches!(self.jobs.get(build_key).map(|j| &j.state), Some(JobState::Assigned { worker: w, .. }) if w == worker)
    }

    fn queue_remove(&mut self, build_key: &Hash) {
        if let Some(job) = self.jobs.get(build_key) {
            self.queue.remove(job.owner(), job.priority(), job.sequence);
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

    /// The worker abandoned the build through no fault of the recipe (its
    /// inputs were out of reach, or its owner needed the machine): back in
    /// the queue, counted with the lost attempts, not the failed.
    /// The worker is not asked again for [`ABORTED_SKIP_MS`].
    pub fn aborted(&mut self, build_key: &Hash, worker: PublicKey, reason: &str, now_ms: u64) {
        let Some(job) = self.jobs.get_mut(build_key) else {
            return;
        };
        if !matches!(&job.state, JobState::Assigned { worker: w, .. } if *w == worker) {
            return;
        }
        job.refused_until.insert(worker, now_ms + ABORTED_SKIP_MS);
        job.waiting_because = Some(format!("the last attempt was abandoned: {reason}"));
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

    /// A worker reported a finished build. Taken only from the worker the
    /// job is leased to (anyone can sign an attestation; only the assignee
    /// was asked), once per worker. Once the builders needed agree, the job
    /// waits for replication; while they do not, it goes back to the queue
    /// for another builder; when they cannot, it is not reproducible.
    ///
    /// `alone`: the acting coordinator found the builder's streak long
    /// enough, and its spot-check draw missed, for an `auto` job to be
    /// accepted on this first build alone. A standby passes `false`: it
    /// keeps the job queued for a check until the coordinator's settlement
    /// (or assignment of a checker) says which it decided.
    pub fn built(&mut self, build_key: &Hash, attestation: Signed<Attestation>, alone: bool) -> Built {
        let Some(job) = self.jobs.get_mut(build_key) else {
            return Built::Ignored;
        };
        let worker = attestation.signer();
        let leased = matches!(&job.state, JobState::Assigned { worker: w, .. } if *w == worker);
        let verified = attestation
            .verify()
            .is_ok_and(|a| a.worker == worker && a.build_key == *build_key);
        if !leased || !verified || job.built_by(&worker) || job.built.len() >= CHECK_BUILDS_MAX {
            return Built::Ignored;
        }
        let first = job.built.is_empty();
        job.built.push(attestation);
        if let Some(entry) = self.workers.get_mut(&worker) {
            entry.assigned.remove(build_key);
        }
        let auto = self.jobs.get(build_key).is_some_and(|j| j.verify == VERIFY_AUTO);
        if alone && first && auto {
            self.replicate(build_key, worker);
            return Built::Accepted;
        }
        self.recheck(build_key)
    }

    /// Accepts the job's build by `worker`: it waits for replication.
    fn replicate(&mut self, build_key: &Hash, worker: PublicKey) {
        self.queue_remove(build_key);
        let Some(job) = self.jobs.get_mut(build_key) else {
            return;
        };
        let Some(chosen) = job.built.iter().find(|s| s.signer() == worker).cloned() else {
            return;
        };
        job.state = JobState::Replicating {
            attestation: Box::new(chosen),
        };
        self.ended.insert(*build_key);
    }

    /// A worker's streak of results agreed with and its disagreements, as
    /// the coordinator keeps them (see [`super::verification::Streaks`]):
    /// checks go to the longest streak, and first builds to workers that
    /// are not suspect (disagreements outnumbering the streak) while any
    /// such is free.
    pub fn note_streak(&mut self, worker: PublicKey, streak: u32, disagreements: u32) {
        if streak == 0 && disagreements == 0 {
            self.streaks.remove(&worker);
        } else if self.streaks.len() < WORKERS_MAX || self.streaks.contains_key(&worker) {
            self.streaks.insert(worker, (streak, disagreements));
        }
    }

    fn streak(&self, worker: &PublicKey) -> u32 {
        self.streaks.get(worker).map_or(0, |(streak, _)| *streak)
    }

    fn suspect(&self, worker: &PublicKey) -> bool {
        self.streaks
            .get(worker)
            .is_some_and(|(streak, disagreements)| disagreements > streak)
    }

    /// Moves a job on by the verdict on its builds so far.
    fn recheck(&mut self, build_key: &Hash) -> Built {
        let Some(job) = self.jobs.get_mut(build_key) else {
            return Built::Ignored;
        };
        if job.built.is_empty() {
            return Built::Ignored;
        }
        match job.verdict() {
            Verdict::Accepted { artifact, .. } => {
                let chosen = job
                    .built
                    .iter()
                    .find(|s| s.verify().is_ok_and(|a| a.artifact == artifact))
                    .map(|s| s.signer());
                let Some(chosen) = chosen else {
                    return Built::Ignored;
                };
                self.replicate(build_key, chosen);
                Built::Accepted
            }
            Verdict::NeedMore => {
                let agreeing = agreeing_most(&job.results());
                job.waiting_because = Some(format!(
                    "{agreeing} of {} builders needed agree so far; waiting for another builder",
                    job.needed()
                ));
                self.ended.remove(build_key);
                if !matches!(self.jobs.get(build_key).map(|j| &j.state), Some(JobState::Queued)) {
                    self.requeue(build_key);
                }
                Built::NeedMore
            }
            Verdict::NotReproducible => {
                self.not_reproducible(build_key);
                Built::NotReproducible
            }
        }
    }

    /// Builds made before this job was opened (a build settled on fewer
    /// builders than now needed): they count towards the check, and their
    /// builders are not asked again. Each is checked like a reported one.
    pub fn count_builds(&mut self, build_key: &Hash, earlier: Vec<Signed<Attestation>>) {
        let Some(job) = self.jobs.get_mut(build_key) else {
            return;
        };
        for signed in earlier {
            let valid = signed
                .verify()
                .is_ok_and(|a| a.worker == signed.signer() && a.build_key == *build_key);
            if valid && !job.built_by(&signed.signer()) && job.built.len() < CHECK_BUILDS_MAX {
                job.built.push(signed);
            }
        }
        if matches!(job.state, JobState::Queued) {
            self.recheck(build_key);
        }
    }

    fn not_reproducible(&mut self, build_key: &Hash) {
        self.requeue(build_key);
        self.queue_remove(build_key);
        if let Some(job) = self.jobs.get_mut(build_key) {
            job.state = JobState::NotReproducible;
            self.ended.insert(*build_key);
        }
    }

    /// The artifact could not be copied (its builder vanished): that build
    /// no longer counts, and the job is built again.
    pub fn replication_failed(&mut self, build_key: &Hash) {
        self.ended.remove(build_key);
        if let Some(job) = self.jobs.get_mut(build_key) {
            if let JobState::Replicating { attestation } = &job.state {
                let gone = attestation.signer();
                job.built.retain(|a| a.signer() != gone);
            }
        }
        self.lose(&[*build_key]);
    }

    /// Expires leases of workers not heard from, and forgets workers gone
    /// for long. Returns the jobs put back in the queue.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Hash> {
        let mut lost = Vec::new();
        for entry in self.workers.values() {
            // An idle worker's last advert may be older than the lease:
            // the lease counts from whichever is later.
            lost.extend(entry.assigned.iter().copied().filter(|key| {
                let since = match self.jobs.get(key).map(|j| &j.state) {
                    Some(JobState::Assigned { since_ms, .. }) => *since_ms,
                    _ => 0,
                };
                now_ms.saturating_sub(entry.seen_at_ms.max(since)) > LEASE_MS
            }));
        }
        // Jobs leased to workers this coordinator never heard of.
        let jobs = &self.jobs;
        self.unknown_assignments.retain(|worker, keys| {
            keys.retain(|key| {
                matches!(jobs.get(key).map(|j| &j.state), Some(JobState::Assigned { worker: w, .. }) if w == worker)
            });
            for key in keys.iter() {
                if let Some(JobState::Assigned { since_ms, .. }) = jobs.get(key).map(|j| &j.state) {
                    if now_ms.saturating_sub(*since_ms) > LEASE_MS {
                        lost.push(*key);
                    }
                }
            }
            !keys.is_empty()
        });
        lost.sort();
        lost.dedup();
        self.lose(&lost);
        self.sample_shares(now_ms);
        let before = self.workers.len();
        self.workers
            .retain(|_, entry| now_ms.saturating_sub(entry.seen_at_ms) <= WORKER_GONE_MS);
        if self.workers.len() != before {
            self.matching.clear();
        }
        lost
    }
}

pub mod fair;
mod matching;
#[cfg(test)]
mod tests;
