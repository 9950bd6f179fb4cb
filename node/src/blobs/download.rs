//! The download of one blob: tasks that each take the next missing range
//! from a shared plan, fetch it over one stream, check it against its range
//! hash and hand it to the writer, which puts it into the partial blob on a
//! blocking thread and makes progress durable on another.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt};
use kiln_protocol::messages::{encode_frame, BlobReply, BlobReplyV1, BlobRequest};
use kiln_protocol::ranges::{self, RangeHash, RANGE_BYTES};
use kiln_protocol::Hash;
use kiln_store::AlignedBuffer;
use libp2p::{PeerId, Stream};
use tokio::sync::Notify;
use tracing::{info, warn};

use super::{Progress, ProviderFault};
use crate::metrics::{Metrics, METRICS};
use crate::net::frames::{open_stream, read_frame};
use crate::net::{NetClient, BLOB_PROTOCOL};

/// How long a fetcher waits for any answer or any piece of data.
pub(super) const FETCH_IO_MS_MAX: u64 = 15_000;
/// Streams a fetcher opens to each provider.
pub(super) const STREAMS_PER_PROVIDER: usize = 4;
/// Failed streams one download task tolerates before it gives up.
pub(super) const STREAM_FAILURES_MAX: u32 = 3;
/// Ranges written to the partial blob but not yet handed to the writer.
pub(super) const WRITES_QUEUED_MAX: usize = 16;

pub(super) fn write_ranges(
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

/// Puts checked ranges together into the whole blob in memory (each range
/// arrives once: the plan hands it out again only if it was not delivered).
/// `None` if the download ended with ranges missing. Ranges are counted,
/// not bytes: an empty blob's one (empty, checked) range must arrive too.
pub(super) fn collect_ranges(
    mut writes: tokio::sync::mpsc::Receiver<(u64, AlignedBuffer)>,
    blob_bytes: u64,
    buffers: &BufferPool,
) -> Option<Vec<u8>> {
    let mut blob = vec![0u8; usize::try_from(blob_bytes).ok()?];
    let mut delivered = 0u64;
    while let Some((offset, bytes)) = writes.blocking_recv() {
        let start = usize::try_from(offset).ok()?;
        blob.get_mut(start..start + bytes.len())?.copy_from_slice(&bytes);
        delivered += 1;
        buffers.give(bytes);
    }
    (delivered == ranges::range_count(blob_bytes)).then_some(blob)
}

/// Range buffers the writer has finished with, for the next ranges: a
/// fetch then does not zero (and fault in) a fresh megabyte per range.
/// They are aligned, so the store writes whole ranges past the page cache.
#[derive(Default)]
pub(super) struct BufferPool(Mutex<Vec<AlignedBuffer>>);

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
pub(super) struct Plan {
    pub(super) hash: Hash,
    pub(super) blob_bytes: u64,
    pub(super) list: Vec<RangeHash>,
    pub(super) queue: Mutex<VecDeque<u64>>,
    /// Ranges taken from the queue and not yet written or given back.
    pub(super) in_flight: AtomicU64,
    pub(super) changed: Notify,
    pub(super) faults: Mutex<HashMap<PeerId, ProviderFault>>,
    pub(super) progress: Arc<dyn Progress>,
    pub(super) buffers: Arc<BufferPool>,
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

    /// Resolves once every range is done: a task still opening a stream
    /// (to a provider that went away, say) then has nothing left to fetch
    /// and must not hold the fetch up until its dial times out.
    async fn finished(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let queued = self.queue.lock().map(|q| !q.is_empty()).unwrap_or(false);
            if !queued && self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
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
pub(super) async fn download_from(
    net: NetClient,
    peer: PeerId,
    plan: Arc<Plan>,
    writes: tokio::sync::mpsc::Sender<(u64, AlignedBuffer)>,
) -> u64 {
    let mut fetched = 0;
    let mut failures = 0;
    while failures < STREAM_FAILURES_MAX && !plan.is_lying(&peer) {
        let opened = tokio::select! {
            opened = open_blob_stream(&net, peer) => opened,
            () = plan.finished() => break,
        };
        let mut stream = match opened {
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
    open_stream(net, peer, BLOB_PROTOCOL, FETCH_IO_MS_MAX)
        .await
        .map_err(|e| ProviderFault::Missing(e.to_string()))
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
        other => Err(ProviderFault::Missing(super::unexpected(other.as_ref()))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn buffer(bytes: &[u8]) -> AlignedBuffer {
        let mut buffer = AlignedBuffer::with_len(bytes.len());
        buffer.copy_from_slice(bytes);
        buffer
    }

    #[test]
    fn ranges_arriving_in_any_order_make_the_blob_and_a_missing_one_makes_none() {
        let blob: Vec<u8> = (0..(2 * RANGE_BYTES + 10)).map(|i| (i % 251) as u8).collect();
        let pieces: Vec<(u64, &[u8])> = blob
            .chunks(RANGE_BYTES as usize)
            .enumerate()
            .map(|(i, c)| (i as u64 * RANGE_BYTES, c))
            .collect();
        let collect = |order: &[usize]| {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            for i in order {
                let (offset, bytes) = pieces[*i];
                tx.try_send((offset, buffer(bytes))).unwrap();
            }
            drop(tx);
            collect_ranges(rx, blob.len() as u64, &BufferPool::default())
        };
        assert_eq!(collect(&[2, 0, 1]).as_deref(), Some(&blob[..]));
        assert_eq!(collect(&[0, 2]), None, "a range missing");
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        drop(tx);
        assert_eq!(
            collect_ranges(rx, 0, &BufferPool::default()),
            None,
            "an empty blob whose one range never arrived"
        );
    }
}
