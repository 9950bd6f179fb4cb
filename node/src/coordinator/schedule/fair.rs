//! Fair share: the queued jobs grouped by the requester that owns each
//! (the first that asked for it; a job heard from an older coordinator has
//! no owner and is grouped with the others like it), the groups served in
//! turn, least recently served first, and within a group the highest
//! priority first, then the oldest. A requester with 1,000 jobs queued and
//! one with 1 take the next free workers in turn; `--priority` reorders
//! only a requester's own jobs.
//!
//! Round robin rather than a weighted fair queue: every requester weighs
//! the same (there is no account to weigh them by), and a turn is one job,
//! whatever its size: a build's length is not known before it runs.
//!
//! Also each requester's share of the busy workers over the last hour, from
//! a sample of who the running jobs belong to every [`SHARE_SAMPLE_MS`],
//! added up per minute.
//!
//! Not for: matching a job to a worker (`matching.rs`).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use kiln_protocol::coord::Priority;
use kiln_protocol::{Hash, PublicKey};

/// Whose turn a job takes: its first requester's key.
pub type Owner = Option<PublicKey>;

/// Owners with no job queued whose last turn is remembered.
pub const IDLE_OWNERS_MAX: usize = 10_000;

/// One owner's queued jobs: highest priority first, then oldest.
type Lane = BTreeMap<(Reverse<Priority>, u64), Hash>;

/// The queued jobs, grouped by owner.
#[derive(Default)]
pub struct FairQueue {
    by_owner: HashMap<Owner, Lane>,
    /// Owners with queued jobs, in turn order: least recently served first.
    turns: BTreeSet<(u64, Owner)>,
    /// Owners served lately with no job queued now (at most
    /// [`IDLE_OWNERS_MAX`]), so one that queues a job at a time comes back
    /// at its place, not first.
    idle: BTreeSet<(u64, Owner)>,
    /// When each owner in `turns` or `idle` was last served (0: not yet),
    /// on the queue's own count of turns.
    served_at: HashMap<Owner, u64>,
    turns_taken: u64,
    len: usize,
}

impl FairQueue {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn insert(&mut self, owner: Owner, priority: Priority, sequence: u64, build_key: Hash) {
        let jobs = self.by_owner.entry(owner).or_default();
        if jobs.is_empty() {
            let at = *self.served_at.entry(owner).or_insert(0);
            self.idle.remove(&(at, owner));
            self.turns.insert((at, owner));
        }
        if jobs.insert((Reverse(priority), sequence), build_key).is_none() {
            self.len += 1;
        }
    }

    pub fn remove(&mut self, owner: Owner, priority: Priority, sequence: u64) {
        let Some(jobs) = self.by_owner.get_mut(&owner) else {
            return;
        };
        if jobs.remove(&(Reverse(priority), sequence)).is_some() {
            self.len -= 1;
        }
        if jobs.is_empty() {
            self.by_owner.remove(&owner);
            if let Some(at) = self.served_at.get(&owner).copied() {
                self.turns.remove(&(at, owner));
                self.idle.insert((at, owner));
                self.forget_idle();
            }
        }
    }

    /// Keeps at most [`IDLE_OWNERS_MAX`] idle owners: the one served
    /// longest ago goes (it would come back near the front anyway).
    fn forget_idle(&mut self) {
        while self.idle.len() > IDLE_OWNERS_MAX {
            if let Some((_, owner)) = self.idle.pop_first() {
                self.served_at.remove(&owner);
            }
        }
    }

    /// `owner` was given a worker: its next job waits behind every other
    /// owner's.
    pub fn served(&mut self, owner: Owner) {
        self.turns_taken += 1;
        let now = self.turns_taken;
        let at = self.served_at.insert(owner, now);
        if let Some(at) = at {
            self.turns.remove(&(at, owner));
            self.idle.remove(&(at, owner));
        }
        if self.by_owner.contains_key(&owner) {
            self.turns.insert((now, owner));
        } else {
            self.idle.insert((now, owner));
            self.forget_idle();
        }
    }

    /// Every queued job in fair order: each owner's first job in turn
    /// order, then each one's second, and so on.
    pub fn fair_order(&self) -> Vec<(Owner, Hash)> {
        let mut order = Vec::with_capacity(self.len);
        let mut lanes: Vec<(Owner, std::collections::btree_map::Values<'_, _, Hash>)> = self
            .turns
            .iter()
            .filter_map(|(_, owner)| self.by_owner.get(owner).map(|jobs| (*owner, jobs.values())))
            .collect();
        while !lanes.is_empty() {
            lanes.retain_mut(|(owner, jobs)| match jobs.next() {
                Some(key) => {
                    order.push((*owner, *key));
                    true
                }
                None => false,
            });
        }
        order
    }

    /// Queued jobs per owner.
    pub fn counts(&self) -> impl Iterator<Item = (Owner, usize)> + '_ {
        self.by_owner.iter().map(|(owner, jobs)| (*owner, jobs.len()))
    }

    /// An owner's queued jobs.
    pub fn of(&self, owner: &Owner) -> impl Iterator<Item = &Hash> + '_ {
        self.by_owner.get(owner).into_iter().flat_map(|jobs| jobs.values())
    }
}

/// How often the owners of the running jobs are sampled for the share.
pub const SHARE_SAMPLE_MS: u64 = 1_000;
/// Samples are added up per minute; an hour of minutes is kept.
pub const SHARE_MINUTE_MS: u64 = 60_000;
pub const SHARE_MINUTES: u64 = 60;
/// Owners counted in one minute (the rest are not named).
pub const SHARE_OWNERS_PER_MINUTE_MAX: usize = 1_024;

/// Who the busy workers worked for over the last hour: each second, one
/// count per running job for its owner, added up per minute.
#[derive(Default)]
pub struct Shares {
    minutes: VecDeque<(u64, HashMap<Owner, u64>)>,
    sampled_at_ms: Option<u64>,
}

impl Shares {
    /// Whether a sample is due at `now_ms`.
    pub fn due(&self, now_ms: u64) -> bool {
        self.sampled_at_ms
            .is_none_or(|at| now_ms.saturating_sub(at) >= SHARE_SAMPLE_MS)
    }

    /// The owners of the jobs running now, one entry per running job.
    pub fn sample(&mut self, now_ms: u64, running: impl Iterator<Item = Owner>) {
        self.sampled_at_ms = Some(now_ms);
        let minute = now_ms / SHARE_MINUTE_MS;
        if self.minutes.back().is_none_or(|(m, _)| *m != minute) {
            self.minutes.push_back((minute, HashMap::new()));
        }
        while self.minutes.front().is_some_and(|(m, _)| *m + SHARE_MINUTES <= minute) {
            self.minutes.pop_front();
        }
        let Some((_, counts)) = self.minutes.back_mut() else {
            return;
        };
        for owner in running {
            if counts.len() < SHARE_OWNERS_PER_MINUTE_MAX || counts.contains_key(&owner) {
                *counts.entry(owner).or_insert(0) += 1;
            }
        }
    }

    /// Each owner's share of the busy workers over the last hour, in
    /// thousandths.
    pub fn permille(&self) -> HashMap<Owner, u32> {
        let mut busy: HashMap<Owner, u64> = HashMap::new();
        let mut total: u64 = 0;
        for (_, counts) in &self.minutes {
            for (owner, count) in counts {
                *busy.entry(*owner).or_insert(0) += count;
                total += count;
            }
        }
        busy.into_iter()
            .map(|(owner, n)| (owner, (n * 1000 / total.max(1)) as u32))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Owner {
        Some(PublicKey([n; 32]))
    }

    #[test]
    fn owners_take_turns_and_priority_orders_only_an_owners_own_jobs() {
        let mut queue = FairQueue::default();
        for sequence in 0..5 {
            queue.insert(key(1), Priority::Normal, sequence, Hash::of(&[1, sequence as u8]));
        }
        queue.insert(key(2), Priority::Low, 10, Hash::of(&[2, 0]));
        queue.insert(key(1), Priority::High, 11, Hash::of(&[1, 99]));
        let order: Vec<Hash> = queue.fair_order().into_iter().map(|(_, k)| k).collect();
        // Owner 1's high-priority job first in its lane; owner 2's low one
        // still takes the second turn.
        assert_eq!(order[0], Hash::of(&[1, 99]));
        assert_eq!(order[1], Hash::of(&[2, 0]));
        assert_eq!(order.len(), 7);
        // Once owner 1 is served, owner 2 is first.
        queue.remove(key(1), Priority::High, 11);
        queue.served(key(1));
        assert_eq!(queue.fair_order()[0].1, Hash::of(&[2, 0]));
        queue.remove(key(2), Priority::Low, 10);
        queue.served(key(2));
        assert_eq!(queue.len(), 5);
        assert_eq!(queue.fair_order()[0].1, Hash::of(&[1, 0]));
    }

    #[test]
    fn an_owner_that_queues_one_job_at_a_time_keeps_its_place_in_the_turns() {
        let mut queue = FairQueue::default();
        for sequence in 0..3 {
            queue.insert(key(1), Priority::Normal, sequence, Hash::of(&[1, sequence as u8]));
        }
        // Owner 2 is served its only job, then queues another.
        queue.insert(key(2), Priority::Normal, 10, Hash::of(b"b0"));
        queue.remove(key(2), Priority::Normal, 10);
        queue.served(key(2));
        queue.insert(key(2), Priority::Normal, 11, Hash::of(b"b1"));
        // Owner 1, never served, goes first.
        assert_eq!(queue.fair_order()[0].1, Hash::of(&[1, 0]));
    }

    #[test]
    fn a_new_owner_goes_before_one_served_already() {
        let mut queue = FairQueue::default();
        queue.insert(key(1), Priority::Normal, 0, Hash::of(b"a0"));
        queue.insert(key(1), Priority::Normal, 1, Hash::of(b"a1"));
        queue.remove(key(1), Priority::Normal, 0);
        queue.served(key(1));
        queue.insert(key(2), Priority::Normal, 2, Hash::of(b"b0"));
        assert_eq!(queue.fair_order()[0].1, Hash::of(b"b0"));
    }

    #[test]
    fn shares_count_running_jobs_per_owner_over_the_samples() {
        let mut shares = Shares::default();
        assert!(shares.due(0));
        shares.sample(0, [key(1), key(1), key(1), key(2)].into_iter());
        assert!(!shares.due(SHARE_SAMPLE_MS - 1));
        shares.sample(SHARE_SAMPLE_MS, [key(2), key(2), key(2), key(2)].into_iter());
        let permille = shares.permille();
        assert_eq!(permille[&key(1)], 375);
        assert_eq!(permille[&key(2)], 625);
        // An hour later, those samples are gone.
        shares.sample(SHARE_MINUTES * SHARE_MINUTE_MS, [key(2)].into_iter());
        assert_eq!(shares.permille().get(&key(1)), None);
    }
}
