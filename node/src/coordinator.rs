//! The coordinator role, and the standby that every long-lived node runs.
//!
//! Every node hears the jobs, assignments, outcomes and settlements on
//! gossip and keeps the open jobs in its own durable queue (the `Queue`
//! record table), so whichever node the election picks next starts from the
//! same pending set. The acting coordinator also:
//! - answers `/kiln/coord/1` (submissions, status, watches); other nodes
//!   answer with the coordinator they know of;
//! - holds each job's inputs (recipe and source) before acknowledging it;
//! - matches queued jobs to workers ([`crate::schedule`]) and leases them
//!   over `/kiln/work/1`, gossiping each assignment;
//! - copies each built artifact to itself before settling it (two holders),
//!   records the result (`Results` table, attestations, a DHT record under
//!   the build key) and gossips the settlement.
//!
//! Decisions live in [`crate::schedule`] and [`crate::election`]; this
//! module carries them out.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kiln_protocol::coord::{
    Contact, CoordReply, CoordReplyV1, CoordRequest, JobPhase, JobView, StatusReport, ATTESTATIONS_MAX,
    COORD_FRAME_BYTES_MAX, STATUS_JOBS_MAX, STATUS_RECENT_MAX, STATUS_WORKERS_MAX,
};
use kiln_protocol::messages::{
    check_email, encode_gossip, topics, Assigned, BuildOutcome, CoordinatorHeartbeat, Gossip, GossipV1, JobRequest,
    Settlement, WorkReply, WorkReplyV1, WorkRequest, ADDRESSES_MAX, EMAILS_MAX,
};
use kiln_protocol::system::VersionRange;
use kiln_protocol::{build_key, wire, Attestation, Hash, PublicKey, Recipe, SecretKey, Signed, Source};
use kiln_store::{RecordTable, Store};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::blobs;
use crate::clock::now_ms;
use crate::election::{Candidate, Election, HEARTBEAT_MS};
use crate::frames::{read_frame, read_frame_max, write_frame, write_frame_max};
use crate::identity::peer_id_of;
use crate::mailer::MailHandle;
use crate::metrics::{Metrics, METRICS};
use crate::net::{NetClient, COORD_PROTOCOL, WORK_PROTOCOL};
use crate::node::NoProgress;
use crate::schedule::{Decision, Job, JobState, Schedule, Submitted};

/// Inputs waiting for the coordinator task.
const INPUTS_MAX: usize = 1024;
/// Coordinator-protocol streams served at once.
const COORD_STREAMS_MAX: usize = 64;
/// How long a peer may take to send its request on a new stream.
const REQUEST_MS_MAX: u64 = 10_000;
/// How long a worker may take to answer an assignment.
const ASSIGN_REPLY_MS_MAX: u64 = 10_000;
/// How often the coordinator matches, expires leases and heartbeats.
const TICK_MS: u64 = 250;
/// Watchers of one build, and of all builds.
const WATCHERS_PER_BUILD_MAX: usize = 64;
const WATCHED_BUILDS_MAX: usize = 4096;
/// Phase changes queued for one watcher before it is dropped.
const WATCH_EVENTS_MAX: usize = 64;
/// A page of open jobs sent to a standby catching up: at most this many,
/// and half a coordinator frame.
const SYNC_PAGE_JOBS_MAX: usize = 1024;
const SYNC_PAGE_BYTES_MAX: usize = COORD_FRAME_BYTES_MAX / 2;
/// The most pages one catch-up reads (a million open jobs fit in far fewer).
const SYNC_PAGES_MAX: usize = 4096;
/// How long a standby waits before it asks again after a failed catch-up.
const SYNC_RETRY_MS: u64 = 5_000;
/// Input fetches (recipes and sources of gossiped jobs) at once.
const INPUT_FETCHES_MAX: usize = 4;

/// Whether this node may coordinate, and whom it takes as coordinator.
#[derive(Clone, Debug, Default)]
pub struct CoordinatorOptions {
    /// May be elected (not `--no-coordinator`).
    pub eligible: bool,
    /// Pinned with `--coordinator`.
    pub pinned: bool,
    /// The only peers that may coordinate (`--trust-coordinator`); `None`:
    /// any peer that may be elected.
    pub trusted: Option<BTreeSet<PeerId>>,
}

/// What the coordinator task is told.
enum Input {
    Gossip {
        signer: PublicKey,
        message: Box<Gossip>,
    },
    Addresses(Vec<Multiaddr>),
    Lookup {
        job: Box<JobRequest>,
        accept_versions: Option<VersionRange>,
        reply: oneshot::Sender<Lookup>,
    },
    Submit {
        job: Box<JobRequest>,
        reply: oneshot::Sender<CoordReplyV1>,
    },
    Status {
        reply: oneshot::Sender<CoordReplyV1>,
    },
    Watch {
        build_key: Hash,
        events: mpsc::Sender<JobPhase>,
        reply: oneshot::Sender<Option<Contact>>,
    },
    Assignment {
        build_key: Hash,
        worker: PublicKey,
        refused: Option<String>,
    },
    Replicated {
        build_key: Hash,
        result: Result<u32, String>,
    },
    /// A standby asks for a page of the open jobs.
    Sync {
        after: Option<Hash>,
        reply: oneshot::Sender<CoordReplyV1>,
    },
    /// A page of the coordinator's open jobs, fetched by this standby;
    /// `done` with the last page, `None` if the fetch failed.
    Synced {
        from: PeerId,
        jobs: Option<Vec<JobRequest>>,
        done: bool,
    },
}

/// What a submission finds.
enum Lookup {
    NotCoordinator(Option<Contact>),
    Built(Vec<Signed<Attestation>>),
    Open,
    New,
}

/// A handle for feeding the coordinator task.
#[derive(Clone)]
pub struct CoordHandle {
    inputs: mpsc::Sender<Input>,
}

impl CoordHandle {
    /// Passes on a gossip message; dropped (and logged) if the task lags.
    pub fn gossip(&self, signer: PublicKey, message: Box<Gossip>) {
        if self.inputs.try_send(Input::Gossip { signer, message }).is_err() {
            warn!("coordinator input queue full; a gossip message was dropped");
        }
    }

    pub fn addresses(&self, addresses: Vec<Multiaddr>) {
        let _ = self.inputs.try_send(Input::Addresses(addresses));
    }

    /// What `kiln status` would get from this node: the farm's status if
    /// it coordinates, else who does. `None` if the task has stopped.
    pub async fn status(&self) -> Option<CoordReplyV1> {
        let (reply, answer) = oneshot::channel();
        self.inputs.send(Input::Status { reply }).await.ok()?;
        answer.await.ok()
    }
}

/// Unpins an artifact this node built (and its log) once a coordinator's
/// settlement says another peer holds it too: it stays in the store as a
/// cache, evictable under `--max-store-size`, instead of filling a
/// contributor's disk.
fn release_if_replicated(store: &Store, me: &PublicKey, settlement: &Settlement) {
    let Settlement::Done { attestation, holders } = settlement else {
        return;
    };
    let Ok(a) = attestation.verify() else {
        return;
    };
    if a.worker != *me || *holders < 2 {
        return;
    }
    for hash in [a.artifact, a.log] {
        if store.unpin(&hash).unwrap_or(false) {
            info!(blob = %hash, "another peer holds this build now; unpinned here (kept as a cache)");
        }
    }
}

/// Starts the coordinator (or standby) task and its protocol server.
pub fn spawn(
    net: NetClient,
    store: Store,
    key: SecretKey,
    options: CoordinatorOptions,
    mail: Option<(MailHandle, Arc<AtomicBool>)>,
) -> (CoordHandle, Vec<tokio::task::JoinHandle<()>>) {
    let (tx, rx) = mpsc::channel(INPUTS_MAX);
    let handle = CoordHandle { inputs: tx.clone() };
    let incoming = net.stream_control().accept(COORD_PROTOCOL);
    let server = {
        let server = Server {
            net: net.clone(),
            store: store.clone(),
            inputs: tx.clone(),
        };
        tokio::spawn(async move {
            match incoming {
                Ok(incoming) => Arc::new(server).serve(incoming).await,
                Err(e) => warn!(error = %e, "coordinator protocol already served"),
            }
        })
    };
    let mut coordinator = Coordinator::new(net, store, key, options, tx, mail);
    coordinator.restore();
    let task = tokio::spawn(coordinator.run(rx));
    (handle, vec![server, task])
}

/// Answers `/kiln/coord/1` streams, one task per stream.
struct Server {
    net: NetClient,
    store: Store,
    inputs: mpsc::Sender<Input>,
}

impl Server {
    async fn serve(self: Arc<Self>, mut incoming: libp2p_stream::IncomingStreams) {
        let permits = Arc::new(tokio::sync::Semaphore::new(COORD_STREAMS_MAX));
        while let Some((peer, mut stream)) = incoming.next().await {
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                warn!(peer = %peer, "too many coordinator streams at once; dropping one");
                continue;
            };
            let server = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let request =
                    match read_frame_max::<CoordRequest, COORD_FRAME_BYTES_MAX>(&mut stream, REQUEST_MS_MAX).await {
                        Ok(Some(request)) => request,
                        Ok(None) => return,
                        Err(e) => {
                            debug!(peer = %peer, error = %e, "bad coordinator request");
                            return;
                        }
                    };
                if let Err(e) = server.answer(peer, request, &mut stream).await {
                    debug!(peer = %peer, error = %e, "coordinator stream ended");
                }
            });
        }
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Input) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        self.inputs.send(make(reply)).await.ok()?;
        answer.await.ok()
    }

    async fn answer(&self, peer: PeerId, request: CoordRequest, stream: &mut libp2p::Stream) -> std::io::Result<()> {
        let reply = match request {
            CoordRequest::SubmitV1 { job, accept_versions } => self.submit(peer, *job, accept_versions).await,
            CoordRequest::StatusV1 => self.ask(|reply| Input::Status { reply }).await.unwrap_or_else(stopping),
            CoordRequest::WatchV1 { build_key } => return self.watch(build_key, stream).await,
            CoordRequest::SyncV1 { after } => self
                .ask(|reply| Input::Sync { after, reply })
                .await
                .unwrap_or_else(stopping),
        };
        write_frame_max::<_, COORD_FRAME_BYTES_MAX>(stream, &CoordReply::V1(reply)).await
    }

    async fn submit(&self, peer: PeerId, job: JobRequest, accept_versions: Option<VersionRange>) -> CoordReplyV1 {
        if let Err(reason) = check_job(&job) {
            return CoordReplyV1::Refused { reason };
        }
        let asked = Box::new(job.clone());
        let lookup = |reply| Input::Lookup {
            job: asked,
            accept_versions,
            reply,
        };
        match self.ask(lookup).await {
            None => return stopping(),
            Some(Lookup::NotCoordinator(coordinator)) => return CoordReplyV1::NotCoordinator { coordinator },
            Some(Lookup::Built(attestations)) => return CoordReplyV1::Built { attestations },
            Some(Lookup::Open) => {}
            Some(Lookup::New) => {
                if let Err(reason) = hold_inputs(&self.net, &self.store, &job, &[peer]).await {
                    return CoordReplyV1::Refused { reason };
                }
            }
        }
        self.ask(|reply| Input::Submit {
            job: Box::new(job),
            reply,
        })
        .await
        .unwrap_or_else(stopping)
    }

    async fn watch(&self, build_key: Hash, stream: &mut libp2p::Stream) -> std::io::Result<()> {
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

fn stopping() -> CoordReplyV1 {
    CoordReplyV1::Refused {
        reason: "the coordinator is stopping; try again".into(),
    }
}

/// Checks what a peer can get wrong in a job before anything is fetched.
fn check_job(job: &JobRequest) -> Result<(), String> {
    if job.emails.is_empty() || job.emails.len() > EMAILS_MAX {
        return Err(format!("a request needs 1 to {EMAILS_MAX} email addresses"));
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

/// Fetches a job's recipe and source (from `hints` first), checks the
/// recipe against the job, and pins both while the job is open.
pub async fn hold_inputs(net: &NetClient, store: &Store, job: &JobRequest, hints: &[PeerId]) -> Result<(), String> {
    blobs::fetch_from(net, store, job.recipe_id, hints, Arc::new(NoProgress))
        .await
        .map_err(|e| format!("cannot fetch the recipe {}: {e}", job.recipe_id))?;
    let bytes = store
        .read(&job.recipe_id)
        .map_err(|e| format!("cannot read the recipe: {e}"))?;
    let recipe =
        Recipe::from_canonical_bytes(&bytes).map_err(|e| format!("recipe {} is not valid: {e}", job.recipe_id))?;
    let chosen: Vec<(String, String)> = job.options.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let resolved = recipe.resolve_options(&chosen).map_err(|e| e.to_string())?;
    if resolved != job.options {
        return Err("the job's options are not the recipe's options resolved".into());
    }
    let reason = format!("input of job {}", job.build_key);
    let _ = store.pin(&job.recipe_id, &reason);
    if let Source::Blob(source) = &recipe.source {
        blobs::fetch_from(net, store, *source, hints, Arc::new(NoProgress))
            .await
            .map_err(|e| format!("cannot fetch the source {source}: {e}"))?;
        let _ = store.pin(source, &reason);
        let _ = net.provide(*source).await;
    }
    let _ = net.provide(job.recipe_id).await;
    Ok(())
}

/// The coordinator task's state.
struct Coordinator {
    net: NetClient,
    store: Store,
    key: SecretKey,
    me: PeerId,
    schedule: Schedule,
    election: Election,
    addresses: Vec<String>,
    inputs: mpsc::Sender<Input>,
    watchers: HashMap<Hash, Vec<mpsc::Sender<JobPhase>>>,
    recent: VecDeque<JobView>,
    replicating: HashSet<Hash>,
    acting: bool,
    input_fetches: Arc<tokio::sync::Semaphore>,
    /// The coordinator whose open jobs this standby has fetched since it
    /// started or that coordinator took over; whether a fetch is under
    /// way; when the next may start.
    synced_with: Option<PeerId>,
    syncing: bool,
    sync_not_before_ms: u64,
    /// The mailer, and the flag that tells it this node coordinates.
    mail: Option<(MailHandle, Arc<AtomicBool>)>,
    /// When this node accepted each open job it has not yet offered to a
    /// worker (for the dispatch-latency metric); one entry per open job.
    accepted_at_ms: HashMap<Hash, u64>,
}

impl Coordinator {
    fn new(
        net: NetClient,
        store: Store,
        key: SecretKey,
        options: CoordinatorOptions,
        inputs: mpsc::Sender<Input>,
        mail: Option<(MailHandle, Arc<AtomicBool>)>,
    ) -> Coordinator {
        let me = net.peer_id();
        Coordinator {
            election: Election::new(me, options.eligible, options.pinned, now_ms()).trusting(options.trusted.clone()),
            net,
            store,
            key,
            me,
            schedule: Schedule::new(),
            addresses: Vec::new(),
            inputs,
            watchers: HashMap::new(),
            recent: VecDeque::new(),
            replicating: HashSet::new(),
            acting: false,
            input_fetches: Arc::new(tokio::sync::Semaphore::new(INPUT_FETCHES_MAX)),
            synced_with: None,
            syncing: false,
            sync_not_before_ms: 0,
            mail,
            accepted_at_ms: HashMap::new(),
        }
    }

    /// Loads the open jobs kept on disk.
    fn restore(&mut self) {
        let records = match self.store.records(RecordTable::Queue) {
            Ok(records) => records,
            Err(e) => {
                warn!(error = %e, "cannot read the kept queue");
                return;
            }
        };
        let now = now_ms();
        for (_, bytes) in records {
            match wire::decode::<Job, { kiln_store::RECORD_VALUE_BYTES_MAX }>(&bytes) {
                Ok(job) => self.schedule.restore(job, now),
                Err(e) => warn!(error = %e, "skipping a damaged queue record"),
            }
        }
        if self.schedule.open_jobs() > 0 {
            info!(jobs = self.schedule.open_jobs(), "open jobs restored from disk");
        }
    }

    async fn run(mut self, mut inputs: mpsc::Receiver<Input>) {
        let mut tick = tokio::time::interval(Duration::from_millis(TICK_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heartbeat = 0;
        loop {
            tokio::select! {
                input = inputs.recv() => match input {
                    Some(input) => self.on_input(input).await,
                    None => break,
                },
                _ = tick.tick() => {
                    let now = now_ms();
                    if self.election.eligible() && now.saturating_sub(last_heartbeat) >= HEARTBEAT_MS {
                        last_heartbeat = now;
                        self.heartbeat(now).await;
                    }
                    self.step(now).await;
                }
            }
        }
    }

    /// Follows the election; the acting coordinator matches and settles.
    async fn step(&mut self, now: u64) {
        self.election.tick(now);
        let acting = self.election.acting(now);
        if let Some((_, flag)) = &self.mail {
            flag.store(acting, Ordering::SeqCst);
        }
        if acting != self.acting {
            self.acting = acting;
            if acting {
                info!(jobs = self.schedule.open_jobs(), "acting as the coordinator");
            } else {
                info!(leader = ?self.election.leader(now), "standing by; another node coordinates");
            }
        }
        self.catch_up(now);
        let lost = self.schedule.tick(now);
        for build_key in &lost {
            warn!(job = %build_key, "lease expired: the worker went quiet; job back in the queue");
            self.changed(build_key);
        }
        if !self.acting {
            return;
        }
        for decision in self.schedule.plan(now) {
            let Decision::Assign {
                build_key,
                worker,
                attempt,
            } = decision;
            self.changed(&build_key);
            self.assign(build_key, worker, attempt).await;
        }
        for build_key in self.schedule.ended() {
            self.settle(build_key);
        }
    }

    /// A standby fetches the coordinator's open jobs once per coordinator
    /// (gossip brings each later one), so jobs queued while it was down or
    /// before it started are not lost if it takes over.
    fn catch_up(&mut self, now: u64) {
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
            let reached = crate::request::reach(&net, &contact).await;
            let mut after = None;
            let mut pages = 0;
            loop {
                let page = match reached {
                    Some(peer) => crate::request::ask_peer(&net, peer, &CoordRequest::SyncV1 { after }).await,
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
    fn sync_page(&self, after: Option<Hash>) -> CoordReplyV1 {
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

    async fn heartbeat(&mut self, now: u64) {
        let heartbeat = CoordinatorHeartbeat {
            pinned: self.election.pinned(),
            acting: self.acting,
            queued_jobs: self.schedule.queued_jobs() as u32,
            running_jobs: self.schedule.running_jobs() as u32,
            addresses: self.addresses.clone(),
            sent_at_ms: now,
        };
        self.gossip(topics::COORDINATOR, GossipV1::Coordinator(heartbeat)).await;
    }

    async fn gossip(&self, topic: &'static str, message: GossipV1) {
        match encode_gossip(&self.key, &Gossip::V1(message)) {
            Ok(bytes) => {
                if let Err(e) = self.net.publish(topic, bytes).await {
                    debug!(topic, error = %e, "gossip not published");
                }
            }
            Err(e) => warn!(topic, error = %e, "gossip too large"),
        }
    }

    fn contact(&self, now: u64) -> Option<Contact> {
        let leader = self.election.leader(now)?;
        let peer = public_key_of(&leader)?;
        let addresses = if leader == self.me {
            self.addresses.clone()
        } else {
            self.election.addresses(&leader)
        };
        Some(Contact { peer, addresses })
    }

    async fn on_input(&mut self, input: Input) {
        let now = now_ms();
        match input {
            Input::Gossip { signer, message } => self.on_gossip(signer, *message, now).await,
            Input::Addresses(addresses) => {
                self.addresses = addresses.iter().take(ADDRESSES_MAX).map(|a| a.to_string()).collect();
            }
            Input::Lookup {
                job,
                accept_versions,
                reply,
            } => {
                let build_key = job.build_key;
                let answer = if !self.acting {
                    Lookup::NotCoordinator(self.contact(now))
                } else if let Some(attestations) = self.built(&build_key) {
                    Lookup::Built(attestations)
                } else if let Some(attestations) = accept_versions.and_then(|range| self.built_in_range(&job, &range)) {
                    Lookup::Built(attestations)
                } else if self.schedule.job(&build_key).is_some() {
                    Lookup::Open
                } else {
                    Lookup::New
                };
                let _ = reply.send(answer);
            }
            Input::Submit { job, reply } => {
                let answer = self.submit(*job).await;
                let _ = reply.send(answer);
            }
            Input::Status { reply } => {
                let answer = if self.acting {
                    CoordReplyV1::Status(self.status(now))
                } else {
                    CoordReplyV1::NotCoordinator {
                        coordinator: self.contact(now),
                    }
                };
                let _ = reply.send(answer);
            }
            Input::Watch {
                build_key,
                events,
                reply,
            } => {
                if !self.acting {
                    let _ = reply.send(self.contact(now).or(Some(Contact {
                        peer: self.key.public(),
                        addresses: vec![],
                    })));
                    return;
                }
                let _ = events.try_send(self.phase(&build_key));
                let watchers = self.watchers.len();
                let list = self.watchers.entry(build_key).or_default();
                list.retain(|w| !w.is_closed());
                if list.len() < WATCHERS_PER_BUILD_MAX && watchers < WATCHED_BUILDS_MAX {
                    list.push(events);
                }
                let _ = reply.send(None);
            }
            Input::Assignment {
                build_key,
                worker,
                refused,
            } => {
                if let Some(reason) = refused {
                    info!(job = %build_key, worker = %worker, reason, "assignment refused");
                    self.schedule.refused(&build_key, worker, &reason, now);
                    self.changed(&build_key);
                }
            }
            Input::Sync { after, reply } => {
                let _ = reply.send(self.sync_page(after));
            }
            Input::Synced { from, jobs, done } => {
                let Some(jobs) = jobs else {
                    self.syncing = false;
                    self.sync_not_before_ms = now + SYNC_RETRY_MS;
                    return;
                };
                for job in jobs {
                    self.heard_job(job, from);
                }
                if done {
                    self.syncing = false;
                    self.synced_with = Some(from);
                    info!(coordinator = %from, jobs = self.schedule.open_jobs(), "caught up with the coordinator's open jobs");
                }
            }
            Input::Replicated { build_key, result } => {
                self.replicating.remove(&build_key);
                match result {
                    Ok(holders) => self.finish_done(build_key, holders).await,
                    Err(reason) => {
                        warn!(job = %build_key, reason, "artifact could not be copied; building again");
                        self.schedule.replication_failed(&build_key);
                        self.changed(&build_key);
                    }
                }
            }
        }
    }

    async fn on_gossip(&mut self, signer: PublicKey, message: Gossip, now: u64) {
        let Gossip::V1(message) = message;
        let Some(peer) = peer_id_of(&signer) else {
            return;
        };
        match message {
            GossipV1::Coordinator(beat) => self.election.heard(
                peer,
                Candidate {
                    pinned: beat.pinned,
                    acting: beat.acting,
                    addresses: beat.addresses,
                    seen_at_ms: now,
                },
            ),
            GossipV1::Worker(advert) => {
                for build_key in self.schedule.advert(signer, advert, now) {
                    warn!(job = %build_key, worker = %signer, "worker no longer runs its job; back in the queue");
                    self.changed(&build_key);
                }
            }
            GossipV1::Job(job) => self.heard_job(job, peer),
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
                if self.schedule.built(&build_key, attestation) {
                    info!(job = %build_key, artifact = %a.artifact, worker = %signer, "built");
                    self.changed(&build_key);
                }
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
                info!(job = %build_key, worker = %signer, reason, "build could not start");
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
            GossipV1::Settled(settlement) if self.election.speaks_for_queue(&peer) => {
                release_if_replicated(&self.store, &self.key.public(), &settlement);
                self.heard_settlement(settlement);
            }
            GossipV1::Settled(settlement) => {
                info!(peer = %peer, job = ?settlement.build_key(), "settlement from a peer that does not coordinate; ignored");
            }
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

    /// A job announced by the coordinator (or a requester): kept, and its
    /// inputs fetched so they outlive the node that holds them now.
    fn heard_job(&mut self, job: JobRequest, from: PeerId) {
        if check_job(&job).is_err() || self.built(&job.build_key).is_some() {
            return;
        }
        let build_key = job.build_key;
        let fresh = self.schedule.job(&build_key).is_none();
        if self.schedule.submit(job.clone()).is_err() {
            return;
        }
        self.persist(&build_key);
        // Nodes that may take over hold the inputs too.
        if fresh && self.election.eligible() {
            let (net, store, permits) = (self.net.clone(), self.store.clone(), self.input_fetches.clone());
            tokio::spawn(async move {
                let Ok(_permit) = permits.acquire_owned().await else {
                    return;
                };
                match hold_inputs(&net, &store, &job, &[from]).await {
                    Ok(()) => info!(job = %job.build_key, "holding the inputs of a job, in case this node takes over"),
                    Err(e) => debug!(job = %job.build_key, error = e, "inputs of a gossiped job not fetched"),
                }
            });
        }
    }

    fn heard_settlement(&mut self, settlement: Settlement) {
        let Some(build_key) = settlement.build_key() else {
            return;
        };
        if let Settlement::Done { attestation, .. } = &settlement {
            if let Err(e) = self.store.put_attestation(attestation) {
                debug!(error = %e, "attestation not kept");
            }
        }
        let job = self.schedule.remove(&build_key);
        self.record_result(&build_key, &settlement, job.as_ref().map(|j| &j.request));
        if let Some(job) = job {
            self.ended(job, &settlement);
        }
        self.persist(&build_key);
    }

    /// A submission to the acting coordinator, inputs already held.
    async fn submit(&mut self, job: JobRequest) -> CoordReplyV1 {
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

    async fn assign(&mut self, build_key: Hash, worker: PublicKey, attempt: u32) {
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
    fn settle(&mut self, build_key: Hash) {
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

    async fn finish_done(&mut self, build_key: Hash, holders: u32) {
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
    fn finish(&mut self, build_key: Hash, settlement: Settlement) {
        let job = self.schedule.remove(&build_key);
        self.record_result(&build_key, &settlement, job.as_ref().map(|j| &j.request));
        if let Some(job) = job {
            self.ended(job, &settlement);
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
    fn ended(&mut self, job: Job, settlement: &Settlement) {
        let build_key = job.request.build_key;
        self.accepted_at_ms.remove(&build_key);
        let _ = self.store.unpin(&job.request.recipe_id);
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
        if let Some((mail, _)) = &self.mail {
            mail.ended(&job.request, settlement);
        }
        let mut view = job.view();
        view.phase = phase.clone();
        self.recent.push_front(view);
        self.recent.truncate(STATUS_RECENT_MAX);
        self.notify(&build_key, phase);
        self.watchers.remove(&build_key);
    }

    fn record_result(&self, build_key: &Hash, settlement: &Settlement, job: Option<&JobRequest>) {
        // Counted once, where the job was open: not for repeats of a
        // settlement or for builds this node never heard of.
        match (settlement, job.is_some()) {
            (Settlement::Done { .. }, true) => Metrics::add(&METRICS.jobs_done, 1),
            (Settlement::Failed { .. }, true) => Metrics::add(&METRICS.jobs_failed, 1),
            (_, false) => {}
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

    fn result(&self, build_key: &Hash) -> Option<ResultRecord> {
        let bytes = self
            .store
            .get_record(RecordTable::Results, build_key.as_bytes())
            .ok()??;
        wire::decode::<_, { kiln_store::RECORD_VALUE_BYTES_MAX }>(&bytes).ok()
    }

    /// A finished build of the same recipe name, options and requirements
    /// as `job`, whose version lies in `range` (the newest such).
    fn built_in_range(&self, job: &JobRequest, range: &VersionRange) -> Option<Vec<Signed<Attestation>>> {
        let records = self.store.records(RecordTable::Results).ok()?;
        let found = records
            .iter()
            .filter_map(|(key, bytes)| {
                let record: ResultRecord = wire::decode::<_, { kiln_store::RECORD_VALUE_BYTES_MAX }>(bytes).ok()?;
                let same = record.recipe_name == job.recipe_name
                    && record.options == job.options
                    && record.requirements == job.requirements
                    && matches!(record.settlement, Settlement::Done { .. })
                    && range.contains(&record.recipe_version);
                let key: [u8; 32] = key.as_slice().try_into().ok()?;
                same.then_some((record.recipe_version, Hash::from_bytes(key)))
            })
            .max_by(|a, b| kiln_protocol::system::compare_versions(&a.0, &b.0))?;
        info!(job = %job.build_key, version = found.0, range = %range, "an accepted version is already built");
        self.built(&found.1)
    }

    /// The attestations of a build this node knows is done.
    fn built(&self, build_key: &Hash) -> Option<Vec<Signed<Attestation>>> {
        let Settlement::Done { attestation, .. } = self.result(build_key)?.settlement else {
            return None;
        };
        let mut attestations = self.store.attestations(build_key).unwrap_or_default();
        if attestations.is_empty() {
            attestations.push(attestation);
        }
        attestations.truncate(ATTESTATIONS_MAX);
        Some(attestations)
    }

    fn phase(&self, build_key: &Hash) -> JobPhase {
        if let Some(job) = self.schedule.job(build_key) {
            return job.phase();
        }
        if let Some(attestation) = self.built(build_key).and_then(|a| a.into_iter().next()) {
            return JobPhase::Done { attestation };
        }
        match self.result(build_key).map(|r| r.settlement) {
            Some(Settlement::Failed {
                reason, log, attempts, ..
            }) => JobPhase::Failed { reason, log, attempts },
            _ => JobPhase::Unknown,
        }
    }

    /// Keeps a job's current state on disk (or removes it once ended).
    /// Returns whether the disk has it.
    fn persist(&self, build_key: &Hash) -> bool {
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
    fn changed(&mut self, build_key: &Hash) {
        self.persist(build_key);
        let phase = self.phase(build_key);
        self.notify(build_key, phase);
    }

    fn notify(&mut self, build_key: &Hash, phase: JobPhase) {
        if let Some(list) = self.watchers.get_mut(build_key) {
            list.retain(|w| w.try_send(phase.clone()).is_ok());
        }
    }

    fn status(&self, now: u64) -> StatusReport {
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
struct ResultRecord {
    settlement: Settlement,
    recipe_name: String,
    recipe_version: String,
    options: std::collections::BTreeMap<String, String>,
    requirements: kiln_protocol::Requirements,
}

/// The ed25519 key inside a peer id (Kiln peer ids always hold one).
pub fn public_key_of(peer: &PeerId) -> Option<PublicKey> {
    let multihash = peer.as_ref();
    let public = libp2p::identity::PublicKey::try_decode_protobuf(multihash.digest()).ok()?;
    let ed25519 = public.try_into_ed25519().ok()?;
    Some(PublicKey(ed25519.to_bytes()))
}

/// Offers a job to a worker over `/kiln/work/1` and reads its answer.
async fn offer(net: &NetClient, worker: PublicKey, job: JobRequest, attempt: u32) -> std::io::Result<WorkReplyV1> {
    let peer = peer_id_of(&worker).ok_or_else(|| std::io::Error::other("not a peer key"))?;
    let mut control = net.stream_control();
    let open = control.open_stream(peer, WORK_PROTOCOL);
    let mut stream = tokio::time::timeout(Duration::from_millis(ASSIGN_REPLY_MS_MAX), open)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no stream"))?
        .map_err(std::io::Error::other)?;
    write_frame(&mut stream, &WorkRequest::AssignV1 { job, attempt }).await?;
    match read_frame::<WorkReply>(&mut stream, ASSIGN_REPLY_MS_MAX).await? {
        Some(WorkReply::V1(reply)) => Ok(reply),
        None => Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "worker closed the stream",
        )),
    }
}

/// Copies a built artifact (and its log) to this node and pins it, so two
/// peers hold it. Returns how many peers hold it.
async fn replicate(net: &NetClient, store: &Store, attestation: &Signed<Attestation>) -> Result<u32, String> {
    let a = attestation.verify().map_err(|e| e.to_string())?;
    let builder = peer_id_of(&a.worker).ok_or("attestation names no peer")?;
    if builder == net.peer_id() {
        return Ok(1);
    }
    blobs::fetch_from(net, store, a.artifact, &[builder], Arc::new(NoProgress))
        .await
        .map_err(|e| format!("cannot copy the artifact {}: {e}", a.artifact))?;
    let _ = store.pin(&a.artifact, &format!("artifact of build {}", a.build_key));
    let _ = net.provide(a.artifact).await;
    if blobs::fetch_from(net, store, a.log, &[builder], Arc::new(NoProgress))
        .await
        .is_ok()
    {
        let _ = net.provide(a.log).await;
    }
    Ok(2)
}
