//! The worker role (`kiln node --contribute`): takes assignments over
//! `/kiln/work/1`, decides by its contributor's policy whether to build,
//! fetches the recipe and its source by hash, builds in the sandbox, stores
//! the artifact and the log, signs an attestation, announces the blobs, and
//! reports how the build ended over gossip. It also advertises what it is
//! and how much it can take, and refreshes that advert.
//!
//! The decision (`decide`) is a plain function: tested without a network.

use libp2p::PeerId;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kiln_protocol::messages::{
    encode_gossip, topics, BuildOutcome, Gossip, GossipV1, JobRequest, WorkReply, WorkReplyV1, WorkRequest,
    WorkerAdvert,
};
use kiln_protocol::{build_key, Attestation, Hash, PublicKey, Recipe, SecretKey, Signed, Source, SystemInfo};
use kiln_store::Store;
use tracing::{info, warn};

use crate::blobs;
use crate::clock::now_ms;
use crate::frames::{read_frame, write_frame};
use crate::net::{NetClient, WORK_PROTOCOL};
use crate::node::NoProgress;
use crate::sandbox::{BuildSpec, BuildStatus, Sandbox, SourceInput};

/// How long a coordinator may take to send its assignment on a new stream.
const ASSIGN_MS_MAX: u64 = 30_000;
/// Assignment streams handled at once (each reads one small request).
const ASSIGN_STREAMS_MAX: usize = 16;
/// How often the worker advertises itself.
const ADVERT_MS: u64 = 2_000;
/// How often a running build's log tail is gossiped (when it grew), and
/// how much of it.
const PROGRESS_MS: u64 = 2_000;
const PROGRESS_TAIL_BYTES: usize = 1024;
/// How long the worker keeps trying to publish an outcome.
const OUTCOME_PUBLISH_MS_MAX: u64 = 60_000;

/// Which recipes a contributor runs.
#[derive(Clone, Debug)]
pub enum Trust {
    /// Any recipe (`--trust-any-recipe`): logged loudly at start.
    AnyRecipe,
    /// Only recipes signed by one of these publishers (`--trust-publisher`).
    Publishers(BTreeSet<PublicKey>),
}

/// The contributor's rules.
#[derive(Clone, Debug)]
pub struct WorkerPolicy {
    pub max_jobs: u32,
    /// Take work only while the machine is otherwise idle (`--idle-only`).
    pub idle_only: bool,
    pub trust: Trust,
    pub allow_network: bool,
    /// Take assignments only from these peers (`--trust-coordinator`);
    /// `None`: from any peer.
    pub coordinators: Option<BTreeSet<PeerId>>,
}

/// Load per CPU above which an idle-only worker counts the machine as busy.
pub const IDLE_LOAD_PER_CPU_MAX: f64 = 0.5;

/// Why an idle-only worker waits, if it does: the 1-minute load average
/// against the CPU count.
pub fn busy_because(load: f64, cpus: u32) -> Option<String> {
    let cpus = cpus.max(1);
    (load / f64::from(cpus) > IDLE_LOAD_PER_CPU_MAX).then(|| {
        format!(
            "idle-only: the machine is in use (load {load:.2} on {cpus} cpus; waits below {:.2})",
            IDLE_LOAD_PER_CPU_MAX * f64::from(cpus)
        )
    })
}

/// The 1-minute load average, from `/proc/loadavg`.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Whether to take `job`; `Err` carries the reason a requester is shown.
/// `busy` is why an idle-only worker waits right now, if it does.
pub fn decide(
    policy: &WorkerPolicy,
    system: &SystemInfo,
    job: &JobRequest,
    running: u32,
    busy: Option<String>,
) -> Result<(), String> {
    if let Some(why) = busy.filter(|_| policy.idle_only) {
        return Err(why);
    }
    if running >= policy.max_jobs {
        return Err(format!(
            "worker is busy: running {running} of at most {} jobs (--max-jobs)",
            policy.max_jobs
        ));
    }
    if let Trust::Publishers(trusted) = &policy.trust {
        let Some(signature) = &job.publisher else {
            return Err("recipe is not signed, and this worker runs only recipes signed by publishers it trusts (--trust-publisher)".into());
        };
        if signature.verify(&job.recipe_id).is_err() {
            return Err("recipe signature does not verify against the recipe id".into());
        }
        if !trusted.contains(&signature.publisher) {
            return Err(format!(
                "recipe publisher {} is not trusted by this worker",
                signature.publisher
            ));
        }
    }
    job.requirements
        .check(system)
        .map_err(|reasons| format!("worker does not match: {}", reasons.join("; ")))
}

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
    sequence: AtomicU64,
}

/// Why a build failed, with its log if there is one.
struct JobFailure {
    reason: String,
    log: Option<Hash>,
    /// The build never started because its inputs could not be fetched:
    /// the network's fault, not the recipe's.
    aborted: bool,
}

fn failure(reason: impl Into<String>) -> JobFailure {
    JobFailure {
        reason: reason.into(),
        log: None,
        aborted: false,
    }
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
        Worker {
            net,
            store,
            sandbox,
            key,
            system,
            policy,
            running: AtomicU32::new(0),
            building: Default::default(),
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
        while let Some((peer, mut stream)) = incoming.next().await {
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                warn!(peer = %peer, "too many assignment streams at once; dropping one");
                continue;
            };
            let worker = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let request = match read_frame::<WorkRequest>(&mut stream, ASSIGN_MS_MAX).await {
                    Ok(Some(request)) => request,
                    Ok(None) => return,
                    Err(e) => {
                        warn!(peer = %peer, error = %e, "bad assignment");
                        return;
                    }
                };
                let WorkRequest::AssignV1 { job, attempt } = request;
                let verdict = match &worker.policy.coordinators {
                    Some(trusted) if !trusted.contains(&peer) => Err(format!(
                        "this worker takes work only from the coordinators it trusts (--trust-coordinator), and {peer} is not one"
                    )),
                    _ => worker.take(&job),
                };
                let reply = match &verdict {
                    Ok(()) => WorkReplyV1::Accepted,
                    Err(reason) => WorkReplyV1::Refused { reason: reason.clone() },
                };
                info!(peer = %peer, job = %job.build_key, ?reply, "assignment");
                let _ = write_frame(&mut stream, &WorkReply::V1(reply)).await;
                drop(stream);
                if verdict.is_ok() {
                    worker.build(job, attempt, peer).await;
                }
            });
        }
    }

    /// Why an idle-only worker waits right now (its own builds excluded:
    /// only checked while none of them runs), if it does.
    fn busy(&self) -> Option<String> {
        if !self.policy.idle_only || self.running.load(Ordering::SeqCst) > 1 {
            return None;
        }
        busy_because(load_average()?, self.system.cpus)
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

    /// Runs an assigned job; `from` (the coordinator) holds its inputs.
    async fn build(&self, job: JobRequest, attempt: u32, from: PeerId) {
        self.set_building(job.build_key, true);
        let outcome = match self.run_job(&job, from).await {
            Ok(attestation) => BuildOutcome::Done { attestation },
            Err(failed) if failed.aborted => {
                warn!(job = %job.build_key, reason = failed.reason, "build not started");
                BuildOutcome::Aborted {
                    build_key: job.build_key,
                    worker: self.key.public(),
                    reason: failed.reason,
                    attempt,
                }
            }
            Err(failed) => {
                warn!(job = %job.build_key, reason = failed.reason, "build failed");
                BuildOutcome::Failed {
                    build_key: job.build_key,
                    worker: self.key.public(),
                    log: failed.log,
                    reason: failed.reason,
                    attempt,
                }
            }
        };
        self.running.fetch_sub(1, Ordering::SeqCst);
        // Still listed as building until the outcome is out, so no advert
        // without it reaches the coordinator first.
        self.publish(topics::RESULTS, Gossip::V1(GossipV1::Outcome(outcome)))
            .await;
        self.set_building(job.build_key, false);
    }

    /// Publishes gossip, waiting (bounded) for a subscriber to appear.
    async fn publish(&self, topic: &'static str, message: Gossip) {
        let Ok(bytes) = encode_gossip(&self.key, &message) else {
            warn!("outcome too large to gossip");
            return;
        };
        let deadline = tokio::time::Instant::now() + Duration::from_millis(OUTCOME_PUBLISH_MS_MAX);
        while let Err(e) = self.net.publish(topic, bytes.clone()).await {
            if tokio::time::Instant::now() >= deadline {
                warn!(error = %e, "could not publish; giving up");
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn run_job(&self, job: &JobRequest, from: PeerId) -> Result<Signed<Attestation>, JobFailure> {
        let started_at_ms = now_ms();
        let recipe = self.load_recipe(job, from).await?;
        if recipe.network && !self.policy.allow_network {
            return Err(failure(
                "recipe needs the network while building, and this worker does not allow it (--allow-network)",
            ));
        }
        let source = self.prepare_source(&recipe, job, from).await?;
        let spec = BuildSpec {
            steps: recipe.render_steps(&job.options),
            outputs: recipe.outputs.clone(),
            options: job.options.clone(),
            network: recipe.network,
            timeout: Duration::from_secs(recipe.timeout_secs),
            memory_bytes: recipe.memory_bytes,
            source,
        };
        let log = crate::sandbox::Log::default();
        let progress = tokio::spawn(report_progress(
            self.net.clone(),
            SecretKey::from_bytes(&self.key.to_bytes()),
            job.build_key,
            log.clone(),
        ));
        let result = self.sandbox.run_logged(&spec, &log).await;
        progress.abort();
        if let SourceInput::Archive(path) = &spec.source {
            let _ = std::fs::remove_file(path);
        }
        let result = result.map_err(|e| failure(e.to_string()))?;
        let (log, _) = self
            .store
            .put_bytes(&result.log, None)
            .map_err(|e| failure(format!("cannot store the log: {e}")))?;
        let _ = self.net.provide(log).await;
        let BuildStatus::Succeeded { artifact } = &result.status else {
            return Err(JobFailure {
                reason: status_reason(&result.status),
                log: Some(log),
                aborted: false,
            });
        };
        let (artifact, artifact_bytes) = self.store.put_file(artifact, None).map_err(|e| JobFailure {
            reason: format!("cannot store the artifact: {e}"),
            log: Some(log),
            aborted: false,
        })?;
        let _ = self.store.pin(&artifact, "built here; kept until replicated");
        let _ = self.net.provide(artifact).await;
        let attestation = Attestation {
            build_key: job.build_key,
            recipe_id: job.recipe_id,
            artifact,
            artifact_bytes,
            log,
            worker: self.key.public(),
            system_digest: self.system.digest(),
            started_at_ms,
            finished_at_ms: now_ms(),
        };
        let signed = Signed::sign(&self.key, &attestation);
        if let Err(e) = self.store.put_attestation(&signed) {
            warn!(error = %e, "cannot keep the attestation");
        }
        info!(job = %job.build_key, artifact = %artifact, "build done");
        Ok(signed)
    }

    /// Fetches the recipe by its id and checks the job against it.
    async fn load_recipe(&self, job: &JobRequest, from: PeerId) -> Result<Recipe, JobFailure> {
        self.fetch(job.recipe_id, "recipe", from).await?;
        let bytes = self
            .store
            .read(&job.recipe_id)
            .map_err(|e| failure(format!("cannot read the recipe: {e}")))?;
        let recipe = Recipe::from_canonical_bytes(&bytes)
            .map_err(|e| failure(format!("recipe {} is not valid: {e}", job.recipe_id)))?;
        let chosen: Vec<(String, String)> = job.options.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let resolved: BTreeMap<String, String> = recipe.resolve_options(&chosen).map_err(|e| failure(e.to_string()))?;
        if resolved != job.options || build_key(&job.recipe_id, &resolved, &job.requirements) != job.build_key {
            return Err(failure(
                "the job's build key does not match its recipe, options and requirements",
            ));
        }
        Ok(recipe)
    }

    /// Fetches an input, from `from` first, then from the DHT's providers.
    async fn fetch(&self, hash: Hash, what: &str, from: PeerId) -> Result<(), JobFailure> {
        blobs::fetch_from(&self.net, &self.store, hash, &[from], Arc::new(NoProgress))
            .await
            .map(|_| ())
            .map_err(|e| JobFailure {
                aborted: true,
                ..failure(format!("cannot fetch the {what} {hash}: {e}"))
            })
    }

    async fn prepare_source(&self, recipe: &Recipe, job: &JobRequest, from: PeerId) -> Result<SourceInput, JobFailure> {
        match &recipe.source {
            Source::None => Ok(SourceInput::None),
            Source::Git { url, rev } => Ok(SourceInput::Git {
                url: url.clone(),
                rev: rev.clone(),
            }),
            Source::Blob(hash) => {
                self.fetch(*hash, "source", from).await?;
                let path = self
                    .store
                    .dir()
                    .join("builds")
                    .join(format!("source-{}.tar", job.build_key));
                self.store
                    .export(hash, &path)
                    .map_err(|e| failure(format!("cannot prepare the source: {e}")))?;
                Ok(SourceInput::Archive(path))
            }
        }
    }

    /// Advertises this worker every few seconds until the network stops.
    pub async fn advertise(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(ADVERT_MS));
        loop {
            tick.tick().await;
            let advert = WorkerAdvert {
                system: self.system.clone(),
                max_jobs: self.policy.max_jobs,
                running_jobs: self.running.load(Ordering::SeqCst),
                waiting_because: self
                    .sandbox
                    .isolation_problem()
                    .map(|p| format!("cannot isolate builds: {p}")),
                sequence: self.sequence.fetch_add(1, Ordering::SeqCst),
                running: self.building(),
            };
            let Ok(bytes) = encode_gossip(&self.key, &Gossip::V1(GossipV1::Worker(advert))) else {
                continue;
            };
            if let Err(e) = self.net.publish(topics::WORKERS, bytes).await {
                tracing::debug!(error = %e, "worker advert not published");
            }
        }
    }
}

/// Gossips the tail of a running build's log whenever it grew, so the
/// requester following it sees what it does.
async fn report_progress(net: NetClient, key: SecretKey, build_key: Hash, log: crate::sandbox::Log) {
    let mut tick = tokio::time::interval(Duration::from_millis(PROGRESS_MS));
    let mut reported = 0;
    loop {
        tick.tick().await;
        let (tail, total) = log.tail(PROGRESS_TAIL_BYTES);
        if total == reported {
            continue;
        }
        reported = total;
        let message = Gossip::V1(GossipV1::Progress {
            build_key,
            log_tail: tail,
        });
        if let Ok(bytes) = encode_gossip(&key, &message) {
            let _ = net.publish(topics::RESULTS, bytes).await;
        }
    }
}

fn status_reason(status: &BuildStatus) -> String {
    match status {
        BuildStatus::Succeeded { .. } => "succeeded".into(),
        BuildStatus::StepFailed { step, status } => format!("step {step} failed: {status}"),
        BuildStatus::TimedOut { after } => format!("killed after its time limit of {} s", after.as_secs()),
        BuildStatus::MissingOutput { output } => format!("output {output:?} was not produced"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_protocol::{PublisherSignature, Requirements};

    fn job(publisher: Option<PublisherSignature>, requirement: &str) -> JobRequest {
        let mut requirements = Requirements::new();
        requirements.set_from_str(requirement).unwrap();
        JobRequest {
            build_key: Hash::of(b"k"),
            recipe_id: Hash::of(b"recipe"),
            recipe_name: "r".into(),
            recipe_version: "1".into(),
            publisher,
            options: BTreeMap::new(),
            requirements,
            emails: vec![],
            requested_at_ms: 0,
        }
    }

    fn system() -> SystemInfo {
        SystemInfo {
            os: "linux".into(),
            arch: "x86_64".into(),
            ..SystemInfo::default()
        }
    }

    #[test]
    fn refusals_say_why() {
        let publisher = SecretKey::from_bytes(&[3; 32]);
        let stranger = SecretKey::from_bytes(&[4; 32]);
        let policy = WorkerPolicy {
            max_jobs: 1,
            idle_only: false,
            trust: Trust::Publishers(BTreeSet::from([publisher.public()])),
            allow_network: false,
            coordinators: None,
        };
        let signed = Some(PublisherSignature::sign(&publisher, &Hash::of(b"recipe")));
        assert_eq!(
            decide(&policy, &system(), &job(signed.clone(), "os=linux"), 0, None),
            Ok(())
        );
        let busy = decide(&policy, &system(), &job(signed.clone(), "os=linux"), 1, None).unwrap_err();
        assert!(busy.contains("--max-jobs"), "{busy}");
        let unsigned = decide(&policy, &system(), &job(None, "os=linux"), 0, None).unwrap_err();
        assert!(unsigned.contains("not signed"), "{unsigned}");
        let other = Some(PublisherSignature::sign(&stranger, &Hash::of(b"recipe")));
        assert!(decide(&policy, &system(), &job(other, "os=linux"), 0, None)
            .unwrap_err()
            .contains("not trusted"));
        let wrong_recipe = Some(PublisherSignature::sign(&publisher, &Hash::of(b"another recipe")));
        assert!(decide(&policy, &system(), &job(wrong_recipe, "os=linux"), 0, None)
            .unwrap_err()
            .contains("does not verify"));
        let mismatch = decide(&policy, &system(), &job(signed, "arch=aarch64"), 0, None).unwrap_err();
        assert!(mismatch.contains("arch=x86_64 (wanted arch=aarch64)"), "{mismatch}");
        let open = WorkerPolicy {
            trust: Trust::AnyRecipe,
            ..policy
        };
        assert_eq!(decide(&open, &system(), &job(None, "os=linux"), 0, None), Ok(()));
        let busy = busy_because(1.7, 2);
        assert_eq!(
            decide(&open, &system(), &job(None, "os=linux"), 0, busy.clone()),
            Ok(()),
            "not idle-only"
        );
        let idle_only = WorkerPolicy {
            idle_only: true,
            ..open
        };
        let waits = decide(&idle_only, &system(), &job(None, "os=linux"), 0, busy).unwrap_err();
        assert!(
            waits.contains("idle-only: the machine is in use (load 1.70 on 2 cpus"),
            "{waits}"
        );
        assert_eq!(busy_because(0.9, 2), None);
        assert!(load_average().is_some());
    }
}
