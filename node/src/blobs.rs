//! The blob stream protocol (`/kiln/blob/1`): serving ranges of the blobs a
//! node holds, and fetching a blob from several providers at once, verifying
//! every range against the blob's hash before it is written.
//!
//! A stream carries requests and answers in turn: the fetcher writes one
//! request frame and then only reads until the answer is complete; the
//! provider reads one request and then only writes. Neither side ever
//! blocks writing while the other is writing (rust-libp2p#5410).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use kiln_protocol::messages::{encode_frame, BlobReply, BlobReplyV1, BlobRequest};
use kiln_protocol::ranges::{self, RangeHash, RANGE_BYTES};
use kiln_protocol::Hash;
use kiln_store::{AlignedBuffer, Store};
use libp2p::{PeerId, Stream};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{Notify, Semaphore};
use tracing::{debug, info, warn};

use crate::frames::read_frame;
use crate::metrics::{Metrics, METRICS};
use crate::net::{NetClient, BLOB_PROTOCOL};

/// Streams served at once; past this a fetcher is told to come back later.
const SERVE_STREAMS_MAX: usize = 64;
/// How long a provider waits for the next request on an open stream.
const SERVE_IDLE_MS_MAX: u64 = 30_000;
/// How long a fetcher waits for any answer or any piece of data.
const FETCH_IO_MS_MAX: u64 = 15_000;
/// Streams a fetcher opens to each provider.
const STREAMS_PER_PROVIDER: usize = 4;
/// Range-hash lists kept in memory by a provider.
const RANGE_HASH_CACHE_MAX: usize = 64;
/// Failed streams one download task tolerates before it gives up.
const STREAM_FAILURES_MAX: u32 = 3;
/// Ranges written to the partial blob but not yet handed to the writer.
const WRITES_QUEUED_MAX: usize = 16;

/// Range hashes of blobs this node serves, computed once per blob.
#[derive(Clone, Default)]
pub struct RangeHashCache(Arc<Mutex<VecDeque<CachedRangeHashes>>>);

type CachedRangeHashes = (Hash, Arc<Vec<RangeHash>>);

impl RangeHashCache {
    fn get(&self, hash: &Hash) -> Option<Arc<Vec<RangeHash>>> {
        let cache = self.0.lock().ok()?;
        cache.iter().find(|(h, _)| h == hash).map(|(_, v)| v.clone())
    }

    fn insert(&self, hash: Hash, value: Arc<Vec<RangeHash>>) {
        if let Ok(mut cache) = self.0.lock() {
            if cache.len() >= RANGE_HASH_CACHE_MAX {
                cache.pop_front();
            }
            cache.push_back((hash, value));
        }
    }
}

/// Computes (or recalls) the range hashes of a stored blob.
fn range_hashes(store: &Store, cache: &RangeHashCache, hash: &Hash) -> std::io::Result<Option<Arc<Vec<RangeHash>>>> {
    if let Some(found) = cache.get(hash) {
        return Ok(Some(found));
    }
    let Some(mut reader) = store.open_blob(hash).map_err(std::io::Error::other)? else {
        return Ok(None);
    };
    let mut hasher = ranges::RangeHasher::new();
    let mut buffer = vec![0u8; RANGE_BYTES as usize];
    loop {
        let n = std::io::Read::read(&mut reader, &mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    let (actual, list) = hasher.finish();
    if actual != *hash {
        warn!(blob = %hash, "stored blob does not match its hash; not serving it");
        return Ok(None);
    }
    let list = Arc::new(list);
    cache.insert(*hash, list.clone());
    Ok(Some(list))
}

/// Starts serving blob ranges from `store`. The protocol is registered
/// before this returns, so a peer told our address right after can use it.
pub fn spawn_server(net: &NetClient, store: Store) -> tokio::task::JoinHandle<()> {
    let incoming = net.stream_control().accept(BLOB_PROTOCOL);
    tokio::spawn(async move {
        match incoming {
            Ok(incoming) => serve(incoming, store).await,
            Err(e) => warn!(error = %e, "blob protocol already served"),
        }
    })
}

async fn serve(mut incoming: libp2p_stream::IncomingStreams, store: Store) {
    let permits = Arc::new(Semaphore::new(SERVE_STREAMS_MAX));
    let cache = RangeHashCache::default();
    while let Some((peer, stream)) = incoming.next().await {
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tokio::spawn(refuse_busy(stream));
            continue;
        };
        let (store, cache) = (store.clone(), cache.clone());
        tokio::spawn(async move {
            if let Err(e) = serve_stream(stream, store, cache).await {
                debug!(peer = %peer, error = %e, "blob stream ended");
            }
            drop(permit);
        });
    }
}

async fn refuse_busy(mut stream: Stream) {
    if let Ok(frame) = encode_frame(&BlobReply::V1(BlobReplyV1::Busy { retry_after_ms: 200 })) {
        let _ = stream.write_all(&frame).await;
        let _ = stream.close().await;
    }
}

async fn write_reply(stream: &mut Stream, reply: BlobReplyV1) -> std::io::Result<()> {
    let frame = encode_frame(&BlobReply::V1(reply)).map_err(std::io::Error::other)?;
    stream.write_all(&frame).await
}

async fn serve_stream(mut stream: Stream, store: Store, cache: RangeHashCache) -> std::io::Result<()> {
    // One buffer per stream, reused for every range it serves.
    let mut buffer = Vec::new();
    while let Some(request) = read_frame::<BlobRequest>(&mut stream, SERVE_IDLE_MS_MAX).await? {
        match request {
            BlobRequest::RangeHashesV1 { hash } => {
                let (store, cache2) = (store.clone(), cache.clone());
                let found = tokio::task::spawn_blocking(move || {
                    let list = range_hashes(&store, &cache2, &hash)?;
                    Ok::<_, std::io::Error>(list.map(|l| (store.size(&hash).unwrap_or(0), l)))
                })
                .await
                .map_err(std::io::Error::other)??;
                let Some((blob_bytes, list)) = found else {
                    write_reply(&mut stream, BlobReplyV1::NotFound).await?;
                    continue;
                };
                write_reply(
                    &mut stream,
                    BlobReplyV1::RangeHashes {
                        blob_bytes,
                        count: list.len() as u64,
                    },
                )
                .await?;
                stream.write_all(&list.concat()).await?;
            }
            BlobRequest::V1 { hash, offset, length } => {
                buffer = serve_range(&mut stream, &store, hash, offset, length, buffer).await?;
                // A peer may ask for ranges of up to RANGE_BYTES_MAX; keep
                // only a buffer of the usual size between requests.
                if buffer.capacity() > RANGE_BYTES as usize {
                    buffer = Vec::new();
                }
            }
        }
        stream.flush().await?;
    }
    Ok(())
}

/// Serves one range, reading it into `buffer`, which it gives back.
async fn serve_range(
    stream: &mut Stream,
    store: &Store,
    hash: Hash,
    offset: u64,
    length: u64,
    mut buffer: Vec<u8>,
) -> std::io::Result<Vec<u8>> {
    let Some(blob_bytes) = store.size(&hash) else {
        write_reply(stream, BlobReplyV1::NotFound).await?;
        return Ok(buffer);
    };
    let in_bounds = offset.checked_add(length).is_some_and(|end| end <= blob_bytes);
    if !in_bounds || length > kiln_protocol::messages::RANGE_BYTES_MAX {
        write_reply(stream, BlobReplyV1::BadRange { blob_bytes }).await?;
        return Ok(buffer);
    }
    let store = store.clone();
    let (read, buffer) = tokio::task::spawn_blocking(move || {
        let read = store.read_range_into(&hash, offset, length, &mut buffer);
        (read, buffer)
    })
    .await
    .map_err(std::io::Error::other)?;
    match read {
        Ok(()) => {
            write_reply(stream, BlobReplyV1::Data { blob_bytes, length }).await?;
            stream.write_all(&buffer).await?;
            Metrics::add(&METRICS.bytes_served, buffer.len() as u64);
        }
        Err(e) => {
            warn!(blob = %hash, error = %e, "cannot read a served blob");
            write_reply(stream, BlobReplyV1::NotFound).await?;
        }
    }
    Ok(buffer)
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no peer in the network holds {0} (the DHT lists no provider for it); check the hash, or publish it first with `kiln publish`")]
    NoProviders(Hash),
    #[error("every provider of {hash} failed ({reasons}); try again later")]
    AllProvidersFailed { hash: Hash, reasons: String },
    #[error("network: {0}")]
    Net(#[from] crate::net::NetError),
    #[error("store: {0}")]
    Store(#[from] kiln_store::StoreError),
    #[error("the download writer stopped: {0}")]
    Writer(String),
}

/// What went wrong with one provider: missing data is normal, lying is not.
#[derive(Debug)]
enum ProviderFault {
    Missing(String),
    Lying(String),
}

/// Where a download stands, for progress bars.
pub trait Progress: Send + Sync {
    fn start(&self, total_bytes: u64, done_bytes: u64);
    fn advance(&self, bytes: u64);
}

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

async fn fetch_with(
    net: &NetClient,
    store: &Store,
    hash: Hash,
    providers: Vec<PeerId>,
    progress: Arc<dyn Progress>,
) -> Result<u64, FetchError> {
    info!(blob = %hash, providers = providers.len(), "fetching");
    let mut faults: HashMap<PeerId, ProviderFault> = HashMap::new();
    let (blob_bytes, list) = outline(net, &providers, hash, &mut faults)
        .await
        .ok_or_else(|| all_failed(hash, &faults))?;
    let good: Vec<PeerId> = providers
        .iter()
        .copied()
        .filter(|p| !matches!(faults.get(p), Some(ProviderFault::Lying(_))))
        .collect();
    let partial = store.begin_partial(&hash, blob_bytes)?;
    let missing = missing_range_indexes(&partial.missing_ranges(), blob_bytes);
    let missing_bytes: u64 = missing.iter().map(|i| ranges::range_len(blob_bytes, *i)).sum();
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
        buffers: Arc::new(BufferPool::default()),
    });
    let (writes, write_rx) = tokio::sync::mpsc::channel::<(u64, AlignedBuffer)>(WRITES_QUEUED_MAX);
    let buffers = plan.buffers.clone();
    let writer = tokio::task::spawn_blocking(move || write_ranges(partial, write_rx, &buffers));
    let mut tasks = Vec::new();
    for peer in good {
        for _ in 0..STREAMS_PER_PROVIDER {
            let (net, plan, writes) = (net.clone(), plan.clone(), writes.clone());
            tasks.push(tokio::spawn(download_from(net, peer, plan, writes)));
        }
    }
    drop(writes);
    for task in tasks {
        let _ = task.await;
    }
    let complete = writer.await.map_err(|e| FetchError::Writer(e.to_string()))??;
    if !complete {
        let reasons = plan.faults.lock().map(|f| describe(&f)).unwrap_or_default();
        return Err(FetchError::AllProvidersFailed { hash, reasons });
    }
    Ok(blob_bytes)
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

fn write_ranges(
    mut partial: kiln_store::PartialBlob,
    mut writes: tokio::sync::mpsc::Receiver<(u64, AlignedBuffer)>,
    buffers: &BufferPool,
) -> Result<bool, kiln_store::StoreError> {
    // Progress is made durable on a second thread (one flush at a time, in
    // order) while this one goes on writing: the disk writes back during
    // the transfer instead of stalling it every PARTIAL_FLUSH_BYTES.
    let (flushes, pending) = std::sync::mpsc::sync_channel::<kiln_store::PendingFlush>(1);
    let syncer = std::thread::Builder::new()
        .name("kiln-fetch-sync".into())
        .spawn(move || pending.into_iter().try_for_each(kiln_store::PendingFlush::complete))
        .map_err(|e| kiln_store::StoreError::io("starting the sync thread", partial.path(), e))?;
    let mut written = Ok(());
    while let Some((offset, bytes)) = writes.blocking_recv() {
        match partial.write_at_deferred(offset, &bytes) {
            Ok(Some(flush)) => {
                if flushes.send(flush).is_err() {
                    break;
                }
            }
            Ok(None) => {}
            Err(e) => {
                written = Err(e);
                break;
            }
        }
        buffers.give(bytes);
    }
    drop(flushes);
    let synced = syncer.join().unwrap_or_else(|_| {
        Err(kiln_store::StoreError::io(
            "syncing",
            partial.path(),
            std::io::Error::other("the sync thread panicked"),
        ))
    });
    if synced.is_err() {
        partial.sync_failed();
    }
    written?;
    synced?;
    if !partial.is_complete() {
        partial.flush()?;
        return Ok(false);
    }
    // Every range was checked against range hashes that merge into the
    // blob hash before it was written: no need to read it all back.
    partial.finish_verified()?;
    Ok(true)
}

/// Range buffers the writer has finished with, for the next ranges: a
/// fetch then does not zero (and fault in) a fresh megabyte per range.
/// They are aligned, so the store writes whole ranges past the page cache.
#[derive(Default)]
struct BufferPool(Mutex<Vec<AlignedBuffer>>);

/// Buffers kept: as many as can be queued for the writer and in flight.
const POOLED_BUFFERS_MAX: usize = WRITES_QUEUED_MAX + 2 * STREAMS_PER_PROVIDER;

impl BufferPool {
    /// A buffer of `len` bytes (their contents are to be overwritten).
    fn take(&self, len: usize) -> AlignedBuffer {
        match self.0.lock().ok().and_then(|mut pool| pool.pop()) {
            Some(mut buffer) => {
                buffer.set_len(len);
                buffer
            }
            None => AlignedBuffer::with_len(len),
        }
    }

    fn give(&self, buffer: AlignedBuffer) {
        if let Ok(mut pool) = self.0.lock() {
            if pool.len() < POOLED_BUFFERS_MAX {
                pool.push(buffer);
            }
        }
    }
}

/// The ranges still to fetch, shared by every download task.
struct Plan {
    hash: Hash,
    blob_bytes: u64,
    list: Vec<RangeHash>,
    queue: Mutex<VecDeque<u64>>,
    /// Ranges taken from the queue and not yet written or given back.
    in_flight: AtomicU64,
    changed: Notify,
    faults: Mutex<HashMap<PeerId, ProviderFault>>,
    progress: Arc<dyn Progress>,
    buffers: Arc<BufferPool>,
}

impl Plan {
    /// The next range to fetch; waits while other tasks hold ranges they
    /// may still give back. `None` when every range is done.
    async fn next(&self) -> Option<u64> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(index) = self.queue.lock().ok()?.pop_front() {
                self.in_flight.fetch_add(1, Ordering::SeqCst);
                return Some(index);
            }
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return None;
            }
            changed.await;
        }
    }

    fn done(&self, index: u64) {
        let bytes = ranges::range_len(self.blob_bytes, index);
        self.progress.advance(bytes);
        Metrics::add(&METRICS.bytes_fetched, bytes);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    fn give_back(&self, index: u64) {
        if let Ok(mut queue) = self.queue.lock() {
            queue.push_front(index);
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    fn is_lying(&self, peer: &PeerId) -> bool {
        self.faults
            .lock()
            .map(|f| matches!(f.get(peer), Some(ProviderFault::Lying(_))))
            .unwrap_or(true)
    }

    /// A liar is dropped at once: none of its streams takes another range.
    fn blame_lying(&self, peer: PeerId, why: String) {
        warn!(peer = %peer, blob = %self.hash, why, "provider sent bytes that do not match the hash; dropping it");
        if let Ok(mut faults) = self.faults.lock() {
            faults.insert(peer, ProviderFault::Lying(why));
        }
    }

    /// A failed stream is retried a few times before its task gives up.
    fn note_missing(&self, peer: PeerId, fault: ProviderFault) {
        info!(peer = %peer, blob = %self.hash, fault = ?fault, "provider stream failed");
        if let Ok(mut faults) = self.faults.lock() {
            faults.entry(peer).or_insert(fault);
        }
    }

    fn check(&self, index: u64, data: &[u8]) -> bool {
        if ranges::has_range_hashes(self.blob_bytes) {
            ranges::range_hash(index, data).as_ref() == self.list.get(index as usize)
        } else {
            Hash::of(data) == self.hash
        }
    }
}

/// Downloads ranges from one provider over one stream until the queue is
/// empty or the provider fails. Returns the bytes it fetched.
async fn download_from(
    net: NetClient,
    peer: PeerId,
    plan: Arc<Plan>,
    writes: tokio::sync::mpsc::Sender<(u64, AlignedBuffer)>,
) -> u64 {
    let mut fetched = 0;
    let mut failures = 0;
    while failures < STREAM_FAILURES_MAX && !plan.is_lying(&peer) {
        let mut stream = match open_blob_stream(&net, peer).await {
            Ok(stream) => stream,
            Err(fault) => {
                failures += 1;
                plan.note_missing(peer, fault);
                continue;
            }
        };
        match download_over(&mut stream, peer, &plan, &writes, &mut fetched).await {
            Ok(()) => {
                let _ = stream.close().await;
                break;
            }
            Err(fault) => {
                failures += 1;
                plan.note_missing(peer, fault);
            }
        }
    }
    fetched
}

async fn open_blob_stream(net: &NetClient, peer: PeerId) -> Result<Stream, ProviderFault> {
    let mut control = net.stream_control();
    match tokio::time::timeout(
        Duration::from_millis(FETCH_IO_MS_MAX),
        control.open_stream(peer, BLOB_PROTOCOL),
    )
    .await
    {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(ProviderFault::Missing(format!("cannot open a stream: {e}"))),
        Err(_) => Err(ProviderFault::Missing("timed out opening a stream".into())),
    }
}

/// Fetches ranges over one stream until none are left (`Ok`), the provider
/// lies (`Ok`, with the provider marked), or the stream fails (`Err`).
async fn download_over(
    stream: &mut Stream,
    peer: PeerId,
    plan: &Plan,
    writes: &tokio::sync::mpsc::Sender<(u64, AlignedBuffer)>,
    fetched: &mut u64,
) -> Result<(), ProviderFault> {
    while !plan.is_lying(&peer) {
        let Some(index) = plan.next().await else { return Ok(()) };
        let offset = index * RANGE_BYTES;
        let length = ranges::range_len(plan.blob_bytes, index);
        match request_range(stream, plan.hash, offset, length, &plan.buffers).await {
            Ok(data) if plan.check(index, &data) => {
                *fetched += data.len() as u64;
                let sent = writes.send((offset, data)).await;
                plan.done(index);
                if sent.is_err() {
                    return Ok(());
                }
            }
            Ok(_) => {
                plan.give_back(index);
                plan.blame_lying(peer, format!("range {index} does not match its hash"));
            }
            Err(ProviderFault::Lying(why)) => {
                plan.give_back(index);
                plan.blame_lying(peer, why);
            }
            Err(fault) => {
                plan.give_back(index);
                return Err(fault);
            }
        }
    }
    Ok(())
}

async fn request_range(
    stream: &mut Stream,
    hash: Hash,
    offset: u64,
    length: u64,
    buffers: &BufferPool,
) -> Result<AlignedBuffer, ProviderFault> {
    let io = |e: std::io::Error| ProviderFault::Missing(e.to_string());
    let frame =
        encode_frame(&BlobRequest::V1 { hash, offset, length }).map_err(|e| ProviderFault::Missing(e.to_string()))?;
    stream.write_all(&frame).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    match read_frame::<BlobReply>(stream, FETCH_IO_MS_MAX).await.map_err(io)? {
        Some(BlobReply::V1(BlobReplyV1::Data { length: sent, .. })) if sent == length => {
            let mut data = buffers.take(length as usize);
            tokio::time::timeout(Duration::from_millis(FETCH_IO_MS_MAX), stream.read_exact(&mut data))
                .await
                .map_err(|_| ProviderFault::Missing("data arrived too slowly".into()))?
                .map_err(io)?;
            Ok(data)
        }
        Some(BlobReply::V1(BlobReplyV1::Data { length: sent, .. })) => Err(ProviderFault::Lying(format!(
            "sent {sent} bytes for a range of {length}"
        ))),
        Some(BlobReply::V1(BlobReplyV1::NotFound)) => Err(ProviderFault::Missing("does not hold the blob".into())),
        Some(other) => Err(ProviderFault::Missing(format!("answered {other:?}"))),
        None => Err(ProviderFault::Missing("closed the stream".into())),
    }
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
    let mut control = net.stream_control();
    let mut stream = tokio::time::timeout(
        Duration::from_millis(FETCH_IO_MS_MAX),
        control.open_stream(peer, BLOB_PROTOCOL),
    )
    .await
    .map_err(|_| ProviderFault::Missing("timed out opening a stream".into()))?
    .map_err(|e| ProviderFault::Missing(format!("cannot open a stream: {e}")))?;
    let io = |e: std::io::Error| ProviderFault::Missing(e.to_string());
    let frame =
        encode_frame(&BlobRequest::RangeHashesV1 { hash }).map_err(|e| ProviderFault::Missing(e.to_string()))?;
    stream.write_all(&frame).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    let reply = read_frame::<BlobReply>(&mut stream, FETCH_IO_MS_MAX)
        .await
        .map_err(io)?;
    let Some(BlobReply::V1(BlobReplyV1::RangeHashes { blob_bytes, count })) = reply else {
        return Err(ProviderFault::Missing(format!("answered {reply:?}")));
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
    let mut bytes = vec![0u8; count as usize * 32];
    stream.read_exact(&mut bytes).await.map_err(io)?;
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
