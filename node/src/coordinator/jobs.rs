//! A job's way through the acting coordinator: accepted, assigned,
//! settled (a failure at once, a build once replicated), and ended.

use kiln_protocol::coord::{CoordReplyV1, JobPhase, ATTESTATIONS_MAX, STATUS_RECENT_MAX};
use kiln_protocol::messages::{encode_gossip, topics, Assigned, Gossip, GossipV1, JobRequest, Settlement, WorkReplyV1};
use kiln_protocol::{wire, Attestation, Hash, PublicKey, SecretKey, Signed};
use tracing::{info, warn};

use super::schedule::{Job, JobState, Submitted};
use super::*;
use crate::clock::now_ms;
use crate::metrics::METRICS;

impl Coordinator {
    /// A submission to the acting coordinator, inputs already held.
    pub(super) async fn submit(&mut self, job: JobRequest) -> CoordReplyV1 {
        let build_key = job.build_key;
        let emails = job.emails.len();
        let merged = match self.schedule.submit(job) {
            Ok(Submitted::New) => false,
            Ok(Submitted::Merged { .. }) => true,
            Err(e) => return CoordReplyV1::Refused { reason: e.to_string() },
        };
        if !self.persist(&build_key) {
            self.schedule.remove(&build_key);
            return CoordReplyV1::Refused {
                reason: "the coordinator cannot write its queue to disk; try again later".into(),
            };
        }
        info!(job = %build_key, merged, emails, "job accepted");
        if !merged {
            self.accepted_at_ms.insert(build_key, now_ms());
        }
        if let Some(job) = self.schedule.job(&build_key) {
            let request = job.request.clone();
            self.gossip(topics::JOBS, GossipV1::Job(request)).await;
        }
        // Match at once rather than at the next tick.
        self.step(now_ms()).await;
        CoordReplyV1::Accepted {
            build_key,
            merged,
            phase: self.phase(&build_key),
        }
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

    /// Settles an ended job: a failure at once, a build once replicated.
    pub(super) fn settle(&mut self, build_key: Hash) {
        let Some(job) = self.schedule.job(&build_key) else {
            return;
        };
        match &job.state {
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
        let Some(JobState::Replicating { attestation }) = self.schedule.job(&build_key).map(|j| j.state.clone()) else {
            return;
        };
        let settlement = Settlement::Done {
            attestation: (*attestation).clone(),
            holders,
        };
        let _ = self.store.put_attestation(&attestation);
        let attestations: Vec<Signed<Attestation>> = self
            .store
            .attestations(&build_key)
            .unwrap_or_default()
            .into_iter()
            .take(ATTESTATIONS_MAX)
            .collect();
        let net = self.net.clone();
        tokio::spawn(async move {
            if let Ok(value) = wire::encode(&attestations) {
                if let Err(e) = net.put_record(build_key, value).await {
                    warn!(job = %build_key, error = %e, "build record not stored in the DHT");
                }
            }
        });
        self.finish(build_key, settlement.clone());
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
        if let Settlement::Failed { .. } = &settlement {
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
        let phase = match settlement {
            Settlement::Done { attestation, .. } => {
                info!(job = %build_key, "done");
                JobPhase::Done {
                    attestation: attestation.clone(),
                }
            }
            Settlement::Failed {
                reason, log, attempts, ..
            } => {
                warn!(job = %build_key, reason, "failed");
                JobPhase::Failed {
                    reason: reason.clone(),
                    log: *log,
                    attempts: *attempts,
                }
            }
        };
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
