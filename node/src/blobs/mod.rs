//! The blob stream protocol (`/kiln/blob/1`): serving ranges of the blobs a
//! node holds, and fetching a blob from several providers at once, verifying
//! every range against the blob's hash before it is written.
//!
//! A stream carries requests and answers in turn: the fetcher writes one
//! request frame and then only reads until the answer is complete; the
//! provider reads one request and then only writes. Neither side ever
//! blocks writing while the other is writing (rust-libp2p#5410).
//!
//! - `serve`: the provider side, with its stream limit and range-hash cache;
//! - `fetch`: finding providers, the outline (size and range hashes), and
//!   the multi-source download with resume;
//! - `download`: the download tasks, the range buffers and the writer that
//!   puts verified ranges into a partial blob;
//! - `announce`: telling the DHT what the store holds, and withdrawing what
//!   it no longer holds;
//! - `repair`: fetching again a pinned blob the store found corrupt and
//!   quarantined.
//!
//! Not for: deciding what to keep (the store's pins and cap) or what to
//! fetch (the roles ask).

use std::path::Path;
use std::sync::Arc;

use kiln_protocol::messages::JobRequest;
use kiln_protocol::{Hash, Recipe};
use kiln_store::Store;
use tracing::warn;

use crate::net::NetClient;

mod announce;
mod download;
mod fetch;
mod repair;
mod serve;

pub use announce::spawn_announcer;
pub use fetch::{fetch, fetch_from};
pub use repair::spawn_repairer;
pub use serve::{spawn_server, spawn_server_once_open};

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
    #[error("cannot write {path}: {reason}; choose a directory you can write to, with room for the file")]
    Output { path: std::path::PathBuf, reason: String },
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

/// Reads a job's recipe from the store (off the runtime) and checks it
/// against the job ([`JobRequest::check_recipe`]).
pub async fn job_recipe(store: &Store, job: &JobRequest) -> Result<Recipe, String> {
    let (store, job) = (store.clone(), job.clone());
    tokio::task::spawn_blocking(move || {
        let bytes = store
            .read(&job.recipe_id)
            .map_err(|e| format!("cannot read the recipe: {e}"))?;
        job.check_recipe(&bytes)
    })
    .await
    .map_err(|e| e.to_string())?
}

/// What a provider's unexpected answer means, in words.
fn unexpected(reply: Option<&kiln_protocol::messages::BlobReply>) -> String {
    use kiln_protocol::messages::{BlobReply, BlobReplyV1};
    match reply {
        None => "closed the stream without answering".into(),
        Some(BlobReply::V1(BlobReplyV1::NotFound)) => "does not hold the blob".into(),
        Some(BlobReply::V1(BlobReplyV1::Busy { retry_after_ms })) => {
            format!("is serving too many fetches (asked to come back in {retry_after_ms} ms)")
        }
        Some(BlobReply::V1(BlobReplyV1::BadRange { blob_bytes })) => {
            format!("refused the range (it says the blob has {blob_bytes} bytes)")
        }
        Some(BlobReply::V1(BlobReplyV1::Data { .. })) => "sent data where an outline was due".into(),
        Some(BlobReply::V1(BlobReplyV1::RangeHashes { .. })) => "sent range hashes where data was due".into(),
    }
}

/// Progress that shows nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _total_bytes: u64, _done_bytes: u64) {}
    fn advance(&self, _bytes: u64) {}
}

/// Stores a file as it is, or a directory as a deterministic archive.
pub async fn publish(store: &Store, path: &Path) -> Result<(Hash, u64), String> {
    let (store, path) = (store.clone(), path.to_path_buf());
    tokio::task::spawn_blocking(move || publish_blocking(&store, &path))
        .await
        .map_err(|e| e.to_string())?
}

fn publish_blocking(store: &Store, path: &Path) -> Result<(Hash, u64), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.is_dir() {
        let tmp =
            tempfile::NamedTempFile::new_in(store.dir()).map_err(|e| format!("cannot create a temporary file: {e}"))?;
        crate::archive::pack_dir(path, std::io::BufWriter::new(tmp.as_file())).map_err(|e| e.to_string())?;
        store.put_file(tmp.path(), None).map_err(|e| e.to_string())
    } else {
        store.put_file(path, None).map_err(|e| e.to_string())
    }
}

/// Whether a fetched blob is announced in the DHT as provided by this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Announce {
    /// A long-lived node: it serves what it fetched.
    Yes,
    /// A short-lived client (`kiln fetch`, `kiln request`): it stops right
    /// after, and a provider record naming it would send later fetchers to
    /// a peer that is gone (each paying a failed dial and its retries).
    No,
}

/// Fetches a blob of at most `bytes_max` bytes into memory and writes it
/// to `output` durably, past the store (see [`fetch::fetch_small`]).
/// `Ok(None)` if the blob is larger: nothing was downloaded or written.
pub async fn fetch_small_to(
    net: &NetClient,
    hash: Hash,
    output: &Path,
    bytes_max: u64,
    progress: Arc<dyn Progress>,
) -> Result<Option<u64>, FetchError> {
    let Some(blob) = fetch::fetch_small(net, hash, bytes_max, progress).await? else {
        return Ok(None);
    };
    let path = output.to_path_buf();
    let bytes = blob.len() as u64;
    let written = tokio::task::spawn_blocking(move || kiln_store::write_durably(&path, &blob))
        .await
        .map_err(|e| FetchError::Writer(e.to_string()))?;
    written.map_err(|e| FetchError::Output {
        path: output.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(Some(bytes))
}

/// Fetches a blob into the store and, if asked, copies it to `output`.
pub async fn fetch_to(
    net: &NetClient,
    store: &Store,
    hash: Hash,
    output: Option<&Path>,
    progress: Arc<dyn Progress>,
    announce: Announce,
) -> Result<u64, FetchError> {
    let bytes = fetch(net, store, hash, progress).await?;
    if announce == Announce::Yes {
        if let Err(e) = net.provide(hash).await {
            warn!(blob = %hash, error = %e, "fetched but not announced");
        }
    }
    if let Some(output) = output {
        let (store, output) = (store.clone(), output.to_path_buf());
        tokio::task::spawn_blocking(move || store.export(&hash, &output))
            .await
            .map_err(|e| FetchError::Writer(e.to_string()))??;
    }
    Ok(bytes)
}
