//! The coordinator role, and the standby every node that may coordinate
//! runs.
//!
//! Every such node hears the jobs, assignments, outcomes and settlements on
//! gossip and keeps the open jobs in its own durable queue (the `Queue`
//! record table), so whichever node the election picks next starts from the
//! same pending set. The acting coordinator also:
//! - answers `/kiln/coord/1` (submissions, status, watches); other nodes
//!   answer with the coordinator they know of;
//! - holds each job's inputs (recipe and source) before acknowledging it;
//! - matches queued jobs to workers ([`schedule`]) and leases them over
//!   `/kiln/work/1`, gossiping each assignment;
//! - copies each built artifact to itself before settling it (two holders),
//!   records the result (`Results` table, attestations, a DHT record under
//!   the build key) and gossips the settlement.
//!
//! Where each part lives:
//! - `task`: the one task that owns the coordinator's state (this file
//!   defines it), its tick and its inputs;
//! - `server`: the `/kiln/coord/1` stream server, one task per stream;
//! - `heard`: what gossip changes (jobs, adverts, outcomes, settlements);
//! - `jobs`: submitting, assigning and settling a job;
//! - `results`: the durable queue and results, and what status shows;
//! - `sync`: a standby's catch-up with the coordinator's open jobs;
//! - `bounds`: what one requester may ask (open jobs, submissions a
//!   minute), checked before a job's inputs are fetched;
//! - `held`: settlements from a peer not yet known to coordinate, held
//!   until its heartbeat says whether it does;
//! - `effects`: the I/O a decision leads to (holding inputs, offers,
//!   replication, releasing a replicated artifact);
//! - [`schedule`] and [`election`]: the decisions, with no I/O.
//!
//! Not for: the network itself (`crate::net`), delivering mail
//! (`crate::mailer`), or building (`crate::worker`).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use kiln_protocol::coord::{Contact, CoordReplyV1, JobPhase, JobView, MailView, Priority, SyncedJob};
use kiln_protocol::messages::{Gossip, JobRequest, WorkerAdvert};
use kiln_protocol::system::VersionRange;
use kiln_protocol::{Attestation, Hash, PublicKey, SecretKey, Signed};
use kiln_store::Store;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::mailer::MailHandle;
use crate::net::{NetClient, COORD_PROTOCOL};
use crate::shutdown::Shutdown;
use election::Election;
use schedule::Schedule;

mod bounds;
mod checks;
mod credit;
mod effects;
pub mod election;
mod heard;
mod held;
mod jobs;
mod results;
pub mod schedule;
mod server;
mod streaks;
mod sync;
mod task;
pub mod verification;

pub use bounds::{REQUESTER_INPUT_BYTES_DEFAULT, REQUESTER_JOBS_DEFAULT, REQUESTER_RATE_DEFAULT};
pub use effects::hold_inputs;
use effects::*;
use server::{check_job_heard, Server};
pub use streaks::StreakView;
use sync::SYNC_RETRY_MS;

/// Cancelled jobs remembered (see `Coordinator::cancelled`).
const CANCELLED_KEPT: usize = 4096;

/// Inputs waiting for the coordinator task.
const INPUTS_MAX: usize = 1024;

/// Whether this node may coordinate, and whom it takes as coordinator.
#[derive(Clone, Debug, Default)]
pub struct CoordinatorOptions {
    /// May be elected (not `--no-coordinator`).
    pub eligible: bool,
    /// Pinned with `--coordinator`.
    pub pinned: bool,
    /// Sends mail over SMTP (`--smtp`); set by the node from its mail
    /// options when it starts.
    pub delivers_mail: bool,
    /// Most nodes in the coordination set (`--coordination-set`); `None`:
    /// every eligible node is in it.
    pub set_size: Option<usize>,
    /// The only peers that may coordinate (`--trust-coordinator`); `None`:
    /// any peer that may be elected.
    pub trusted: Option<BTreeSet<PeerId>>,
    /// The streak from which a worker builds an `auto` job alone
    /// (`--trusted-streak`); `None`: [`verification::TRUSTED_STREAK`].
    pub trusted_streak: Option<u32>,
    /// Open jobs one requester key may have (`--max-requester-jobs`);
    /// `None`: [`bounds::REQUESTER_JOBS_DEFAULT`].
    pub requester_jobs_max: Option<u32>,
    /// Jobs one requester key (or, unsigned, one peer) may submit in a
    /// minute (`--max-requester-rate`); `None`:
    /// [`bounds::REQUESTER_RATE_DEFAULT`].
    pub requester_rate_max: Option<u32>,
    /// Bytes of inputs (recipes and sources) the open jobs one requester
    /// owns may take (`--max-requester-inputs`); `None`:
    /// [`bounds::REQUESTER_INPUT_BYTES_DEFAULT`].
    pub requester_input_bytes_max: Option<u64>,
}

/// What the coordinator task is told.
enum Input {
    Gossip {
        signer: PublicKey,
        message: Box<Gossip>,
    },
    Addresses(Vec<Multiaddr>),
    /// Whether this node is behind NAT (peers cannot dial it).
    BehindNat(bool),
    Lookup {
        job: Box<JobRequest>,
        accept_versions: Option<VersionRange>,
        verify: u32,
        /// Who asks: the submission's signer, or the stream's peer.
        requester: PublicKey,
        reply: oneshot::Sender<Lookup>,
    },
    Submit {
        job: Box<JobRequest>,
        verify: u32,
        requester: (PublicKey, Priority),
        /// What its inputs take, when this submission fetched them.
        input_bytes: u64,
        reply: oneshot::Sender<CoordReplyV1>,
    },
    /// A requester takes its request for this build back.
    Cancel {
        requester: PublicKey,
        build_key: Hash,
        reply: oneshot::Sender<CoordReplyV1>,
    },
    RecipeChecks {
        recipe_name: String,
        reply: oneshot::Sender<CoordReplyV1>,
    },
    Status {
        /// With the top contributors (`StatusV2`).
        contributors: bool,
        /// With the queue per requester (`StatusV3`).
        requesters: bool,
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
        /// 1, 2 or 3: which `SyncV*` asks (and so which page it gets).
        version: u8,
        reply: oneshot::Sender<CoordReplyV1>,
    },
    /// A page of the coordinator's open jobs, fetched by this standby;
    /// `done` with the last page, `None` if the fetch failed.
    Synced {
        from: PeerId,
        jobs: Option<Vec<SyncedJob>>,
        done: bool,
    },
    /// A standby asks where these builds stand.
    Phases {
        build_keys: Vec<Hash>,
        reply: oneshot::Sender<CoordReplyV1>,
    },
    /// Where the coordinator says this standby's stale open jobs stand.
    Reconciled {
        phases: Vec<(Hash, JobPhase)>,
    },
    /// May `peer` read this node's outbox (a member of the coordination
    /// set catching up)?
    MayReadOutbox {
        peer: PeerId,
        reply: oneshot::Sender<bool>,
    },
    /// What the DHT holds for an open job restored from disk: its
    /// attestations if it was built elsewhere while this node was down.
    RestoredChecked {
        build_key: Hash,
        attestations: Vec<Signed<Attestation>>,
    },
    /// What this node itself holds, for `kiln status --node`.
    Local {
        reply: oneshot::Sender<LocalView>,
    },
    /// A worker's advert, sent to this node directly (or by this node's
    /// own worker).
    Advert {
        worker: PublicKey,
        advert: Box<WorkerAdvert>,
    },
    /// The coordination set as this node hears it, and how to reach each
    /// member: where this node's worker sends its adverts.
    Members {
        reply: oneshot::Sender<Vec<(PeerId, Vec<String>)>>,
    },
}

/// This node's own view of coordination, whether or not it acts: what
/// `kiln status --node` shows, and how a test compares the open jobs of
/// every node that may coordinate.
#[derive(Clone, Debug)]
pub struct LocalView {
    pub acting: bool,
    /// In the coordination set (else a reserve, if eligible).
    pub member: bool,
    /// The coordination set as this node hears it (itself included if a
    /// member).
    pub set: Vec<PeerId>,
    /// Heartbeats this node has sent since it started.
    pub heartbeats_sent: u64,
    /// May be elected (or is pinned).
    pub eligible: bool,
    pub pinned: bool,
    /// The coordinator this node takes now, if it knows one.
    pub coordinator: Option<PeerId>,
    /// The open jobs in this node's queue, oldest first (at most
    /// [`kiln_protocol::coord::STATUS_JOBS_MAX`] of `jobs_total`).
    pub jobs: Vec<JobView>,
    pub jobs_total: u64,
    /// This node's outbox, if it keeps one.
    pub mail: Option<MailView>,
    /// The longest streaks this node keeps (`--verify auto`).
    pub streaks: Vec<StreakView>,
}

/// What a submission finds.
enum Lookup {
    NotCoordinator(Option<Contact>),
    Built(Vec<Signed<Attestation>>),
    Open,
    New,
    /// Over one of the requester's bounds: why, in words.
    Refused(String),
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

    /// Behind NAT, this node does not step into the coordination set
    /// (workers could not reach it), unless pinned.
    pub fn behind_nat(&self, behind: bool) {
        if self.inputs.try_send(Input::BehindNat(behind)).is_err() {
            warn!("coordinator input queue full; a reachability change was dropped");
        }
    }

    /// What `kiln status` would get from this node: the farm's status
    /// (`StatusV3`, with the top contributors and the queue per
    /// requester) if it coordinates, else who
    /// does. `None` if the task has stopped.
    pub async fn status(&self) -> Option<CoordReplyV1> {
        let (reply, answer) = oneshot::channel();
        self.inputs
            .send(Input::Status {
                contributors: true,
                requesters: true,
                reply,
            })
            .await
            .ok()?;
        answer.await.ok()
    }

    /// This node's own worker's advert, taken as if sent to it.
    pub fn advert(&self, worker: PublicKey, advert: WorkerAdvert) {
        if self
            .inputs
            .try_send(Input::Advert {
                worker,
                advert: Box::new(advert),
            })
            .is_err()
        {
            warn!("coordinator input queue full; this node's own worker advert was dropped");
        }
    }

    /// The members of the coordination set this node hears (itself
    /// included if it is one), with their addresses; `None` if the task
    /// has stopped.
    pub async fn members(&self) -> Option<Vec<(PeerId, Vec<String>)>> {
        let (reply, answer) = oneshot::channel();
        self.inputs.send(Input::Members { reply }).await.ok()?;
        answer.await.ok()
    }

    /// This node's own view; `None` if the task has stopped.
    pub async fn local(&self) -> Option<LocalView> {
        let (reply, answer) = oneshot::channel();
        self.inputs.send(Input::Local { reply }).await.ok()?;
        answer.await.ok()
    }
}

/// Starts the coordinator (or standby) task and its protocol server; the
/// handle, the server's task and the coordinator's task. On `shutdown` the
/// coordinator finishes the input or tick it is on, then returns.
pub fn spawn(
    net: NetClient,
    store: Store,
    key: SecretKey,
    options: CoordinatorOptions,
    mail: Option<(MailHandle, Arc<AtomicBool>)>,
    shutdown: Shutdown,
) -> (CoordHandle, tokio::task::JoinHandle<()>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(INPUTS_MAX);
    let handle = CoordHandle { inputs: tx.clone() };
    let incoming = net.stream_control().accept(COORD_PROTOCOL);
    let server = {
        let server = Server {
            net: net.clone(),
            store: store.clone(),
            inputs: tx.clone(),
            watch_permits: Arc::new(tokio::sync::Semaphore::new(server::WATCH_STREAMS_MAX)),
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
    let task = tokio::spawn(coordinator.run(rx, shutdown));
    (handle, server, task)
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
    /// The top contributors, from the settled builds.
    credit: credit::Credit,
    /// How often independent builders agreed, per recipe name.
    checks: checks::Checks,
    /// Each worker's streak of results agreed with (`--verify auto`).
    streaks: verification::Streaks<PublicKey, Hash>,
    /// The streak from which a worker builds an `auto` job alone.
    trusted_streak: u32,
    /// Submissions per requester over the last minute, and the bounds.
    submit_rate: bounds::SubmitRate,
    requester_jobs_max: u32,
    requester_rate_max: u32,
    /// Jobs every requester cancelled lately (at most [`CANCELLED_KEPT`]):
    /// asked where one stands, the answer is `Cancelled`, not `Unknown`
    /// (which a standby that missed the withdrawal would submit again).
    cancelled: VecDeque<Hash>,
    requester_input_bytes_max: u64,
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
    /// Settlements from peers not yet known to coordinate.
    held: held::Held,
    /// Build keys the coordinator listed as open during this catch-up.
    sync_seen: HashSet<Hash>,
    /// Stale open jobs whose phase this standby asked the coordinator for;
    /// a job heard of again meanwhile is taken off (it is open there).
    reconciling: HashSet<Hash>,
    /// In the coordination set, as of the last step.
    member: bool,
    heartbeats_sent: u64,
}
