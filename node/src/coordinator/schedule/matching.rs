//! Matching queued jobs to free workers: requesters in turn (`fair.rs`),
//! each one's jobs by its priority then oldest first; least loaded
//! matching worker first, skipping workers that refused or failed the job;
//! and what status shows of the workers and the requesters.

use std::sync::Arc;

use kiln_protocol::coord::{RequesterView, WorkerView, STATUS_WORKER_JOBS_MAX};
use kiln_protocol::{Hash, PublicKey};

use super::*;

impl Schedule {
    /// Matches queued jobs to free workers, requesters in turn.
    pub fn plan(&mut self, now_ms: u64) -> Vec<Decision> {
        let mut decisions = Vec::new();
        let mut free_total: u64 = self
            .workers
            .values()
            .filter(|w| now_ms.saturating_sub(w.seen_at_ms) <= WORKER_ALIVE_MS)
            .map(|w| u64::from(w.free()))
            .sum();
        let queued = self.queue.fair_order();
        // Once no worker is free, a few more jobs are looked at, only to
        // say why they wait.
        let mut reasons_left = REASONS_PER_PLAN_MAX;
        for (owner, build_key) in queued {
            // Only queued jobs are in the queue; a stale entry is skipped.
            if !matches!(self.jobs.get(&build_key).map(|j| &j.state), Some(JobState::Queued)) {
                continue;
            }
            if free_total == 0 {
                if reasons_left == 0 {
                    break;
                }
                reasons_left -= 1;
            }
            if let Some(until_ms) = self.checking.get(&build_key).copied() {
                if until_ms > now_ms {
                    if let Some(job) = self.jobs.get_mut(&build_key) {
                        job.waiting_because =
                            Some("restored from disk: checking whether it was built meanwhile".into());
                    }
                    continue;
                }
                self.checking.remove(&build_key);
            }
            match self.match_one(&build_key, now_ms) {
                Match::Worker(worker) if free_total > 0 => {
                    free_total -= 1;
                    decisions.push(self.lease(owner, build_key, worker, now_ms));
                }
                Match::Worker(_) => {}
                Match::Wait(reason) => {
                    if let Some(job) = self.jobs.get_mut(&build_key) {
                        if job.waiting_because.as_ref() != Some(&reason) {
                            job.waiting_because = Some(reason);
                            decisions.push(Decision::Waits { build_key });
                        }
                    }
                }
                Match::GiveUp(reason) => self.give_up(&build_key, reason),
                Match::NotReproducible => self.not_reproducible(&build_key),
            }
        }
        decisions
    }

    fn lease(&mut self, owner: fair::Owner, build_key: Hash, worker: PublicKey, now_ms: u64) -> Decision {
        self.queue_remove(&build_key);
        self.queue.served(owner);
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
            let last = job
                .waiting_because
                .as_deref()
                .map(|why| format!("; {why}"))
                .unwrap_or_default();
            return Match::GiveUp(format!(
                "{} attempts were lost (workers killed or cut off, or giving the build back){last}",
                job.lost_attempts
            ));
        }
        let matching = self.matching_workers(build_key);
        let Some(job) = self.jobs.get(build_key) else {
            return Match::Wait(String::new());
        };
        let untried = || {
            matching
                .iter()
                .filter(|w| !job.failed_on.contains(w) && !job.built_by(w))
        };
        if job.disagrees() && untried().next().is_none() {
            return Match::NotReproducible;
        }
        if job.failed_attempts > 0 && untried().next().is_none() {
            let last = job.last_failure.as_ref().map(|(r, _)| r.as_str()).unwrap_or("?");
            return Match::GiveUp(format!(
                "failed on {} worker(s), and no other worker matches; last failure: {last}",
                job.failed_attempts
            ));
        }
        // A check (a build after the first) goes to the worker with the
        // longest streak of agreed results, so two newcomers (who might
        // collude) rarely check each other; a first build to the least
        // loaded of the workers not suspect (caught disagreeing more often
        // than agreeing since), then of the rest.
        let checking = !job.built.is_empty();
        let best = untried()
            .filter(|w| !job.skips(w, now_ms))
            .filter_map(|w| self.workers.get(w).map(|entry| (*w, entry)))
            .filter(|(_, entry)| entry.free() > 0 && now_ms.saturating_sub(entry.seen_at_ms) <= WORKER_ALIVE_MS)
            .min_by_key(|(w, entry)| {
                let (streak, suspect) = if checking {
                    (self.streak(w), false)
                } else {
                    (0, self.suspect(w))
                };
                (
                    suspect,
                    std::cmp::Reverse(streak),
                    entry.load() * 1000 / entry.advert.max_jobs.max(1),
                    *w,
                )
            });
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
        if !job.built.is_empty() {
            let others = matching.iter().filter(|w| !job.built_by(w)).count();
            if others == 0 {
                return format!(
                    "{} of {} builders needed have built it, and no other matching worker has joined",
                    job.built.len(),
                    job.needed()
                );
            }
            return format!(
                "{} of {} builders needed have built it; the {others} other matching workers are busy",
                job.built.len(),
                job.needed()
            );
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

    /// Each requester's queued and running jobs, its oldest queued job's
    /// wait and its share of the busy workers over the last hour, most
    /// queued first (at most `limit`).
    pub fn requester_views(&self, now_ms: u64, limit: usize) -> Vec<RequesterView> {
        let shares = self.shares.permille();
        let mut views: HashMap<fair::Owner, RequesterView> = HashMap::new();
        let blank = |owner: fair::Owner| RequesterView {
            requester: owner.unwrap_or(PublicKey([0; 32])),
            queued: 0,
            running: 0,
            oldest_wait_ms: 0,
            share_permille: shares.get(&owner).copied().unwrap_or(0),
        };
        for (owner, queued) in self.queue.counts() {
            let oldest = self
                .queue
                .of(&owner)
                .filter_map(|key| self.jobs.get(key))
                .map(|job| job.request.requested_at_ms.min(now_ms))
                .min()
                .unwrap_or(now_ms);
            let view = views.entry(owner).or_insert_with(|| blank(owner));
            view.queued = queued as u32;
            view.oldest_wait_ms = now_ms - oldest;
        }
        for owner in self.running_owners() {
            views.entry(owner).or_insert_with(|| blank(owner)).running += 1;
        }
        for owner in shares.keys() {
            views.entry(*owner).or_insert_with(|| blank(*owner));
        }
        let mut views: Vec<RequesterView> = views.into_values().collect();
        views.sort_by_key(|v| (std::cmp::Reverse(v.queued), std::cmp::Reverse(v.running), v.requester));
        views.truncate(limit);
        views
    }

    /// The owner of each job leased to a worker now.
    fn running_owners(&self) -> impl Iterator<Item = fair::Owner> + '_ {
        self.workers
            .values()
            .flat_map(|entry| entry.assigned.iter())
            .filter_map(|key| self.jobs.get(key))
            .map(|job| job.owner())
    }

    /// Samples who the busy workers work for, when a sample is due.
    pub(super) fn sample_shares(&mut self, now_ms: u64) {
        if self.shares.due(now_ms) {
            let owners: Vec<fair::Owner> = self.running_owners().collect();
            self.shares.sample(now_ms, owners.into_iter());
        }
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
    /// Its builds disagree and no other matching worker is left to settle
    /// it.
    NotReproducible,
}
