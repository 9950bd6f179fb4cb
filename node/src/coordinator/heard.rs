//! What gossip changes in the coordinator's state: elections, worker
//! adverts, jobs, assignments, outcomes and settlements, each taken only
//! from the peer allowed to say it.

use kiln_protocol::coord::JobPhase;
use kiln_protocol::messages::{
    Assigned, BuildOutcome, CoordinatorHeartbeat, Gossip, GossipV1, JobRequest, Settlement, WorkerAdvert,
};
use kiln_protocol::PublicKey;
use libp2p::PeerId;
use tracing::{debug, info, warn};

use super::election::Candidate;
use super::held;
use super::jobs::Mail;
use super::schedule::{Built, JobState};
use super::*;
use crate::net::identity::peer_id_of;

impl Coordinator {
    /// One arm per gossip message, each saying whose word it takes; long
    /// because the list of messages is, not because any arm is.
    pub(super) async fn on_gossip(&mut self, signer: PublicKey, message: Gossip, now: u64) {
        let Gossip::V1(message) = message;
        let Some(peer) = peer_id_of(&signer) else {
            return;
        };
        match message {
            GossipV1::Coordinator(beat) => self.heard_heartbeat(peer, beat, now),
            GossipV1::Worker(advert) => self.heard_advert(signer, advert, now),
            // Only the coordinator announces jobs (it accepted them, their
            // inputs held), so they are taken only from a member of the
            // coordination set (a peer whose heartbeats this node hears;
            // one just elected may not say `acting` yet): any other peer's
            // would fill every node's queue and set each fetching inputs.
            // Dropped and counted; a node that heard the coordinator's
            // before its first heartbeat gets them from its catch-up.
            GossipV1::Job(job) if self.election.is_candidate(&peer) => self.heard_job(job, 1, None, peer),
            GossipV1::JobV2 { job, verify } if self.election.is_candidate(&peer) => {
                self.heard_job(job, verify, None, peer)
            }
            GossipV1::JobV3 {
                job,
                verify,
                requesters,
            } if self.election.is_candidate(&peer) => {
                // Who asked is the acting coordinator's word: taken from a
                // peer that speaks for the queue, never by the acting node.
                let requesters = (!self.acting && self.election.speaks_for_queue(&peer)).then_some(requesters);
                self.heard_job(job, verify, requesters, peer)
            }
            GossipV1::Withdrawn { build_key } if self.election.speaks_for_queue(&peer) => {
                if let Some(job) = self.schedule.remove(&build_key) {
                    info!(job = %build_key, "cancelled by every requester; dropped");
                    self.withdrawn(job);
                }
            }
            GossipV1::Withdrawn { build_key } => {
                debug!(peer = %peer, job = %build_key, "a withdrawal from a peer that does not coordinate; ignored");
            }
            GossipV1::Job(_) | GossipV1::JobV2 { .. } | GossipV1::JobV3 { .. } => {
                crate::metrics::Metrics::add(&crate::metrics::METRICS.gossip_jobs_refused, 1);
                debug!(peer = %peer, "a job announced by a peer that does not coordinate; dropped");
            }
            GossipV1::Assigned(Assigned {
                build_key,
                worker,
                attempt,
            }) if self.election.speaks_for_queue(&peer) => {
                self.schedule.assigned(&build_key, worker, attempt, now);
                self.changed(&build_key);
            }
            GossipV1::Assigned(assigned) => {
                info!(peer = %peer, job = %assigned.build_key, "assignment from a peer that does not coordinate; ignored");
            }
            GossipV1::Outcome(BuildOutcome::Done { attestation }) => {
                let Ok(a) = attestation.verify() else {
                    return;
                };
                if a.worker != signer {
                    return;
                }
                let build_key = a.build_key;
                let alone = self.accept_alone(&build_key, &signer);
                let verdict = self.schedule.built(&build_key, attestation, alone);
                match verdict {
                    Built::Ignored => {
                        debug!(job = %build_key, worker = %signer, "a build not leased to its worker, or reported twice; ignored");
                        return;
                    }
                    Built::Accepted if alone => {
                        info!(job = %build_key, artifact = %a.artifact, worker = %signer, streak = self.streak(&signer), "built; trusted alone for its streak")
                    }
                    Built::Accepted => info!(job = %build_key, artifact = %a.artifact, worker = %signer, "built"),
                    Built::NeedMore => {
                        info!(job = %build_key, artifact = %a.artifact, worker = %signer, "built; another builder must agree")
                    }
                    Built::NotReproducible => {
                        warn!(job = %build_key, artifact = %a.artifact, worker = %signer, "built; the builds disagree: not reproducible")
                    }
                }
                self.changed(&build_key);
            }
            GossipV1::Outcome(BuildOutcome::Failed {
                build_key,
                worker,
                log,
                reason,
                ..
            }) if worker == signer => {
                info!(job = %build_key, worker = %signer, reason, "build failed");
                self.schedule.failed(&build_key, worker, &reason, log);
                self.changed(&build_key);
            }
            GossipV1::Outcome(BuildOutcome::Aborted {
                build_key,
                worker,
                reason,
                ..
            }) if worker == signer => {
                info!(job = %build_key, worker = %signer, reason, "build abandoned by its worker");
                self.schedule.aborted(&build_key, worker, &reason, now);
                self.changed(&build_key);
            }
            GossipV1::Outcome(BuildOutcome::Failed { .. } | BuildOutcome::Aborted { .. }) => {}
            GossipV1::Progress { build_key, log_tail } => {
                let assigned_here = matches!(self.schedule.job(&build_key).map(|j| &j.state), Some(JobState::Assigned { worker, .. }) if *worker == signer);
                if assigned_here {
                    self.notify(&build_key, JobPhase::Log { tail: log_tail });
                }
            }
            // Only coordinators settle jobs: the word of any other peer
            // (which could drop queued jobs or claim builds) is ignored.
            GossipV1::Settled(settlement) if self.election.speaks_for_queue(&peer) => self.take_settlement(settlement),
            GossipV1::Settled(settlement) => self.hold_settlement(peer, settlement, now),
            GossipV1::Delivered { outbox_key } => {
                // Only the coordinator delivers mail: a receipt from any
                // other peer (which could suppress mail) is ignored, and
                // the coordinator trusts only its own deliveries.
                let from_coordinator = !self.acting && self.election.leader(now) == Some(peer);
                if let (Some((mail, _)), true) = (&self.mail, from_coordinator) {
                    mail.delivered(outbox_key);
                }
            }
        }
    }

    /// A worker's advert: its lease heartbeat and capacity. Sent directly
    /// (`AdvertV1`); the gossip form is taken too if one arrives on a topic
    /// this node follows, though no node sends it any more.
    pub(super) fn heard_advert(&mut self, worker: PublicKey, advert: WorkerAdvert, now: u64) {
        for build_key in self.schedule.advert(worker, advert, now) {
            warn!(job = %build_key, worker = %worker, "worker no longer runs its job; back in the queue");
            self.changed(&build_key);
        }
    }

    /// A job announced by the coordinator: kept, and its inputs fetched so
    /// they outlive the node that holds them now.
    /// `requesters`: who asked, as the coordinator says (`JobV3`); the
    /// list replaces the one kept.
    pub(super) fn heard_job(
        &mut self,
        job: JobRequest,
        verify: u32,
        requesters: Option<Vec<kiln_protocol::coord::RequesterShare>>,
        from: PeerId,
    ) {
        // A merged job carries every requester's addresses.
        if check_job_heard(&job).is_err() || self.built(&job.build_key).is_some() {
            return;
        }
        let build_key = job.build_key;
        // Open at the coordinator after all: not to be settled from an
        // answer asked before.
        self.reconciling.remove(&build_key);
        let fresh = self.schedule.job(&build_key).is_none();
        if self.schedule.submit(job.clone(), verify, None).is_err() {
            return;
        }
        if let Some(requesters) = requesters {
            self.schedule.announced(&build_key, requesters, job.emails.clone());
        }
        self.persist(&build_key);
        // Nodes that may take over hold the inputs too.
        if fresh && self.election.member() {
            crate::metrics::Metrics::add(&crate::metrics::METRICS.input_fetches_started, 1);
            let (net, store, permits) = (self.net.clone(), self.store.clone(), self.input_fetches.clone());
            tokio::spawn(async move {
                let Ok(_permit) = permits.acquire_owned().await else {
                    return;
                };
                match hold_inputs(&net, &store, &job, &[from]).await {
                    Ok(_) => info!(job = %job.build_key, "holding the inputs of a job, in case this node takes over"),
                    Err(e) => debug!(job = %job.build_key, error = e, "inputs of a gossiped job not fetched"),
                }
            });
        }
    }

    /// A coordinator's heartbeat: the election learns of it, and the
    /// settlements held from that peer are taken once it may speak for the
    /// queue.
    fn heard_heartbeat(&mut self, peer: PeerId, beat: CoordinatorHeartbeat, now: u64) {
        self.election.heard(
            peer,
            Candidate {
                pinned: beat.pinned,
                acting: beat.acting,
                delivers_mail: beat.delivers_mail,
                addresses: beat.addresses,
                seen_at_ms: now,
            },
        );
        if self.election.speaks_for_queue(&peer) {
            for settlement in self.held.take(&peer, now) {
                info!(peer = %peer, job = ?settlement.build_key(), "a held settlement from the coordinator, now known; taken");
                self.take_settlement(settlement);
            }
        }
    }

    /// A settlement from a peer not known to coordinate: held, in case its
    /// heartbeat comes late (this node just started), never taken if not.
    fn hold_settlement(&mut self, peer: PeerId, settlement: Settlement, now: u64) {
        info!(
            peer = %peer,
            job = ?settlement.build_key(),
            "settlement from a peer that does not coordinate; ignored unless its heartbeat shows it does within {} s",
            held::HELD_MS / 1000
        );
        if self.election.trusts(&peer) {
            self.held.hold(peer, settlement, now);
        }
    }

    /// A settlement from a peer that speaks for the queue.
    pub(super) fn take_settlement(&mut self, settlement: Settlement) {
        release_if_replicated(&self.store, &self.key.public(), &settlement);
        self.heard_settlement(settlement);
    }

    pub(super) fn heard_settlement(&mut self, settlement: Settlement) {
        self.settled_here(settlement, Mail::Compose);
    }

    /// Records a settlement made elsewhere: the job ends here too.
    pub(super) fn settled_here(&mut self, settlement: Settlement, mail: Mail) {
        let Some(build_key) = settlement.build_key() else {
            return;
        };
        for attestation in settlement.agreed() {
            if let Err(e) = self.store.put_attestation(attestation) {
                debug!(error = %e, "attestation not kept");
            }
        }
        let job = self.schedule.remove(&build_key);
        self.record_result(&build_key, &settlement, job.as_ref().map(|j| &j.request));
        if let Some(job) = job {
            self.ended(job, &settlement, mail);
        }
        self.persist(&build_key);
    }
}
