//! A job's way through the acting coordinator: accepted, assigned,
//! settled (a failure at once, a build once replicated), and ended.

use kiln_protocol::coord::{CancelOutcome, CoordReplyV1, JobPhase, STATUS_RECENT_MAX};
use kiln_protocol::messages::{encode_gossip, topics, Assigned, Gossip, GossipV1, JobRequest, Settlement, WorkReplyV1};
use kiln_protocol::{wire, Hash, PublicKey, SecretKey};
use tracing::{info, warn};

use super::schedule::{Cancelled, Job, JobState, Submitted};
use super::*;
use crate::clock::now_ms;
use crate::metrics::METRICS;

impl Coordinator {
    /// A submission to the acting coordinator, inputs already held.
    /// `verify`: builders with distinct keys that must agree.
    /// `requester`: who asks (the submission's signer, or the stream's
    /// peer), and the priority it gives the job among its own.
    pub(super) async fn submit(
        &mut self,
        job: JobRequest,
        verify: u32,
        requester: (PublicKey, kiln_protocol::coord::Priority),
        input_bytes: u64,
    ) -> CoordReplyV1 {
        let build_key = job.build_key;
        let emails = job.emails.len();
        let recipe_id = job.recipe_id;
        // Again here, past the lookup: submissions fetching their inputs at
        // once must not take a requester over its bound together.
        if let Some(reason) = self.over_open_jobs(&build_key, &requester.0) {
            if !self.schedule.uses_recipe(&recipe_id) {
                release_inputs(&self.store, recipe_id);
            }
            return CoordReplyV1::Refused { reason };
        }
        if self.schedule.job(&build_key).is_none() {
            let held = self
                .schedule
                .inputs_held_with(&requester.0, &job.recipe_id, input_bytes);
            if held > self.requester_input_bytes_max {
                crate::metrics::Metrics::add(&METRICS.requests_refused_bound, 1);
                if !self.schedule.uses_recipe(&job.recipe_id) {
                    release_inputs(&self.store, job.recipe_id);
                }
                return CoordReplyV1::Refused {
                    reason: super::bounds::too_much_input(held, self.requester_input_bytes_max),
                };
            }
            self.schedule.note_input_bytes(job.recipe_id, input_bytes);
        }
        let merged = match self.schedule.submit(job, verify, Some(requester)) {
            Ok(Submitted::New) => false,
            Ok(Submitted::Merged { .. }) => true,
            Err(e) => {
                self.schedule.forget_input_bytes(&recipe_id);
                return CoordReplyV1::Refused { reason: e.to_string() };
            }
        };
        if !merged {
            self.count_earlier_builds(&build_key);
        }
        if !self.persist(&build_key) {
            self.schedule.remove(&build_key);
            return CoordReplyV1::Refused {
                reason: "the coordinator cannot write its queue to disk; try again later".into(),
            };
        }
        info!(job = %build_key, merged, emails, verify, requester = %requester.0, priority = requester.1.name(), "job accepted");
        if !merged {
            self.accepted_at_ms.insert(build_key, now_ms());
        }
        self.announce(&build_key).await;
        // Match at once rather than at the next tick.
        self.step(now_ms()).await;
        CoordReplyV1::Accepted {
            build_key,
            merged,
            phase: self.phase(&build_key),
        }
    }

    /// Tells the other nodes of an open job as it stands now: its
    /// requesters and their addresses.
    pub(super) async fn announce(&mut self, build_key: &Hash) {
        if let Some(job) = self.schedule.job(build_key) {
            let (job, verify, requesters) = (job.request.clone(), job.verify, job.requesters.clone());
            self.gossip(
                topics::JOBS,
                GossipV1::JobV3 {
                    job,
                    verify,
                    requesters,
                },
            )
            .await;
        }
    }

    /// A requester takes its request back (`kiln cancel`): the job goes on
    /// without it if others want it, else it is dropped and its running
    /// build, if any, is stopped on the worker.
    pub(super) async fn cancel(&mut self, requester: PublicKey, build_key: Hash) -> CoordReplyV1 {
        match self.schedule.cancel(&build_key, &requester) {
            Err(e) => CoordReplyV1::Refused { reason: e.to_string() },
            Ok(Cancelled::StillWanted(requesters)) => {
                info!(job = %build_key, requester = %requester, requesters, "a requester cancelled; others still want the build");
                self.persist(&build_key);
                self.announce(&build_key).await;
                CoordReplyV1::Cancelled {
                    build_key,
                    outcome: CancelOutcome::StillWanted { requesters },
                }
            }
            Ok(Cancelled::Dropped(job)) => {
                info!(job = %build_key, requester = %requester, "cancelled by its last requester; dropped");
                let running = match &job.state {
                    JobState::Assigned { worker, .. } => Some(*worker),
                    _ => None,
                };
                self.withdrawn(*job);
                self.gossip(topics::JOBS, GossipV1::Withdrawn { build_key }).await;
                let outcome = match running {
                    Some(worker) => {
                        let net = self.net.clone();
                        tokio::spawn(async move {
                            match stop(&net, worker, build_key).await {
                                Ok(WorkReplyV1::Accepted) => info!(job = %build_key, worker = %worker, "build stopped"),
                                Ok(WorkReplyV1::Refused { reason }) => {
                                    warn!(job = %build_key, worker = %worker, reason, "the worker did not stop the build")
                                }
                                Err(e) => {
                                    warn!(job = %build_key, worker = %worker, error = %e, "could not reach the worker to stop the build")
                                }
                            }
                        });
                        CancelOutcome::Stopped { worker }
                    }
                    None => CancelOutcome::Dropped,
                };
                CoordReplyV1::Cancelled { build_key, outcome }
            }
        }
    }

    /// A job every requester cancelled, removed from the schedule: off the
    /// disk, its inputs let go, its watchers told, kept in recent.
    pub(super) fn withdrawn(&mut self, job: Job) {
        let build_key = job.request.build_key;
        self.accepted_at_ms.remove(&build_key);
        self.persist(&build_key);
        if !self.schedule.uses_recipe(&job.request.recipe_id) {
            release_inputs(&self.store, job.request.recipe_id);
        }
        if self.cancelled.len() >= CANCELLED_KEPT {
            self.cancelled.pop_front();
        }
        self.cancelled.push_back(build_key);
        let mut view = job.view();
        view.phase = JobPhase::Cancelled;
        self.recent.push_front(view);
        self.recent.truncate(STATUS_RECENT_MAX);
        self.notify(&build_key, JobPhase::Cancelled);
        self.watchers.remove(&build_key);
    }

    pub(super) async fn assign(&mut self, build_key: Hash, worker: PublicKey, attempt: u32) {
        let Some(job) = self.schedule.job(&build_key).map(|j| j.request.clone()) else {
            return;
        };
        info!(job = %build_key, worker = %worker, attempt, "assigning");
        if let Some(accepted) = self.accepted_at_ms.remove(&build_key) {
            METRICS.dispatched(now_ms().saturating_sub(accepted));
        }
        self.gossip(
            topics::JOBS,
            GossipV1::Assigned(Assigned {
                build_key,
                worker,
                attempt,
            }),
        )
        .await;
        let (net, inputs) = (self.net.clone(), self.inputs.clone());
        tokio::spawn(async move {
            let refused = match offer(&net, worker, job, attempt).await {
                Ok(WorkReplyV1::Accepted) => None,
                Ok(WorkReplyV1::Refused { reason }) => Some(reason),
                Err(e) => Some(format!("worker unreachable: {e}")),
            };
            let _ = inputs
                .send(Input::Assignment {
                    build_key,
                    worker,
                    refused,
                })
                .await;
        });
    }

    /// A job opened for a build already done by fewer builders than it
    /// now needs: those builds count, and only the rest are asked for.
    pub(super) fn count_earlier_builds(&mut self, build_key: &Hash) {
        if let Some(earlier) = self.built(build_key) {
            info!(job = %build_key, builders = earlier.len(), "built before by fewer builders than now needed; built again by others");
            self.schedule.count_builds(build_key, earlier);
        }
    }

    /// Settles an ended job: a failure at once, a build once replicated.
    pub(super) fn settle(&mut self, build_key: Hash) {
        let Some(job) = self.schedule.job(&build_key) else {
            return;
        };
        match &job.state {
            JobState::NotReproducible => {
                let settlement = Settlement::NotReproducible {
                    build_key,
                    needed: job.needed(),
                    attestations: job.built.clone(),
                };
                self.finish(build_key, settlement);
            }
            JobState::GaveUp { reason } => {
                let settlement = Settlement::Failed {
                    build_key,
                    reason: reason.clone(),
                    log: job.last_failure.as_ref().and_then(|(_, log)| *log),
                    attempts: job.failed_attempts,
                };
                self.finish(build_key, settlement);
            }
            JobState::Replicating { attestation } if !self.replicating.contains(&build_key) => {
                self.replicating.insert(build_key);
                let (net, store, inputs, attestation) = (
                    self.net.clone(),
                    self.store.clone(),
                    self.inputs.clone(),
                    attestation.clone(),
                );
                tokio::spawn(async move {
                    let result = replicate(&net, &store, &attestation).await;
                    let _ = inputs.send(Input::Replicated { build_key, result }).await;
                });
            }
            _ => {}
        }
    }

    pub(super) async fn finish_done(&mut self, build_key: Hash, holders: u32) {
        let Some(job) = self.schedule.job(&build_key) else {
            return;
        };
        let JobState::Replicating { attestation } = job.state.clone() else {
            return;
        };
        let attestation = *attestation;
        // A job checked by more than one builder says who agreed (and who
        // did not); one built once says nothing more, as before.
        let settlement = match job.check() {
            _ if job.trusted_alone() => Settlement::Trusted {
                attestation: attestation.clone(),
                holders,
                streak: self.streak(&attestation.signer()),
            },
            Some(check) if job.verify != 1 => {
                for agreed in &check.agreed {
                    let _ = self.store.put_attestation(agreed);
                }
                Settlement::Checked {
                    attestation: attestation.clone(),
                    holders,
                    check,
                }
            }
            _ => Settlement::Done {
                attestation: attestation.clone(),
                holders,
            },
        };
        let _ = self.store.put_attestation(&attestation);
        self.finish(build_key, settlement.clone());
        // The DHT's record: the settled artifact's attestations only (this
        // node's store may keep a disagreeing build of its own).
        let attestations = self.built(&build_key).unwrap_or_else(|| vec![attestation]);
        let net = self.net.clone();
        tokio::spawn(async move {
            if let Ok(value) = wire::encode(&attestations) {
                if let Err(e) = net.put_record(build_key, value).await {
                    warn!(job = %build_key, error = %e, "build record not stored in the DHT");
                }
            }
        });
        self.gossip(topics::RESULTS, GossipV1::Settled(settlement)).await;
    }

    /// Records how a job ended, removes it, and tells its watchers.
    pub(super) fn finish(&mut self, build_key: Hash, settlement: Settlement) {
        let job = self.schedule.remove(&build_key);
        self.record_result(&build_key, &settlement, job.as_ref().map(|j| &j.request));
        if let Some(job) = job {
            self.ended(job, &settlement, Mail::Compose);
        }
        self.persist(&build_key);
        if let Settlement::Failed { .. } | Settlement::NotReproducible { .. } = &settlement {
            let (net, key) = (self.net.clone(), SecretKey::from_bytes(&self.key.to_bytes()));
            tokio::spawn(async move {
                if let Ok(bytes) = encode_gossip(&key, &Gossip::V1(GossipV1::Settled(settlement))) {
                    let _ = net.publish(topics::RESULTS, bytes).await;
                }
            });
        }
    }

    /// After a job ended: inputs unpinned, watchers told, kept in recent.
    pub(super) fn ended(&mut self, job: Job, settlement: &Settlement, mail: Mail) {
        let build_key = job.request.build_key;
        self.accepted_at_ms.remove(&build_key);
        if !self.schedule.uses_recipe(&job.request.recipe_id) {
            release_inputs(&self.store, job.request.recipe_id);
        }
        match settlement {
            Settlement::Done { .. } => info!(job = %build_key, "done"),
            Settlement::Checked { check, .. } => info!(job = %build_key, check = check.summary(), "done"),
            Settlement::Trusted { streak, .. } => {
                info!(job = %build_key, streak, "done; built alone by a trusted worker")
            }
            Settlement::Failed { reason, .. } => warn!(job = %build_key, reason, "failed"),
            Settlement::NotReproducible { attestations, .. } => {
                warn!(job = %build_key, builds = attestations.len(), "not reproducible: the builds disagree")
            }
        }
        let phase = settlement.phase();
        if let (Some((mailer, _)), Mail::Compose) = (&self.mail, mail) {
            mailer.ended(&job.request, settlement);
        }
        let mut view = job.view();
        view.phase = phase.clone();
        self.recent.push_front(view);
        self.recent.truncate(STATUS_RECENT_MAX);
        self.notify(&build_key, phase);
        self.watchers.remove(&build_key);
    }
}

/// Whether a job's end writes its mail here: yes when this node settles it
/// or hears it settled; no when a catch-up learns of a settlement long
/// made, whose mail the coordinator's outbox (adopted next) holds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Mail {
    Compose,
    FromOutbox,
}

impl Mail {
    /// For a job found settled elsewhere: the outbox (adopted first) holds
    /// the mail of a job that ended lately, so composing it again adds
    /// nothing; one requested longer ago than delivered mail is kept may
    /// have had its record forgotten, and is not mailed again.
    pub(super) fn for_settled_elsewhere(job: &JobRequest, now: u64) -> Mail {
        if now.saturating_sub(job.requested_at_ms) > crate::mailer::DELIVERED_KEEP_MS {
            Mail::FromOutbox
        } else {
            Mail::Compose
        }
    }
}
