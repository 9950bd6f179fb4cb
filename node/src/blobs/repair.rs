//! A pinned blob found corrupt is fetched again: the store quarantines it
//! (moved aside, forgotten, withdrawn from the DHT by `announce`) and tells
//! this task, which downloads a good copy from the other providers, a few
//! tries apart, and notes the outcome in the store's quarantine list, where
//! `kiln status --node` shows it. An unpinned blob is only forgotten: this
//! node does not need it, and the network has other copies or not.

use std::sync::Arc;
use std::time::Duration;

use kiln_protocol::Hash;
use kiln_store::Store;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{fetch_to, Announce, NoProgress};
use crate::net::NetClient;

/// Pinned blobs waiting to be fetched again.
const REPAIRS_QUEUED_MAX: usize = 64;
/// Tries to fetch a good copy, and the wait between them.
const REPAIR_TRIES: u32 = 5;
const REPAIR_RETRY_MS: u64 = 5_000;

/// Registers for the store's quarantines and fetches each pinned blob
/// again, one at a time, until the network stops.
pub fn spawn_repairer(net: NetClient, store: Store) -> tokio::task::JoinHandle<()> {
    let (tx, rx) = mpsc::channel::<Hash>(REPAIRS_QUEUED_MAX);
    let noted = store.clone();
    store.on_quarantined(Arc::new(move |hash: Hash, pinned: bool| {
        if !pinned {
            noted.note_quarantined(&hash, "not pinned here: forgotten, not fetched again");
        } else if tx.try_send(hash).is_err() {
            noted.note_quarantined(
                &hash,
                "too many blobs to fetch again at once; restart the node to retry",
            );
        } else {
            noted.note_quarantined(&hash, "fetching a good copy from the network");
        }
    }));
    tokio::spawn(run(net, store, rx))
}

async fn run(net: NetClient, store: Store, mut queued: mpsc::Receiver<Hash>) {
    while let Some(hash) = queued.recv().await {
        let mut last_error = String::new();
        for attempt in 1..=REPAIR_TRIES {
            if store.has(&hash) {
                // Fetched meanwhile (by a job or a user).
                break;
            }
            match fetch_to(&net, &store, hash, None, Arc::new(NoProgress), Announce::Yes).await {
                Ok(bytes) => {
                    info!(blob = %hash, bytes, "fetched a good copy of a quarantined blob");
                    last_error.clear();
                    break;
                }
                Err(e) => {
                    warn!(blob = %hash, attempt, error = %e, "cannot fetch a good copy of a quarantined blob yet");
                    last_error = e.to_string();
                }
            }
            if attempt < REPAIR_TRIES {
                tokio::time::sleep(Duration::from_millis(REPAIR_RETRY_MS)).await;
            }
        }
        if store.has(&hash) {
            store.note_quarantined(&hash, "a good copy was fetched from the network");
        } else {
            let note = format!("no good copy could be fetched ({last_error}); `kiln fetch {hash}` retries");
            store.note_quarantined(&hash, &note);
        }
    }
}
