//! A standby's catch-up: it fetches the acting coordinator's open jobs,
//! page by page, once per coordinator (gossip brings each later one).

use kiln_protocol::coord::{CoordReplyV1, CoordRequest, COORD_FRAME_BYTES_MAX};
use kiln_protocol::messages::JobRequest;
use kiln_protocol::{wire, Hash};
use tracing::{debug, info, warn};

use super::schedule::Job;
use super::*;
use crate::clock::now_ms;
use crate::mailer::MailHandle;
use crate::net::NetClient;
use kiln_protocol::coord::{JobPhase, PHASES_MAX};
use kiln_protocol::messages::Settlement;
use std::time::Duration;

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
        if self.acting || self.syncing || !self.election.member() || now < self.sync_not_before_ms {
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
                    Some(peer) => {
                        let v3 = crate::coord_client::ask_peer(&net, peer, &CoordRequest::SyncV3 { after }).await;
                        match v3 {
                            Ok((CoordReplyV1::JobsV3 { .. }, _)) => v3,
                            // A coordinator of an earlier version (it drops
                            // the request it cannot read): its jobs without
                            // their requesters.
                            _ => crate::coord_client::ask_peer(&net, peer, &CoordRequest::SyncV2 { after }).await,
                        }
                    }
                    None => Err(std::io::Error::other("no peer id")),
                };
                let (jobs, next) = match page {
                    Ok((CoordReplyV1::JobsV3 { jobs, next }, _)) => (Some(jobs), next),
                    Ok((CoordReplyV1::JobsV2 { jobs, next }, _)) => {
                        let jobs = jobs
                            .into_iter()
                            .map(|(job, verify)| SyncedJob {
                                job,
                                verify,
                                requesters: Vec::new(),
                            })
                            .collect();
                        (Some(jobs), next)
                    }
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
                    // Stopped as a failure: tried again later, not stuck.
                    let failed = Input::Synced {
                        from: leader,
                        jobs: None,
                        done: false,
                    };
                    let _ = inputs.send(failed).await;
                    return;
                }
                after = next;
            }
        });
    }

    /// A page of the open jobs, in build-key order after `after`: as
    /// `SyncV1` asks (the requests), `SyncV2` (with each job's builders
    /// needed) or `SyncV3` (and its requesters).
    pub(super) fn sync_page(&self, after: Option<Hash>, version: u8) -> CoordReplyV1 {
        let mut open: Vec<&Job> = self
            .schedule
            .jobs()
            .into_iter()
            .filter(|j| after.is_none_or(|a| j.request.build_key > a))
            .collect();
        open.sort_by_key(|j| j.request.build_key);
        let (mut jobs, mut bytes): (Vec<SyncedJob>, usize) = (Vec::new(), 0);
        for job in &open {
            let size = wire::encode(&job.request).map(|b| b.len()).unwrap_or(usize::MAX)
                + wire::encode(&job.requesters).map(|b| b.len()).unwrap_or(usize::MAX / 2);
            if jobs.len() >= SYNC_PAGE_JOBS_MAX || bytes.saturating_add(size) > SYNC_PAGE_BYTES_MAX {
                break;
            }
            bytes += size;
            jobs.push(SyncedJob {
                job: job.request.clone(),
                verify: job.verify,
                requesters: job.requesters.clone(),
            });
        }
        let next = (jobs.len() < open.len())
            .then(|| jobs.last().map(|j| j.job.build_key))
            .flatten();
        match version {
            3 => CoordReplyV1::JobsV3 { jobs, next },
            2 => {
                let jobs = jobs.into_iter().map(|j| (j.job, j.verify)).collect();
                CoordReplyV1::JobsV2 { jobs, next }
            }
            _ => {
                let jobs = jobs.into_iter().map(|j| j.job).collect();
                CoordReplyV1::Jobs { jobs, next }
            }
        }
    }

    /// After the job pages: adopts the coordinator's outbox first (which
    /// messages wait, which went out), so mail for jobs that ended before
    /// this node started is not lost if it takes over; then asks where
    /// the open jobs it kept but the coordinator did not list stand (one
    /// may have ended while this node was down). The mail of a job settled
    /// that way is composed here unless the outbox already has it. A job
    /// the coordinator does not know at all (this node accepted it and died
    /// before its gossip went out) is submitted to it again, so it is not
    /// left open here only, where no worker would ever be given it.
    pub(super) fn reconcile(&mut self, coordinator: PeerId, stale: Vec<Hash>) {
        self.reconciling = stale.iter().copied().collect();
        let jobs: HashMap<Hash, JobRequest> = stale
            .iter()
            .filter_map(|key| self.schedule.job(key).map(|job| (*key, job.request.clone())))
            .collect();
        let (net, inputs) = (self.net.clone(), self.inputs.clone());
        let mail = self.mail.as_ref().map(|(mail, _)| mail.clone());
        tokio::spawn(async move {
            if let Some(mail) = mail {
                adopt_outbox(&net, coordinator, &mail).await;
            }
            for keys in stale.chunks(PHASES_MAX) {
                let request = CoordRequest::PhasesV1 {
                    build_keys: keys.to_vec(),
                };
                match crate::coord_client::ask_peer(&net, coordinator, &request).await {
                    Ok((CoordReplyV1::Phases { phases }, _)) => {
                        let unknown: Vec<JobRequest> = phases
                            .iter()
                            .filter(|(_, phase)| matches!(phase, JobPhase::Unknown))
                            .filter_map(|(key, _)| jobs.get(key).cloned())
                            .collect();
                        if inputs.send(Input::Reconciled { phases }).await.is_err() {
                            return;
                        }
                        for job in unknown {
                            resubmit(&net, coordinator, job).await;
                        }
                    }
                    Ok(_) => debug!("the coordinator did not say where the jobs stand"),
                    Err(e) => debug!(error = %e, "cannot ask the coordinator where the jobs stand"),
                }
            }
        });
    }

    /// The coordinator's word on stale open jobs this node asked about:
    /// the ended ones are settled here too; the rest stay open.
    pub(super) fn reconciled(&mut self, phases: Vec<(Hash, JobPhase)>) {
        let now = now_ms();
        for (build_key, phase) in phases {
            // Only what was asked, and not heard of again since.
            if !self.reconciling.remove(&build_key) {
                continue;
            }
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
                JobPhase::Checked { attestation, check } => {
                    if check.verify(&build_key).is_err() || !check.agreed.contains(&attestation) {
                        continue;
                    }
                    Settlement::Checked {
                        attestation,
                        holders: 2,
                        check,
                    }
                }
                JobPhase::NotReproducible { needed, attestations } => {
                    let valid = attestations.len() <= kiln_protocol::build::CHECK_BUILDS_MAX
                        && kiln_protocol::build::verify_all(&attestations, &build_key).is_ok();
                    if !valid {
                        continue;
                    }
                    Settlement::NotReproducible {
                        build_key,
                        needed,
                        attestations,
                    }
                }
                JobPhase::Trusted { attestation, streak } => {
                    let matches = attestation
                        .verify()
                        .is_ok_and(|a| a.build_key == build_key && a.worker == attestation.signer());
                    if !matches {
                        continue;
                    }
                    Settlement::Trusted {
                        attestation,
                        holders: 2,
                        streak,
                    }
                }
                JobPhase::Cancelled => {
                    if let Some(job) = self.schedule.remove(&build_key) {
                        info!(job = %build_key, "an open job kept here was cancelled at the coordinator; dropped here too");
                        self.withdrawn(job);
                    }
                    continue;
                }
                _ => continue,
            };
            let Some(job) = self.schedule.job(&build_key) else {
                continue;
            };
            let mail = super::jobs::Mail::for_settled_elsewhere(&job.request, now);
            info!(job = %build_key, "an open job kept here had ended at the coordinator; settled here too");
            self.settled_here(settlement, mail);
        }
    }
}

/// Submits an open job this node holds to a coordinator that did not know
/// it (it holds the inputs, so the coordinator can fetch them from here).
async fn resubmit(net: &NetClient, coordinator: PeerId, job: JobRequest) {
    let build_key = job.build_key;
    let request = CoordRequest::SubmitV1 {
        job: Box::new(job),
        accept_versions: None,
    };
    match crate::coord_client::ask_peer(net, coordinator, &request).await {
        Ok((CoordReplyV1::Accepted { .. } | CoordReplyV1::Built { .. }, _)) => {
            info!(job = %build_key, "the coordinator did not know an open job kept here; submitted it again")
        }
        Ok((CoordReplyV1::Refused { reason }, _)) => {
            warn!(job = %build_key, reason, "the coordinator refused an open job kept here")
        }
        Ok(_) => debug!(job = %build_key, "the coordinator did not take an open job kept here"),
        Err(e) => debug!(job = %build_key, error = %e, "cannot submit an open job kept here to the coordinator"),
    }
}

/// The most outbox messages one catch-up adopts.
const ADOPTED_MAX: usize = 65_536;
/// Tries at fetching one outbox page.
const MAIL_PAGE_TRIES: u32 = 5;

/// Pages the coordinator's outbox into this node's mailer. Each page must
/// move forward and keep within the page size; at most so many in all.
async fn adopt_outbox(net: &NetClient, coordinator: PeerId, mail: &MailHandle) {
    let (mut after, mut adopted) = (None, 0);
    loop {
        let mut page = None;
        for attempt in 1..=MAIL_PAGE_TRIES {
            match crate::coord_client::ask_peer(net, coordinator, &CoordRequest::MailSyncV1 { after }).await {
                Ok((CoordReplyV1::Mail { messages, next }, _)) => {
                    page = Some((messages, next));
                    break;
                }
                // Refused until the coordinator has heard this node's
                // heartbeat (a second at most): asked again.
                Ok((other, _)) => debug!(reply = ?other, attempt, "the coordinator did not list its outbox yet"),
                Err(e) => debug!(error = %e, attempt, "cannot fetch the coordinator's outbox"),
            }
            if attempt < MAIL_PAGE_TRIES {
                tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
            }
        }
        let Some((messages, next)) = page else {
            warn!(coordinator = %coordinator, "the coordinator's outbox could not be fetched; its waiting mail is not held here");
            return;
        };
        let in_order = messages.windows(2).all(|w| w[0].key < w[1].key);
        let forward = messages.first().is_none_or(|m| after.is_none_or(|a| m.key > a));
        if messages.len() > crate::mailer::MAIL_PAGE_MESSAGES_MAX || !in_order || !forward {
            warn!(coordinator = %coordinator, "the coordinator's outbox pages are malformed; catch-up of its mail stopped");
            return;
        }
        adopted += messages.len();
        if !mail.adopt(messages).await {
            return;
        }
        match next {
            Some(key) if after.is_none_or(|a| key > a) && adopted < ADOPTED_MAX => after = Some(key),
            _ => break,
        }
    }
    info!(coordinator = %coordinator, messages = adopted, "caught up with the coordinator's outbox");
}
