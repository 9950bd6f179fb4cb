//! A short-lived client node (`kiln fetch`, `kiln request`, `kiln status`
//! when no node runs on the data dir): joins through the bootstrap peers,
//! does one thing, and stops.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use kiln_store::Store;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::mpsc;

use super::start::{self, Start, Started};
use super::{NodeError, JOIN_MS_MAX};
use crate::coord_client::bootstrap_peers;
use crate::net::{identity, NetClient, NetEvent};

/// A client node: its network handle and its store.
pub struct EphemeralNode {
    pub net: NetClient,
    pub store: Store,
    /// This client's own (throwaway) key: its peer id.
    pub key: kiln_protocol::PublicKey,
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
        let store = Store::open(data_dir)?;
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
        let (started, mut events) = start::start(key, &store, how)?;
        let joined = tokio::time::timeout(Duration::from_millis(JOIN_MS_MAX), join(&entry, &mut events))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {} s", JOIN_MS_MAX / 1000)));
        if let Err(why) = joined {
            started.stop().await;
            return Err(NodeError::NoBootstrap(format!("{}: {why}", shown.join(", "))));
        }
        Ok(EphemeralNode {
            net: started.net.clone(),
            store,
            key: public,
            started,
            drain: tokio::spawn(async move { while events.recv().await.is_some() {} }),
        })
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
