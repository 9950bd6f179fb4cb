//! The provider side of `/kiln/blob/1`: at most so many streams at once,
//! each serving ranges (and range-hash lists) of stored blobs, read off the
//! runtime and checked against the blob's hash.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use futures::{AsyncWriteExt, StreamExt};
use kiln_protocol::messages::{encode_frame, BlobReply, BlobReplyV1, BlobRequest};
use kiln_protocol::ranges::{self, RangeHash, RANGE_BYTES};
use kiln_protocol::Hash;
use kiln_store::Store;
use libp2p::Stream;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::metrics::{Metrics, METRICS};
use crate::net::frames::read_frame;
use crate::net::{NetClient, BLOB_PROTOCOL};

/// Streams served at once; past this a fetcher is told to come back later.
const SERVE_STREAMS_MAX: usize = 64;
/// How long a provider waits for the next request on an open stream.
const SERVE_IDLE_MS_MAX: u64 = 30_000;
/// Range-hash lists kept in memory by a provider.
const RANGE_HASH_CACHE_MAX: usize = 64;

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
        // Moved aside and forgotten: not announced, served or re-hashed
        // again (a pinned blob is fetched again: see `repair`).
        store.quarantine(hash, actual);
        return Ok(None);
    }
    let list = Arc::new(list);
    cache.insert(*hash, list.clone());
    Ok(Some(list))
}

/// Starts serving blob ranges from `store`. The protocol is registered
/// before this returns, so a peer told our address right after can use it.
pub fn spawn_server(net: &NetClient, store: Store) -> tokio::task::JoinHandle<()> {
    spawn_server_once_open(net, async move { Some(store) })
}

/// The same, for a store not open yet: the protocol is registered now,
/// before anyone learns this node's address; streams wait (in
/// libp2p-stream's bounded queue) until the store comes, and the task ends
/// if it never does.
pub fn spawn_server_once_open(
    net: &NetClient,
    store: impl std::future::Future<Output = Option<Store>> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let incoming = net.stream_control().accept(BLOB_PROTOCOL);
    tokio::spawn(async move {
        let Some(store) = store.await else { return };
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
