//! The start-up a long-lived node and a short-lived client share: the
//! network task (with its stop switch), the blob server registered before
//! anyone learns our address, and, for a node, the announcer that keeps
//! the DHT's provider records in step with the store.

use kiln_protocol::SecretKey;
use kiln_store::Store;
use libp2p::Multiaddr;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::NodeError;
use crate::blobs;
use crate::net::{self, NetClient, NetConfig, NetEvent};

/// A running network and the tasks that serve the store on it.
pub(super) struct Started {
    pub(super) net: NetClient,
    network: JoinHandle<()>,
    stop: oneshot::Sender<()>,
    serving: Vec<JoinHandle<()>>,
}

/// What kind of peer to start.
pub(super) struct Start {
    pub(super) listen: Vec<Multiaddr>,
    pub(super) bootstrap: Vec<Multiaddr>,
    pub(super) relay_server: Option<net::RelayLimits>,
    pub(super) reachability: net::ReachabilityMode,
    /// A long-lived node: a DHT server that announces what its store holds.
    /// A client only answers for what it publishes and fetches.
    pub(super) long_lived: bool,
}

/// Starts the network and serves `store` on it; the network's events.
pub(super) fn start(
    key: SecretKey,
    store: &Store,
    how: Start,
) -> Result<(Started, mpsc::Receiver<NetEvent>), NodeError> {
    let long_lived = how.long_lived;
    let (mut started, events) = start_network(key, how)?;
    started.serving.push(blobs::spawn_server(&started.net, store.clone()));
    if long_lived {
        started
            .serving
            .push(blobs::spawn_announcer(started.net.clone(), store.clone()));
        started
            .serving
            .push(blobs::spawn_repairer(started.net.clone(), store.clone()));
    }
    Ok((started, events))
}

/// A short-lived client's start, before its store is open (it opens when
/// first used, and a request answered by an existing build never uses it):
/// the blob protocol is registered at once and served once `store` comes.
pub(super) fn start_client(
    key: SecretKey,
    store: oneshot::Receiver<Store>,
    how: Start,
) -> Result<(Started, mpsc::Receiver<NetEvent>), NodeError> {
    let (mut started, events) = start_network(key, how)?;
    let store = async move { store.await.ok() };
    started.serving.push(blobs::spawn_server_once_open(&started.net, store));
    Ok((started, events))
}

fn start_network(key: SecretKey, how: Start) -> Result<(Started, mpsc::Receiver<NetEvent>), NodeError> {
    let config = NetConfig {
        key,
        listen: how.listen,
        bootstrap: how.bootstrap,
        relay_server: how.relay_server,
        dht_server: how.long_lived,
        reachability: how.reachability,
    };
    let (net, events, event_loop) = net::start(config)?;
    let (stop, stopped) = oneshot::channel::<()>();
    let network = tokio::spawn(event_loop.run(async {
        let _ = stopped.await;
    }));
    let started = Started {
        net,
        network,
        stop,
        serving: Vec::new(),
    };
    Ok((started, events))
}

impl Started {
    /// Stops serving and stops the network task, waiting for it to end.
    pub(super) async fn stop(self) {
        for task in self.serving {
            task.abort();
        }
        let _ = self.stop.send(());
        let _ = self.network.await;
    }
}
