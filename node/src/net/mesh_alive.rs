//! Gossipsub that keeps a connection open only while the peer is in one of
//! its meshes.
//!
//! libp2p closes a connection once every behaviour says it is not needed and
//! no stream on it is open, after the swarm's idle timeout. Gossipsub says a
//! connection is needed only while the peer is in a mesh, but it holds a
//! stream open on every connection it uses, and an open stream counts: so
//! no connection that gossipsub ever spoke on was closed. A node kept every
//! peer that a DHT lookup, a fetch or a worker's advert ever brought, and its
//! idle cost (pings, gossip upkeep, memory per connection) grew with the
//! network. Here gossipsub's streams are marked as not keeping the
//! connection (as ping's are): a peer outside the meshes is disconnected
//! after the idle timeout unless another protocol, such as an open Kiln
//! stream or a DHT query, still uses the connection.
//!
//! Bootstrap peers are the exception, kept on both sides: a node stays
//! connected to its bootstrap peers (it notices when one restarts, joins
//! it again and announces its blobs to it again), and a bootstrap peer
//! keeps every node that connects to it (a newcomer's first lookup reaches
//! the network through it). That is one connection per node at the
//! bootstrap peer, as before; every other node keeps only its meshes.

use std::collections::HashSet;
use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::{InboundUpgrade, OutboundUpgrade, UpgradeInfo};
use libp2p::core::Endpoint;
use libp2p::swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound, InboundUpgradeSend,
    ListenUpgradeError, OutboundUpgradeSend, UpgradeInfoSend,
};
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm, NetworkBehaviour, Stream,
    SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

/// `B` with its streams not keeping connections open, except to the
/// peers it is told to keep; `B` itself is reached through `Deref`.
pub(super) struct MeshAlive<B> {
    inner: B,
    /// Peers whose connections stay open (this node's bootstrap peers).
    keep: HashSet<PeerId>,
    /// Every connection stays open (on a bootstrap peer).
    keep_all: bool,
}

impl<B> MeshAlive<B> {
    pub(super) fn new(inner: B, keep_all: bool) -> MeshAlive<B> {
        MeshAlive {
            inner,
            keep: HashSet::new(),
            keep_all,
        }
    }

    /// Keeps connections to `peer` open from now on (one per bootstrap
    /// address in the configuration: bounded by it).
    pub(super) fn keep(&mut self, peer: PeerId) {
        self.keep.insert(peer);
    }

    fn handler<H>(&self, peer: &PeerId, inner: H) -> Handler<H> {
        Handler {
            inner,
            keep: self.keep_all || self.keep.contains(peer),
        }
    }
}

impl<B> std::ops::Deref for MeshAlive<B> {
    type Target = B;
    fn deref(&self) -> &B {
        &self.inner
    }
}

impl<B> std::ops::DerefMut for MeshAlive<B> {
    fn deref_mut(&mut self) -> &mut B {
        &mut self.inner
    }
}

impl<B: NetworkBehaviour> NetworkBehaviour for MeshAlive<B> {
    type ConnectionHandler = Handler<B::ConnectionHandler>;
    type ToSwarm = B::ToSwarm;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let inner = self
            .inner
            .handle_established_inbound_connection(connection_id, peer, local_addr, remote_addr)?;
        Ok(self.handler(&peer, inner))
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner
            .handle_pending_outbound_connection(connection_id, maybe_peer, addresses, effective_role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let inner =
            self.inner
                .handle_established_outbound_connection(connection_id, peer, addr, role_override, port_use)?;
        Ok(self.handler(&peer, inner))
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        self.inner.on_swarm_event(event);
    }

    fn on_connection_handler_event(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.inner.on_connection_handler_event(peer_id, connection_id, event);
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.inner.poll(cx)
    }
}

/// The inner handler, with every stream it negotiates marked.
pub(super) struct Handler<H> {
    inner: H,
    /// The connection stays open whatever the inner handler says.
    keep: bool,
}

impl<H: ConnectionHandler> ConnectionHandler for Handler<H> {
    type FromBehaviour = H::FromBehaviour;
    type ToBehaviour = H::ToBehaviour;
    type InboundProtocol = Unkept<H::InboundProtocol>;
    type OutboundProtocol = Unkept<H::OutboundProtocol>;
    type InboundOpenInfo = H::InboundOpenInfo;
    type OutboundOpenInfo = H::OutboundOpenInfo;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, Self::InboundOpenInfo> {
        self.inner.listen_protocol().map_upgrade(Unkept)
    }

    fn connection_keep_alive(&self) -> bool {
        self.keep || self.inner.connection_keep_alive()
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, Self::OutboundOpenInfo, Self::ToBehaviour>> {
        self.inner.poll(cx).map(|event| event.map_protocol(Unkept))
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Option<Self::ToBehaviour>> {
        self.inner.poll_close(cx)
    }

    fn on_behaviour_event(&mut self, event: Self::FromBehaviour) {
        self.inner.on_behaviour_event(event);
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<
            '_,
            Self::InboundProtocol,
            Self::OutboundProtocol,
            Self::InboundOpenInfo,
            Self::OutboundOpenInfo,
        >,
    ) {
        // The same event, typed by the inner protocols (the outputs and
        // errors are the inner ones).
        let inner = match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound { protocol, info }) => {
                ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound { protocol, info })
            }
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound { protocol, info }) => {
                ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound { protocol, info })
            }
            ConnectionEvent::AddressChange(change) => ConnectionEvent::AddressChange(change),
            ConnectionEvent::DialUpgradeError(DialUpgradeError { info, error }) => {
                ConnectionEvent::DialUpgradeError(DialUpgradeError { info, error })
            }
            ConnectionEvent::ListenUpgradeError(ListenUpgradeError { info, error }) => {
                ConnectionEvent::ListenUpgradeError(ListenUpgradeError { info, error })
            }
            ConnectionEvent::LocalProtocolsChange(change) => ConnectionEvent::LocalProtocolsChange(change),
            ConnectionEvent::RemoteProtocolsChange(change) => ConnectionEvent::RemoteProtocolsChange(change),
            // A kind of event newer than this code: nothing to pass on.
            _ => return,
        };
        self.inner.on_connection_event(inner);
    }
}

/// An upgrade that marks its stream as not keeping the connection open,
/// then runs the inner upgrade on it.
pub(super) struct Unkept<U>(U);

impl<U: UpgradeInfoSend> UpgradeInfo for Unkept<U> {
    type Info = U::Info;
    type InfoIter = U::InfoIter;

    fn protocol_info(&self) -> Self::InfoIter {
        self.0.protocol_info()
    }
}

impl<U: InboundUpgradeSend> InboundUpgrade<Stream> for Unkept<U> {
    type Output = U::Output;
    type Error = U::Error;
    type Future = U::Future;

    fn upgrade_inbound(self, mut stream: Stream, info: Self::Info) -> Self::Future {
        stream.ignore_for_keep_alive();
        self.0.upgrade_inbound(stream, info)
    }
}

impl<U: OutboundUpgradeSend> OutboundUpgrade<Stream> for Unkept<U> {
    type Output = U::Output;
    type Error = U::Error;
    type Future = U::Future;

    fn upgrade_outbound(self, mut stream: Stream, info: Self::Info) -> Self::Future {
        stream.ignore_for_keep_alive();
        self.0.upgrade_outbound(stream, info)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use futures::StreamExt;
    use libp2p::core::transport::MemoryTransport;
    use libp2p::core::{upgrade, Transport};
    use libp2p::gossipsub::{self, IdentTopic};
    use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
    use libp2p::{identity, noise, yamux, Multiaddr, Swarm};

    use super::MeshAlive;

    const IDLE: Duration = Duration::from_millis(1_500);
    /// Longer than the idle timeout and a gossipsub heartbeat (1 s).
    const WATCH: Duration = Duration::from_secs(4);

    fn swarm<B: NetworkBehaviour>(behaviour: impl FnOnce() -> B) -> Swarm<B> {
        let keypair = identity::Keypair::generate_ed25519();
        let transport = MemoryTransport::default()
            .upgrade(upgrade::Version::V1)
            .authenticate(noise::Config::new(&keypair).unwrap())
            .multiplex(yamux::Config::default())
            .boxed();
        Swarm::new(
            transport,
            behaviour(),
            keypair.public().to_peer_id(),
            libp2p::swarm::Config::with_tokio_executor().with_idle_connection_timeout(IDLE),
        )
    }

    /// Connects `b` to `a`, then drives both until the connection closes
    /// (true) or `WATCH` passes with it open (false).
    async fn closes<B: NetworkBehaviour>(mut a: Swarm<B>, mut b: Swarm<B>) -> bool {
        static PORT: AtomicU64 = AtomicU64::new(1);
        let port = u64::from(std::process::id()) << 20 | PORT.fetch_add(1, Ordering::Relaxed);
        let addr: Multiaddr = format!("/memory/{port}").parse().unwrap();
        a.listen_on(addr.clone()).unwrap();
        b.dial(addr).unwrap();
        let mut connected = false;
        let watch = async {
            loop {
                let event = tokio::select! {
                    e = a.select_next_some() => e,
                    e = b.select_next_some() => e,
                };
                match event {
                    SwarmEvent::ConnectionEstablished { .. } => connected = true,
                    SwarmEvent::ConnectionClosed { .. } if connected => return,
                    _ => {}
                }
            }
        };
        tokio::time::timeout(WATCH + IDLE, watch).await.is_ok()
    }

    fn gossip(subscribed: bool) -> gossipsub::Behaviour {
        let mut behaviour = crate::net::gossip_behaviour().unwrap();
        if subscribed {
            behaviour.subscribe(&IdentTopic::new("t")).unwrap();
        }
        behaviour
    }

    #[tokio::test]
    async fn a_connection_outside_every_mesh_closes_when_idle_and_mesh_and_bootstrap_peers_stay() {
        // Only one side follows the topic: no mesh, so nothing needs it.
        let (a, b) = (
            swarm(|| MeshAlive::new(gossip(true), false)),
            swarm(|| MeshAlive::new(gossip(false), false)),
        );
        assert!(
            closes(a, b).await,
            "a peer in no mesh is dropped after the idle timeout"
        );

        // Both follow it: they graft each other at the first heartbeat.
        let (a, b) = (
            swarm(|| MeshAlive::new(gossip(true), false)),
            swarm(|| MeshAlive::new(gossip(true), false)),
        );
        assert!(!closes(a, b).await, "a mesh peer is kept");

        // A bootstrap peer keeps every node, and a node keeps its
        // bootstrap peer, in a mesh or not.
        let boot = swarm(|| MeshAlive::new(gossip(true), true));
        let mut node = swarm(|| MeshAlive::new(gossip(false), false));
        node.behaviour_mut().keep(*boot.local_peer_id());
        assert!(
            !closes(boot, node).await,
            "a node and its bootstrap peer stay connected"
        );

        // Gossipsub alone holds its stream open and keeps the idle peer.
        let (a, b) = (swarm(|| gossip(true)), swarm(|| gossip(false)));
        assert!(!closes(a, b).await, "without the wrapper the connection stays");
    }
}
