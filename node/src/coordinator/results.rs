//! The coordinator's durable state and what it shows: the queue kept on
//! disk, the results of ended builds, phases and the status report.

use kiln_protocol::coord::{JobPhase, StatusReport, ATTESTATIONS_MAX, STATUS_JOBS_MAX, STATUS_WORKERS_MAX};
use kiln_protocol::messages::{JobRequest, Settlement};
use kiln_protocol::system::VersionRange;
use kiln_protocol::{wire, Attestation, Hash, Signed};
use kiln_store::RecordTable;
use tracing::{info, warn};

use super::*;
use crate::metrics::{Metrics, METRICS};

impl Coordinator {
    pub(super) fn record_result(&mut self, build_key: &Hash, settlement: &Settlement, job: Option<&JobRequest>) {
        // Credited once per build key, as `Credit::load` counts the table
        // at start: when no `Done` was recorded under the key before.
        let done_before = self
            .result(build_key)
            .is_some_and(|r| r.settlement.attestation().is_some());
        if !done_before {
            self.credit.settled(settlement);
        }
        // Counted once, where the job was open: not for repeats of a
        // settlement or for builds this node never heard of.
        match (settlement, job.is_some()) {
            (Settlement::Done { .. } | Settlement::Checked { .. } | Settlement::Trusted { .. }, true) => {
                Metrics::add(&METRICS.jobs_done, 1)
            }
            (Settlement::Failed { .. } | Settlement::NotReproducible { .. }, true) => {
                Metrics::add(&METRICS.jobs_failed, 1)
            }
            (_, false) => {}
        }
        // The streaks move once per settlement of a job open here, as
        // every member of the coordination set sees it.
        if let Some(job) = job {
            self.checks.settled(&job.recipe_name, settlement);
            let again = self.note_streaks(settlement);
            self.recheck_unchecked(again);
        }
        let record = ResultRecord {
            settlement: settlement.clone(),
            recipe_name: job.map(|j| j.recipe_name.clone()).unwrap_or_default(),
            recipe_version: job.map(|j| j.recipe_version.clone()).unwrap_or_default(),
            options: job.map(|j| j.options.clone()).unwrap_or_default(),
            requirements: job.map(|j| j.requirements.clone()).unwrap_or_default(),
        };
        if let Ok(bytes) = wire::encode(&record) {
            if let Err(e) = self
                .store
                .put_record(RecordTable::Results, build_key.as_bytes(), &bytes)
            {
                warn!(job = %build_key, error = %e, "result not recorded");
            }
        }
    }

    pub(super) fn result(&self, build_key: &Hash) -> Option<ResultRecord> {
        let bytes = self
            .store
            .get_record(RecordTable::Results, build_key.as_bytes())
            .ok()??;
        wire::decode::<_, { kiln_store::RECORD_VALUE_BYTES_MAX }>(&bytes).ok()
    }

    /// A finished build of the same recipe name, options and requirements
    /// as `job`, whose version lies in `range` (the newest such).
    pub(super) async fn built_in_range(
        &self,
        job: &JobRequest,
        range: &VersionRange,
    ) -> Option<Vec<Signed<Attestation>>> {
        // A scan of every result: off the runtime, like all store scans.
        let (store, wanted, within) = (self.store.clone(), job.clone(), range.clone());
        let found = tokio::task::spawn_blocking(move || newest_built(&store, &wanted, &within))
            .await
            .ok()??;
        info!(job = %job.build_key, version = found.0, range = %range, "an accepted version is already built");
        self.built(&found.1)
    }

    /// The attestations of a build this node knows is done: the settled
    /// one first, then every other one it keeps of the same artifact, one
    /// per builder. (The store may also keep attestations of other
    /// artifacts, such as this node's own build that disagreed.)
    pub(super) fn built(&self, build_key: &Hash) -> Option<Vec<Signed<Attestation>>> {
        let settled = self.result(build_key)?.settlement.attestation()?.clone();
        let artifact = settled.verify().ok()?.artifact;
        let kept = self.store.attestations(build_key).unwrap_or_default();
        let mut attestations = vec![settled];
        for signed in kept {
            let same = signed
                .verify()
                .is_ok_and(|a| a.artifact == artifact && a.worker == signed.signer() && a.build_key == *build_key);
            if same && attestations.iter().all(|a| a.signer() != signed.signer()) {
                attestations.push(signed);
            }
        }
        attestations.truncate(ATTESTATIONS_MAX);
        Some(attestations)
    }

    /// [`Coordinator::built`], when at least `verify` builders with
    /// distinct keys vouch for the artifact.
    pub(super) fn built_by_enough(&self, build_key: &Hash, verify: u32) -> Option<Vec<Signed<Attestation>>> {
        self.built(build_key)
            .filter(|attestations| agreeing_builders(attestations) >= verify as usize)
    }

    pub(super) fn phase(&self, build_key: &Hash) -> JobPhase {
        if let Some(job) = self.schedule.job(build_key) {
            return job.phase();
        }
        match self.result(build_key).map(|r| r.settlement) {
            Some(settlement) => settlement.phase(),
            None if self.cancelled.contains(build_key) => JobPhase::Cancelled,
            None => JobPhase::Unknown,
        }
    }

    /// Keeps a job's current state on disk (or removes it once ended).
    /// Returns whether the disk has it.
    pub(super) fn persist(&self, build_key: &Hash) -> bool {
        let result = match self.schedule.job(build_key) {
            Some(job) => wire::encode(job)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    self.store
                        .put_record(RecordTable::Queue, build_key.as_bytes(), &bytes)
                        .map_err(|e| e.to_string())
                })
                .map(|_| ()),
            None => self
                .store
                .remove_record(RecordTable::Queue, build_key.as_bytes())
                .map(|_| ())
                .map_err(|e| e.to_string()),
        };
        if let Err(e) = &result {
            warn!(job = %build_key, error = e, "queue not written to disk");
        }
        result.is_ok()
    }

    /// A job changed: kept on disk, watchers told.
    pub(super) fn changed(&mut self, build_key: &Hash) {
        self.persist(build_key);
        let phase = self.phase(build_key);
        self.notify(build_key, phase);
    }

    pub(super) fn notify(&mut self, build_key: &Hash, phase: JobPhase) {
        if let Some(list) = self.watchers.get_mut(build_key) {
            list.retain(|w| w.try_send(phase.clone()).is_ok());
        }
    }

    pub(super) fn local(&self, now: u64) -> super::LocalView {
        let jobs = self.schedule.jobs();
        super::LocalView {
            acting: self.acting,
            member: self.election.member(),
            set: self.election.set(now),
            heartbeats_sent: self.heartbeats_sent,
            eligible: self.election.eligible(),
            pinned: self.election.pinned(),
            coordinator: self.election.leader(now),
            jobs_total: jobs.len() as u64,
            jobs: jobs.iter().take(STATUS_JOBS_MAX).map(|j| j.view()).collect(),
            mail: self.mail.as_ref().map(|(mail, _)| mail.view()),
            streaks: self.streak_views(),
        }
    }

    pub(super) fn status(&self, now: u64) -> StatusReport {
        let jobs = self.schedule.jobs();
        let mut workers = self.schedule.worker_views(now);
        workers.truncate(STATUS_WORKERS_MAX);
        StatusReport {
            coordinator: self.key.public(),
            pinned: self.election.pinned(),
            workers,
            jobs_total: jobs.len() as u64,
            jobs: jobs.iter().take(STATUS_JOBS_MAX).map(|j| j.view()).collect(),
            recent: self.recent.iter().cloned().collect(),
            mail: self.mail.as_ref().map(|(mail, _)| mail.view()).unwrap_or_default(),
        }
    }
}

/// How a build ended, kept in the `Results` table under its build key,
/// with what `--accept-versions` compares.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct ResultRecord {
    pub(super) settlement: Settlement,
    pub(super) recipe_name: String,
    pub(super) recipe_version: String,
    pub(super) options: std::collections::BTreeMap<String, String>,
    pub(super) requirements: kiln_protocol::Requirements,
}

/// The newest finished build of `job`'s recipe name, options and
/// requirements whose version lies in `range`: its version and build key.
fn newest_built(store: &Store, job: &JobRequest, range: &VersionRange) -> Option<(String, Hash)> {
    let records = store.records(RecordTable::Results).ok()?;
    records
        .iter()
        .filter_map(|(key, bytes)| {
            let record: ResultRecord = wire::decode::<_, { kiln_store::RECORD_VALUE_BYTES_MAX }>(bytes).ok()?;
            let same = record.recipe_name == job.recipe_name
                && record.options == job.options
                && record.requirements == job.requirements
                && record.settlement.attestation().is_some()
                && range.contains(&record.recipe_version);
            let key: [u8; 32] = key.as_slice().try_into().ok()?;
            same.then_some((record.recipe_version, Hash::from_bytes(key)))
        })
        .max_by(|a, b| kiln_protocol::system::compare_versions(&a.0, &b.0))
}

/// Builders with distinct keys among attestations of one artifact (as
/// [`Coordinator::built`] returns them).
pub(super) fn agreeing_builders(attestations: &[Signed<Attestation>]) -> usize {
    let mut signers: Vec<_> = attestations.iter().map(|a| a.signer()).collect();
    signers.sort();
    signers.dedup();
    signers.len()
}
