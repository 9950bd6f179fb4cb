//! AutoNAT's client, stopped once the node knows it is behind NAT.
//!
//! libp2p's AutoNAT v2 client asks a connected peer to dial each address
//! it was seen at. Behind a router that drops unasked connections (most
//! do), the dial-back times out on both sides and the client asks again
//! every 5 s, forever: each node behind NAT would keep a peer (most often a
//! bootstrap peer) dialling into the void every 15 s or so, a cost at that
//! peer that grows with the nodes behind NAT. Once the event loop has
//! settled the question ([`super::Reachability::Private`]), this wrapper
//! drops the client's requests to its connection handlers: the test it
//! started stays pending, and no new one is asked for. It also keeps from
//! the client the candidates that are no IP address and port (a peer that
//! reached us through a relay sees us at none).

use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

/// `B`, whose requests to its handlers stop once [`Probing::stop`] is called.
pub(super) struct Probing<B> {
    inner: B,
    stopped: bool,
}

impl<B> Probing<B> {
    pub(super) fn new(inner: B) -> Probing<B> {
        Probing { inner, stopped: false }
    }

    /// Asks no peer for anything more.
    pub(super) fn stop(&mut self) {
        self.stopped = true;
    }
}

impl<B: NetworkBehaviour> NetworkBehaviour for Probing<B> {
    type ConnectionHandler = B::ConnectionHandler;
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
        self.inner
            .handle_established_inbound_connection(connection_id, peer, local_addr, remote_addr)
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
        self.inner
            .handle_established_outbound_connection(connection_id, peer, addr, role_override, port_use)
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        // Only an IP address and port can be dialled back: a peer that
        // reached us through a relay reports no address at all, which
        // AutoNAT would test and find unreachable.
        if let FromSwarm::NewExternalAddrCandidate(candidate) = &event {
            if super::paths::ip_port(candidate.addr).is_none() {
                return;
            }
        }
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
        loop {
            match self.inner.poll(cx) {
                Poll::Ready(ToSwarm::NotifyHandler { .. }) if self.stopped => continue,
                other => return other,
            }
        }
    }
}
