//! The top contributors a coordinator shows: per worker, the builds it
//! settled as done and their attested build time (each attestation's
//! signed end less its signed start: times the worker itself signed, so
//! the list ranks by the workers' word for how long their builds took). Counted from the `Results` table
//! when the coordinator starts, then once per settled build, so every
//! member of the coordination set, which records the same settlements,
//! shows the same list after a failover.
//!
//! Bounded: at most [`TRACKED_MAX`] workers are kept; past that, the one
//! with the least build time makes room.

use std::collections::HashMap;

use kiln_protocol::coord::{ContributorView, STATUS_CONTRIBUTORS_MAX};
use kiln_protocol::messages::Settlement;
use kiln_protocol::{wire, PublicKey};
use kiln_store::{RecordTable, Store};

/// Workers whose totals a coordinator keeps.
pub const TRACKED_MAX: usize = 10_000;

#[derive(Default)]
pub(super) struct Credit {
    by_worker: HashMap<PublicKey, (u64, u64)>,
}

impl Credit {
    /// Counts every done build in the store's results.
    pub(super) fn load(store: &Store) -> Credit {
        let mut credit = Credit::default();
        for (_, bytes) in store.records(RecordTable::Results).unwrap_or_default() {
            if let Ok(record) =
                wire::decode::<super::results::ResultRecord, { kiln_store::RECORD_VALUE_BYTES_MAX }>(&bytes)
            {
                credit.settled(&record.settlement);
            }
        }
        credit
    }

    /// Counts one settlement (once per build: the caller's concern):
    /// every builder of the artifact settled on, none whose build
    /// disagreed.
    pub(super) fn settled(&mut self, settlement: &Settlement) {
        for attestation in settlement.agreed() {
            self.credit(attestation);
        }
    }

    fn credit(&mut self, attestation: &kiln_protocol::Signed<kiln_protocol::Attestation>) {
        let Ok(a) = attestation.verify() else {
            return;
        };
        let ms = a.finished_at_ms.saturating_sub(a.started_at_ms);
        if !self.by_worker.contains_key(&a.worker) && self.by_worker.len() >= TRACKED_MAX {
            let least = self.by_worker.iter().min_by_key(|(_, (_, ms))| *ms).map(|(w, _)| *w);
            if let Some(least) = least {
                self.by_worker.remove(&least);
            }
        }
        let entry = self.by_worker.entry(a.worker).or_default();
        entry.0 = entry.0.saturating_add(1);
        entry.1 = entry.1.saturating_add(ms);
    }

    /// The top contributors by build time.
    pub(super) fn top(&self) -> Vec<ContributorView> {
        let mut all: Vec<ContributorView> = self
            .by_worker
            .iter()
            .map(|(worker, (builds, build_ms))| ContributorView {
                worker: *worker,
                builds: *builds,
                build_ms: *build_ms,
            })
            .collect();
        all.sort_by(|a, b| b.build_ms.cmp(&a.build_ms).then(b.builds.cmp(&a.builds)));
        all.truncate(STATUS_CONTRIBUTORS_MAX);
        all
    }
}
