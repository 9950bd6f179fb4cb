//! The coordinator task: one loop that owns [`Coordinator`], fed by the
//! network (gossip, addresses), the stream server, and its own spawned
//! effects, with a tick that follows the election, matches and expires
//! leases.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kiln_protocol::coord::{Contact, CoordReplyV1, PHASES_MAX, STATUS_REQUESTERS_MAX};
use kiln_protocol::messages::{
    encode_gossip, topics, CoordinatorHeartbeat, Gossip, GossipV1, Settlement, ADDRESSES_MAX,
};
use kiln_protocol::SecretKey;
use kiln_store::{RecordTable, Store};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::election::{Election, HEARTBEAT_MS};
use super::results::agreeing_builders;
use super::schedule::{Decision, Job, Schedule};
use super::*;
use crate::clock::now_ms;
use crate::mailer::MailHandle;
use crate::net::NetClient;

/// How often the coordinator matches, expires leases and heartbeats.
const TICK_MS: u64 = 250;
/// Watchers of one build, and of all builds.
const WATCHERS_PER_BUILD_MAX: usize = 64;
const WATCHED_BUILDS_MAX: usize = 4096;
/// Input fetches (recipes and sources of gossiped jobs) at once.
const INPUT_FETCHES_MAX: usize = 4;
/// Restored jobs checked against the DHT at start (the rest are assigned
/// as they are), and DHT lookups in flight for them.
const RESTORED_CHECKS_MAX: usize = 4096;
const RESTORED_LOOKUPS_AT_ONCE: usize = 8;

impl Coordinator {
    pub(super) fn new(
        net: NetClient,
        store: Store,
        key: SecretKey,
        options: CoordinatorOptions,
        inputs: mpsc::Sender<Input>,
        mail: Option<(MailHandle, Arc<AtomicBool>)>,
    ) -> Coordinator {
        let me = net.peer_id();
        let election = Election::new(me, options.eligible, options.pinned, now_ms())
            .trusting(options.trusted.clone())
            .delivering_mail(options.delivers_mail);
        let election = match options.set_size {
            Some(size) => election.bounded(size),
            None => election,
        };
        Coordinator {
            member: election.member(),
            election,
            net,
            store,
            key,
            me,
            schedule: Schedule::new(),
            addresses: Vec::new(),
            inputs,
            watchers: HashMap::new(),
            recent: VecDeque::new(),
            credit: Default::default(),
            streaks: Default::default(),
            checks: Default::default(),
            trusted_streak: options
                .trusted_streak
                .unwrap_or(super::verification::TRUSTED_STREAK)
                .max(1),
            submit_rate: Default::default(),
            cancelled: VecDeque::new(),
            requester_jobs_max: options
                .requester_jobs_max
                .unwrap_or(super::bounds::REQUESTER_JOBS_DEFAULT)
                .max(1),
            requester_rate_max: options
                .requester_rate_max
                .unwrap_or(super::bounds::REQUESTER_RATE_DEFAULT)
                .max(1),
            requester_input_bytes_max: options
                .requester_input_bytes_max
                .unwrap_or(super::bounds::REQUESTER_INPUT_BYTES_DEFAULT),
            replicating: HashSet::new(),
            acting: false,
            input_fetches: Arc::new(tokio::sync::Semaphore::new(INPUT_FETCHES_MAX)),
            synced_with: None,
            syncing: false,
            sync_not_before_ms: 0,
            mail,
            accepted_at_ms: HashMap::new(),
            held: Default::default(),
            sync_seen: HashSet::new(),
            reconciling: HashSet::new(),
            heartbeats_sent: 0,
        }
    }

    /// Loads the open jobs kept on disk, and counts the settled builds'
    /// contributors.
    pub(super) fn restore(&mut self) {
        self.credit = credit::Credit::load(&self.store);
        self.checks = super::checks::Checks::load(&self.store);
        self.restore_streaks();
        let records = match self.store.records(RecordTable::Queue) {
            Ok(records) => records,
            Err(e) => {
                warn!(error = %e, "cannot read the kept queue");
                return;
            }
        };
        let now = now_ms();
        for (_, bytes) in records {
            match Job::decode::<{ kiln_store::RECORD_VALUE_BYTES_MAX }>(&bytes) {
                Ok(job) => self.schedule.restore(job, now),
                Err(e) => warn!(error = %e, "skipping a damaged queue record"),
            }
        }
        if self.schedule.open_jobs() > 0 {
            info!(jobs = self.schedule.open_jobs(), "open jobs restored from disk");
        }
        self.check_restored(now);
    }

    /// Asks the DHT whether each restored job was built while this node
    /// was down (another coordinator settled it, and put its attestations
    /// under the build key), holding it unassigned meanwhile, for at most
    /// [`schedule::RESTORED_CHECK_MS_MAX`]: a settled job is settled here
    /// too, not built and mailed again.
    fn check_restored(&mut self, now: u64) {
        let keys: Vec<Hash> = self
            .schedule
            .jobs()
            .iter()
            .take(RESTORED_CHECKS_MAX)
            .map(|job| job.request.build_key)
            .collect();
        if keys.is_empty() {
            return;
        }
        for key in &keys {
            self.schedule
                .hold_for_check(*key, now + schedule::RESTORED_CHECK_MS_MAX);
        }
        let (net, inputs) = (self.net.clone(), self.inputs.clone());
        tokio::spawn(async move {
            use futures::StreamExt;
            let mut lookups = futures::stream::iter(keys)
                .map(|build_key| {
                    let net = net.clone();
                    async move { (build_key, crate::requester::lookup_built(&net, build_key).await) }
                })
                .buffer_unordered(RESTORED_LOOKUPS_AT_ONCE);
            while let Some((build_key, attestations)) = lookups.next().await {
                let input = Input::RestoredChecked {
                    build_key,
                    attestations,
                };
                if inputs.send(input).await.is_err() {
                    return;
                }
            }
        });
    }

    /// This node stepped into the coordination set: it catches up with the
    /// coordinator (its open jobs and outbox) and holds the inputs of every
    /// open job it keeps, as a member that may take over must.
    fn joined_set(&mut self) {
        info!(
            jobs = self.schedule.open_jobs(),
            "in the coordination set: holding the open jobs' inputs"
        );
        self.synced_with = None;
        let jobs: Vec<JobRequest> = self.schedule.jobs().iter().map(|j| j.request.clone()).collect();
        let (net, store, permits) = (self.net.clone(), self.store.clone(), self.input_fetches.clone());
        // One task walks the queue, and a fetch starts only once it holds a
        // permit: a long queue never means as many tasks at once.
        tokio::spawn(async move {
            for job in jobs {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let (net, store) = (net.clone(), store.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Err(e) = hold_inputs(&net, &store, &job, &[]).await {
                        debug!(job = %job.build_key, error = e, "inputs of an open job not fetched");
                    }
                });
            }
        });
    }

    /// The DHT's word on a restored job.
    fn restored_checked(&mut self, build_key: Hash, attestations: Vec<Signed<Attestation>>) {
        self.schedule.checked(&build_key);
        let Some(job) = self.schedule.job(&build_key) else {
            return;
        };
        let verify = job.verify;
        let mail = super::jobs::Mail::for_settled_elsewhere(&job.request, now_ms());
        // The record's most vouched-for artifact, one attestation per builder.
        let kept = &attestations[..attestations.len().min(kiln_protocol::build::CHECK_BUILDS_MAX)];
        let agreed = kiln_protocol::build::agreeing(kept, build_key, 1).unwrap_or_default();
        let Some(attestation) = agreed.first().cloned() else {
            return;
        };
        let needed = kiln_protocol::build::builders_needed(verify);
        let settlement = if verify == 1 {
            Settlement::Done {
                attestation,
                holders: 2,
            }
        } else if agreed.len() >= needed as usize {
            Settlement::Checked {
                attestation,
                holders: 2,
                check: kiln_protocol::build::Check {
                    needed,
                    agreed,
                    disagreed: Vec::new(),
                },
            }
        } else {
            info!(job = %build_key, builders = agreed.len(), verify, "a job restored from disk was built meanwhile by fewer builders than it needs; more are asked");
            self.schedule.count_builds(&build_key, agreed);
            self.changed(&build_key);
            return;
        };
        info!(job = %build_key, "a job restored from disk was built while this node was down; settled from its record");
        self.settled_here(settlement, mail);
    }

    /// Runs until told to stop (after the step it is on) or every input
    /// sender is gone.
    pub(super) async fn run(mut self, mut inputs: mpsc::Receiver<Input>, mut shutdown: Shutdown) {
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
                    if self.election.member() && now.saturating_sub(last_heartbeat) >= HEARTBEAT_MS {
                        last_heartbeat = now;
                        self.heartbeat(now).await;
                    }
                    self.step(now).await;
                }
                () = shutdown.wait() => {
                    info!("coordinator stopped");
                    break;
                }
            }
        }
    }

    /// Follows the election; the acting coordinator matches and settles.
    pub(super) async fn step(&mut self, now: u64) {
        self.election.tick(now);
        let acting = self.election.acting(now);
        let member = self.election.member();
        if member != self.member {
            self.member = member;
            if member {
                self.joined_set();
            } else {
                info!("left the coordination set (it is full); a reserve now, silent until it is short");
            }
        }
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
        self.held.expire(now);
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
            match decision {
                Decision::Assign {
                    build_key,
                    worker,
                    attempt,
                } => {
                    self.changed(&build_key);
                    self.assign(build_key, worker, attempt).await;
                }
                // Shown, not kept: the reason is worked out again after a
                // restart.
                Decision::Waits { build_key } => {
                    let phase = self.phase(&build_key);
                    self.notify(&build_key, phase);
                }
            }
        }
        for build_key in self.schedule.ended() {
            self.settle(build_key);
        }
    }

    pub(super) async fn heartbeat(&mut self, now: u64) {
        let heartbeat = CoordinatorHeartbeat {
            pinned: self.election.pinned(),
            acting: self.acting,
            queued_jobs: self.schedule.queued_jobs() as u32,
            running_jobs: self.schedule.running_jobs() as u32,
            addresses: self.addresses.clone(),
            sent_at_ms: now,
            delivers_mail: self.election.delivers_mail(),
        };
        self.heartbeats_sent += 1;
        self.gossip(topics::COORDINATOR, GossipV1::Coordinator(heartbeat)).await;
    }

    pub(super) async fn gossip(&self, topic: &'static str, message: GossipV1) {
        match encode_gossip(&self.key, &Gossip::V1(message)) {
            Ok(bytes) => {
                if let Err(e) = self.net.publish(topic, bytes).await {
                    debug!(topic, error = %e, "gossip not published");
                }
            }
            Err(e) => warn!(topic, error = %e, "gossip too large"),
        }
    }

    pub(super) fn contact(&self, now: u64) -> Option<Contact> {
        let leader = self.election.leader(now)?;
        let peer = public_key_of(&leader)?;
        let addresses = if leader == self.me {
            self.addresses.clone()
        } else {
            self.election.addresses(&leader)
        };
        Some(Contact { peer, addresses })
    }

    pub(super) async fn on_input(&mut self, input: Input) {
        let now = now_ms();
        match input {
            Input::Gossip { signer, message } => self.on_gossip(signer, *message, now).await,
            Input::BehindNat(behind) => {
                if behind && self.election.member() && !self.election.pinned() {
                    warn!("behind NAT: leaving the coordination set (workers could not reach this node); pin it with --coordinator to keep it there");
                }
                self.election.behind_nat(behind);
            }
            Input::Addresses(addresses) => {
                self.addresses = addresses.iter().take(ADDRESSES_MAX).map(|a| a.to_string()).collect();
            }
            Input::Lookup {
                job,
                accept_versions,
                verify,
                requester,
                reply,
            } => {
                let answer = match self.lookup(&job, accept_versions, verify, now).await {
                    Lookup::New | Lookup::Open => self.within_bounds(&job.build_key, requester, now),
                    answer => answer,
                };
                let _ = reply.send(answer);
            }
            Input::Submit {
                job,
                verify,
                requester,
                input_bytes,
                reply,
            } => {
                let answer = self.submit(*job, verify, requester, input_bytes).await;
                let _ = reply.send(answer);
            }
            Input::Cancel {
                requester,
                build_key,
                reply,
            } => {
                let answer = if self.acting {
                    self.cancel(requester, build_key).await
                } else {
                    CoordReplyV1::NotCoordinator {
                        coordinator: self.contact(now),
                    }
                };
                let _ = reply.send(answer);
            }
            Input::RecipeChecks { recipe_name, reply } => {
                let answer = if self.acting {
                    CoordReplyV1::RecipeChecks(self.checks.of(&recipe_name))
                } else {
                    CoordReplyV1::NotCoordinator {
                        coordinator: self.contact(now),
                    }
                };
                let _ = reply.send(answer);
            }
            Input::Status {
                contributors,
                requesters,
                reply,
            } => {
                let answer = if self.acting && requesters {
                    CoordReplyV1::StatusV3 {
                        report: self.status(now),
                        contributors: self.credit.top(),
                        requesters: self.schedule.requester_views(now, STATUS_REQUESTERS_MAX),
                    }
                } else if self.acting && contributors {
                    CoordReplyV1::StatusV2 {
                        report: self.status(now),
                        contributors: self.credit.top(),
                    }
                } else if self.acting {
                    CoordReplyV1::Status(self.status(now))
                } else {
                    CoordReplyV1::NotCoordinator {
                        coordinator: self.contact(now),
                    }
                };
                let _ = reply.send(answer);
            }
            Input::RestoredChecked {
                build_key,
                attestations,
            } => self.restored_checked(build_key, attestations),
            Input::Advert { worker, advert } => self.heard_advert(worker, *advert, now),
            Input::Members { reply } => {
                // The acting coordinator first: a worker that advertises to
                // only some members must reach it.
                let mut set = self.election.set(now);
                if let Some(at) = self.election.leader(now).and_then(|l| set.iter().position(|p| *p == l)) {
                    set[..=at].rotate_right(1);
                }
                let members = set
                    .into_iter()
                    .map(|peer| {
                        let addresses = if peer == self.me {
                            self.addresses.clone()
                        } else {
                            self.election.addresses(&peer)
                        };
                        (peer, addresses)
                    })
                    .collect();
                let _ = reply.send(members);
            }
            Input::Local { reply } => {
                let _ = reply.send(self.local(now));
            }
            Input::Watch {
                build_key,
                events,
                reply,
            } => {
                let answer = self.watch(build_key, events, now);
                let _ = reply.send(answer);
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
            Input::Sync { after, version, reply } => {
                let _ = reply.send(self.sync_page(after, version));
            }
            Input::Synced { from, jobs, done } => self.synced(from, jobs, done, now),
            Input::Phases { build_keys, reply } => {
                let phases = build_keys
                    .into_iter()
                    .take(PHASES_MAX)
                    .map(|key| (key, self.phase(&key)))
                    .collect();
                let _ = reply.send(CoordReplyV1::Phases { phases });
            }
            Input::Reconciled { phases } => self.reconciled(phases),
            Input::MayReadOutbox { peer, reply } => {
                let _ = reply.send(self.election.is_candidate(&peer));
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

    /// What a submission finds: another coordinator, a finished build (of
    /// this version or an accepted one) by at least `verify` agreeing
    /// builders, an open job, or nothing yet (a build by fewer builders is
    /// built again by more, see [`Coordinator::built_by_enough`]).
    async fn lookup(&self, job: &JobRequest, accept_versions: Option<VersionRange>, verify: u32, now: u64) -> Lookup {
        let build_key = job.build_key;
        if !self.acting {
            return Lookup::NotCoordinator(self.contact(now));
        }
        if let Some(attestations) = self.built_by_enough(&build_key, self.needed_for(&build_key, verify)) {
            return Lookup::Built(attestations);
        }
        if let Some(range) = accept_versions {
            if let Some(attestations) = self.built_in_range(job, &range).await {
                let needed = attestations
                    .first()
                    .and_then(|a| a.verify().ok())
                    .map_or(verify, |a| self.needed_for(&a.build_key, verify));
                if agreeing_builders(&attestations) >= needed as usize {
                    return Lookup::Built(attestations);
                }
            }
        }
        if self.schedule.job(&build_key).is_some() {
            Lookup::Open
        } else {
            Lookup::New
        }
    }

    /// A submission that opens a job, or joins one, counted against the
    /// requester's bounds: open jobs, and submissions in the last minute.
    fn within_bounds(&mut self, build_key: &Hash, requester: PublicKey, now: u64) -> Lookup {
        if let Some(reason) = self.over_open_jobs(build_key, &requester) {
            return Lookup::Refused(reason);
        }
        if let Err(refusal) = self.submit_rate.take(requester, self.requester_rate_max, now) {
            crate::metrics::Metrics::add(&crate::metrics::METRICS.requests_refused_bound, 1);
            return Lookup::Refused(super::bounds::too_fast(&refusal, self.requester_rate_max));
        }
        if self.schedule.job(build_key).is_some() {
            Lookup::Open
        } else {
            Lookup::New
        }
    }

    /// Why `requester` may not open (or join) `build_key`: it has as many
    /// open jobs as one requester may. Counted as a refusal.
    pub(super) fn over_open_jobs(&self, build_key: &Hash, requester: &PublicKey) -> Option<String> {
        let joined = self
            .schedule
            .job(build_key)
            .is_some_and(|job| job.requesters.iter().any(|r| r.key == *requester));
        let open = self.schedule.open_jobs_of(requester);
        if joined || open < self.requester_jobs_max {
            return None;
        }
        crate::metrics::Metrics::add(&crate::metrics::METRICS.requests_refused_bound, 1);
        Some(super::bounds::too_many_open(open, self.requester_jobs_max))
    }

    /// Adds a watcher of `build_key` (it gets the current phase at once);
    /// a standby names the coordinator to watch instead.
    fn watch(&mut self, build_key: Hash, events: mpsc::Sender<JobPhase>, now: u64) -> Option<Contact> {
        if !self.acting {
            return self.contact(now).or(Some(Contact {
                peer: self.key.public(),
                addresses: vec![],
            }));
        }
        let _ = events.try_send(self.phase(&build_key));
        let watchers = self.watchers.len();
        let list = self.watchers.entry(build_key).or_default();
        list.retain(|w| !w.is_closed());
        if list.len() < WATCHERS_PER_BUILD_MAX && watchers < WATCHED_BUILDS_MAX {
            list.push(events);
        }
        None
    }

    /// A page of the coordinator's open jobs arrived (or the fetch failed).
    /// After the last one, the open jobs this node kept that the coordinator
    /// did not list are reconciled with it, and its outbox is adopted.
    fn synced(&mut self, from: PeerId, jobs: Option<Vec<SyncedJob>>, done: bool, now: u64) {
        let Some(jobs) = jobs else {
            self.syncing = false;
            self.sync_seen.clear();
            self.sync_not_before_ms = now + SYNC_RETRY_MS;
            return;
        };
        for SyncedJob {
            job,
            verify,
            requesters,
        } in jobs
        {
            let build_key = job.build_key;
            // An older coordinator's page (`JobsV2`) names no requesters.
            let requesters = (!requesters.is_empty()).then_some(requesters);
            self.heard_job(job, verify, requesters, from);
            // Only what this node holds open matters for staleness: the
            // set stays as small as its own queue, whatever a peer lists.
            if self.schedule.job(&build_key).is_some() {
                self.sync_seen.insert(build_key);
            }
        }
        if done {
            self.syncing = false;
            self.synced_with = Some(from);
            let seen = std::mem::take(&mut self.sync_seen);
            let stale: Vec<Hash> = self
                .schedule
                .jobs()
                .iter()
                .map(|j| j.request.build_key)
                .filter(|key| !seen.contains(key))
                .collect();
            info!(coordinator = %from, jobs = self.schedule.open_jobs(), stale = stale.len(), "caught up with the coordinator's open jobs");
            self.reconcile(from, stale);
        }
    }
}
