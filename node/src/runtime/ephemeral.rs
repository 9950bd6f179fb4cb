//! A short-lived client node (`kiln fetch`, `kiln request`, `kiln status`
//! when no node runs on the data dir): joins through the bootstrap peers,
//! does one thing, and stops.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use kiln_protocol::Hash;
use kiln_store::Store;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};

use super::start::{self, Start, Started};
use super::{NodeError, JOIN_MS_MAX};
use crate::blobs::{self, Announce, FetchError, Progress};
use crate::coord_client::bootstrap_peers;
use crate::net::{identity, NetClient, NetEvent};

/// The largest blob a short-lived client fetches to a file without its
/// store ([`EphemeralNode::fetch`]): one range, held in memory.
pub const SMALL_BLOB_BYTES_MAX: u64 = kiln_protocol::ranges::RANGE_BYTES;

/// A client node: its network handle and its store.
pub struct EphemeralNode {
    pub net: NetClient,
    /// This client's own (throwaway) key: its peer id.
    pub key: kiln_protocol::PublicKey,
    /// The store, opened when first used ([`EphemeralNode::store`]): a new
    /// index costs several fsyncs to create and one to close, and `kiln
    /// request` for an existing build or `kiln status` never needs it.
    store: OnceLock<Store>,
    data_dir: PathBuf,
    /// Hands the store to the blob server when it opens.
    serve: Mutex<Option<oneshot::Sender<Store>>>,
    started: Started,
    /// Drains the network's events (a client acts on none of them).
    drain: tokio::task::JoinHandle<()>,
}

impl EphemeralNode {
    /// Starts, and returns once a bootstrap peer answered; fails at once
    /// (within [`JOIN_MS_MAX`] at most) when none can be reached.
    pub async fn start(data_dir: &Path, bootstrap: Vec<Multiaddr>) -> Result<EphemeralNode, NodeError> {
        let key = identity::load_or_create(data_dir)?;
        let public = key.public();
        let (serve, store_rx) = oneshot::channel();
        let me = identity::keypair(&key).public().to_peer_id();
        // The network never dials itself.
        let entry: Vec<PeerId> = bootstrap_peers(&bootstrap).into_iter().filter(|p| *p != me).collect();
        let shown: Vec<String> = bootstrap.iter().map(|a| a.to_string()).collect();
        let how = Start {
            // A port of its own, which its dials reuse: behind NAT, the port
            // peers see it at is then the one a hole punch dials.
            listen: vec![Multiaddr::empty()
                .with(libp2p::multiaddr::Protocol::Ip4(std::net::Ipv4Addr::UNSPECIFIED))
                .with(libp2p::multiaddr::Protocol::Tcp(0))],
            bootstrap,
            relay_server: None,
            reachability: crate::net::ReachabilityMode::Auto,
            long_lived: false,
        };
        let (started, mut events) = start::start_client(key, store_rx, how)?;
        let joined = tokio::time::timeout(Duration::from_millis(JOIN_MS_MAX), join(&entry, &mut events))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {} s", JOIN_MS_MAX / 1000)));
        if let Err(why) = joined {
            started.stop().await;
            return Err(NodeError::NoBootstrap(format!("{}: {why}", shown.join(", "))));
        }
        Ok(EphemeralNode {
            net: started.net.clone(),
            key: public,
            store: OnceLock::new(),
            data_dir: data_dir.to_path_buf(),
            serve: Mutex::new(Some(serve)),
            started,
            drain: tokio::spawn(async move { while events.recv().await.is_some() {} }),
        })
    }

    /// The store in the data dir, opened on first use (and then served).
    pub fn store(&self) -> Result<&Store, NodeError> {
        Ok(self.open_store()?)
    }

    /// Fetches blob `hash`, every range checked against it, and puts it at
    /// `output` if given; returns its size. A blob of at most
    /// [`SMALL_BLOB_BYTES_MAX`] wanted in a file, and not in the store
    /// already, goes straight from memory to the file: the store is not
    /// opened (creating, updating and closing its index cost more than the
    /// transfer), and the client keeps no copy. Anything larger goes
    /// through the store, where an interrupted fetch resumes.
    pub async fn fetch(
        &self,
        hash: Hash,
        output: Option<&Path>,
        progress: Arc<dyn Progress>,
    ) -> Result<u64, FetchError> {
        if let Some(output) = output.filter(|_| !Store::holds(&self.data_dir, &hash)) {
            if let Some(bytes) =
                blobs::fetch_small_to(&self.net, hash, output, SMALL_BLOB_BYTES_MAX, progress.clone()).await?
            {
                return Ok(bytes);
            }
        }
        blobs::fetch_to(&self.net, self.open_store()?, hash, output, progress, Announce::No).await
    }

    fn open_store(&self) -> Result<&Store, kiln_store::StoreError> {
        if let Some(store) = self.store.get() {
            return Ok(store);
        }
        let mut serve = self.serve.lock().unwrap_or_else(PoisonError::into_inner);
        // Another caller may have opened it while this one waited.
        if let Some(store) = self.store.get() {
            return Ok(store);
        }
        let store = Store::open(&self.data_dir)?;
        if let Some(serve) = serve.take() {
            let _ = serve.send(store.clone());
        }
        Ok(self.store.get_or_init(|| store))
    }

    pub async fn stop(self) {
        self.drain.abort();
        self.started.stop().await;
    }
}

/// Nothing works before a bootstrap peer answers: waits for one, or says
/// why every one failed, rather than time out later on something else.
async fn join(entry: &[PeerId], events: &mut mpsc::Receiver<NetEvent>) -> Result<(), String> {
    if entry.is_empty() {
        return Ok(());
    }
    let mut failed = BTreeMap::new();
    while let Some(event) = events.recv().await {
        match event {
            NetEvent::PeerConnected(peer) if entry.contains(&peer) => return Ok(()),
            NetEvent::BootstrapUnreachable(peer, why) => {
                failed.insert(peer, why);
                if entry.iter().all(|p| failed.contains_key(p)) {
                    return Err(failed.into_values().collect::<Vec<_>>().join("; "));
                }
            }
            _ => {}
        }
    }
    Err("the network task stopped".to_string())
}
