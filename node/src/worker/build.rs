//! One assigned build: fetch the recipe (checked against the job) and the
//! source, build in the sandbox while gossiping the log's tail, store the
//! artifact and the log, sign the attestation, and report the outcome.

use libp2p::PeerId;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use kiln_protocol::contrib::{BuildEnd, BuildRecord};
use kiln_protocol::messages::{encode_gossip, topics, BuildOutcome, Gossip, GossipV1, JobRequest};
use kiln_protocol::{Attestation, Hash, Recipe, SecretKey, Signed, Source};
use tracing::{info, warn};

use crate::blobs;
use crate::blobs::NoProgress;
use crate::clock::now_ms;
use crate::net::NetClient;
use sandbox::{BuildSpec, BuildStatus, SourceInput, Steer};

use super::*;

/// How often a running build's log tail is gossiped (when it grew), and
/// how much of it.
const PROGRESS_MS: u64 = 2_000;
const PROGRESS_TAIL_BYTES: usize = 1024;
/// How long the worker keeps trying to publish an outcome.
const OUTCOME_PUBLISH_MS_MAX: u64 = 60_000;

/// Why a build failed, with its log if there is one.
pub(super) struct JobFailure {
    reason: String,
    log: Option<Hash>,
    /// Not the recipe's fault: the build never started because its inputs
    /// could not be fetched, or the worker gave it up for its owner.
    aborted: bool,
}

fn failure(reason: impl Into<String>) -> JobFailure {
    JobFailure {
        reason: reason.into(),
        log: None,
        aborted: false,
    }
}

/// What a build took of the machine, for its record.
#[derive(Default)]
pub(super) struct Used {
    cpu_time: Option<Duration>,
    paused: Duration,
}

impl Worker {
    pub(super) async fn build(&self, job: JobRequest, attempt: u32, from: PeerId) {
        self.set_building(job.build_key, true);
        let started_at_ms = now_ms();
        let mut used = Used::default();
        let (steer, steered) = tokio::sync::watch::channel(Steer::Run);
        self.steer(job.build_key, from, steer.clone());
        let ended = self.run_job(&job, from, &mut used, (&steer, steered)).await;
        self.unsteer(&job.build_key);
        self.keep_record(&job, started_at_ms, &used, &ended);
        let outcome = match ended {
            Ok(attestation) => BuildOutcome::Done { attestation },
            Err(failed) if failed.aborted => {
                warn!(job = %job.build_key, reason = failed.reason, "build abandoned");
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
    pub(super) async fn publish(&self, topic: &'static str, message: Gossip) {
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

    /// Keeps the build's record for `kiln contributions`.
    fn keep_record(
        &self,
        job: &JobRequest,
        started_at_ms: u64,
        used: &Used,
        ended: &Result<Signed<Attestation>, JobFailure>,
    ) {
        let ended = match ended {
            Ok(attestation) => BuildEnd::Built {
                attestation: attestation.clone(),
            },
            Err(failed) if failed.aborted => BuildEnd::Abandoned {
                reason: failed.reason.clone(),
            },
            Err(failed) => BuildEnd::Failed {
                reason: failed.reason.clone(),
            },
        };
        let record = BuildRecord {
            build_key: job.build_key,
            recipe: format!("{} {}", job.recipe_name, job.recipe_version),
            started_at_ms,
            finished_at_ms: now_ms(),
            paused_ms: u64::try_from(used.paused.as_millis()).unwrap_or(u64::MAX),
            cpu_ms: used.cpu_time.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            ended,
        };
        let store = self.store.clone();
        // A small write with an fsync: off the async threads, not waited for.
        tokio::task::spawn_blocking(move || crate::contributions::record_build(&store, record));
    }

    pub(super) async fn run_job(
        &self,
        job: &JobRequest,
        from: PeerId,
        used: &mut Used,
        (steer, steered): (&tokio::sync::watch::Sender<Steer>, tokio::sync::watch::Receiver<Steer>),
    ) -> Result<Signed<Attestation>, JobFailure> {
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
        let log = sandbox::Log::default();
        let progress = tokio::spawn(report_progress(
            self.net.clone(),
            SecretKey::from_bytes(&self.key.to_bytes()),
            job.build_key,
            log.clone(),
        ));
        let result = self
            .yielding(job.build_key, self.sandbox.run_steered(&spec, &log, steered), steer)
            .await;
        progress.abort();
        if let SourceInput::Archive(path) = &spec.source {
            let _ = std::fs::remove_file(path);
        }
        let result = result.map_err(|e| failure(e.to_string()))?;
        used.cpu_time = result.cpu_time;
        used.paused = result.paused;
        // Storing hashes and fsyncs: off the runtime.
        let (store, log_bytes) = (self.store.clone(), result.log.clone());
        let (log, _) = tokio::task::spawn_blocking(move || store.put_bytes(&log_bytes, None))
            .await
            .map_err(|e| failure(e.to_string()))?
            .map_err(|e| failure(format!("cannot store the log: {e}")))?;
        let _ = self.net.provide(log).await;
        let BuildStatus::Succeeded { artifact } = &result.status else {
            return Err(JobFailure {
                reason: status_reason(&result.status),
                log: Some(log),
                // Given up for the owner: not the recipe's fault.
                aborted: matches!(result.status, BuildStatus::GivenUp { .. }),
            });
        };
        let (store, built) = (self.store.clone(), artifact.clone());
        let stored = tokio::task::spawn_blocking(move || {
            let stored = store.put_file(&built, None)?;
            store.pin(&stored.0, "built here; kept until replicated")?;
            Ok::<_, kiln_store::StoreError>(stored)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|stored| stored.map_err(|e| e.to_string()));
        let (artifact, artifact_bytes) = stored.map_err(|e| JobFailure {
            reason: format!("cannot store the artifact: {e}"),
            log: Some(log),
            aborted: false,
        })?;
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
    pub(super) async fn load_recipe(&self, job: &JobRequest, from: PeerId) -> Result<Recipe, JobFailure> {
        self.fetch(job.recipe_id, "recipe", from).await?;
        blobs::job_recipe(&self.store, job).await.map_err(failure)
    }

    /// Fetches an input, from `from` first, then from the DHT's providers.
    pub(super) async fn fetch(&self, hash: Hash, what: &str, from: PeerId) -> Result<(), JobFailure> {
        blobs::fetch_from(&self.net, &self.store, hash, &[from], Arc::new(NoProgress))
            .await
            .map(|_| ())
            .map_err(|e| JobFailure {
                aborted: true,
                ..failure(format!("cannot fetch the {what} {hash}: {e}"))
            })
    }

    pub(super) async fn prepare_source(
        &self,
        recipe: &Recipe,
        job: &JobRequest,
        from: PeerId,
    ) -> Result<SourceInput, JobFailure> {
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
                let (store, hash, target) = (self.store.clone(), *hash, path.clone());
                tokio::task::spawn_blocking(move || store.export(&hash, &target))
                    .await
                    .map_err(|e| failure(e.to_string()))?
                    .map_err(|e| failure(format!("cannot prepare the source: {e}")))?;
                Ok(SourceInput::Archive(path))
            }
        }
    }
}

/// Gossips the tail of a running build's log whenever it grew, so the
/// requester following it sees what it does.
async fn report_progress(net: NetClient, key: SecretKey, build_key: Hash, log: sandbox::Log) {
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
        BuildStatus::Stopped { reason } => format!("stopped: {reason}"),
        BuildStatus::GivenUp { reason } => format!("given up: {reason}"),
    }
}
