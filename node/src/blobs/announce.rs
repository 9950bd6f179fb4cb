//! Provider records follow the store: every blob it holds at start is
//! announced in the DHT, and every blob that leaves it (evicted under the
//! cap, removed, found corrupt) is withdrawn, so this node stops pointing
//! fetchers at data it no longer has, also when it re-announces to a
//! bootstrap peer that came back or at the hourly republication.

use std::sync::Arc;

use kiln_protocol::Hash;
use kiln_store::Store;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::net::NetClient;

/// Batches of removed blobs waiting to be withdrawn.
const REMOVALS_QUEUED_MAX: usize = 1024;

/// Registers for the store's removals, then announces what it holds and
/// withdraws what leaves it, until the network stops.
pub fn spawn_announcer(net: NetClient, store: Store) -> tokio::task::JoinHandle<()> {
    let (removed_tx, removed) = mpsc::channel::<Vec<Hash>>(REMOVALS_QUEUED_MAX);
    store.on_removed(Arc::new(move |hashes: &[Hash]| {
        if removed_tx.try_send(hashes.to_vec()).is_err() {
            warn!(
                blobs = hashes.len(),
                "too many removals at once; some stay announced until this node restarts"
            );
        }
    }));
    tokio::spawn(run(net, store, removed))
}

async fn run(net: NetClient, store: Store, mut removed: mpsc::Receiver<Vec<Hash>>) {
    for (hash, _) in store.list() {
        // A blob removed while this loop runs is not announced again.
        if !store.has(&hash) {
            continue;
        }
        if let Err(e) = net.provide(hash).await {
            warn!(blob = %hash, error = %e, "cannot announce a stored blob");
        }
    }
    while let Some(hashes) = removed.recv().await {
        // A blob fetched again since it left is announced again by the
        // fetch: only withdraw what is still gone.
        let gone: Vec<Hash> = hashes.into_iter().filter(|h| !store.has(h)).collect();
        if gone.is_empty() {
            continue;
        }
        debug!(blobs = gone.len(), "withdrawing blobs the store no longer holds");
        if net.stop_providing(gone).is_err() {
            warn!("the network is busy; some removed blobs stay announced for now");
        }
    }
}
