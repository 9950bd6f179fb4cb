//! Messages peers send each other. Each is a versioned enum: a new version
//! is a new variant, so an old peer refuses what it cannot read instead of
//! misreading it. Golden byte tests at the bottom freeze every encoding.
//!
//! - Gossip (jobs, workers, coordinator heartbeats, results) travels signed
//!   by its sender, at most [`GOSSIP_BYTES_MAX`] bytes.
//! - Stream frames (blob ranges) are a 4-byte little-endian length followed
//!   by that many bytes of bincode, at most [`FRAME_BYTES_MAX`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::build::{Attestation, Check};
use crate::hash::Hash;
use crate::recipe::PublisherSignature;
use crate::sign::{PublicKey, SecretKey, SignError, Signable, Signed};
use crate::system::{Requirements, SystemInfo};
use crate::wire::{self, WireError};

/// Largest gossip message (gossipsub's default maximum transmit size).
pub const GOSSIP_BYTES_MAX: usize = 64 * 1024;
/// Largest stream frame header (the data after a `BlobReply::Data` is raw).
pub const FRAME_BYTES_MAX: usize = 16 * 1024;
/// Most email addresses one request may carry.
pub const EMAILS_MAX: usize = 16;
/// Most addresses one job's requesters carry together (indices fit a byte).
pub const REQUESTER_EMAILS_MAX: usize = crate::coord::REQUESTERS_PER_JOB_MAX * EMAILS_MAX;
/// Largest range one blob request may ask for, and the largest a store
/// reads at once (`kiln_store::RANGE_BYTES_MAX` is this constant): sixteen
/// of the 1 MiB ranges a fetch asks for. A provider refuses a longer one
/// with `BadRange`.
pub const RANGE_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// Longest reason text carried in a message.
pub const REASON_BYTES_MAX: usize = 4096;
/// Most running builds a worker advert lists.
pub const RUNNING_JOBS_MAX: usize = 64;

/// Gossip topic names.
pub mod topics {
    pub const JOBS: &str = "kiln/jobs/1";
    /// No longer subscribed to or sent on: adverts go to the coordination
    /// set directly (`CoordRequest::AdvertV1`). Kept so the name is not
    /// reused for something else.
    pub const WORKERS: &str = "kiln/workers/1";
    pub const COORDINATOR: &str = "kiln/coordinator/1";
    pub const RESULTS: &str = "kiln/results/1";
}

/// A build someone asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRequest {
    pub build_key: Hash,
    pub recipe_id: Hash,
    pub recipe_name: String,
    pub recipe_version: String,
    pub publisher: Option<PublisherSignature>,
    pub options: BTreeMap<String, String>,
    pub requirements: Requirements,
    pub emails: Vec<String>,
    pub requested_at_ms: u64,
}

impl JobRequest {
    /// The recipe this job names, from its canonical bytes, checked against
    /// the job: the bytes are the recipe `recipe_id` names, the job's
    /// options are the recipe's options resolved, and the build key is
    /// theirs. The coordinator checks this before it holds a job's inputs,
    /// and a worker before it builds.
    pub fn check_recipe(&self, canonical: &[u8]) -> Result<crate::recipe::Recipe, String> {
        let recipe = crate::recipe::Recipe::from_canonical_bytes(canonical)
            .map_err(|e| format!("recipe {} is not valid: {e}", self.recipe_id))?;
        if recipe.id() != self.recipe_id {
            return Err(format!("the recipe's bytes are not recipe {}", self.recipe_id));
        }
        let chosen: Vec<(String, String)> = self.options.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let resolved = recipe.resolve_options(&chosen).map_err(|e| e.to_string())?;
        if resolved != self.options
            || crate::build_key(&self.recipe_id, &resolved, &self.requirements) != self.build_key
        {
            return Err("the job's build key does not match its recipe, options and requirements".into());
        }
        Ok(recipe)
    }
}

/// A worker saying what it is and how much it can take. Sent to each
/// member of the coordination set directly (`CoordRequest::AdvertV1`):
/// at once when anything but `sequence` changes, then as a refresh, often
/// while it builds (the lease heartbeat) and rarely while idle. (The gossip
/// form, `GossipV1::Worker`, keeps its place in the wire enum but is no
/// longer sent: gossip would bring every advert to every node.)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerAdvert {
    pub system: SystemInfo,
    pub max_jobs: u32,
    pub running_jobs: u32,
    /// Why it takes no work right now (`idle-only: load 3.2`), if it doesn't.
    pub waiting_because: Option<String>,
    pub sequence: u64,
    /// Build keys it is building now: its lease heartbeat.
    pub running: Vec<Hash>,
}

/// How often a worker that runs builds sends its advert to each member of
/// the coordination set: its lease heartbeat.
pub const ADVERT_BUSY_MS: u64 = 2_000;
/// How often an idle worker refreshes its advert (it also sends one at
/// once whenever it changes, or the set does).
pub const ADVERT_IDLE_MS: u64 = 10_000;

impl WorkerAdvert {
    /// Whether its lists and reason are within bounds: what a coordinator
    /// checks before it takes an advert from the network.
    pub fn check(&self) -> Result<(), &'static str> {
        if self
            .waiting_because
            .as_ref()
            .is_some_and(|r| r.len() > REASON_BYTES_MAX)
        {
            return Err("reason too long");
        }
        if self.running.len() > RUNNING_JOBS_MAX {
            return Err("too many running jobs");
        }
        Ok(())
    }
}

/// A member of the coordination set saying it is alive: each member sends
/// one each second, and the one acting says so.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordinatorHeartbeat {
    /// Started with `--coordinator`: preferred over elected nodes.
    pub pinned: bool,
    /// Playing the coordinator role now.
    pub acting: bool,
    pub queued_jobs: u32,
    pub running_jobs: u32,
    /// Where requesters reach it (at most [`ADDRESSES_MAX`]).
    pub addresses: Vec<String>,
    pub sent_at_ms: u64,
    /// Sends mail through an SMTP server (`--smtp`): preferred over a node
    /// that would only write `.eml` files nobody reads.
    pub delivers_mail: bool,
}

/// Most addresses a heartbeat carries, and the longest of them.
pub const ADDRESSES_MAX: usize = 8;
pub const ADDRESS_BYTES_MAX: usize = 256;
/// Longest log tail carried in a progress message or a job event.
pub const LOG_TAIL_BYTES_MAX: usize = 4096;

/// A coordinator telling everyone a job went to a worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assigned {
    pub build_key: Hash,
    pub worker: PublicKey,
    pub attempt: u32,
}

/// How a job ended, once and for all, as its coordinator decided.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Settlement {
    /// Built, and the artifact is held by `holders` peers.
    Done {
        attestation: Signed<Attestation>,
        holders: u32,
    },
    /// Given up after `attempts` failed builds.
    Failed {
        build_key: Hash,
        reason: String,
        log: Option<Hash>,
        attempts: u32,
    },
    /// Built by `check.needed` (or more) agreeing builders, and held by
    /// `holders` peers; `attestation` is the one replicated.
    Checked {
        attestation: Signed<Attestation>,
        holders: u32,
        check: Check,
    },
    /// No artifact reached `needed` agreeing builders: every build.
    NotReproducible {
        build_key: Hash,
        needed: u32,
        attestations: Vec<Signed<Attestation>>,
    },
    /// `--verify auto`: built by one worker whose `streak` of results
    /// agreed with independent builds let it build alone, not re-checked;
    /// held by `holders` peers.
    Trusted {
        attestation: Signed<Attestation>,
        holders: u32,
        streak: u32,
    },
}

impl Settlement {
    pub fn build_key(&self) -> Option<Hash> {
        match self {
            Settlement::Done { attestation, .. } => attestation.verify().ok().map(|a| a.build_key),
            Settlement::Failed { build_key, .. } | Settlement::NotReproducible { build_key, .. } => Some(*build_key),
            Settlement::Checked { attestation, .. } | Settlement::Trusted { attestation, .. } => {
                attestation.verify().ok().map(|a| a.build_key)
            }
        }
    }

    /// The attestation of the artifact settled on, for a build that ended
    /// with one.
    pub fn attestation(&self) -> Option<&Signed<Attestation>> {
        match self {
            Settlement::Done { attestation, .. }
            | Settlement::Checked { attestation, .. }
            | Settlement::Trusted { attestation, .. } => Some(attestation),
            Settlement::Failed { .. } | Settlement::NotReproducible { .. } => None,
        }
    }

    /// Every attestation of the artifact settled on: the one for `Done`,
    /// each agreeing builder's for `Checked`, none otherwise.
    pub fn agreed(&self) -> Vec<&Signed<Attestation>> {
        match self {
            Settlement::Done { attestation, .. } | Settlement::Trusted { attestation, .. } => vec![attestation],
            Settlement::Checked { check, .. } => check.agreed.iter().collect(),
            Settlement::Failed { .. } | Settlement::NotReproducible { .. } => Vec::new(),
        }
    }

    /// Attestations of artifacts not settled on: the disagreeing builds.
    pub fn disagreed(&self) -> Vec<&Signed<Attestation>> {
        match self {
            Settlement::Checked { check, .. } => check.disagreed.iter().collect(),
            Settlement::NotReproducible { attestations, .. } => attestations.iter().collect(),
            Settlement::Done { .. } | Settlement::Failed { .. } | Settlement::Trusted { .. } => Vec::new(),
        }
    }

    /// How many peers hold the artifact settled on.
    pub fn holders(&self) -> u32 {
        match self {
            Settlement::Done { holders, .. }
            | Settlement::Checked { holders, .. }
            | Settlement::Trusted { holders, .. } => *holders,
            Settlement::Failed { .. } | Settlement::NotReproducible { .. } => 0,
        }
    }

    /// Where the build stands, for watchers and status.
    pub fn phase(&self) -> crate::coord::JobPhase {
        use crate::coord::JobPhase;
        match self.clone() {
            Settlement::Done { attestation, .. } => JobPhase::Done { attestation },
            Settlement::Checked { attestation, check, .. } => JobPhase::Checked { attestation, check },
            Settlement::Failed {
                reason, log, attempts, ..
            } => JobPhase::Failed { reason, log, attempts },
            Settlement::NotReproducible {
                needed, attestations, ..
            } => JobPhase::NotReproducible { needed, attestations },
            Settlement::Trusted {
                attestation, streak, ..
            } => JobPhase::Trusted { attestation, streak },
        }
    }
}

/// How a build ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BuildOutcome {
    Done {
        attestation: Signed<Attestation>,
    },
    Failed {
        build_key: Hash,
        worker: PublicKey,
        log: Option<Hash>,
        reason: String,
        attempt: u32,
    },
    /// The worker abandoned the build through no fault of the recipe: its
    /// inputs could not be fetched, or it was paused for its owner longer
    /// than the worker's `--max-pause`. Not counted as a failed attempt.
    Aborted {
        build_key: Hash,
        worker: PublicKey,
        reason: String,
        attempt: u32,
    },
}

/// Every gossip message, versioned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Gossip {
    V1(GossipV1),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GossipV1 {
    Job(JobRequest),
    Worker(WorkerAdvert),
    Coordinator(CoordinatorHeartbeat),
    Outcome(BuildOutcome),
    Assigned(Assigned),
    /// A worker's latest log lines for a running build.
    Progress {
        build_key: Hash,
        log_tail: String,
    },
    Settled(Settlement),
    /// The coordinator delivered the outbox message with this key.
    Delivered {
        outbox_key: Hash,
    },
    /// A job that needs `verify` agreeing builders (more than one; a job
    /// that needs one is announced as `Job`, which older peers read).
    JobV2 {
        job: JobRequest,
        verify: u32,
    },
    /// A job with its requesters (who may cancel it, and whose turn it
    /// takes in the fair share), as the coordinator announces it when it
    /// is submitted, merged or cancelled in part. A node takes the list as
    /// it is, replacing the one it kept.
    JobV3 {
        job: JobRequest,
        verify: u32,
        requesters: Vec<crate::coord::RequesterShare>,
    },
    /// Every requester of this open job cancelled it: it is dropped.
    Withdrawn {
        build_key: Hash,
    },
}

impl Signable for Gossip {
    const DOMAIN: &'static str = "kiln 2026 gossip v1";
}

/// Why a gossip message was dropped.
#[derive(Debug, thiserror::Error)]
pub enum GossipError {
    #[error("gossip envelope: {0}")]
    Wire(#[from] WireError),
    #[error("gossip signature: {0}")]
    Signature(#[from] SignError),
    #[error("gossip content: {0}")]
    Invalid(&'static str),
}

/// Signs and encodes a gossip message for publishing.
pub fn encode_gossip(key: &SecretKey, message: &Gossip) -> Result<Vec<u8>, WireError> {
    let bytes = wire::encode(&Signed::sign(key, message))?;
    if bytes.len() > GOSSIP_BYTES_MAX {
        return Err(WireError::TooLarge {
            len: bytes.len(),
            limit: GOSSIP_BYTES_MAX,
        });
    }
    Ok(bytes)
}

/// Decodes, verifies and sanity-checks a received gossip message. Returns
/// the signer, which the caller compares with the peer that sent it.
pub fn decode_gossip(bytes: &[u8]) -> Result<(PublicKey, Gossip), GossipError> {
    let envelope: Signed<Gossip> = wire::decode::<_, GOSSIP_BYTES_MAX>(bytes)?;
    let message = envelope.verify()?;
    check_gossip(&message)?;
    Ok((envelope.signer(), message))
}

fn check_gossip(message: &Gossip) -> Result<(), GossipError> {
    let Gossip::V1(inner) = message;
    match inner {
        GossipV1::Job(job) | GossipV1::JobV2 { job, .. } if job.emails.len() > EMAILS_MAX => {
            Err(GossipError::Invalid("too many email addresses"))
        }
        GossipV1::JobV3 { job, requesters, .. }
            if job.emails.len() > REQUESTER_EMAILS_MAX
                || requesters.len() > crate::coord::REQUESTERS_PER_JOB_MAX
                || requesters.iter().any(|r| {
                    r.emails.len() > EMAILS_MAX || r.emails.iter().any(|i| usize::from(*i) >= job.emails.len())
                }) =>
        {
            Err(GossipError::Invalid("requesters out of range"))
        }
        GossipV1::JobV3 { verify, .. }
            if *verify != crate::build::VERIFY_AUTO && !(1..=crate::build::VERIFY_MAX).contains(verify) =>
        {
            Err(GossipError::Invalid("builders to agree out of range"))
        }
        GossipV1::JobV2 { verify, .. }
            if *verify != crate::build::VERIFY_AUTO && !(2..=crate::build::VERIFY_MAX).contains(verify) =>
        {
            Err(GossipError::Invalid("builders to agree out of range"))
        }
        GossipV1::Settled(Settlement::Checked { attestation, check, .. }) => {
            let key = attestation
                .verify()
                .map_err(|_| GossipError::Invalid("attestation does not verify"))?
                .build_key;
            match check.verify(&key) {
                Ok(_) if check.agreed.contains(attestation) => Ok(()),
                _ => Err(GossipError::Invalid("check does not hold")),
            }
        }
        GossipV1::Settled(Settlement::Trusted { attestation, .. }) => match attestation.verify() {
            Ok(a) if a.worker == attestation.signer() => Ok(()),
            _ => Err(GossipError::Invalid("attestation does not verify")),
        },
        GossipV1::Settled(Settlement::NotReproducible {
            build_key,
            attestations,
            ..
        }) if attestations.len() > crate::build::CHECK_BUILDS_MAX
            || crate::build::verify_all(attestations, build_key).is_err() =>
        {
            Err(GossipError::Invalid("builds do not verify"))
        }
        GossipV1::Worker(w) => w.check().map_err(GossipError::Invalid),
        GossipV1::Outcome(BuildOutcome::Failed { reason, .. } | BuildOutcome::Aborted { reason, .. })
            if reason.len() > REASON_BYTES_MAX =>
        {
            Err(GossipError::Invalid("reason too long"))
        }
        GossipV1::Settled(Settlement::Failed { reason, .. }) if reason.len() > REASON_BYTES_MAX => {
            Err(GossipError::Invalid("reason too long"))
        }
        GossipV1::Progress { log_tail, .. } if log_tail.len() > LOG_TAIL_BYTES_MAX => {
            Err(GossipError::Invalid("log tail too long"))
        }
        GossipV1::Coordinator(h)
            if h.addresses.len() > ADDRESSES_MAX || h.addresses.iter().any(|a| a.len() > ADDRESS_BYTES_MAX) =>
        {
            Err(GossipError::Invalid("too many or too long addresses"))
        }
        _ => Ok(()),
    }
}

/// Longest email address (RFC 5321's path limit).
pub const EMAIL_BYTES_MAX: usize = 254;

/// Checks that `email` looks like a deliverable address (`local@domain.tld`,
/// no spaces or angle brackets); the error says what is wrong with it.
pub fn check_email(email: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{email:?} is not an email address: {why}"));
    if email.len() > EMAIL_BYTES_MAX {
        return bad("longer than 254 bytes");
    }
    if email
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || "<>()[],;:\\\"".contains(c))
    {
        return bad("it contains a space or one of <>()[],;:\\\"");
    }
    let Some((local, domain)) = email.rsplit_once('@') else {
        return bad("it has no @");
    };
    if local.is_empty() || local.contains('@') || local.len() > 64 {
        return bad("the part before the @ must be 1 to 64 characters, with no other @");
    }
    let labels: Vec<&str> = domain.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_alphanumeric() || c == '-')
    };
    if labels.len() < 2 || !labels.iter().all(label_ok) {
        return bad("the domain after the @ must look like example.org");
    }
    Ok(())
}

/// What a fetcher asks a provider for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobRequest {
    /// Bytes `offset..offset+length` of a blob.
    V1 { hash: Hash, offset: u64, length: u64 },
    /// The blob's size and its range hashes (see [`crate::ranges`]).
    RangeHashesV1 { hash: Hash },
}

/// A provider's answer; `Data` is followed by exactly `length` raw bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobReply {
    V1(BlobReplyV1),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobReplyV1 {
    Data {
        blob_bytes: u64,
        length: u64,
    },
    NotFound,
    BadRange {
        blob_bytes: u64,
    },
    Busy {
        retry_after_ms: u32,
    },
    /// Followed by `count` range hashes of 32 bytes each (none for a blob
    /// of one range).
    RangeHashes {
        blob_bytes: u64,
        count: u64,
    },
}

/// A coordinator's request to a worker, over the work stream protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
// One request per stream, read and dropped: the size of the small variant
// costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum WorkRequest {
    /// Build this job; the worker answers at once whether it takes it, and
    /// reports how the build ended over gossip ([`BuildOutcome`]).
    AssignV1 { job: JobRequest, attempt: u32 },
    /// Stop this build: nobody wants it any more (its requesters
    /// cancelled). Taken from the peer that assigned it or a member of the
    /// coordination set; answered `Accepted` once the stop is under way.
    StopV1 { build_key: Hash, reason: String },
}

/// A worker's answer to an assignment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkReply {
    V1(WorkReplyV1),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkReplyV1 {
    Accepted,
    /// Why not, in words a requester can be shown.
    Refused {
        reason: String,
    },
}

/// Encodes a value as one frame: 4-byte little-endian length, then bincode.
pub fn encode_frame<T: Serialize>(value: &T) -> Result<Vec<u8>, WireError> {
    encode_frame_max::<T, FRAME_BYTES_MAX>(value)
}

/// Decodes one frame from the front of `buffer`. `Ok(None)`: more bytes are
/// needed. A length over the limit is an error before anything is read.
pub fn decode_frame<T: serde::de::DeserializeOwned>(buffer: &[u8]) -> Result<Option<(T, usize)>, WireError> {
    decode_frame_max::<T, FRAME_BYTES_MAX>(buffer)
}

/// [`encode_frame`] with a frame body of at most `LIMIT` bytes.
pub fn encode_frame_max<T: Serialize, const LIMIT: usize>(value: &T) -> Result<Vec<u8>, WireError> {
    let body = wire::encode(value)?;
    if body.len() > LIMIT {
        return Err(WireError::TooLarge {
            len: body.len(),
            limit: LIMIT,
        });
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// [`decode_frame`] with a frame body of at most `LIMIT` bytes.
pub fn decode_frame_max<T: serde::de::DeserializeOwned, const LIMIT: usize>(
    buffer: &[u8],
) -> Result<Option<(T, usize)>, WireError> {
    let Some(header) = buffer.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > LIMIT {
        return Err(WireError::TooLarge { len, limit: LIMIT });
    }
    let Some(body) = buffer.get(4..4 + len) else {
        return Ok(None);
    };
    Ok(Some((wire::decode::<T, LIMIT>(body)?, 4 + len)))
}

#[cfg(test)]
pub(crate) mod samples {
    //! One value of every message kind, built from fixed keys, for the
    //! golden and property tests.
    use super::*;
    use crate::system::SystemInfo;

    pub fn key() -> SecretKey {
        SecretKey::from_bytes(&[7; 32])
    }

    pub fn system() -> SystemInfo {
        SystemInfo {
            os: "linux".into(),
            arch: "x86_64".into(),
            endian: "little".into(),
            pointer_width: 64,
            libc: "glibc".into(),
            libc_version: "2.36".into(),
            cpus: 2,
            memory_bytes: 1 << 30,
            features: ["sse2".to_string()].into_iter().collect(),
            tools: [("cc".to_string(), "12.2.0".to_string())].into_iter().collect(),
            labels: BTreeMap::new(),
        }
    }

    pub fn attestation() -> Attestation {
        Attestation {
            build_key: Hash::of(b"key"),
            recipe_id: Hash::of(b"recipe"),
            artifact: Hash::of(b"artifact"),
            artifact_bytes: 8,
            log: Hash::of(b"log"),
            worker: key().public(),
            system_digest: system().digest(),
            started_at_ms: 1_700_000_000_000,
            finished_at_ms: 1_700_000_001_000,
        }
    }

    pub fn gossip() -> Vec<(&'static str, Gossip)> {
        vec![
            ("job", Gossip::V1(GossipV1::Job(first_job()))),
            (
                "worker",
                Gossip::V1(GossipV1::Worker(WorkerAdvert {
                    system: system(),
                    max_jobs: 1,
                    running_jobs: 0,
                    waiting_because: None,
                    sequence: 3,
                    running: vec![Hash::of(b"key")],
                })),
            ),
            (
                "coordinator",
                Gossip::V1(GossipV1::Coordinator(CoordinatorHeartbeat {
                    pinned: true,
                    acting: true,
                    queued_jobs: 5,
                    running_jobs: 1,
                    addresses: vec!["/ip4/127.0.0.1/tcp/4001".into()],
                    sent_at_ms: 1_700_000_000_000,
                    delivers_mail: true,
                })),
            ),
            (
                "done",
                Gossip::V1(GossipV1::Outcome(BuildOutcome::Done {
                    attestation: Signed::sign(&key(), &attestation()),
                })),
            ),
            (
                "failed",
                Gossip::V1(GossipV1::Outcome(BuildOutcome::Failed {
                    build_key: Hash::of(b"key"),
                    worker: key().public(),
                    log: Some(Hash::of(b"log")),
                    reason: "exit status 2".into(),
                    attempt: 1,
                })),
            ),
            (
                "assigned",
                Gossip::V1(GossipV1::Assigned(Assigned {
                    build_key: Hash::of(b"key"),
                    worker: key().public(),
                    attempt: 2,
                })),
            ),
            (
                "progress",
                Gossip::V1(GossipV1::Progress {
                    build_key: Hash::of(b"key"),
                    log_tail: "cc -o hello hello.c".into(),
                }),
            ),
            (
                "settled_done",
                Gossip::V1(GossipV1::Settled(Settlement::Done {
                    attestation: Signed::sign(&key(), &attestation()),
                    holders: 2,
                })),
            ),
            (
                "aborted",
                Gossip::V1(GossipV1::Outcome(BuildOutcome::Aborted {
                    build_key: Hash::of(b"key"),
                    worker: key().public(),
                    reason: "cannot fetch the recipe".into(),
                    attempt: 1,
                })),
            ),
            (
                "delivered",
                Gossip::V1(GossipV1::Delivered {
                    outbox_key: Hash::of(b"outbox"),
                }),
            ),
            (
                "settled_failed",
                Gossip::V1(GossipV1::Settled(Settlement::Failed {
                    build_key: Hash::of(b"key"),
                    reason: "failed on 3 workers".into(),
                    log: None,
                    attempts: 3,
                })),
            ),
            (
                "job_v2",
                Gossip::V1(GossipV1::JobV2 {
                    job: first_job(),
                    verify: 2,
                }),
            ),
            (
                "settled_checked",
                Gossip::V1(GossipV1::Settled(Settlement::Checked {
                    attestation: Signed::sign(&key(), &attestation()),
                    holders: 2,
                    check: Check {
                        needed: 1,
                        agreed: vec![Signed::sign(&key(), &attestation())],
                        disagreed: vec![],
                    },
                })),
            ),
            (
                "settled_not_reproducible",
                Gossip::V1(GossipV1::Settled(Settlement::NotReproducible {
                    build_key: Hash::of(b"key"),
                    needed: 2,
                    attestations: vec![Signed::sign(&key(), &attestation())],
                })),
            ),
            (
                "settled_trusted",
                Gossip::V1(GossipV1::Settled(Settlement::Trusted {
                    attestation: Signed::sign(&key(), &attestation()),
                    holders: 2,
                    streak: 12,
                })),
            ),
            (
                "job_v2_auto",
                Gossip::V1(GossipV1::JobV2 {
                    job: first_job(),
                    verify: crate::build::VERIFY_AUTO,
                }),
            ),
            (
                "job_v3",
                Gossip::V1(GossipV1::JobV3 {
                    job: first_job(),
                    verify: 1,
                    requesters: vec![crate::coord::RequesterShare {
                        key: key().public(),
                        priority: crate::coord::Priority::High,
                        emails: vec![0],
                    }],
                }),
            ),
            (
                "withdrawn",
                Gossip::V1(GossipV1::Withdrawn {
                    build_key: Hash::of(b"key"),
                }),
            ),
        ]
    }

    fn first_job() -> JobRequest {
        let mut requirements = Requirements::new();
        requirements.set_from_str("os=linux").unwrap();
        JobRequest {
            build_key: Hash::of(b"key"),
            recipe_id: Hash::of(b"recipe"),
            recipe_name: "hello-c".into(),
            recipe_version: "1.0.0".into(),
            publisher: None,
            options: [("opt".to_string(), "O2".to_string())].into_iter().collect(),
            requirements,
            emails: vec!["a@example.org".into()],
            requested_at_ms: 1_700_000_000_000,
        }
    }

    pub fn coord() -> (Vec<crate::coord::CoordRequest>, Vec<crate::coord::CoordReply>) {
        use crate::coord::*;
        let Gossip::V1(GossipV1::Job(job)) = gossip().remove(0).1 else {
            unreachable!()
        };
        let Gossip::V1(GossipV1::Worker(advert)) = gossip().remove(1).1 else {
            unreachable!()
        };
        let requests = vec![
            CoordRequest::SubmitV1 {
                job: Box::new(job.clone()),
                accept_versions: Some(crate::system::VersionRange::parse(">=1.0, <2").unwrap()),
            },
            CoordRequest::StatusV1,
            CoordRequest::WatchV1 {
                build_key: Hash::of(b"key"),
            },
            CoordRequest::SyncV1 {
                after: Some(Hash::of(b"key")),
            },
            CoordRequest::MailSyncV1 { after: None },
            CoordRequest::PhasesV1 {
                build_keys: vec![Hash::of(b"key")],
            },
            CoordRequest::AdvertV1 {
                advert: Box::new(advert),
            },
            CoordRequest::StatusV2,
            CoordRequest::SubmitV2 {
                job: Box::new(job.clone()),
                accept_versions: None,
                verify: 3,
            },
            CoordRequest::SyncV2 { after: None },
            CoordRequest::RecipeChecksV1 {
                recipe_name: "hello-c".into(),
            },
            CoordRequest::SubmitV3 {
                submission: Box::new(Signed::sign(
                    &key(),
                    &Submission {
                        job: job.clone(),
                        accept_versions: None,
                        verify: 1,
                        priority: Priority::Low,
                        sender: key().public(),
                    },
                )),
            },
            CoordRequest::CancelV1 {
                cancellation: Signed::sign(
                    &key(),
                    &Cancellation {
                        build_key: Hash::of(b"key"),
                        sender: key().public(),
                    },
                ),
            },
            CoordRequest::StatusV3,
            CoordRequest::SyncV3 { after: None },
        ];
        let replies = vec![
            CoordReplyV1::Built {
                attestations: vec![Signed::sign(&key(), &attestation())],
            },
            CoordReplyV1::Accepted {
                build_key: Hash::of(b"key"),
                merged: true,
                phase: JobPhase::Queued {
                    waiting_because: Some("all 2 matching workers are busy".into()),
                },
            },
            CoordReplyV1::NotCoordinator {
                coordinator: Some(Contact {
                    peer: key().public(),
                    addresses: vec!["/ip4/127.0.0.1/tcp/4001".into()],
                }),
            },
            CoordReplyV1::Refused { reason: "full".into() },
            CoordReplyV1::Status(StatusReport {
                coordinator: key().public(),
                pinned: false,
                workers: vec![WorkerView {
                    worker: key().public(),
                    system: "linux/x86_64".into(),
                    running_jobs: 1,
                    max_jobs: 2,
                    waiting_because: None,
                    seen_ms_ago: 300,
                    jobs: vec![Hash::of(b"key")],
                }],
                jobs: vec![JobView {
                    build_key: Hash::of(b"key"),
                    recipe_name: "hello-c".into(),
                    recipe_version: "1.0.0".into(),
                    options: BTreeMap::new(),
                    phase: JobPhase::Assigned {
                        worker: key().public(),
                        attempt: 1,
                    },
                    requesters: 2,
                    failed_attempts: 0,
                    requested_at_ms: 1_700_000_000_000,
                }],
                jobs_total: 1,
                recent: vec![],
                mail: MailView {
                    pending: 1,
                    delivered: 3,
                    last_error: Some("connection refused".into()),
                    route: "sent through the SMTP server smtp.example.org:587".into(),
                },
            }),
            CoordReplyV1::Event {
                build_key: Hash::of(b"key"),
                phase: JobPhase::Log { tail: "ok".into() },
            },
            CoordReplyV1::Jobs {
                jobs: vec![job],
                next: Some(Hash::of(b"key")),
            },
            CoordReplyV1::Mail {
                messages: vec![MailMessage {
                    key: Hash::of(b"outbox"),
                    build_key: Hash::of(b"key"),
                    to: "a@example.org".into(),
                    subject: "kiln: hello-c 1.0.0 for os=linux is built".into(),
                    body: "Your build is ready.".into(),
                    delivered: false,
                }],
                next: None,
            },
            CoordReplyV1::Phases {
                phases: vec![(Hash::of(b"key"), JobPhase::Unknown)],
            },
            CoordReplyV1::Noted,
            CoordReplyV1::StatusV2 {
                report: StatusReport {
                    coordinator: key().public(),
                    pinned: true,
                    workers: vec![],
                    jobs: vec![],
                    jobs_total: 0,
                    recent: vec![],
                    mail: MailView::default(),
                },
                contributors: vec![ContributorView {
                    worker: key().public(),
                    builds: 3,
                    build_ms: 42_000,
                }],
            },
            CoordReplyV1::JobsV2 {
                jobs: vec![(first_job(), 2)],
                next: None,
            },
            CoordReplyV1::Event {
                build_key: Hash::of(b"key"),
                phase: JobPhase::Checked {
                    attestation: Signed::sign(&key(), &attestation()),
                    check: Check {
                        needed: 1,
                        agreed: vec![Signed::sign(&key(), &attestation())],
                        disagreed: vec![],
                    },
                },
            },
            CoordReplyV1::Event {
                build_key: Hash::of(b"key"),
                phase: JobPhase::NotReproducible {
                    needed: 2,
                    attestations: vec![],
                },
            },
            CoordReplyV1::Event {
                build_key: Hash::of(b"key"),
                phase: JobPhase::Trusted {
                    attestation: Signed::sign(&key(), &attestation()),
                    streak: 12,
                },
            },
            CoordReplyV1::RecipeChecks(RecipeChecks {
                recipe_name: "hello-c".into(),
                agreed: 11,
                agreed_after_disagreement: 1,
                not_reproducible: 0,
                unchecked: 5,
            }),
            CoordReplyV1::Cancelled {
                build_key: Hash::of(b"key"),
                outcome: CancelOutcome::Dropped,
            },
            CoordReplyV1::Cancelled {
                build_key: Hash::of(b"key"),
                outcome: CancelOutcome::Stopped { worker: key().public() },
            },
            CoordReplyV1::Cancelled {
                build_key: Hash::of(b"key"),
                outcome: CancelOutcome::StillWanted { requesters: 2 },
            },
            CoordReplyV1::StatusV3 {
                report: StatusReport {
                    coordinator: key().public(),
                    pinned: false,
                    workers: vec![],
                    jobs: vec![],
                    jobs_total: 0,
                    recent: vec![],
                    mail: MailView::default(),
                },
                contributors: vec![],
                requesters: vec![RequesterView {
                    requester: key().public(),
                    queued: 50,
                    running: 1,
                    oldest_wait_ms: 61_000,
                    share_permille: 500,
                }],
            },
            CoordReplyV1::Event {
                build_key: Hash::of(b"key"),
                phase: JobPhase::Cancelled,
            },
            CoordReplyV1::JobsV3 {
                jobs: vec![SyncedJob {
                    job: first_job(),
                    verify: 1,
                    requesters: vec![RequesterShare {
                        key: key().public(),
                        priority: Priority::Normal,
                        emails: vec![0],
                    }],
                }],
                next: None,
            },
        ];
        (requests, replies.into_iter().map(CoordReply::V1).collect())
    }

    pub fn requests() -> Vec<BlobRequest> {
        vec![
            BlobRequest::V1 {
                hash: Hash::of(b"blob"),
                offset: 1 << 20,
                length: 1 << 20,
            },
            BlobRequest::RangeHashesV1 {
                hash: Hash::of(b"blob"),
            },
        ]
    }

    pub fn work() -> (WorkRequest, Vec<WorkReply>) {
        let Gossip::V1(GossipV1::Job(job)) = gossip().remove(0).1 else {
            unreachable!()
        };
        (
            WorkRequest::AssignV1 { job, attempt: 1 },
            vec![
                WorkReply::V1(WorkReplyV1::Accepted),
                WorkReply::V1(WorkReplyV1::Refused {
                    reason: "max jobs".into(),
                }),
            ],
        )
    }

    pub fn replies() -> Vec<BlobReply> {
        vec![
            BlobReply::V1(BlobReplyV1::Data {
                blob_bytes: 3 << 20,
                length: 1 << 20,
            }),
            BlobReply::V1(BlobReplyV1::NotFound),
            BlobReply::V1(BlobReplyV1::BadRange { blob_bytes: 10 }),
            BlobReply::V1(BlobReplyV1::Busy { retry_after_ms: 250 }),
            BlobReply::V1(BlobReplyV1::RangeHashes {
                blob_bytes: 3 << 20,
                count: 3,
            }),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::samples::*;
    use super::*;
    use crate::hash::to_hex;

    #[test]
    fn email_addresses_are_checked_with_reasons() {
        for good in [
            "a@example.org",
            "first.last+tag@mail.example.co.uk",
            "x@localhost.localdomain",
        ] {
            assert_eq!(check_email(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("nobody", "no @"),
            ("@example.org", "before the @"),
            ("a@b", "domain"),
            ("a@-x.org", "domain"),
            ("a b@example.org", "space"),
            ("a@example.org>", "space or one of"),
            ("a@@example.org", "no other @"),
        ] {
            let error = check_email(bad).unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
        assert!(check_email(&format!("{}@example.org", "a".repeat(300))).is_err());
    }

    #[test]
    fn gossip_round_trips_through_the_envelope() {
        for (_, message) in gossip() {
            let bytes = encode_gossip(&key(), &message).unwrap();
            let (signer, back) = decode_gossip(&bytes).unwrap();
            assert_eq!(signer, key().public());
            assert_eq!(back, message);
        }
    }

    #[test]
    fn frames_need_more_bytes_or_refuse_oversize() {
        let frame = encode_frame(&requests()[0]).unwrap();
        for cut in 0..frame.len() {
            assert!(
                decode_frame::<BlobRequest>(&frame[..cut]).unwrap().is_none(),
                "cut at {cut}"
            );
        }
        let (value, used) = decode_frame::<BlobRequest>(&frame).unwrap().unwrap();
        assert_eq!((value, used), (requests()[0].clone(), frame.len()));
        let oversized = ((FRAME_BYTES_MAX + 1) as u32).to_le_bytes();
        assert!(matches!(
            decode_frame::<BlobRequest>(&oversized),
            Err(WireError::TooLarge { .. })
        ));
    }

    #[test]
    fn oversized_gossip_is_refused() {
        let mut job = gossip().remove(0).1;
        if let Gossip::V1(GossipV1::Job(j)) = &mut job {
            j.emails = vec!["x".repeat(1000); 100];
        }
        assert!(encode_gossip(&key(), &job).is_err());
        assert!(matches!(
            decode_gossip(&vec![0u8; GOSSIP_BYTES_MAX + 1]),
            Err(GossipError::Wire(WireError::TooLarge { .. }))
        ));
    }

    #[test]
    fn gossip_signed_by_one_key_names_that_key() {
        let other = SecretKey::from_bytes(&[8; 32]);
        let bytes = encode_gossip(&other, &gossip()[2].1).unwrap();
        assert_eq!(decode_gossip(&bytes).unwrap().0, other.public());
    }

    /// Golden bytes: a change here is a wire-format change. Bump the
    /// message's version variant instead of editing these strings.
    #[test]
    fn golden_bytes() {
        let mut seen = Vec::new();
        for (name, message) in gossip() {
            seen.push((name.to_string(), to_hex(&encode_gossip(&key(), &message).unwrap())));
        }
        for (i, request) in requests().iter().enumerate() {
            seen.push((format!("request{i}"), to_hex(&encode_frame(request).unwrap())));
        }
        for (i, reply) in replies().iter().enumerate() {
            seen.push((format!("reply{i}"), to_hex(&encode_frame(reply).unwrap())));
        }
        let (assign, work_replies) = work();
        seen.push(("assign".to_string(), to_hex(&encode_frame(&assign).unwrap())));
        let stop = WorkRequest::StopV1 {
            build_key: Hash::of(b"key"),
            reason: "cancelled".into(),
        };
        seen.push(("stop".to_string(), to_hex(&encode_frame(&stop).unwrap())));
        for (i, reply) in work_replies.iter().enumerate() {
            seen.push((format!("work_reply{i}"), to_hex(&encode_frame(reply).unwrap())));
        }
        let (coord_requests, coord_replies) = coord();
        for (i, request) in coord_requests.iter().enumerate() {
            seen.push((format!("coord_request{i}"), to_hex(&encode_frame(request).unwrap())));
        }
        for (i, reply) in coord_replies.iter().enumerate() {
            seen.push((format!("coord_reply{i}"), to_hex(&encode_frame(reply).unwrap())));
        }
        let golden: Vec<(String, String)> = GOLDEN.iter().map(|(n, h)| (n.to_string(), h.to_string())).collect();
        if seen != golden {
            for (name, hex) in &seen {
                eprintln!("(\"{name}\", \"{hex}\"),");
            }
            panic!("wire encoding changed; see the new bytes above");
        }
    }

    // Layout, e.g. reply3 = `03000000` (frame length 3, little-endian u32)
    // `00` (BlobReply::V1) `03` (BlobReplyV1::Busy) `fa` (250 as a bincode
    // varint). Gossip entries are a Signed<Gossip> envelope: varint body
    // length, body (`00` Gossip::V1, then the GossipV1 variant index and its
    // fields), 32-byte signer key, 64-byte ed25519 signature.
    const GOLDEN: &[(&str, &str)] = &[
        ("job", "7c0000ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b42cd86560b2a6a0a54b6f2767adec4d9fbf74c7b4c39ebca63fef3cdcee0d14f30768656c6c6f2d6305312e302e300001036f7074024f3201026f7300056c696e7578010d61406578616d706c652e6f7267fd0068e5cf8b010000ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c0cd81535f41e233bdf76e562991ca62170e6655da12c1e4aac96c0ae7656d582da9a85683c6a78a693f6bdc59de209192ba983c1ff5a7b41a7a70bfedacfe70a"),
        ("worker", "5f0001056c696e7578067838365f3634066c6974746c654005676c69626304322e333602fc00000040010473736532010263630631322e322e30000100000301ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b4ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22cf2b578c63a34e2c57d5bbf783be01b90d9baf91cb286626801a313d28d967bc819c1434eab04aed00eee92cc016e7719a6ba6dc6853957f8243137238ed7680e"),
        ("coordinator", "2900020101050101172f6970342f3132372e302e302e312f7463702f34303031fd0068e5cf8b01000001ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c0e26a37b2683f298ba9f5c542ef2bf5ad43dcd9ed1ddd74a79ceed3b66d95f0ff1a2060277cbb0c2e4d14701c8b43f66c9e41c74f6dd28d1bf29d0aeed78a50d"),
        ("done", "fb3701000300d3ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b42cd86560b2a6a0a54b6f2767adec4d9fbf74c7b4c39ebca63fef3cdcee0d14f3e068dc010bf492707f7e8d896457770f24703784cfe76bd785f8b76cc010bbf3089fbf48f8224338b32a7f298140ee6c52b29a22d05b35c9be97e19b614e4726baea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c0c9046e0df271bb372601a22970c8944a6e9a7a507d0168ef67436ade135240afd0068e5cf8b010000fde86be5cf8b010000ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c28caa55159918c48cde9180fbdda81993d210386d5d8991b14f04583f6f7361b40be2b885fee9d3d49ace3c23dea70598ecc0a330c94db2be0ddaf86ab5acf05ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22cc17f0cff904572ed2d402103ae3baa84ac41b38efbedc3cd529f2b1cc0228d7889bd2ae4d3cd85946451c2c4923fcb5c58376068065993c058a16affaf3bd307"),
        ("failed", "73000301ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b4ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c019fbf48f8224338b32a7f298140ee6c52b29a22d05b35c9be97e19b614e4726ba0d6578697420737461747573203201ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c8a95dd1f82c8853026ef6255f9ba27141bcf9526842e810f754f281a691df71162c64449a2b2972d3191d519661f4b754ea7d9569274a2fc52b316bcee713109"),
        ("assigned", "430004ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b4ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c02ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22cd0b9d57b7d9dc025eafe79a0fee5f0d92d77ef02f9ea5dfa74f9f270e5ff0f312f3a33c3744dfd0664bae6cca41958b267763ef2bc4bd2bc1e435cd00873e609"),
        ("progress", "360005ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b4136363202d6f2068656c6c6f2068656c6c6f2e63ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c79717eb3e69ddd93346c94b5c3455b351e209fac789813181cfcb1481b12e4ad1d8d180f86fd376e99d450ac2dc8f530182dffa97e3a50502b54a53b5070c20d"),
        ("settled_done", "fb3801000600d3ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b42cd86560b2a6a0a54b6f2767adec4d9fbf74c7b4c39ebca63fef3cdcee0d14f3e068dc010bf492707f7e8d896457770f24703784cfe76bd785f8b76cc010bbf3089fbf48f8224338b32a7f298140ee6c52b29a22d05b35c9be97e19b614e4726baea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c0c9046e0df271bb372601a22970c8944a6e9a7a507d0168ef67436ade135240afd0068e5cf8b010000fde86be5cf8b010000ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c28caa55159918c48cde9180fbdda81993d210386d5d8991b14f04583f6f7361b40be2b885fee9d3d49ace3c23dea70598ecc0a330c94db2be0ddaf86ab5acf0502ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22ca24ceabbb7221c5aa92287d1050a5d7f73ede634c3a5f05902afe6c787552db16c1a39ba454c9b9365f7c051145c69e5dfd86fb4accc2c556d33fe0784131709"),
        ("aborted", "5c000302ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b4ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c1763616e6e6f74206665746368207468652072656369706501ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c1d9223bf056777cd280d09420fef3907ce9d8bfb2d6ed32b4308155ff4a173c31f187e3b67e60bbfcb897afc76d48bd07cba78457db2f403e86e8ea4a183b003"),
        ("delivered", "220007ea6f6f20b9e920b56a7995f760955e863b8610a469b6e1932cb4edfde97f3f39ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22cff5fb0e1f42007cd6159bf318cf76369416ebf4412330929309583abc3a43e6f7526788bad89e906d94774316ad556c0d89898e5816204aa0a23ebe7f4d14406"),
        ("settled_failed", "39000601ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b4136661696c6564206f6e203320776f726b6572730003ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22cb49c8ec700943cb4ef2987ec3c58cc94668fecdc12d437b52ce6ba7678d4cb9c12e5fad1d12230a9137ff1cbb7502025e2bb2ad6dd7bd9b6a64e651b6497ea07"),
        ("job_v2", "7d0008ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b42cd86560b2a6a0a54b6f2767adec4d9fbf74c7b4c39ebca63fef3cdcee0d14f30768656c6c6f2d6305312e302e300001036f7074024f3201026f7300056c696e7578010d61406578616d706c652e6f7267fd0068e5cf8b01000002ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c79fc96b9f2ec9e962f28fe70442302bb0b50783e6aa502da12d10f09b74a2d5781f3946d35ae39fc06d85ab5be2f51caba06cd71bfff32bdeab90c7a7b0fcd0a"),
        ("settled_checked", "fb6f02000602d3ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b42cd86560b2a6a0a54b6f2767adec4d9fbf74c7b4c39ebca63fef3cdcee0d14f3e068dc010bf492707f7e8d896457770f24703784cfe76bd785f8b76cc010bbf3089fbf48f8224338b32a7f298140ee6c52b29a22d05b35c9be97e19b614e4726baea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c0c9046e0df271bb372601a22970c8944a6e9a7a507d0168ef67436ade135240afd0068e5cf8b010000fde86be5cf8b010000ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c28caa55159918c48cde9180fbdda81993d210386d5d8991b14f04583f6f7361b40be2b885fee9d3d49ace3c23dea70598ecc0a330c94db2be0ddaf86ab5acf05020101d3ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b42cd86560b2a6a0a54b6f2767adec4d9fbf74c7b4c39ebca63fef3cdcee0d14f3e068dc010bf492707f7e8d896457770f24703784cfe76bd785f8b76cc010bbf3089fbf48f8224338b32a7f298140ee6c52b29a22d05b35c9be97e19b614e4726baea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c0c9046e0df271bb372601a22970c8944a6e9a7a507d0168ef67436ade135240afd0068e5cf8b010000fde86be5cf8b010000ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c28caa55159918c48cde9180fbdda81993d210386d5d8991b14f04583f6f7361b40be2b885fee9d3d49ace3c23dea70598ecc0a330c94db2be0ddaf86ab5acf0500ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22ca0a67187b551298f550bf8dcd01abe66b885e89199bbb191ecf2500472de01ebac988635256236a049b988c70c650a0274168df641a89a0c1472a755b3283802"),
        ("settled_not_reproducible", "fb5901000603ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b40201d3ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b42cd86560b2a6a0a54b6f2767adec4d9fbf74c7b4c39ebca63fef3cdcee0d14f3e068dc010bf492707f7e8d896457770f24703784cfe76bd785f8b76cc010bbf3089fbf48f8224338b32a7f298140ee6c52b29a22d05b35c9be97e19b614e4726baea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c0c9046e0df271bb372601a22970c8944a6e9a7a507d0168ef67436ade135240afd0068e5cf8b010000fde86be5cf8b010000ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c28caa55159918c48cde9180fbdda81993d210386d5d8991b14f04583f6f7361b40be2b885fee9d3d49ace3c23dea70598ecc0a330c94db2be0ddaf86ab5acf05ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c1bcf049a83c0769329591ecc3ac012249d0779b16da72c4c47f5cbeba520c9d27d80cc23b4ac724c1f2f6182e9801f2a456ee6ac36b28dae811eec1bba9db00c"),
        ("settled_trusted", "fb3901000604d3ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b42cd86560b2a6a0a54b6f2767adec4d9fbf74c7b4c39ebca63fef3cdcee0d14f3e068dc010bf492707f7e8d896457770f24703784cfe76bd785f8b76cc010bbf3089fbf48f8224338b32a7f298140ee6c52b29a22d05b35c9be97e19b614e4726baea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c0c9046e0df271bb372601a22970c8944a6e9a7a507d0168ef67436ade135240afd0068e5cf8b010000fde86be5cf8b010000ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c28caa55159918c48cde9180fbdda81993d210386d5d8991b14f04583f6f7361b40be2b885fee9d3d49ace3c23dea70598ecc0a330c94db2be0ddaf86ab5acf05020cea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22cf5a70d5757e23074c583682a34e887f12dc681c037fc0f4ff54502f7f45505c6ccdb351d3685c2193547a26aec177983de952c0b950982b979598f227602da0c"),
        ("job_v2_auto", "7d0008ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b42cd86560b2a6a0a54b6f2767adec4d9fbf74c7b4c39ebca63fef3cdcee0d14f30768656c6c6f2d6305312e302e300001036f7074024f3201026f7300056c696e7578010d61406578616d706c652e6f7267fd0068e5cf8b01000000ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c5027279318b813df5d198a70dd01eb81125b8b671c56e52e343164e0c8cdeae833adf2fd4209c61f33ae62bacd0873ecc0e71f8428113317a05fe2c1ea2c9e09"),
        ("job_v3", "a10009ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b42cd86560b2a6a0a54b6f2767adec4d9fbf74c7b4c39ebca63fef3cdcee0d14f30768656c6c6f2d6305312e302e300001036f7074024f3201026f7300056c696e7578010d61406578616d706c652e6f7267fd0068e5cf8b0100000101ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c020100ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22ca468baebed2d8952f96a331c8113da4b7b0a6055682c2ccd58007a681bc24114aafb3a4969659655255d9b239ed4f45a162ae97696461a880c0e1507815d0504"),
        ("withdrawn", "22000aff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b4ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22cf665343b83ee210f780ef84c365a26f315bfba9a0a9288e830ef046d6d1d781c33a34bb38af550e8a88bda6dcbe049a6b71bee0add34a5caffb9b35de14a3606"),
        ("request0", "2b0000000023f82a295328e116801fc5ebb9b84c3c193d3a8f2c315ff47afb0526d01f1f94fc00001000fc00001000"),
        ("request1", "210000000123f82a295328e116801fc5ebb9b84c3c193d3a8f2c315ff47afb0526d01f1f94"),
        ("reply0", "0c0000000000fc00003000fc00001000"),
        ("reply1", "020000000001"),
        ("reply2", "0300000000020a"),
        ("reply3", "030000000003fa"),
        ("reply4", "080000000004fc0000300003"),
        ("assign", "7c00000000ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b42cd86560b2a6a0a54b6f2767adec4d9fbf74c7b4c39ebca63fef3cdcee0d14f30768656c6c6f2d6305312e302e300001036f7074024f3201026f7300056c696e7578010d61406578616d706c652e6f7267fd0068e5cf8b01000001"),
        ("stop", "2b00000001ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b40963616e63656c6c6564"),
        ("work_reply0", "020000000000"),
        ("work_reply1", "0b0000000001086d6178206a6f6273"),
        ("coord_request0", "8500000000ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b42cd86560b2a6a0a54b6f2767adec4d9fbf74c7b4c39ebca63fef3cdcee0d14f30768656c6c6f2d6305312e302e300001036f7074024f3201026f7300056c696e7578010d61406578616d706c652e6f7267fd0068e5cf8b01000001020203312e30050132"),
        ("coord_request1", "0100000001"),
        ("coord_request2", "2100000002ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b4"),
        ("coord_request3", "220000000301ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b4"),
        ("coord_request4", "020000000400"),
        ("coord_request5", "220000000501ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b4"),
        ("coord_request6", "5e00000006056c696e7578067838365f3634066c6974746c654005676c69626304322e333602fc00000040010473736532010263630631322e322e30000100000301ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b4"),
        ("coord_request7", "0100000007"),
        ("coord_request8", "7d00000008ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b42cd86560b2a6a0a54b6f2767adec4d9fbf74c7b4c39ebca63fef3cdcee0d14f30768656c6c6f2d6305312e302e300001036f7074024f3201026f7300056c696e7578010d61406578616d706c652e6f7267fd0068e5cf8b0100000003"),
        ("coord_request9", "020000000900"),
        ("coord_request10", "090000000a0768656c6c6f2d63"),
        ("coord_request11", "ff0000000b9dff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b42cd86560b2a6a0a54b6f2767adec4d9fbf74c7b4c39ebca63fef3cdcee0d14f30768656c6c6f2d6305312e302e300001036f7074024f3201026f7300056c696e7578010d61406578616d706c652e6f7267fd0068e5cf8b010000000100ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22cea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c55e42be26d8570e98562eb95815367e2d5226bc74f6d4090c35716ee513b134ce4918609f00e069c7edbc96283dc33a2ef8a434732b96b8c7ac90daabde80504"),
        ("coord_request12", "a20000000c40ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b4ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22cea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22cb8f9fb8e805c8846899fd1cc65df745d79b5317050b51d225aa814ea1739f64010e68533407d320da0c875b9512c158aac9a127133f1ad4dcd3ccf1edda85208"),
        ("coord_request13", "010000000d"),
        ("coord_request14", "020000000e00"),
        ("coord_reply0", "37010000000001d3ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b42cd86560b2a6a0a54b6f2767adec4d9fbf74c7b4c39ebca63fef3cdcee0d14f3e068dc010bf492707f7e8d896457770f24703784cfe76bd785f8b76cc010bbf3089fbf48f8224338b32a7f298140ee6c52b29a22d05b35c9be97e19b614e4726baea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c0c9046e0df271bb372601a22970c8944a6e9a7a507d0168ef67436ade135240afd0068e5cf8b010000fde86be5cf8b010000ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c28caa55159918c48cde9180fbdda81993d210386d5d8991b14f04583f6f7361b40be2b885fee9d3d49ace3c23dea70598ecc0a330c94db2be0ddaf86ab5acf05"),
        ("coord_reply1", "450000000001ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b40100011f616c6c2032206d61746368696e6720776f726b657273206172652062757379"),
        ("coord_reply2", "3c000000000201ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c01172f6970342f3132372e302e302e312f7463702f34303031"),
        ("coord_reply3", "0700000000030466756c6c"),
        ("coord_reply4", "1f0100000004ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c0001ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c0c6c696e75782f7838365f3634010200fb2c0101ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b401ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b40768656c6c6f2d6305312e302e300001ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c010200fd0068e5cf8b010000010001030112636f6e6e656374696f6e20726566757365643173656e74207468726f7567682074686520534d54502073657276657220736d74702e6578616d706c652e6f72673a353837"),
        ("coord_reply5", "260000000005ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b402026f6b"),
        ("coord_reply6", "9e000000000601ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b42cd86560b2a6a0a54b6f2767adec4d9fbf74c7b4c39ebca63fef3cdcee0d14f30768656c6c6f2d6305312e302e300001036f7074024f3201026f7300056c696e7578010d61406578616d706c652e6f7267fd0068e5cf8b01000001ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b4"),
        ("coord_reply7", "92000000000701ea6f6f20b9e920b56a7995f760955e863b8610a469b6e1932cb4edfde97f3f39ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b40d61406578616d706c652e6f7267296b696c6e3a2068656c6c6f2d6320312e302e3020666f72206f733d6c696e7578206973206275696c7414596f7572206275696c642069732072656164792e0000"),
        ("coord_reply8", "24000000000801ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b406"),
        ("coord_reply9", "020000000009"),
        ("coord_reply10", "50000000000aea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c01000000000000000001ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c03fb10a4"),
        ("coord_reply11", "7f000000000b01ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b42cd86560b2a6a0a54b6f2767adec4d9fbf74c7b4c39ebca63fef3cdcee0d14f30768656c6c6f2d6305312e302e300001036f7074024f3201026f7300056c696e7578010d61406578616d706c652e6f7267fd0068e5cf8b0100000200"),
        ("coord_reply12", "8e0200000005ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b407d3ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b42cd86560b2a6a0a54b6f2767adec4d9fbf74c7b4c39ebca63fef3cdcee0d14f3e068dc010bf492707f7e8d896457770f24703784cfe76bd785f8b76cc010bbf3089fbf48f8224338b32a7f298140ee6c52b29a22d05b35c9be97e19b614e4726baea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c0c9046e0df271bb372601a22970c8944a6e9a7a507d0168ef67436ade135240afd0068e5cf8b010000fde86be5cf8b010000ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c28caa55159918c48cde9180fbdda81993d210386d5d8991b14f04583f6f7361b40be2b885fee9d3d49ace3c23dea70598ecc0a330c94db2be0ddaf86ab5acf050101d3ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b42cd86560b2a6a0a54b6f2767adec4d9fbf74c7b4c39ebca63fef3cdcee0d14f3e068dc010bf492707f7e8d896457770f24703784cfe76bd785f8b76cc010bbf3089fbf48f8224338b32a7f298140ee6c52b29a22d05b35c9be97e19b614e4726baea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c0c9046e0df271bb372601a22970c8944a6e9a7a507d0168ef67436ade135240afd0068e5cf8b010000fde86be5cf8b010000ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c28caa55159918c48cde9180fbdda81993d210386d5d8991b14f04583f6f7361b40be2b885fee9d3d49ace3c23dea70598ecc0a330c94db2be0ddaf86ab5acf0500"),
        ("coord_reply13", "250000000005ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b4080200"),
        ("coord_reply14", "580100000005ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b409d3ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b42cd86560b2a6a0a54b6f2767adec4d9fbf74c7b4c39ebca63fef3cdcee0d14f3e068dc010bf492707f7e8d896457770f24703784cfe76bd785f8b76cc010bbf3089fbf48f8224338b32a7f298140ee6c52b29a22d05b35c9be97e19b614e4726baea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c0c9046e0df271bb372601a22970c8944a6e9a7a507d0168ef67436ade135240afd0068e5cf8b010000fde86be5cf8b010000ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c28caa55159918c48cde9180fbdda81993d210386d5d8991b14f04583f6f7361b40be2b885fee9d3d49ace3c23dea70598ecc0a330c94db2be0ddaf86ab5acf050c"),
        ("coord_reply15", "0e000000000c0768656c6c6f2d630b010005"),
        ("coord_reply16", "23000000000dff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b400"),
        ("coord_reply17", "43000000000dff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b401ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c"),
        ("coord_reply18", "24000000000dff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b40202"),
        ("coord_reply19", "55000000000eea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c0000000000000000000001ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c3201fb48eefbf401"),
        ("coord_reply20", "230000000005ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b40a"),
        ("coord_reply21", "a3000000000f01ff8e2bab3b26e0c127002127905539b47eb421de85d554e15f55a446459b52b42cd86560b2a6a0a54b6f2767adec4d9fbf74c7b4c39ebca63fef3cdcee0d14f30768656c6c6f2d6305312e302e300001036f7074024f3201026f7300056c696e7578010d61406578616d706c652e6f7267fd0068e5cf8b0100000101ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c01010000"),
    ];
}
