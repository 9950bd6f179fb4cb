//! The worker role (`kiln node --contribute`): takes assignments over
//! `/kiln/work/1`, decides by its contributor's policy whether to build,
//! fetches the recipe and its source by hash, builds in the sandbox, stores
//! the artifact and the log, signs an attestation, announces the blobs, and
//! reports how the build ended over gossip. It also advertises what it is
//! and how much it can take, and refreshes that advert.
//!
//! The decision (`decide`) is a plain function: tested without a network.
//!
//! - `policy`: the contributor's rules and the decision;
//! - `build`: one assigned build, from fetching its inputs to its outcome;
//! - [`sandbox`]: running a build's steps isolated (bubblewrap);
//! - [`limits`]: the priority, process and CPU limits of every build;
//! - `yielding`: pausing a running build while the owner uses the machine;
//! - [`system`]: what this machine is, probed at start.
//!
//! Not for: choosing which jobs exist or who builds them (the coordinator).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use kiln_protocol::messages::{JobRequest, WorkReply, WorkReplyV1, WorkRequest};
use kiln_protocol::{Hash, SecretKey, SystemInfo};
use kiln_store::Store;
use tracing::{info, warn};

use crate::net::frames::{read_frame, write_frame};
use crate::net::{NetClient, WORK_PROTOCOL};
use sandbox::{Sandbox, Steer};

mod advertise;
mod build;
pub mod limits;
mod policy;
pub mod sandbox;
pub mod system;
mod yielding;

pub use policy::{
    busy_because, decide, CpuTicks, OwnerLoad, Trust, WorkerPolicy, IDLE_LOAD_PER_CPU_MAX, OWNER_WINDOW_MS,
    PAUSE_MAX_DEFAULT,
};

/// How long a coordinator may take to send its assignment on a new stream.
const ASSIGN_MS_MAX: u64 = 30_000;
/// Assignment streams handled at once (each reads one small request).
const ASSIGN_STREAMS_MAX: usize = 16;

/// A running worker.
pub struct Worker {
    pub net: NetClient,
    pub store: Store,
    pub sandbox: Sandbox,
    pub key: SecretKey,
    pub system: SystemInfo,
    pub policy: WorkerPolicy,
    running: AtomicU32,
    /// Build keys of the builds running now (the lease heartbeat).
    building: std::sync::Mutex<BTreeSet<Hash>>,
    /// The owner's CPU use, for `--idle-only`.
    owner_load: std::sync::Mutex<OwnerLoad>,
    /// The builds paused for the owner now, and why.
    paused: std::sync::Mutex<std::collections::BTreeMap<Hash, String>>,
    /// Each running build's steering, and the peer that assigned it: a
    /// stop (`StopV1`) is taken from that peer or a member of the
    /// coordination set.
    steers: std::sync::Mutex<std::collections::HashMap<Hash, (libp2p::PeerId, tokio::sync::watch::Sender<Steer>)>>,
    /// The coordination set as last heard (refreshed by the adverts' loop).
    members: std::sync::Mutex<Vec<libp2p::PeerId>>,
    sequence: AtomicU64,
}

impl Worker {
    pub fn new(
        net: NetClient,
        store: Store,
        sandbox: Sandbox,
        key: SecretKey,
        system: SystemInfo,
        policy: WorkerPolicy,
    ) -> Worker {
        if matches!(policy.trust, Trust::AnyRecipe) {
            warn!("--trust-any-recipe: this worker runs recipes from anyone, in the sandbox");
        }
        if let Some(problem) = sandbox.isolation_problem() {
            warn!(
                problem,
                "this worker cannot isolate builds and will refuse every assignment"
            );
        }
        let mut owner_load = OwnerLoad::default();
        if policy.idle_only {
            // The first window starts now.
            if let Some(ticks) = CpuTicks::now() {
                owner_load.read(crate::clock::now_ms(), ticks);
            }
        }
        Worker {
            net,
            store,
            sandbox,
            key,
            system,
            policy,
            running: AtomicU32::new(0),
            building: Default::default(),
            owner_load: std::sync::Mutex::new(owner_load),
            paused: Default::default(),
            steers: Default::default(),
            members: Default::default(),
            sequence: AtomicU64::new(0),
        }
    }

    /// Starts accepting assignments; the protocol is registered before this
    /// returns.
    pub fn spawn_server(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        let incoming = self.net.stream_control().accept(WORK_PROTOCOL);
        tokio::spawn(async move {
            match incoming {
                Ok(incoming) => self.serve(incoming).await,
                Err(e) => warn!(error = %e, "work protocol already served"),
            }
        })
    }

    async fn serve(self: Arc<Self>, mut incoming: libp2p_stream::IncomingStreams) {
        let permits = Arc::new(tokio::sync::Semaphore::new(ASSIGN_STREAMS_MAX));
        while let Some((peer, stream)) = incoming.next().await {
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                warn!(peer = %peer, "too many assignment streams at once; dropping one");
                continue;
            };
            let worker = self.clone();
            tokio::spawn(async move {
                // The permit bounds streams still being read and answered,
                // not builds (`--max-jobs` bounds those): it is let go
                // before the build starts.
                let taken = worker.answer(peer, stream).await;
                drop(permit);
                if let Some((job, attempt)) = taken {
                    worker.build(job, attempt, peer).await;
                }
            });
        }
    }

    /// Reads one assignment from `peer` and answers it; the job if taken.
    async fn answer(&self, peer: libp2p::PeerId, mut stream: libp2p::Stream) -> Option<(JobRequest, u32)> {
        let request = match read_frame::<WorkRequest>(&mut stream, ASSIGN_MS_MAX).await {
            Ok(Some(request)) => request,
            Ok(None) => return None,
            Err(e) => {
                warn!(peer = %peer, error = %e, "bad assignment");
                return None;
            }
        };
        let (job, attempt) = match request {
            WorkRequest::AssignV1 { job, attempt } => (job, attempt),
            WorkRequest::StopV1 { build_key, reason } => {
                let reply = match self.stop(peer, build_key, reason) {
                    Ok(()) => WorkReplyV1::Accepted,
                    Err(reason) => WorkReplyV1::Refused { reason },
                };
                info!(peer = %peer, job = %build_key, ?reply, "stop");
                let _ = write_frame(&mut stream, &WorkReply::V1(reply)).await;
                return None;
            }
        };
        let verdict = match &self.policy.coordinators {
            Some(trusted) if !trusted.contains(&peer) => Err(format!(
                "this worker takes work only from the coordinators it trusts (--trust-coordinator), and {peer} is not one"
            )),
            _ => self.take(&job),
        };
        let reply = match &verdict {
            Ok(()) => WorkReplyV1::Accepted,
            Err(reason) => WorkReplyV1::Refused { reason: reason.clone() },
        };
        info!(peer = %peer, job = %job.build_key, ?reply, "assignment");
        let _ = write_frame(&mut stream, &WorkReply::V1(reply)).await;
        verdict.ok().map(|()| (job, attempt))
    }

    /// Stops a running build nobody wants any more: its processes are
    /// killed and its sandbox removed, as for a build given up, and the
    /// worker is free for the next job. Taken only from the peer that
    /// assigned it or a member of the coordination set.
    fn stop(&self, peer: libp2p::PeerId, build_key: Hash, reason: String) -> Result<(), String> {
        let member = self.members.lock().map(|m| m.contains(&peer)).unwrap_or(false);
        let steers = self.steers.lock().map_err(|_| "the worker is stopping".to_string())?;
        let Some((assigner, steer)) = steers.get(&build_key) else {
            return Err(format!("this worker is not running build {build_key}"));
        };
        if *assigner != peer && !member {
            return Err(format!(
                "only the coordinator that assigned build {build_key}, or a member of the coordination set, may stop it"
            ));
        }
        let mut reason = reason;
        reason.truncate(kiln_protocol::messages::REASON_BYTES_MAX);
        steer.send_replace(Steer::GiveUp(reason));
        Ok(())
    }

    /// Registers a build's steering for a stop.
    fn steer(&self, build_key: Hash, assigner: libp2p::PeerId, steer: tokio::sync::watch::Sender<Steer>) {
        if let Ok(mut steers) = self.steers.lock() {
            steers.insert(build_key, (assigner, steer));
        }
    }

    fn unsteer(&self, build_key: &Hash) {
        if let Ok(mut steers) = self.steers.lock() {
            steers.remove(build_key);
        }
    }

    /// Why an idle-only worker waits right now, if it does: the owner's
    /// CPU use, which leaves out Kiln's builds (they run at nice 19). In
    /// the first window after the worker starts there is no measurement
    /// yet, and the job is taken: a build taken wrongly is paused within
    /// two windows, while a refusal keeps the job from this worker for a
    /// minute.
    fn busy(&self) -> Option<String> {
        if !self.policy.idle_only {
            return None;
        }
        self.owner_busy()
    }

    /// Decides, and counts the job as running if taken.
    fn take(&self, job: &JobRequest) -> Result<(), String> {
        if let Some(problem) = self.sandbox.isolation_problem() {
            return Err(format!("worker cannot isolate builds: {problem}"));
        }
        let running = self.running.fetch_add(1, Ordering::SeqCst);
        let verdict = decide(&self.policy, &self.system, job, running, self.busy());
        if verdict.is_err() {
            self.running.fetch_sub(1, Ordering::SeqCst);
        }
        verdict
    }

    fn building(&self) -> Vec<Hash> {
        self.building
            .lock()
            .map(|b| b.iter().copied().collect())
            .unwrap_or_default()
    }

    fn set_building(&self, build_key: Hash, running: bool) {
        if let Ok(mut building) = self.building.lock() {
            if running {
                building.insert(build_key);
            } else {
                building.remove(&build_key);
            }
        }
    }
}
