//! What the coordinator's decisions lead to outside its own state: holding
//! a job's inputs, offering a job to a worker, copying a built artifact,
//! and releasing an artifact this node built once another holds it.

use std::sync::Arc;
use std::time::Duration;

use kiln_protocol::messages::{JobRequest, Settlement, WorkReply, WorkReplyV1, WorkRequest};
use kiln_protocol::{Attestation, Hash, PublicKey, Recipe, Signed, Source};
use kiln_store::Store;
use libp2p::PeerId;
use tracing::{info, warn};

use crate::blobs;
use crate::blobs::NoProgress;
use crate::net::frames::{read_frame, write_frame};
use crate::net::identity::peer_id_of;
use crate::net::{NetClient, WORK_PROTOCOL};

/// How long a worker may take to answer an assignment.
const ASSIGN_REPLY_MS_MAX: u64 = 10_000;

/// Unpins an artifact this node built (and its log) once a coordinator's
/// settlement says another peer holds it too: it stays in the store as a
/// cache, evictable under `--max-store-size`, instead of filling a
/// contributor's disk.
pub(super) fn release_if_replicated(store: &Store, me: &PublicKey, settlement: &Settlement) {
    // This node's build of the settled artifact, once another peer holds
    // it too; a build of another artifact is not what anyone gets.
    let replicated = settlement.holders() >= 2;
    let agreed = settlement.agreed().into_iter().map(|a| (a, replicated, true));
    let disagreed = settlement.disagreed().into_iter().map(|a| (a, true, false));
    for (attestation, release, settled_on) in agreed.chain(disagreed) {
        let Ok(a) = attestation.verify() else {
            continue;
        };
        if a.worker != *me || !release {
            continue;
        }
        for hash in [a.artifact, a.log] {
            if !store.unpin(&hash).unwrap_or(false) {
                continue;
            }
            if settled_on {
                info!(blob = %hash, "another peer holds this build now; unpinned here (kept as a cache)");
            } else {
                info!(blob = %hash, "this build was not the artifact settled on; unpinned here (kept as a cache)");
            }
        }
    }
}

/// Unpins a recipe and its source once no open job uses them: they stay
/// in the store as a cache, evictable under the cap. Reads the recipe off
/// the runtime (store work is blocking).
pub(super) fn release_inputs(store: &Store, recipe_id: Hash) {
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        let source = store
            .read(&recipe_id)
            .ok()
            .and_then(|bytes| Recipe::from_canonical_bytes(&bytes).ok())
            .and_then(|recipe| match recipe.source {
                Source::Blob(source) => Some(source),
                _ => None,
            });
        for hash in std::iter::once(recipe_id).chain(source) {
            if let Err(e) = store.unpin(&hash) {
                warn!(blob = %hash, error = %e, "an input of an ended job stays pinned");
            }
        }
    });
}

/// Fetches a job's recipe and source (from `hints` first), checks the
/// recipe against the job, and pins both while the job is open.
/// Returns the bytes the inputs take (the recipe and its source).
pub async fn hold_inputs(net: &NetClient, store: &Store, job: &JobRequest, hints: &[PeerId]) -> Result<u64, String> {
    blobs::fetch_from(net, store, job.recipe_id, hints, Arc::new(NoProgress))
        .await
        .map_err(|e| format!("cannot fetch the recipe {}: {e}", job.recipe_id))?;
    let recipe = blobs::job_recipe(store, job).await?;
    let reason = format!("input of job {}", job.build_key);
    let _ = store.pin(&job.recipe_id, &reason);
    let mut bytes = store.size(&job.recipe_id).unwrap_or(0);
    if let Source::Blob(source) = &recipe.source {
        blobs::fetch_from(net, store, *source, hints, Arc::new(NoProgress))
            .await
            .map_err(|e| format!("cannot fetch the source {source}: {e}"))?;
        let _ = store.pin(source, &reason);
        bytes += store.size(source).unwrap_or(0);
        let _ = net.provide(*source).await;
    }
    let _ = net.provide(job.recipe_id).await;
    Ok(bytes)
}

/// The ed25519 key inside a peer id (Kiln peer ids always hold one).
pub fn public_key_of(peer: &PeerId) -> Option<PublicKey> {
    let multihash = peer.as_ref();
    let public = libp2p::identity::PublicKey::try_decode_protobuf(multihash.digest()).ok()?;
    let ed25519 = public.try_into_ed25519().ok()?;
    Some(PublicKey(ed25519.to_bytes()))
}

/// Offers a job to a worker over `/kiln/work/1` and reads its answer.
pub(super) async fn offer(
    net: &NetClient,
    worker: PublicKey,
    job: JobRequest,
    attempt: u32,
) -> std::io::Result<WorkReplyV1> {
    ask_worker(net, worker, &WorkRequest::AssignV1 { job, attempt }).await
}

/// Asks a worker over `/kiln/work/1` to stop a build nobody wants any more.
pub(super) async fn stop(net: &NetClient, worker: PublicKey, build_key: Hash) -> std::io::Result<WorkReplyV1> {
    let reason = "cancelled: every requester of this build took its request back".to_string();
    ask_worker(net, worker, &WorkRequest::StopV1 { build_key, reason }).await
}

/// One request to a worker over `/kiln/work/1`, and its answer.
async fn ask_worker(net: &NetClient, worker: PublicKey, request: &WorkRequest) -> std::io::Result<WorkReplyV1> {
    let peer = peer_id_of(&worker).ok_or_else(|| std::io::Error::other("not a peer key"))?;
    let mut control = net.stream_control();
    let open = control.open_stream(peer, WORK_PROTOCOL);
    let mut stream = tokio::time::timeout(Duration::from_millis(ASSIGN_REPLY_MS_MAX), open)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no stream"))?
        .map_err(std::io::Error::other)?;
    write_frame(&mut stream, request).await?;
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
pub(super) async fn replicate(
    net: &NetClient,
    store: &Store,
    attestation: &Signed<Attestation>,
) -> Result<u32, String> {
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
