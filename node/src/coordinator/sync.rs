//! A standby's catch-up: it fetches the acting coordinator's open jobs,
//! page by page, once per coordinator (gossip brings each later one).

use kiln_protocol::coord::{CoordReplyV1, CoordRequest, COORD_FRAME_BYTES_MAX};
use kiln_protocol::messages::JobRequest;
use kiln_protocol::{wire, Hash};
use tracing::{debug, info};

use super::schedule::Job;
use super::*;
use kiln_protocol::coord::{JobPhase, PHASES_MAX};
use kiln_protocol::messages::Settlement;

/// A page of open jobs sent to a standby catching up: at most this many,
/// and half a coordinator frame.
pub(super) const SYNC_PAGE_JOBS_MAX: usize = 1024;
pub(super) const SYNC_PAGE_BYTES_MAX: usize = COORD_FRAME_BYTES_MAX / 2;
/// The most pages one catch-up reads (a million open jobs fit in far fewer).
pub(super) const SYNC_PAGES_MAX: usize = 4096;
/// How long a standby waits before it asks again after a failed catch-up.
pub(super) const SYNC_RETRY_MS: u64 = 5_000;

impl Coordinator {
    /// A standby fetches the coordinator's open jobs once per coordinator
    /// (gossip brings each later one), so jobs queued while it was down or
    /// before it started are not lost if it takes over.
    pub(super) fn catch_up(&mut self, now: u64) {
        if self.acting || self.syncing || !self.election.eligible() || now < self.sync_not_before_ms {
            return;
        }
        let Some(leader) = self.election.leader(now).filter(|l| *l != self.me) else {
            return;
        };
        if self.synced_with == Some(leader) {
            return;
        }
        let Some(contact) = self.contact(now) else {
            return;
        };
        self.syncing = true;
        let (net, inputs) = (self.net.clone(), self.inputs.clone());
        tokio::spawn(async move {
            let reached = crate::coord_client::reach(&net, &contact).await;
            let mut after = None;
            let mut pages = 0;
            loop {
                let page = match reached {
                    Some(peer) => crate::coord_client::ask_peer(&net, peer, &CoordRequest::SyncV1 { after }).await,
                    None => Err(std::io::Error::other("no peer id")),
                };
                let (jobs, next) = match page {
                    Ok((CoordReplyV1::Jobs { jobs, next }, _)) => (Some(jobs), next),
                    Ok((other, _)) => {
                        debug!(reply = ?other, "the coordinator did not list its jobs");
                        (None, None)
                    }
                    Err(e) => {
                        debug!(error = %e, "cannot fetch the coordinator's open jobs");
                        (None, None)
                    }
                };
                let failed = jobs.is_none();
                let done = next.is_none();
                let synced = Input::Synced {
                    from: leader,
                    jobs,
                    done,
                };
                if inputs.send(synced).await.is_err() || failed || done {
                    return;
                }
                // Each page must move forward, and there are at most so
                // many: a peer cannot keep this loop going.
                pages += 1;
                if pages >= SYNC_PAGES_MAX || next <= after {
                    debug!("the coordinator's job pages do not advance; catch-up stopped");
                    return;
                }
                after = next;
            }
        });
    }

    /// A page of the open jobs, in build-key order after `after`.
    pub(super) fn sync_page(&self, after: Option<Hash>) -> CoordReplyV1 {
        let mut open: Vec<&Job> = self
            .schedule
            .jobs()
            .into_iter()
            .filter(|j| after.is_none_or(|a| j.request.build_key > a))
            .collect();
        open.sort_by_key(|j| j.request.build_key);
        let (mut jobs, mut bytes) = (Vec::new(), 0);
        for job in &open {
            let size = wire::encode(&job.request).map(|b| b.len()).unwrap_or(usize::MAX);
            if jobs.len() >= SYNC_PAGE_JOBS_MAX || bytes + size > SYNC_PAGE_BYTES_MAX {
                break;
            }
            bytes += size;
            jobs.push(job.request.clone());
        }
        let next = (jobs.len() < open.len())
            .then(|| jobs.last().map(|j: &JobRequest| j.build_key))
            .flatten();
        CoordReplyV1::Jobs { jobs, next }
    }

    /// Asks the coordinator where the open jobs it did not list stand (a
    /// job restored from disk may have ended while this node was down),
    /// then adopts the coordinator's outbox, so mail for jobs that ended
    /// before this node started is not lost if it takes over.
    pub(super) fn reconcile(&self, coordinator: PeerId, stale: Vec<Hash>) {
        let (net, inputs) = (self.net.clone(), self.inputs.clone());
        tokio::spawn(async move {
            for keys in stale.chunks(PHASES_MAX) {
                let request = CoordRequest::PhasesV1 {
                    build_keys: keys.to_vec(),
                };
                match crate::coord_client::ask_peer(&net, coordinator, &request).await {
                    Ok((CoordReplyV1::Phases { phases }, _)) => {
                        if inputs.send(Input::Reconciled { phases }).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => debug!("the coordinator did not say where the jobs stand"),
                    Err(e) => debug!(error = %e, "cannot ask the coordinator where the jobs stand"),
                }
            }
            let (mut after, mut pages, mut adopted) = (None, 0, 0);
            loop {
                let page = crate::coord_client::ask_peer(&net, coordinator, &CoordRequest::MailSyncV1 { after }).await;
                let (messages, next) = match page {
                    Ok((CoordReplyV1::Mail { messages, next }, _)) => (messages, next),
                    Ok(_) => {
                        debug!("the coordinator did not list its outbox");
                        return;
                    }
                    Err(e) => {
                        debug!(error = %e, "cannot fetch the coordinator's outbox");
                        return;
                    }
                };
                adopted += messages.len();
                if inputs.send(Input::MailSynced { messages }).await.is_err() {
                    return;
                }
                pages += 1;
                // Each page must move forward, and there are at most so many.
                if next.is_none() || next <= after || pages >= SYNC_PAGES_MAX {
                    break;
                }
                after = next;
            }
            info!(coordinator = %coordinator, messages = adopted, "caught up with the coordinator's outbox");
        });
    }

    /// The coordinator's word on stale open jobs: the ended ones are
    /// settled here too; the rest stay open.
    pub(super) fn reconciled(&mut self, phases: Vec<(Hash, JobPhase)>) {
        for (build_key, phase) in phases {
            let settlement = match phase {
                JobPhase::Done { attestation } => {
                    let matches = attestation.verify().is_ok_and(|a| a.build_key == build_key);
                    if !matches {
                        continue;
                    }
                    Settlement::Done {
                        attestation,
                        holders: 2,
                    }
                }
                JobPhase::Failed { reason, log, attempts } => Settlement::Failed {
                    build_key,
                    reason,
                    log,
                    attempts,
                },
                _ => continue,
            };
            if self.schedule.job(&build_key).is_some() {
                info!(job = %build_key, "an open job kept here had ended at the coordinator; settled here too");
                self.settled_here(settlement, super::jobs::Mail::FromOutbox);
            }
        }
    }
}
