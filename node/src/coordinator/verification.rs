//! How many independent builds a result needs before the coordinator
//! accepts it (issue 16): the policy alone, pure, with no network and no
//! clock, so it can be simulated (`examples/sim_verify.rs`) and tested on
//! its own. The schedule judges builds with [`judge`]; the coordinator
//! keeps the [`Streaks`] (`coordinator::streaks`).
//!
//! - `--verify N` ([`Verify::Builders`]): N builders with distinct keys
//!   must report the same artifact hash.
//! - `--verify auto` ([`Verify::Auto`]): a worker earns a **streak** with
//!   each of its results that an independent build agreed with, and loses
//!   it at the first disagreement. A job whose first builder has a streak of
//!   at least [`TRUSTED_STREAK`] is built once, and re-checked by a second
//!   builder with probability 1/streak; every other job is built twice.
//!   Checks go to the free worker with the longest streak, so two untrusted
//!   workers (who might collude) rarely check each other. A disagreement
//!   also sends the worker's recent unchecked results back for checking
//!   ([`Streaks::reset`] returns them).
//!
//! Either way, on disagreement more builders are asked, up to
//! [`EXTRA_BUILDERS_MAX`] beyond the number needed; the hash that reaches the
//! needed count wins, and if none does the build is "not reproducible".

use std::collections::{HashMap, VecDeque};
use std::hash::Hash as StdHash;

use kiln_protocol::Hash;
use serde::{Deserialize, Serialize};

/// A streak from which a worker's result is accepted alone (BOINC's
/// adaptive replication uses 10 consecutive valid results).
pub const TRUSTED_STREAK: u32 = 10;
/// Builders asked beyond the number needed when results disagree.
pub const EXTRA_BUILDERS_MAX: u32 = 2;
/// A worker's unchecked results remembered, to check again when it is
/// caught disagreeing.
pub const UNCHECKED_KEPT_MAX: usize = 100;
/// Workers whose records are kept; past that a newcomer starts with no
/// streak and is never trusted alone (it is always checked).
pub const RECORDS_MAX: usize = 100_000;

/// What a requester asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    Builders(u32),
    Auto,
}

/// Per worker: results agreed with in a row, disagreements, and the
/// results it built alone that nobody checked yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record<J> {
    pub streak: u32,
    pub disagreements: u32,
    pub unchecked: VecDeque<J>,
}

impl<J> Default for Record<J> {
    fn default() -> Self {
        Record {
            streak: 0,
            disagreements: 0,
            unchecked: VecDeque::new(),
        }
    }
}

/// Every worker's record (the coordination set would keep it durable).
#[derive(Debug)]
pub struct Streaks<W, J> {
    by_worker: HashMap<W, Record<J>>,
}

impl<W: Eq + StdHash + Clone, J: Clone> Default for Streaks<W, J> {
    fn default() -> Self {
        Streaks {
            by_worker: HashMap::new(),
        }
    }
}

impl<W: Eq + StdHash + Clone, J: Clone> Streaks<W, J> {
    pub fn streak(&self, worker: &W) -> u32 {
        self.by_worker.get(worker).map_or(0, |r| r.streak)
    }

    pub fn record(&self, worker: &W) -> Option<&Record<J>> {
        self.by_worker.get(worker)
    }

    /// Puts back a record kept on disk.
    pub fn restore(&mut self, worker: W, record: Record<J>) {
        if self.by_worker.len() < RECORDS_MAX || self.by_worker.contains_key(&worker) {
            self.by_worker.insert(worker, record);
        }
    }

    /// Every worker's record.
    pub fn iter(&self) -> impl Iterator<Item = (&W, &Record<J>)> {
        self.by_worker.iter()
    }

    /// The record to change, if there is room for it.
    fn entry(&mut self, worker: &W) -> Option<&mut Record<J>> {
        if !self.by_worker.contains_key(worker) && self.by_worker.len() >= RECORDS_MAX {
            return None;
        }
        Some(self.by_worker.entry(worker.clone()).or_default())
    }

    /// Whether a worker is offered first builds only when no other worker
    /// is free: its disagreements outnumber its current streak. A liar
    /// caught lying builds first rarely (each of its first builds costs a
    /// check and a tie-break); an honest worker outvoted once earns its
    /// way back with the checks and the first builds it still gets when
    /// the farm is busy.
    pub fn suspect(&self, worker: &W) -> bool {
        self.by_worker.get(worker).is_some_and(|r| r.disagreements > r.streak)
    }

    /// How many agreeing builders a job needs, given its first builder.
    /// `draw` is a uniform sample in [0, 1) for the spot check.
    pub fn needed(&self, verify: Verify, first: &W, draw: f64) -> u32 {
        self.needed_from(TRUSTED_STREAK, verify, first, draw)
    }

    /// [`Streaks::needed`], trusting a worker alone from streak `trusted`.
    pub fn needed_from(&self, trusted: u32, verify: Verify, first: &W, draw: f64) -> u32 {
        match verify {
            Verify::Builders(n) => n.max(1),
            Verify::Auto => {
                let streak = self.streak(first);
                if streak >= trusted.max(1) && draw >= 1.0 / f64::from(streak) {
                    1
                } else {
                    2
                }
            }
        }
    }

    /// An agreement: the worker's result matched an independent one.
    pub fn agreed(&mut self, worker: &W) {
        if let Some(record) = self.entry(worker) {
            record.streak = record.streak.saturating_add(1);
        }
    }

    /// A result accepted on this worker's word alone.
    pub fn unchecked(&mut self, worker: &W, job: J) {
        if let Some(record) = self.entry(worker) {
            if record.unchecked.len() >= UNCHECKED_KEPT_MAX {
                record.unchecked.pop_front();
            }
            record.unchecked.push_back(job);
        }
    }

    /// A disagreement: the streak is lost; returns the worker's unchecked
    /// results, to build again.
    pub fn reset(&mut self, worker: &W) -> Vec<J> {
        let Some(record) = self.entry(worker) else {
            return Vec::new();
        };
        record.streak = 0;
        record.disagreements = record.disagreements.saturating_add(1);
        record.unchecked.drain(..).collect()
    }
}

/// Where one build's results stand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict<W> {
    /// Ask one more builder.
    NeedMore,
    /// This hash reached the needed count: `agreed` built it, `disagreed`
    /// did not.
    Accepted {
        artifact: Hash,
        agreed: Vec<W>,
        disagreed: Vec<W>,
    },
    /// No hash reached the needed count within the builders allowed.
    NotReproducible,
}

/// Judges the results so far (each builder once): accepted when `needed`
/// builders agree; more builders while fewer than `needed` +
/// [`EXTRA_BUILDERS_MAX`] have built; else not reproducible.
pub fn judge<W: Clone + PartialEq>(results: &[(W, Hash)], needed: u32) -> Verdict<W> {
    let needed = needed.max(1) as usize;
    let mut counts: Vec<(Hash, usize)> = Vec::new();
    for (_, hash) in results {
        match counts.iter_mut().find(|(h, _)| h == hash) {
            Some((_, n)) => *n += 1,
            None => counts.push((*hash, 1)),
        }
    }
    if let Some((artifact, _)) = counts.iter().find(|(_, n)| *n >= needed) {
        let (agreed, disagreed): (Vec<_>, Vec<_>) = results.iter().partition(|(_, h)| h == artifact);
        return Verdict::Accepted {
            artifact: *artifact,
            agreed: agreed.into_iter().map(|(w, _)| w.clone()).collect(),
            disagreed: disagreed.into_iter().map(|(w, _)| w.clone()).collect(),
        };
    }
    if results.len() < needed + EXTRA_BUILDERS_MAX as usize {
        Verdict::NeedMore
    } else {
        Verdict::NotReproducible
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_accepted_when_enough_agree_and_not_reproducible_past_the_extra_builders() {
        let (a, b) = (Hash::of(b"a"), Hash::of(b"b"));
        assert_eq!(judge(&[(1, a)], 2), Verdict::NeedMore);
        assert_eq!(
            judge(&[(1, a), (2, a)], 2),
            Verdict::Accepted {
                artifact: a,
                agreed: vec![1, 2],
                disagreed: vec![]
            }
        );
        // A liar among them: two more honest builds settle it.
        assert_eq!(judge(&[(1, b), (2, a)], 2), Verdict::NeedMore);
        assert_eq!(
            judge(&[(1, b), (2, a), (3, a)], 2),
            Verdict::Accepted {
                artifact: a,
                agreed: vec![2, 3],
                disagreed: vec![1]
            }
        );
        let c = Hash::of(b"c");
        let d = Hash::of(b"d");
        assert_eq!(judge(&[(1, a), (2, b), (3, c), (4, d)], 2), Verdict::NotReproducible);
        assert!(matches!(judge(&[(1, a)], 1), Verdict::Accepted { .. }));
    }

    #[test]
    fn a_streak_earns_single_builds_and_a_disagreement_loses_it_and_returns_the_unchecked() {
        let mut streaks: Streaks<u32, u32> = Streaks::default();
        assert_eq!(streaks.needed(Verify::Auto, &7, 0.99), 2, "a stranger is checked");
        for _ in 0..TRUSTED_STREAK {
            streaks.agreed(&7);
        }
        assert_eq!(streaks.needed(Verify::Auto, &7, 0.99), 1);
        // Spot-checked with probability 1/streak.
        assert_eq!(streaks.needed(Verify::Auto, &7, 0.05), 2);
        assert_eq!(streaks.needed(Verify::Builders(3), &7, 0.99), 3);
        streaks.unchecked(&7, 100);
        streaks.unchecked(&7, 101);
        assert_eq!(streaks.reset(&7), vec![100, 101]);
        assert_eq!(streaks.streak(&7), 0);
        assert_eq!(streaks.record(&7).map(|r| r.disagreements), Some(1));
        assert_eq!(streaks.needed(Verify::Auto, &7, 0.99), 2);
        assert!(streaks.suspect(&7), "one disagreement, no streak since");
        streaks.agreed(&7);
        assert!(!streaks.suspect(&7), "as many agreements since as disagreements");
    }
}
