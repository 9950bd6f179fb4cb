//! The cheap handle every role holds: each call sends a command to the
//! event loop over a bounded channel and waits for its answer.

use kiln_protocol::Hash;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};

use super::{NetError, NetView, PeerPath};

pub(crate) enum Command {
    Provide {
        hash: Hash,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    /// Withdraw these keys: the store no longer holds them.
    StopProviding {
        hashes: Vec<Hash>,
    },
    Providers {
        hash: Hash,
        /// The lookup ends once this many providers are found (or the DHT
        /// has no closer peer to ask).
        enough: usize,
        reply: oneshot::Sender<Result<Vec<PeerId>, NetError>>,
    },
    Publish {
        topic: &'static str,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    ConnectedPeers {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    Dial {
        peer: PeerId,
        addresses: Vec<Multiaddr>,
    },
    PutRecord {
        key: Hash,
        value: Vec<u8>,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    GetRecord {
        key: Hash,
        reply: oneshot::Sender<Result<Option<Vec<u8>>, NetError>>,
    },
    /// The path to a peer, once a hole punch in progress has ended (or
    /// `wait_ms` passed).
    Path {
        peer: PeerId,
        wait_ms: u64,
        reply: oneshot::Sender<Option<PeerPath>>,
    },
    View {
        reply: oneshot::Sender<NetView>,
    },
}

/// A cheap handle to the network.
#[derive(Clone)]
pub struct NetClient {
    commands: mpsc::Sender<Command>,
    stream: libp2p_stream::Control,
    peer_id: PeerId,
}

impl NetClient {
    pub(super) fn new(commands: mpsc::Sender<Command>, stream: libp2p_stream::Control, peer_id: PeerId) -> NetClient {
        NetClient {
            commands,
            stream,
            peer_id,
        }
    }

    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// A handle for opening and accepting streams.
    pub fn stream_control(&self) -> libp2p_stream::Control {
        self.stream.clone()
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, NetError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(make(reply)).await.map_err(|_| NetError::Stopped)?;
        answer.await.map_err(|_| NetError::Stopped)
    }

    /// Announces in the DHT that this node holds `hash`.
    pub async fn provide(&self, hash: Hash) -> Result<(), NetError> {
        self.ask(|reply| Command::Provide { hash, reply }).await?
    }

    /// Stops announcing these blobs (the store no longer holds them). Never
    /// waits: a full command queue drops the request, which the next
    /// re-announcement then repeats harmlessly (see `blobs::announce`).
    pub fn stop_providing(&self, hashes: Vec<Hash>) -> Result<(), NetError> {
        self.commands
            .try_send(Command::StopProviding { hashes })
            .map_err(|_| NetError::Busy)
    }

    /// Finds the peers that announced `hash` (not this node), dialling the
    /// first [`super::PROVIDERS_PER_QUERY_MAX`] of them.
    pub async fn providers(&self, hash: Hash) -> Result<Vec<PeerId>, NetError> {
        let enough = super::PROVIDERS_PER_QUERY_MAX;
        self.ask(|reply| Command::Providers { hash, enough, reply }).await?
    }

    /// [`NetClient::providers`], ending at the first answer that names any:
    /// the lookup does not wait for the peers it learnt of on the way (the
    /// providers among them, typically) to answer it too. For a small
    /// fetch, where that wait is a good part of the whole; the caller asks
    /// again with [`NetClient::providers`] if these fail.
    pub async fn first_providers(&self, hash: Hash) -> Result<Vec<PeerId>, NetError> {
        self.ask(|reply| Command::Providers { hash, enough: 1, reply }).await?
    }

    /// Publishes already signed and encoded gossip on `topic`.
    pub async fn publish(&self, topic: &'static str, bytes: Vec<u8>) -> Result<(), NetError> {
        self.ask(|reply| Command::Publish { topic, bytes, reply }).await?
    }

    pub async fn connected_peers(&self) -> Result<Vec<PeerId>, NetError> {
        self.ask(|reply| Command::ConnectedPeers { reply }).await
    }

    /// Connects to `peer` at these addresses (if not connected already).
    pub async fn dial(&self, peer: PeerId, addresses: Vec<Multiaddr>) -> Result<(), NetError> {
        self.commands
            .send(Command::Dial { peer, addresses })
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// Stores a value in the DHT under `key`'s multihash (Kademlia record).
    pub async fn put_record(&self, key: Hash, value: Vec<u8>) -> Result<(), NetError> {
        self.ask(|reply| Command::PutRecord { key, value, reply }).await?
    }

    /// How this node is connected to `peer` (`None`: not connected). A
    /// relayed path whose hole punch is still under way is answered when
    /// it ends, or after `wait_ms`.
    pub async fn path(&self, peer: PeerId, wait_ms: u64) -> Result<Option<PeerPath>, NetError> {
        self.ask(|reply| Command::Path { peer, wait_ms, reply }).await
    }

    /// This node's reachability and its peers by path.
    pub async fn view(&self) -> Result<NetView, NetError> {
        self.ask(|reply| Command::View { reply }).await
    }

    /// The first value found in the DHT under `key`'s multihash, if any.
    pub async fn get_record(&self, key: Hash) -> Result<Option<Vec<u8>>, NetError> {
        self.ask(|reply| Command::GetRecord { key, reply }).await?
    }
}
