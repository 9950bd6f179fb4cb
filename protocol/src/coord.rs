//! The coordinator protocol (`/kiln/coord/1`): what requesters and
//! `kiln status` ask the coordinator, and its answers. One request per
//! stream, written as one frame of at most [`COORD_FRAME_BYTES_MAX`]; a
//! watch is answered with a frame per event until the job ends.
//!
//! Every node answers: one that is not the coordinator says who is.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::build::{Attestation, Check};
use crate::hash::Hash;
use crate::messages::{JobRequest, WorkerAdvert};
use crate::sign::{PublicKey, Signable, Signed};
use crate::system::VersionRange;

/// Largest coordinator-protocol frame (a status report is the big one).
pub const COORD_FRAME_BYTES_MAX: usize = 1 << 20;
/// Most queued or running jobs one status report lists.
pub const STATUS_JOBS_MAX: usize = 256;
/// Most workers one status report lists.
pub const STATUS_WORKERS_MAX: usize = 256;
/// Most recently ended builds one status report lists.
pub const STATUS_RECENT_MAX: usize = 32;
/// Most attestations one answer carries.
pub const ATTESTATIONS_MAX: usize = 16;
/// Most build keys one `PhasesV1` asks about.
pub const PHASES_MAX: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoordRequest {
    /// Queue this job, or join the identical one already queued or running.
    /// An existing build of the same recipe name, options and requirements
    /// whose version lies in `accept_versions` answers it too.
    SubmitV1 {
        job: Box<JobRequest>,
        accept_versions: Option<VersionRange>,
    },
    /// Who works, what waits, what ended recently.
    StatusV1,
    /// Where this build stands now, then each change until it ends.
    WatchV1 { build_key: Hash },
    /// The open jobs this node knows with build keys after `after`, a page
    /// at a time: how a node that may take over catches up with the
    /// coordinator after it starts (gossip carries only what is new).
    SyncV1 { after: Option<Hash> },
    /// The outbox messages this node keeps with outbox keys after `after`,
    /// a page at a time, delivered or not: how a node that may take over
    /// learns of mail for jobs that ended before it started, and which of
    /// it was sent already.
    MailSyncV1 { after: Option<Hash> },
    /// Where each of these builds stands (at most [`PHASES_MAX`]): how a
    /// node that may take over reconciles the open jobs it kept with the
    /// coordinator's, after its catch-up.
    PhasesV1 { build_keys: Vec<Hash> },
    /// A worker saying what it is and what it runs, sent to each member of
    /// the coordination set directly (the stream's peer is the worker):
    /// when it changes, and as a refresh (see `WorkerAdvert`).
    AdvertV1 { advert: Box<WorkerAdvert> },
    /// `StatusV1` and the top contributors: answered `StatusV2`. (A new
    /// request, so `StatusV1`'s answer keeps its bytes for older peers.)
    StatusV2,
    /// `SubmitV1`, with how many builders with distinct keys must agree on
    /// the artifact (1 to [`crate::build::VERIFY_MAX`]). A merged request
    /// raises the open job's count to the larger of the two.
    SubmitV2 {
        job: Box<JobRequest>,
        accept_versions: Option<VersionRange>,
        verify: u32,
    },
    /// `SyncV1`, answered `JobsV2`: each job with its builders needed.
    SyncV2 { after: Option<Hash> },
    /// How the builds of this recipe (by name, every version) were
    /// checked: answered `RecipeChecks` (`kiln recipe check`).
    RecipeChecksV1 { recipe_name: String },
    /// `SubmitV2`, signed by the requester's own key (kept in its data
    /// dir): the coordinator groups work by that key (fair share, bounds)
    /// and takes a cancel only from it.
    SubmitV3 { submission: Box<Signed<Submission>> },
    /// Take the signer off this build's requesters (`kiln cancel`):
    /// answered `Cancelled`, or `Refused` when the signer did not ask for it.
    CancelV1 { cancellation: Signed<Cancellation> },
    /// `StatusV2` and the queue per requester: answered `StatusV3`.
    StatusV3,
    /// `SyncV2`, answered `JobsV3`: each job with its requesters too.
    SyncV3 { after: Option<Hash> },
}

/// How a requester orders its own jobs (`kiln request --priority`): only
/// among its own, never ahead of another requester's turn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
}

impl Priority {
    pub fn name(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
        }
    }
}

/// A request for a build, signed by the requester's key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submission {
    pub job: JobRequest,
    pub accept_versions: Option<VersionRange>,
    /// Builders that must agree (as in `SubmitV2`).
    pub verify: u32,
    pub priority: Priority,
    /// The key of the peer that sends it: taken only on a stream from that
    /// peer, so nobody else can replay it.
    pub sender: PublicKey,
}

impl Signable for Submission {
    const DOMAIN: &'static str = "kiln 2026 submission v1";
}

/// A requester taking back its request for one build.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancellation {
    pub build_key: Hash,
    /// As in [`Submission::sender`].
    pub sender: PublicKey,
}

impl Signable for Cancellation {
    const DOMAIN: &'static str = "kiln 2026 cancellation v1";
}

/// What a cancel did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CancelOutcome {
    /// Nobody else wanted it: dropped from the queue.
    Dropped,
    /// Nobody else wanted it: its running build on this worker is stopped.
    Stopped { worker: PublicKey },
    /// Other requesters still want it: it goes on, without this one (and
    /// without mail to its addresses).
    StillWanted { requesters: u32 },
}

/// Most requesters one job keeps (merged requests beyond are refused).
pub const REQUESTERS_PER_JOB_MAX: usize = 16;

/// One requester of an open job, as the coordinator keeps and gossips it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequesterShare {
    pub key: PublicKey,
    pub priority: Priority,
    /// Which of the job's addresses (indices into `JobRequest::emails`)
    /// this requester gave.
    pub emails: Vec<u8>,
}

/// Requesters listed in a status report.
pub const STATUS_REQUESTERS_MAX: usize = 64;

/// One requester's part of the farm, for `kiln status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequesterView {
    pub requester: PublicKey,
    pub queued: u32,
    pub running: u32,
    /// How long its oldest queued job has waited.
    pub oldest_wait_ms: u64,
    /// Its share of the busy workers over the last hour, in thousandths.
    pub share_permille: u32,
}

/// Longest recipe name asked about (a recipe's own limit).
pub const RECIPE_NAME_BYTES_MAX: usize = 128;

/// How the settled builds of one recipe were checked, as the coordinator
/// recorded them: how often independent builders agreed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipeChecks {
    pub recipe_name: String,
    /// Settled by agreeing builders, none disagreeing.
    pub agreed: u32,
    /// Settled by agreeing builders after at least one disagreed.
    pub agreed_after_disagreement: u32,
    /// Builders never reached the count needed.
    pub not_reproducible: u32,
    /// Built by one worker, not checked (`--verify 1`, or trusted for
    /// its streak under `auto`).
    pub unchecked: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoordReply {
    V1(CoordReplyV1),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoordReplyV1 {
    /// Already built: its attestations (the artifact is fetchable by hash).
    Built {
        attestations: Vec<Signed<Attestation>>,
    },
    /// Durably queued (`merged`: joined an identical queued or running job).
    Accepted {
        build_key: Hash,
        merged: bool,
        phase: JobPhase,
    },
    /// This node is not the coordinator; the coordinator it knows of, if any.
    NotCoordinator {
        coordinator: Option<Contact>,
    },
    /// The request cannot be taken, in words for the requester.
    Refused {
        reason: String,
    },
    Status(StatusReport),
    /// Where a watched build stands.
    Event {
        build_key: Hash,
        phase: JobPhase,
    },
    /// A page of open jobs in build-key order; more follow `next` if set.
    Jobs {
        jobs: Vec<JobRequest>,
        next: Option<Hash>,
    },
    /// A page of outbox messages in outbox-key order; more follow `next`.
    Mail {
        messages: Vec<MailMessage>,
        next: Option<Hash>,
    },
    /// Where the builds asked about stand, in the order asked.
    Phases {
        phases: Vec<(Hash, JobPhase)>,
    },
    /// An advert was taken.
    Noted,
    /// The status, and the workers that gave the most build time, most
    /// first (at most [`STATUS_CONTRIBUTORS_MAX`]), from the attestations
    /// of the builds this coordinator settled.
    StatusV2 {
        report: StatusReport,
        contributors: Vec<ContributorView>,
    },
    /// A page of open jobs (`SyncV2`), each with its builders needed.
    JobsV2 {
        jobs: Vec<(JobRequest, u32)>,
        next: Option<Hash>,
    },
    /// How one recipe's builds were checked (`RecipeChecksV1`).
    RecipeChecks(RecipeChecks),
    /// What a `CancelV1` did.
    Cancelled {
        build_key: Hash,
        outcome: CancelOutcome,
    },
    /// `StatusV2` and the queue per requester (at most
    /// [`STATUS_REQUESTERS_MAX`], most queued first).
    StatusV3 {
        report: StatusReport,
        contributors: Vec<ContributorView>,
        requesters: Vec<RequesterView>,
    },
    /// A page of open jobs (`SyncV3`), each with its builders needed and
    /// its requesters.
    JobsV3 {
        jobs: Vec<SyncedJob>,
        next: Option<Hash>,
    },
}

/// One open job in a `JobsV3` page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncedJob {
    pub job: JobRequest,
    pub verify: u32,
    pub requesters: Vec<RequesterShare>,
}

/// One message of a coordinator's outbox, as a standby adopts it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailMessage {
    /// The outbox key (one message per address and settlement).
    pub key: Hash,
    pub build_key: Hash,
    pub to: String,
    pub subject: String,
    pub body: String,
    /// Sent already: the standby must not send it again.
    pub delivered: bool,
}

/// How to reach a peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    pub peer: PublicKey,
    pub addresses: Vec<String>,
}

/// Where a build stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobPhase {
    /// Waiting for a worker; why, when no worker can take it now.
    Queued { waiting_because: Option<String> },
    /// Leased to a worker.
    Assigned { worker: PublicKey, attempt: u32 },
    /// The latest lines of the running build's log.
    Log { tail: String },
    /// Built; the coordinator is copying the artifact to a second peer.
    Replicating { artifact: Hash },
    /// Built and held by at least two peers.
    Done { attestation: Signed<Attestation> },
    /// Given up.
    Failed {
        reason: String,
        log: Option<Hash>,
        attempts: u32,
    },
    /// The coordinator knows nothing of this build key.
    Unknown,
    /// Built, checked by independent builders (`--verify N`, N > 1), and
    /// held by at least two peers.
    Checked {
        attestation: Signed<Attestation>,
        check: Check,
    },
    /// No artifact reached `needed` agreeing builders within the builds
    /// allowed: every build, side by side.
    NotReproducible {
        needed: u32,
        attestations: Vec<Signed<Attestation>>,
    },
    /// Built by one worker alone, trusted for its `streak` of results that
    /// agreed with independent builds (`--verify auto`), not re-checked,
    /// and held by at least two peers.
    Trusted {
        attestation: Signed<Attestation>,
        streak: u32,
    },
    /// Every requester took its request back (`kiln cancel`).
    Cancelled,
}

impl JobPhase {
    /// Done or failed: nothing more will happen.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            JobPhase::Done { .. }
                | JobPhase::Failed { .. }
                | JobPhase::Unknown
                | JobPhase::Checked { .. }
                | JobPhase::NotReproducible { .. }
                | JobPhase::Trusted { .. }
                | JobPhase::Cancelled
        )
    }

    /// One word for tables and JSON.
    pub fn name(&self) -> &'static str {
        match self {
            JobPhase::Queued { .. } => "queued",
            JobPhase::Assigned { .. } => "building",
            JobPhase::Log { .. } => "building",
            JobPhase::Replicating { .. } => "replicating",
            JobPhase::Done { .. } => "done",
            JobPhase::Failed { .. } => "failed",
            JobPhase::Unknown => "unknown",
            JobPhase::Checked { .. } => "done",
            JobPhase::NotReproducible { .. } => "not reproducible",
            JobPhase::Trusted { .. } => "done",
            JobPhase::Cancelled => "cancelled",
        }
    }
}

/// The coordinator's view of the farm.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub coordinator: PublicKey,
    pub pinned: bool,
    pub workers: Vec<WorkerView>,
    /// Open jobs, oldest first (at most [`STATUS_JOBS_MAX`] of `jobs_total`).
    pub jobs: Vec<JobView>,
    pub jobs_total: u64,
    /// Recently ended builds, newest first.
    pub recent: Vec<JobView>,
    /// The coordinator's outbox.
    pub mail: MailView,
}

/// Contributors listed in a status report.
pub const STATUS_CONTRIBUTORS_MAX: usize = 10;

/// What one worker gave, as the coordinator's settled builds show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContributorView {
    pub worker: PublicKey,
    pub builds: u64,
    /// Attested build time: each attestation's end less its start.
    pub build_ms: u64,
}

/// How the coordinator's mail stands.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailView {
    /// Messages not yet delivered.
    pub pending: u64,
    pub delivered: u64,
    /// Why the last delivery failed, if it did (no credentials in it).
    pub last_error: Option<String>,
    /// Where the mail goes, in words: the SMTP server (no credentials),
    /// or the folder of `.eml` files a node without `--smtp` writes.
    pub route: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerView {
    pub worker: PublicKey,
    /// One line: os, arch, cpus, memory, tools.
    pub system: String,
    pub running_jobs: u32,
    pub max_jobs: u32,
    pub waiting_because: Option<String>,
    pub seen_ms_ago: u64,
    /// The builds it runs or was given (build keys), at most a few.
    pub jobs: Vec<Hash>,
}

/// Build keys listed per worker in a status report.
pub const STATUS_WORKER_JOBS_MAX: usize = 8;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobView {
    pub build_key: Hash,
    pub recipe_name: String,
    pub recipe_version: String,
    pub options: BTreeMap<String, String>,
    pub phase: JobPhase,
    pub requesters: u32,
    pub failed_attempts: u32,
    pub requested_at_ms: u64,
}
