//! The `/kiln/coord/1` server: one task per stream, at most so many at
//! once, each reading one request and asking the coordinator task for the
//! answer. A watch holds its stream for as long as the build runs, so it
//! trades its request permit for one of a separate, larger pool of watch
//! permits: watchers can never starve submissions and status requests.

use std::sync::Arc;

use futures::StreamExt;
use kiln_protocol::build::{VERIFY_AUTO, VERIFY_MAX};
use kiln_protocol::coord::{
    CoordReply, CoordReplyV1, CoordRequest, Priority, COORD_FRAME_BYTES_MAX, PHASES_MAX, RECIPE_NAME_BYTES_MAX,
};
use kiln_protocol::messages::{check_email, JobRequest, EMAILS_MAX, REQUESTER_EMAILS_MAX};
use kiln_protocol::system::VersionRange;
use kiln_protocol::{build_key, Hash, PublicKey};
use kiln_store::Store;
use libp2p::PeerId;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::*;
use crate::net::frames::{read_frame_max, write_frame_max};
use crate::net::NetClient;

/// Coordinator-protocol streams served at once.
const COORD_STREAMS_MAX: usize = 64;
/// How long a peer may take to send its request on a new stream.
const REQUEST_MS_MAX: u64 = 10_000;
/// Watch streams held open at once (each a requester following a build).
pub(super) const WATCH_STREAMS_MAX: usize = 1024;
/// Phase changes queued for one watcher before it is dropped.
const WATCH_EVENTS_MAX: usize = 64;

/// Answers `/kiln/coord/1` streams, one task per stream.
pub(super) struct Server {
    pub(super) net: NetClient,
    pub(super) store: Store,
    pub(super) inputs: mpsc::Sender<Input>,
    /// Permits for watch streams, apart from the request permits.
    pub(super) watch_permits: Arc<tokio::sync::Semaphore>,
}

impl Server {
    pub(super) async fn serve(self: Arc<Self>, mut incoming: libp2p_stream::IncomingStreams) {
        let permits = Arc::new(tokio::sync::Semaphore::new(COORD_STREAMS_MAX));
        while let Some((peer, mut stream)) = incoming.next().await {
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                warn!(peer = %peer, "too many coordinator streams at once; dropping one");
                continue;
            };
            let server = self.clone();
            tokio::spawn(async move {
                let request =
                    match read_frame_max::<CoordRequest, COORD_FRAME_BYTES_MAX>(&mut stream, REQUEST_MS_MAX).await {
                        Ok(Some(request)) => request,
                        Ok(None) => return,
                        Err(e) => {
                            debug!(peer = %peer, error = %e, "bad coordinator request");
                            return;
                        }
                    };
                let answered = match request {
                    CoordRequest::WatchV1 { build_key } => {
                        drop(permit);
                        server.watch_held(build_key, &mut stream).await
                    }
                    request => {
                        let answered = server.answer(peer, request, &mut stream).await;
                        drop(permit);
                        answered
                    }
                };
                if let Err(e) = answered {
                    debug!(peer = %peer, error = %e, "coordinator stream ended");
                }
            });
        }
    }

    /// A watch, under a watch permit (refused, with the reason, when every
    /// one is taken).
    pub(super) async fn watch_held(&self, build_key: Hash, stream: &mut libp2p::Stream) -> std::io::Result<()> {
        let Ok(_permit) = self.watch_permits.clone().try_acquire_owned() else {
            let reason = format!(
                "this coordinator already streams {WATCH_STREAMS_MAX} builds to watchers; try `kiln status` instead, or watch again later"
            );
            let reply = CoordReply::V1(CoordReplyV1::Refused { reason });
            return write_frame_max::<_, COORD_FRAME_BYTES_MAX>(stream, &reply).await;
        };
        self.watch(build_key, stream).await
    }

    /// A page of this node's outbox (a standby catching up), read off the
    /// runtime.
    async fn mail_page(&self, after: Option<Hash>) -> CoordReplyV1 {
        let store = self.store.clone();
        let page = tokio::task::spawn_blocking(move || crate::mailer::outbox_page(&store, after))
            .await
            .map_err(|e| e.to_string())
            .and_then(|page| page);
        match page {
            Ok((messages, next)) => CoordReplyV1::Mail { messages, next },
            Err(reason) => {
                warn!(reason, "cannot read the outbox for a standby");
                CoordReplyV1::Refused {
                    reason: format!("cannot read the outbox: {reason}"),
                }
            }
        }
    }

    pub(super) async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Input) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        self.inputs.send(make(reply)).await.ok()?;
        answer.await.ok()
    }

    pub(super) async fn answer(
        &self,
        peer: PeerId,
        request: CoordRequest,
        stream: &mut libp2p::Stream,
    ) -> std::io::Result<()> {
        // An unsigned submission's requester is the peer that sends it.
        let sender = public_key_of(&peer);
        let unsigned = |verify| sender.map(|key| (key, Priority::Normal, verify));
        let reply = match request {
            CoordRequest::SubmitV1 { job, accept_versions } => match unsigned(1) {
                Some(requester) => self.submit(peer, *job, accept_versions, requester).await,
                None => not_ed25519(),
            },
            CoordRequest::SubmitV2 {
                job,
                accept_versions,
                verify,
            } if verify_in_range(verify) => match unsigned(verify) {
                Some(requester) => self.submit(peer, *job, accept_versions, requester).await,
                None => not_ed25519(),
            },
            CoordRequest::SubmitV2 { .. } => verify_out_of_range(),
            CoordRequest::SubmitV3 { submission } => match (submission.verify(), sender) {
                (Ok(s), Some(sender)) if s.sender == sender && verify_in_range(s.verify) => {
                    let requester = (submission.signer(), s.priority, s.verify);
                    self.submit(peer, s.job, s.accept_versions, requester).await
                }
                (Ok(s), _) if !verify_in_range(s.verify) => verify_out_of_range(),
                (Ok(_), _) => CoordReplyV1::Refused {
                    reason: "the submission was signed for another peer's stream; submit it yourself".into(),
                },
                (Err(_), _) => CoordReplyV1::Refused {
                    reason: "the submission's signature does not verify; it was damaged or forged".into(),
                },
            },
            CoordRequest::CancelV1 { cancellation } => match (cancellation.verify(), sender) {
                (Ok(c), Some(sender)) if c.sender == sender => {
                    let requester = cancellation.signer();
                    self.ask(|reply| Input::Cancel {
                        requester,
                        build_key: c.build_key,
                        reply,
                    })
                    .await
                    .unwrap_or_else(stopping)
                }
                (Ok(_), _) => CoordReplyV1::Refused {
                    reason: "the cancel was signed for another peer's stream; cancel it yourself".into(),
                },
                (Err(_), _) => CoordReplyV1::Refused {
                    reason: "the cancel's signature does not verify; it was damaged or forged".into(),
                },
            },
            CoordRequest::StatusV1 | CoordRequest::StatusV2 | CoordRequest::StatusV3 => {
                let contributors = !matches!(request, CoordRequest::StatusV1);
                let requesters = matches!(request, CoordRequest::StatusV3);
                self.ask(|reply| Input::Status {
                    contributors,
                    requesters,
                    reply,
                })
                .await
                .unwrap_or_else(stopping)
            }
            CoordRequest::WatchV1 { build_key } => return self.watch_held(build_key, stream).await,
            CoordRequest::SyncV1 { after } | CoordRequest::SyncV2 { after } | CoordRequest::SyncV3 { after } => {
                let version = match request {
                    CoordRequest::SyncV1 { .. } => 1,
                    CoordRequest::SyncV2 { .. } => 2,
                    _ => 3,
                };
                self.ask(|reply| Input::Sync { after, version, reply })
                    .await
                    .unwrap_or_else(stopping)
            }
            CoordRequest::MailSyncV1 { after } => {
                // Addresses and bodies: only for the coordination set.
                match self.ask(|reply| Input::MayReadOutbox { peer, reply }).await {
                    Some(true) => self.mail_page(after).await,
                    Some(false) => CoordReplyV1::Refused {
                        reason: "the outbox is shown only to nodes that may coordinate (their heartbeats heard)".into(),
                    },
                    None => stopping(),
                }
            }
            CoordRequest::PhasesV1 { build_keys } if build_keys.len() <= PHASES_MAX => self
                .ask(|reply| Input::Phases { build_keys, reply })
                .await
                .unwrap_or_else(stopping),
            CoordRequest::RecipeChecksV1 { recipe_name } if recipe_name.len() <= RECIPE_NAME_BYTES_MAX => self
                .ask(|reply| Input::RecipeChecks { recipe_name, reply })
                .await
                .unwrap_or_else(stopping),
            CoordRequest::RecipeChecksV1 { .. } => CoordReplyV1::Refused {
                reason: format!("a recipe name is at most {RECIPE_NAME_BYTES_MAX} bytes"),
            },
            CoordRequest::PhasesV1 { .. } => CoordReplyV1::Refused {
                reason: format!("ask about at most {PHASES_MAX} builds at once"),
            },
            CoordRequest::AdvertV1 { advert } => match (advert.check(), public_key_of(&peer)) {
                (Ok(()), Some(worker)) => {
                    // Dropped, like gossip, if the coordinator lags: the
                    // worker sends again at its next refresh.
                    if self.inputs.try_send(Input::Advert { worker, advert }).is_err() {
                        debug!(peer = %peer, "coordinator input queue full; a worker advert was dropped");
                    }
                    CoordReplyV1::Noted
                }
                (Err(problem), _) => CoordReplyV1::Refused {
                    reason: format!("advert not taken: {problem}"),
                },
                (_, None) => CoordReplyV1::Refused {
                    reason: "advert not taken: the peer's key is not an ed25519 key".into(),
                },
            },
        };
        write_frame_max::<_, COORD_FRAME_BYTES_MAX>(stream, &CoordReply::V1(reply)).await
    }

    /// `requester`: who asks, the priority it gives the job, and the
    /// builders that must agree.
    pub(super) async fn submit(
        &self,
        peer: PeerId,
        job: JobRequest,
        accept_versions: Option<VersionRange>,
        requester: (PublicKey, Priority, u32),
    ) -> CoordReplyV1 {
        let (requester, priority, verify) = requester;
        if let Err(reason) = check_job(&job) {
            return CoordReplyV1::Refused { reason };
        }
        let asked = Box::new(job.clone());
        let mut input_bytes = 0;
        let lookup = |reply| Input::Lookup {
            job: asked,
            accept_versions,
            verify,
            requester,
            reply,
        };
        match self.ask(lookup).await {
            None => return stopping(),
            Some(Lookup::NotCoordinator(coordinator)) => return CoordReplyV1::NotCoordinator { coordinator },
            Some(Lookup::Built(attestations)) => return CoordReplyV1::Built { attestations },
            Some(Lookup::Refused(reason)) => return CoordReplyV1::Refused { reason },
            Some(Lookup::Open) => {}
            Some(Lookup::New) => match hold_inputs(&self.net, &self.store, &job, &[peer]).await {
                Ok(bytes) => input_bytes = bytes,
                Err(reason) => return CoordReplyV1::Refused { reason },
            },
        }
        self.ask(|reply| Input::Submit {
            job: Box::new(job),
            verify,
            requester: (requester, priority),
            input_bytes,
            reply,
        })
        .await
        .unwrap_or_else(stopping)
    }

    pub(super) async fn watch(&self, build_key: Hash, stream: &mut libp2p::Stream) -> std::io::Result<()> {
        let (events, mut phases) = mpsc::channel(WATCH_EVENTS_MAX);
        let Some(contact) = self
            .ask(|reply| Input::Watch {
                build_key,
                events,
                reply,
            })
            .await
        else {
            return Ok(());
        };
        if contact.is_some() {
            let reply = CoordReplyV1::NotCoordinator { coordinator: contact };
            return write_frame_max::<_, COORD_FRAME_BYTES_MAX>(stream, &CoordReply::V1(reply)).await;
        }
        while let Some(phase) = phases.recv().await {
            let last = phase.is_final();
            let reply = CoordReplyV1::Event { build_key, phase };
            write_frame_max::<_, COORD_FRAME_BYTES_MAX>(stream, &CoordReply::V1(reply)).await?;
            if last {
                break;
            }
        }
        Ok(())
    }
}

fn verify_in_range(verify: u32) -> bool {
    verify == VERIFY_AUTO || (1..=VERIFY_MAX).contains(&verify)
}

fn verify_out_of_range() -> CoordReplyV1 {
    CoordReplyV1::Refused {
        reason: format!("ask for 1 to {VERIFY_MAX} agreeing builders, or auto (--verify)"),
    }
}

fn not_ed25519() -> CoordReplyV1 {
    CoordReplyV1::Refused {
        reason: "request not taken: the peer's key is not an ed25519 key".into(),
    }
}

fn stopping() -> CoordReplyV1 {
    CoordReplyV1::Refused {
        reason: "the coordinator is stopping; try again".into(),
    }
}

/// Checks what a peer can get wrong in a job before anything is fetched.
pub(super) fn check_job(job: &JobRequest) -> Result<(), String> {
    check_job_with(job, EMAILS_MAX)
}

/// [`check_job`] for a job the coordinator announced: merged requests
/// carry up to [`REQUESTER_EMAILS_MAX`] addresses.
pub(super) fn check_job_heard(job: &JobRequest) -> Result<(), String> {
    check_job_with(job, REQUESTER_EMAILS_MAX)
}

fn check_job_with(job: &JobRequest, emails_max: usize) -> Result<(), String> {
    if job.emails.is_empty() || job.emails.len() > emails_max {
        return Err(format!("a request needs 1 to {emails_max} email addresses"));
    }
    for email in &job.emails {
        check_email(email)?;
        email
            .parse::<lettre::Address>()
            .map_err(|e| format!("{email:?} is not an email address: {e}"))?;
    }
    if build_key(&job.recipe_id, &job.options, &job.requirements) != job.build_key {
        return Err("the build key does not match the recipe, options and requirements".into());
    }
    Ok(())
}
