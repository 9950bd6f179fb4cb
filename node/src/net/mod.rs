//! The swarm and its event loop. One task owns the `Swarm`; everything else
//! holds a cheap [`NetClient`] and talks to the loop over a bounded command
//! channel, each command carrying a oneshot for its answer (the shape of
//! rust-libp2p's `examples/file-sharing`).
//!
//! Every node runs identify, ping, Kademlia (`/kiln/kad/1.0.0`; server mode
//! unless the node is a short-lived client or behind NAT), gossipsub with
//! message validation, the blob stream protocol, a relay client and hole
//! punching (DCUtR); long-lived nodes run AutoNAT v2 (client and server) to
//! learn whether they can be dialled, and a node behind NAT reserves a slot
//! on its bootstrap peers' relays; a bootstrap peer also runs a relay
//! server. Bootstrap peers are redialled when they go away, and provider
//! records are announced again when a bootstrap peer comes back (it may have
//! lost them).
//!
//! - `client`: the handle ([`NetClient`]) and the commands it sends;
//! - `paths`: this node's reachability and each peer's path (direct, hole
//!   punched, relayed);
//! - `counted`: relayed bytes counted for `/metrics`;
//! - `probing`: AutoNAT's client, stopped once the node knows it is behind
//!   NAT;
//! - `swarm`: the behaviours and the event loop that owns the swarm;
//! - `tls`: libp2p's TLS handshake with a cipher the CPU accelerates, offered
//!   before noise on TCP;
//! - [`frames`]: length-prefixed frames on streams, and opening a stream
//!   with a time limit;
//! - [`identity`]: the node key in the data dir.
//!
//! Not for: anything a role decides. The network moves bytes, keeps DHT
//! queries bounded and reports events; it never reads the store.

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use tokio::sync::mpsc;

use kiln_protocol::messages::{topics, Gossip};
use kiln_protocol::{PublicKey, SecretKey};

mod client;
mod counted;
pub(crate) mod frames;
pub mod identity;
mod mesh_alive;
mod paths;
mod probing;
mod swarm;
mod tls;

pub use client::NetClient;
pub use paths::{NetView, PathKind, PeerPath, Reachability, ReachabilityMode};
pub use swarm::{gossip_behaviour, EventLoop};

pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/kiln/kad/1.0.0");
pub const BLOB_PROTOCOL: StreamProtocol = StreamProtocol::new("/kiln/blob/1");
pub const WORK_PROTOCOL: StreamProtocol = StreamProtocol::new("/kiln/work/1");
pub const COORD_PROTOCOL: StreamProtocol = StreamProtocol::new("/kiln/coord/1");
const IDENTIFY_PROTOCOL: &str = "/kiln/id/1.0.0";
/// Commands waiting for the event loop.
pub(crate) const COMMANDS_MAX: usize = 256;
/// Events waiting for the roles; past this, gossip is dropped (and logged).
pub(crate) const EVENTS_MAX: usize = 1024;
/// Most provider lookups in flight at once.
pub(crate) const PROVIDER_QUERIES_MAX: usize = 64;
/// Providers one lookup keeps (and dials); the query ends once it has
/// them. A fetch downloads from each with several streams, so more would
/// not make it faster, and a key announced by thousands of peers must not
/// make one lookup dial them all.
pub const PROVIDERS_PER_QUERY_MAX: usize = 16;
/// How long a provider lookup may take.
pub(crate) const PROVIDERS_QUERY_MS_MAX: u64 = 20_000;
/// Invalid gossip messages tolerated from one peer before it is blacklisted.
pub(crate) const INVALID_GOSSIP_MAX: u32 = 8;
/// Keys this node may announce as a provider.
pub(crate) const PROVIDED_KEYS_MAX: usize = 1_000_000;
/// How often the DHT routing table is refreshed (libp2p's default is 5
/// minutes; see `swarm.rs`).
pub(crate) const KAD_REFRESH_S: u64 = 30 * 60;
/// How often missing bootstrap connections are redialled.
pub(crate) const REDIAL_MS: u64 = 2_000;
/// Relays a node behind NAT reserves a slot on (among its bootstrap peers).
pub(crate) const RELAYS_MAX: usize = 2;
/// How long a fetch waits for a hole punch to replace a relayed connection
/// (DCUtR tries 3 times, each a round trip and a simultaneous dial).
pub const HOLE_PUNCH_WAIT_MS_MAX: u64 = 10_000;

/// What a relay server lets each circuit carry, and how many it runs at
/// once. A circuit that reaches `circuit_bytes` ends at once and frees its
/// slot, so the relay's total grows with the peers using it (each rate
/// limited by libp2p), up to `circuits_max` circuits in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayLimits {
    /// Bytes one circuit may carry, both directions together.
    pub circuit_bytes: u64,
    /// How long one circuit may last.
    pub circuit_secs: u64,
    /// Circuits open at once.
    pub circuits_max: usize,
    /// Peers behind NAT holding a slot at once.
    pub reservations_max: usize,
}

impl Default for RelayLimits {
    /// Enough for what relays are for in Kiln (the hole punch's
    /// handshake, and small blobs between two peers behind NAT that cannot
    /// punch through), not for bulk data: at most 64 circuits of 1 MiB in
    /// flight, each peer opening one every 2 minutes once its burst is
    /// spent (libp2p's rate limits; see `swarm.rs` `relay_config`).
    fn default() -> RelayLimits {
        RelayLimits {
            circuit_bytes: 1 << 20,
            circuit_secs: 120,
            circuits_max: 64,
            reservations_max: 1024,
        }
    }
}

/// Why a network operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("the network task has stopped")]
    Stopped,
    #[error("cannot listen on {addr}: {reason}; pick another address or port")]
    Listen { addr: Multiaddr, reason: String },
    #[error("cannot set up the network transport: {0}")]
    Transport(String),
    #[error("{0:?} is not a usable bootstrap address: it must end in /p2p/PEER_ID (as printed by `kiln-bootstrap`)")]
    BootstrapAddress(Multiaddr),
    #[error("too many lookups in flight; try again")]
    Busy,
    #[error("cannot publish gossip: {0}")]
    Publish(String),
    #[error("cannot announce as a provider: {0}")]
    Provide(String),
}

/// Parses a multiaddr given on the command line, saying what one looks
/// like when it is not one (a common first mistake: `127.0.0.1:4001`).
pub fn parse_multiaddr(text: &str) -> Result<Multiaddr, String> {
    text.trim().parse().map_err(|e| {
        format!("{text:?} is not a multiaddr ({e}): write addresses as /ip4/127.0.0.1/tcp/4001, and a peer to join as the full /ip4/.../tcp/.../p2p/PEER_ID line kiln-bootstrap or kiln node prints")
    })
}

/// libp2p's TCP listeners share ports (SO_REUSEPORT), so a second process
/// told to listen on a port already taken would quietly share it. A plain
/// bind first catches that: a port given explicitly must be free.
fn check_port_free(addr: &Multiaddr) -> Result<(), NetError> {
    let mut ip = None;
    let mut port = None;
    for protocol in addr.iter() {
        match protocol {
            Protocol::Ip4(a) => ip = Some(std::net::IpAddr::V4(a)),
            // A plain IPv6 bind is dual-stack and would also take the IPv4
            // port: only IPv4 addresses are checked.
            Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    let (Some(ip), Some(port)) = (ip, port) else {
        return Ok(());
    };
    if port == 0 {
        return Ok(());
    }
    match std::net::TcpListener::bind((ip, port)) {
        Ok(_) => Ok(()),
        Err(e) => Err(NetError::Listen {
            addr: addr.clone(),
            reason: format!("{e} (another process listens there?)"),
        }),
    }
}

/// What the network tells the roles.
#[derive(Debug)]
pub enum NetEvent {
    /// A full listen address, `/ip4/.../tcp/.../p2p/PEER_ID`.
    Listening(Multiaddr),
    /// A valid, signed gossip message.
    Gossip {
        topic: String,
        /// The author's key: the message is signed with it.
        signer: PublicKey,
        message: Box<Gossip>,
    },
    PeerConnected(PeerId),
    PeerDisconnected(PeerId),
    /// A dial to a bootstrap peer failed, and why.
    BootstrapUnreachable(PeerId, String),
    /// Whether peers can dial this node changed (AutoNAT, or
    /// `--reachability`).
    Reachability(Reachability),
}

/// How to start the network.
pub struct NetConfig {
    pub key: SecretKey,
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    /// Run a relay server under these limits (bootstrap peers do).
    pub relay_server: Option<RelayLimits>,
    /// Answer DHT queries (long-lived nodes); an ephemeral client doesn't.
    /// A long-lived node that finds itself behind NAT answers none either.
    pub dht_server: bool,
    /// How this node learns whether it can be dialled (long-lived nodes).
    pub reachability: ReachabilityMode,
}

/// Starts listening and dialling; returns the client, the event stream and
/// the loop, which the caller spawns.
pub fn start(config: NetConfig) -> Result<(NetClient, mpsc::Receiver<NetEvent>, EventLoop), NetError> {
    swarm::start(config)
}
