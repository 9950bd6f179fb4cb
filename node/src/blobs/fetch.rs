//! The fetcher side of `/kiln/blob/1`: one fetch of a blob at a time per
//! store, hinted providers first and then the DHT's, an outline (size and
//! range hashes that must merge into the blob hash) from the first provider
//! that gives one, then the download from every good provider at once.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt};
use kiln_protocol::messages::{encode_frame, BlobReply, BlobReplyV1, BlobRequest};
use kiln_protocol::ranges::{self, RangeHash, RANGE_BYTES};
use kiln_protocol::Hash;
use kiln_store::{AlignedBuffer, Store};
use libp2p::PeerId;
use tokio::sync::Notify;
use tracing::{debug, info};

use super::download::{
    collect_ranges, download_from, write_ranges, BufferPool, Plan, FETCH_IO_MS_MAX, STREAMS_PER_PROVIDER,
    STREAM_FAILURES_MAX, WRITES_QUEUED_MAX,
};
use super::{FetchError, Progress, ProviderFault};
use crate::net::frames::{open_stream, read_frame};
use crate::net::{NetClient, PathKind, BLOB_PROTOCOL};

/// Fetches `hash` into `store` from whichever providers the DHT knows,
/// resuming what an earlier interrupted fetch left behind. Returns the
/// blob's size.
pub async fn fetch(net: &NetClient, store: &Store, hash: Hash, progress: Arc<dyn Progress>) -> Result<u64, FetchError> {
    fetch_from(net, store, hash, &[], progress).await
}

/// [`fetch`], asking `hints` first (peers known to hold the blob, such as
/// the requester that sent a job); the DHT's providers if they fail.
pub async fn fetch_from(
    net: &NetClient,
    store: &Store,
    hash: Hash,
    hints: &[PeerId],
    progress: Arc<dyn Progress>,
) -> Result<u64, FetchError> {
    if let Some(size) = store.size(&hash) {
        progress.start(size, size);
        return Ok(size);
    }
    // One fetch of a blob at a time in this process (a worker's build and
    // its standby may want the same recipe): the second waits, then finds
    // the blob stored.
    let gate = fetch_gate(store, hash);
    let _turn = gate.lock().await;
    if let Some(size) = store.size(&hash) {
        progress.start(size, size);
        return Ok(size);
    }
    if !hints.is_empty() {
        match fetch_with(net, store, hash, hints.to_vec(), progress.clone()).await {
            Ok(size) => return Ok(size),
            Err(e) => debug!(blob = %hash, error = %e, "hinted providers failed; asking the DHT"),
        }
    }
    let providers = net.providers(hash).await?;
    if providers.is_empty() {
        return Err(FetchError::NoProviders(hash));
    }
    fetch_with(net, store, hash, providers, progress).await
}

type Gates = Mutex<HashMap<(std::path::PathBuf, Hash), std::sync::Weak<tokio::sync::Mutex<()>>>>;

/// The lock that serialises fetches of `hash` into `store`.
fn fetch_gate(store: &Store, hash: Hash) -> Arc<tokio::sync::Mutex<()>> {
    static GATES: std::sync::OnceLock<Gates> = std::sync::OnceLock::new();
    let gates = GATES.get_or_init(Default::default);
    let Ok(mut gates) = gates.lock() else {
        return Arc::new(tokio::sync::Mutex::new(()));
    };
    gates.retain(|_, gate| gate.strong_count() > 0);
    let key = (store.dir().to_path_buf(), hash);
    if let Some(gate) = gates.get(&key).and_then(std::sync::Weak::upgrade) {
        return gate;
    }
    let gate = Arc::new(tokio::sync::Mutex::new(()));
    gates.insert(key, Arc::downgrade(&gate));
    gate
}

/// Where a download puts its checked ranges.
enum Target<'a> {
    /// The store's partial blob: resumable, and kept.
    Store(&'a Store),
    /// Memory, for a blob of at most this many bytes.
    Memory { bytes_max: u64 },
}

/// What a download into a [`Target`] gave.
enum Landed {
    /// The blob is in the store; its size.
    Stored(u64),
    /// The whole blob, every range checked.
    InMemory(Vec<u8>),
    /// The blob has this many bytes, more than the memory target takes:
    /// nothing was downloaded.
    TooLarge(u64),
}

async fn fetch_with(
    net: &NetClient,
    store: &Store,
    hash: Hash,
    providers: Vec<PeerId>,
    progress: Arc<dyn Progress>,
) -> Result<u64, FetchError> {
    match download(net, Target::Store(store), hash, providers, progress).await? {
        Landed::Stored(bytes) => Ok(bytes),
        Landed::InMemory(blob) => Ok(blob.len() as u64),
        Landed::TooLarge(bytes) => Ok(bytes),
    }
}

/// Fetches a blob of at most `bytes_max` bytes into memory, from the DHT's
/// providers, every range checked against the hash: for a short-lived
/// client that wants a small blob in a file, and neither keeps nor serves
/// it (the store's index costs more to open and close than the transfer).
/// `Ok(None)` if the blob is larger: nothing was downloaded.
pub async fn fetch_small(
    net: &NetClient,
    hash: Hash,
    bytes_max: u64,
    progress: Arc<dyn Progress>,
) -> Result<Option<Vec<u8>>, FetchError> {
    let in_memory = |landed| match landed {
        Landed::InMemory(blob) => Some(blob),
        Landed::Stored(_) | Landed::TooLarge(_) => None,
    };
    let target = || Target::Memory { bytes_max };
    let first = net.first_providers(hash).await?;
    if first.is_empty() {
        return Err(FetchError::NoProviders(hash));
    }
    let failed = match download(net, target(), hash, first.clone(), progress.clone()).await {
        Ok(landed) => return Ok(in_memory(landed)),
        Err(e) => e,
    };
    // The first answer's providers failed (gone, or lying): the whole
    // lookup may find others.
    debug!(blob = %hash, error = %failed, "the first providers found failed; looking further");
    let providers = match net.providers(hash).await {
        Ok(providers) if providers.iter().any(|p| !first.contains(p)) => providers,
        _ => return Err(failed),
    };
    download(net, target(), hash, providers, progress).await.map(in_memory)
}

async fn download(
    net: &NetClient,
    target: Target<'_>,
    hash: Hash,
    providers: Vec<PeerId>,
    progress: Arc<dyn Progress>,
) -> Result<Landed, FetchError> {
    info!(blob = %hash, providers = providers.len(), "fetching");
    let providers = connected_first(net, providers).await;
    let mut faults: HashMap<PeerId, ProviderFault> = HashMap::new();
    let (blob_bytes, list) = outline(net, &providers, hash, &mut faults)
        .await
        .ok_or_else(|| all_failed(hash, &faults))?;
    let good: Vec<PeerId> = providers
        .iter()
        .copied()
        .filter(|p| !matches!(faults.get(p), Some(ProviderFault::Lying(_))))
        .collect();
    let (writes, write_rx) = tokio::sync::mpsc::channel::<(u64, AlignedBuffer)>(WRITES_QUEUED_MAX);
    let buffers = Arc::new(BufferPool::default());
    let (missing, writer): (Vec<u64>, _) = match target {
        Target::Store(store) => {
            // Creating (or reopening) the partial file syncs it: off the runtime.
            let opening = store.clone();
            let partial = tokio::task::spawn_blocking(move || opening.begin_partial(&hash, blob_bytes))
                .await
                .map_err(|e| FetchError::Writer(e.to_string()))??;
            let missing = missing_range_indexes(&partial.missing_ranges(), blob_bytes);
            let buffers = buffers.clone();
            let writer = tokio::task::spawn_blocking(move || -> Result<Option<Landed>, FetchError> {
                let complete = write_ranges(partial, write_rx, &buffers)?;
                Ok(complete.then_some(Landed::Stored(blob_bytes)))
            });
            (missing, writer)
        }
        Target::Memory { bytes_max } if blob_bytes > bytes_max => return Ok(Landed::TooLarge(blob_bytes)),
        Target::Memory { .. } => {
            let missing = (0..ranges::range_count(blob_bytes)).collect();
            let buffers = buffers.clone();
            let writer = tokio::task::spawn_blocking(move || -> Result<Option<Landed>, FetchError> {
                Ok(collect_ranges(write_rx, blob_bytes, &buffers).map(Landed::InMemory))
            });
            (missing, writer)
        }
    };
    let missing_bytes: u64 = missing.iter().map(|i| ranges::range_len(blob_bytes, *i)).sum();
    let good = by_path(net, good, missing_bytes, &mut faults).await;
    if good.is_empty() {
        drop(writes);
        let _ = writer.await;
        return Err(all_failed(hash, &faults));
    }
    if missing_bytes < blob_bytes {
        info!(blob = %hash, have_bytes = blob_bytes - missing_bytes, blob_bytes, "resuming an interrupted fetch");
    }
    progress.start(blob_bytes, blob_bytes - missing_bytes);
    let plan = Arc::new(Plan {
        hash,
        blob_bytes,
        list,
        queue: Mutex::new(missing.into()),
        in_flight: AtomicU64::new(0),
        changed: Notify::new(),
        faults: Mutex::new(faults),
        progress,
        buffers,
    });
    // No more streams to a provider than there are ranges to fetch: each
    // stream opened costs a protocol negotiation on both sides.
    let queued = plan.queue.lock().map(|q| q.len()).unwrap_or(STREAMS_PER_PROVIDER);
    let streams = STREAMS_PER_PROVIDER.min(queued.max(1));
    let mut tasks = Vec::new();
    for peer in good {
        for _ in 0..streams {
            let (net, plan, writes) = (net.clone(), plan.clone(), writes.clone());
            tasks.push(tokio::spawn(download_from(net, peer, plan, writes)));
        }
    }
    drop(writes);
    for task in tasks {
        let _ = task.await;
    }
    let landed: Result<Option<Landed>, FetchError> = writer.await.map_err(|e| FetchError::Writer(e.to_string()))?;
    match landed? {
        Some(landed) => Ok(landed),
        None => {
            let reasons = plan.faults.lock().map(|f| describe(&f)).unwrap_or_default();
            Err(FetchError::AllProvidersFailed { hash, reasons })
        }
    }
}

/// Providers this node is connected to come first: the outline is asked of
/// them before any that still has to be dialled (one that went away since
/// it announced the blob costs a failed dial and the retries' pauses).
async fn connected_first(net: &NetClient, mut providers: Vec<PeerId>) -> Vec<PeerId> {
    if let Ok(connected) = net.connected_peers().await {
        providers.sort_by_key(|p| !connected.contains(p));
    }
    providers
}

/// Bytes a relayed fetch needs beyond the blob's own: requests, range
/// hashes, encryption and framing.
const RELAY_OVERHEAD_BYTES: u64 = 64 * 1024;

/// Keeps the providers this fetch can download from, after any hole punch
/// in progress ended (a relayed connection is replaced by a direct one
/// when the routers allow it; DCUtR starts it as the connection opens).
/// A provider reachable only through a relay whose circuits carry less
/// than what is left to fetch is dropped with the reason, rather than
/// started and cut off by the relay partway.
async fn by_path(
    net: &NetClient,
    providers: Vec<PeerId>,
    missing_bytes: u64,
    faults: &mut HashMap<PeerId, ProviderFault>,
) -> Vec<PeerId> {
    let paths = futures::future::join_all(
        providers
            .iter()
            .map(|peer| net.path(*peer, crate::net::HOLE_PUNCH_WAIT_MS_MAX)),
    )
    .await;
    let mut usable = Vec::new();
    for (peer, path) in providers.into_iter().zip(paths) {
        let Ok(Some(path)) = path else {
            // Not connected (yet): the download dials it.
            usable.push(peer);
            continue;
        };
        if path.kind == PathKind::Relayed {
            if let Some(max) = path.data_max.filter(|max| missing_bytes + RELAY_OVERHEAD_BYTES > *max) {
                let why = if path.punch_failed {
                    "hole punching to it failed (a router on the way gives each destination its own port)"
                } else {
                    "no hole punch replaced the relayed connection in time"
                };
                faults.insert(
                    peer,
                    ProviderFault::Missing(format!(
                        "reachable only through a relay ({why}), and the relay carries at most {} per connection, \
                         less than the {} to fetch; fetch it from a provider that can be dialled (one with a public \
                         address or an open port), or ask the bootstrap peer's operator to raise --relay-circuit-bytes",
                        kiln_protocol::system::format_bytes(max),
                        kiln_protocol::system::format_bytes(missing_bytes + RELAY_OVERHEAD_BYTES),
                    )),
                );
                info!(peer = %peer, "provider reachable only through a relay too small for this blob; skipped");
                continue;
            }
        }
        info!(peer = %peer, path = path.kind.as_str(), "fetching from this provider");
        usable.push(peer);
    }
    usable
}

fn missing_range_indexes(missing: &[std::ops::Range<u64>], blob_bytes: u64) -> Vec<u64> {
    (0..ranges::range_count(blob_bytes))
        .filter(|i| {
            let start = i * RANGE_BYTES;
            let end = start + ranges::range_len(blob_bytes, *i);
            missing.iter().any(|m| m.start < end.max(start + 1) && m.end > start)
        })
        .collect()
}

/// Asks providers in turn for the blob's size and range hashes, until one
/// gives a list that merges into the hash.
async fn outline(
    net: &NetClient,
    providers: &[PeerId],
    hash: Hash,
    faults: &mut HashMap<PeerId, ProviderFault>,
) -> Option<(u64, Vec<RangeHash>)> {
    for peer in providers {
        // A stream can fail for reasons that have nothing to do with the
        // provider (a connection replaced while it opened): like range
        // downloads, try a few times before giving up on a provider.
        for attempt in 1..=STREAM_FAILURES_MAX {
            match ask_outline(net, *peer, hash).await {
                Ok(found) => return Some(found),
                Err(ProviderFault::Missing(why)) if attempt < STREAM_FAILURES_MAX => {
                    debug!(peer = %peer, why, attempt, "no outline from provider yet; trying again");
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                }
                Err(fault) => {
                    debug!(peer = %peer, fault = ?fault, "no outline from provider");
                    faults.insert(*peer, fault);
                    break;
                }
            }
        }
    }
    None
}

async fn ask_outline(net: &NetClient, peer: PeerId, hash: Hash) -> Result<(u64, Vec<RangeHash>), ProviderFault> {
    let mut stream = open_stream(net, peer, BLOB_PROTOCOL, FETCH_IO_MS_MAX)
        .await
        .map_err(|e| ProviderFault::Missing(e.to_string()))?;
    let io = |e: std::io::Error| ProviderFault::Missing(e.to_string());
    let frame =
        encode_frame(&BlobRequest::RangeHashesV1 { hash }).map_err(|e| ProviderFault::Missing(e.to_string()))?;
    stream.write_all(&frame).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    let reply = read_frame::<BlobReply>(&mut stream, FETCH_IO_MS_MAX)
        .await
        .map_err(io)?;
    let Some(BlobReply::V1(BlobReplyV1::RangeHashes { blob_bytes, count })) = reply else {
        return Err(ProviderFault::Missing(super::unexpected(reply.as_ref())));
    };
    let Some(expected) = ranges::range_hash_count(blob_bytes) else {
        return Err(ProviderFault::Lying(format!(
            "claims a blob of {blob_bytes} bytes, over Kiln's limit"
        )));
    };
    if count != expected {
        return Err(ProviderFault::Lying(format!(
            "{count} range hashes for a blob of {blob_bytes} bytes"
        )));
    }
    // An empty blob has no range to check when it arrives: its one hash is
    // checked here, or any hash could be "fetched" as an empty file.
    if blob_bytes == 0 && hash != Hash::of(&[]) {
        return Err(ProviderFault::Lying(
            "claims the blob is empty, but an empty blob has another hash".into(),
        ));
    }
    let mut bytes = vec![0u8; count as usize * 32];
    tokio::time::timeout(Duration::from_millis(FETCH_IO_MS_MAX), stream.read_exact(&mut bytes))
        .await
        .map_err(|_| ProviderFault::Missing("range hashes arrived too slowly".into()))?
        .map_err(io)?;
    let list: Vec<RangeHash> = bytes
        .chunks_exact(32)
        .map(|c| c.try_into().unwrap_or([0; 32]))
        .collect();
    if ranges::has_range_hashes(blob_bytes) && ranges::root_from_range_hashes(&list, blob_bytes) != Some(hash) {
        return Err(ProviderFault::Lying(
            "range hashes do not merge into the blob hash".into(),
        ));
    }
    let _ = stream.close().await;
    Ok((blob_bytes, list))
}

fn describe(faults: &HashMap<PeerId, ProviderFault>) -> String {
    faults
        .iter()
        .map(|(peer, fault)| match fault {
            ProviderFault::Missing(why) => format!("{peer}: {why}"),
            ProviderFault::Lying(why) => format!("{peer}: sent corrupt data ({why})"),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn all_failed(hash: Hash, faults: &HashMap<PeerId, ProviderFault>) -> FetchError {
    FetchError::AllProvidersFailed {
        hash,
        reasons: describe(faults),
    }
}
