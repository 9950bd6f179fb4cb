//! The workers' streaks (`--verify auto`, issue 16): per worker key, the
//! results in a row that an independent build agreed with, the
//! disagreements, and the builds accepted on its word alone. Every member
//! of the coordination set moves them by the same settlements (its own,
//! or the coordinator's heard on gossip) and keeps them in the `Streaks`
//! record table, so they survive a restart and a failover.
//!
//! - a `Checked` settlement adds one to each agreeing builder's streak and
//!   resets each disagreeing builder's;
//! - a `Trusted` one (built alone) notes the build as unchecked;
//! - a reset sends the worker's unchecked builds back to be built again by
//!   another worker ([`Coordinator::recheck_unchecked`]), on the acting
//!   coordinator.
//!
//! Only the acting coordinator decides whether a build is accepted alone
//! ([`Coordinator::accept_alone`]), from a random draw of its own: a
//! worker cannot know beforehand whether it will be checked.

use kiln_protocol::build::{VERIFY_AUTO, VERIFY_AUTO_CHECKED};
use kiln_protocol::messages::Settlement;
use kiln_protocol::{wire, Hash, PublicKey};
use kiln_store::RecordTable;
use tracing::{info, warn};

use super::verification::{Record, Verify};
use super::*;

/// Streaks shown by `kiln status --node`, longest first.
pub const STREAKS_SHOWN_MAX: usize = 20;

/// One worker's record, as `kiln status --node` shows it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct StreakView {
    pub worker: PublicKey,
    pub streak: u32,
    pub disagreements: u32,
    pub unchecked: u32,
}

impl Coordinator {
    /// Loads the streaks kept on disk.
    pub(super) fn restore_streaks(&mut self) {
        let records = match self.store.records(RecordTable::Streaks) {
            Ok(records) => records,
            Err(e) => {
                warn!(error = %e, "cannot read the kept streaks; every worker starts unchecked");
                return;
            }
        };
        for (key, bytes) in records {
            let Ok(key) = <[u8; 32]>::try_from(key.as_slice()) else {
                continue;
            };
            let worker = PublicKey(key);
            match wire::decode::<Record<Hash>, { kiln_store::RECORD_VALUE_BYTES_MAX }>(&bytes) {
                Ok(record) => {
                    self.schedule.note_streak(worker, record.streak, record.disagreements);
                    self.streaks.restore(worker, record);
                }
                Err(e) => warn!(error = %e, "skipping a damaged streak record"),
            }
        }
    }

    /// Moves the streaks by a settlement of a job that was open here.
    /// Returns the builds to check again: the unchecked builds of every
    /// worker caught disagreeing.
    pub(super) fn note_streaks(&mut self, settlement: &Settlement) -> Vec<Hash> {
        let mut again = Vec::new();
        let mut touched = Vec::new();
        match settlement {
            Settlement::Checked { check, .. } => {
                for signed in &check.agreed {
                    self.streaks.agreed(&signed.signer());
                    touched.push(signed.signer());
                }
                for signed in &check.disagreed {
                    let worker = signed.signer();
                    let unchecked = self.streaks.reset(&worker);
                    warn!(worker = %worker, unchecked = unchecked.len(), "a worker's build disagreed with independent builds: its streak is reset");
                    again.extend(unchecked);
                    touched.push(worker);
                }
            }
            Settlement::Trusted { attestation, .. } => {
                if let Some(build_key) = settlement.build_key() {
                    self.streaks.unchecked(&attestation.signer(), build_key);
                    touched.push(attestation.signer());
                }
            }
            Settlement::Done { .. } | Settlement::Failed { .. } | Settlement::NotReproducible { .. } => {}
        }
        for worker in touched {
            self.keep_streak(worker);
        }
        again
    }

    fn keep_streak(&mut self, worker: PublicKey) {
        let Some(record) = self.streaks.record(&worker).cloned() else {
            return;
        };
        self.schedule.note_streak(worker, record.streak, record.disagreements);
        let written = wire::encode(&record).map_err(|e| e.to_string()).and_then(|bytes| {
            self.store
                .put_record(RecordTable::Streaks, &worker.0, &bytes)
                .map_err(|e| e.to_string())
        });
        if let Err(e) = written {
            warn!(worker = %worker, error = e, "streak not written to disk");
        }
    }

    /// Whether the first build of an `auto` job, by `worker`, is accepted
    /// alone: only the acting coordinator decides, and only for a worker
    /// whose streak is long enough and whose spot check the draw misses.
    pub(super) fn accept_alone(&self, build_key: &Hash, worker: &PublicKey) -> bool {
        let auto_first = self
            .schedule
            .job(build_key)
            .is_some_and(|j| j.verify == VERIFY_AUTO && j.built.is_empty());
        self.acting
            && auto_first
            && self
                .streaks
                .needed_from(self.trusted_streak, Verify::Auto, worker, spot_draw())
                == 1
    }

    /// A worker's streak now.
    pub(super) fn streak(&self, worker: &PublicKey) -> u32 {
        self.streaks.streak(worker)
    }

    /// Builders an answer needs under `verify`: for `auto`, one if the
    /// build was settled on a trusted worker's word (the coordinator's own
    /// judgement), else two.
    pub(super) fn needed_for(&self, build_key: &Hash, verify: u32) -> u32 {
        if verify != VERIFY_AUTO {
            return verify;
        }
        let trusted = self
            .result(build_key)
            .is_some_and(|r| matches!(r.settlement, Settlement::Trusted { .. }));
        if trusted {
            1
        } else {
            VERIFY_AUTO_CHECKED
        }
    }

    /// Builds accepted on the word of a worker since caught disagreeing:
    /// each is opened again as a job that needs two agreeing builders (the
    /// earlier build counts as one, so another worker builds it). Only the
    /// acting coordinator does this; standbys hear the jobs on gossip. The
    /// requesters are not mailed again.
    pub(super) fn recheck_unchecked(&mut self, build_keys: Vec<Hash>) {
        if !self.acting {
            return;
        }
        for build_key in build_keys {
            if self.schedule.job(&build_key).is_some() {
                continue;
            }
            let Some(record) = self.result(&build_key) else {
                continue;
            };
            if !matches!(record.settlement, Settlement::Trusted { .. }) {
                continue;
            }
            let Some(attestation) = record.settlement.attestation().and_then(|s| s.verify().ok()) else {
                continue;
            };
            let job = JobRequest {
                build_key,
                recipe_id: attestation.recipe_id,
                recipe_name: record.recipe_name,
                recipe_version: record.recipe_version,
                publisher: None,
                options: record.options,
                requirements: record.requirements,
                emails: Vec::new(),
                requested_at_ms: crate::clock::now_ms(),
            };
            info!(job = %build_key, "built alone by a worker since caught disagreeing; built again by another");
            let (net, store, inputs) = (self.net.clone(), self.store.clone(), self.inputs.clone());
            // The coordinator asks for the check itself.
            let requester = (self.key.public(), kiln_protocol::coord::Priority::Normal);
            tokio::spawn(async move {
                if let Err(reason) = hold_inputs(&net, &store, &job, &[]).await {
                    warn!(job = %build_key, reason, "cannot hold the inputs to check a build again");
                    return;
                }
                let (reply, _) = tokio::sync::oneshot::channel();
                let submit = Input::Submit {
                    job: Box::new(job),
                    verify: VERIFY_AUTO_CHECKED,
                    requester,
                    input_bytes: 0,
                    reply,
                };
                let _ = inputs.send(submit).await;
            });
        }
    }

    /// The longest streaks, for `kiln status --node`.
    pub(super) fn streak_views(&self) -> Vec<StreakView> {
        let mut views: Vec<StreakView> = self
            .streaks
            .iter()
            .map(|(worker, record)| StreakView {
                worker: *worker,
                streak: record.streak,
                disagreements: record.disagreements,
                unchecked: record.unchecked.len() as u32,
            })
            .collect();
        views.sort_by(|a, b| b.streak.cmp(&a.streak).then(b.disagreements.cmp(&a.disagreements)));
        views.truncate(STREAKS_SHOWN_MAX);
        views
    }
}

/// A uniform draw in [0, 1) for the spot check, from the system's
/// randomness (a worker must not be able to predict it).
fn spot_draw() -> f64 {
    let mut bytes = [0u8; 8];
    if getrandom::getrandom(&mut bytes).is_err() {
        // No randomness: check.
        return 0.0;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}
