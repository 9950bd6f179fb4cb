//! How this node is reached, and how it reaches each peer: its reachability
//! from outside (AutoNAT), and for each connected peer whether the
//! connection is direct, direct after a hole punch (DCUtR), or relayed
//! through a bootstrap peer's relay. Plain state, fed by the event loop.

use std::collections::{HashMap, HashSet};

use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};
use serde::Serialize;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Circuit limits kept for peers that opened a circuit to us.
pub(crate) const INBOUND_LIMITS_MAX: usize = 1024;
/// Waits for a direct connection held at once; past it, a waiter is told
/// the path as it is.
pub(crate) const PATH_WAITERS_MAX: usize = 256;

/// Whether this node can be dialled from outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reachability {
    /// Not known yet (no AutoNAT probe answered).
    Unknown,
    /// A peer dialled one of our addresses back: we are reachable.
    Public,
    /// The dial-back failed: we are behind a NAT or firewall, reached
    /// through a relay (and hole punching).
    Private,
}

impl Reachability {
    pub fn as_str(self) -> &'static str {
        match self {
            Reachability::Unknown => "unknown",
            Reachability::Public => "reachable",
            Reachability::Private => "behind NAT (relayed)",
        }
    }
}

/// What `--reachability` asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReachabilityMode {
    /// Find out with AutoNAT (the default).
    #[default]
    Auto,
    /// Known reachable: a DHT server, no relay slot.
    Public,
    /// Known unreachable: a relay slot and DHT client mode from the start.
    Private,
}

/// How this node is connected to a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathKind {
    /// A direct connection, one side dialled the other.
    Direct,
    /// A direct connection made by hole punching, replacing a relayed one.
    HolePunched,
    /// Only through a relay: its circuits carry little (see `data_max`).
    Relayed,
}

impl PathKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::HolePunched => "direct after a hole punch",
            PathKind::Relayed => "relayed",
        }
    }
}

/// The path to one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerPath {
    pub kind: PathKind,
    /// For a relayed path: the bytes one circuit may carry, as the relay
    /// said when the circuit opened (both directions together).
    pub data_max: Option<u64>,
    /// For a relayed path: whether hole punching was tried and failed (no
    /// direct connection is coming).
    pub punch_failed: bool,
}

/// This node's view of its own reachability and its peers' paths.
#[derive(Clone, Debug, Serialize)]
pub struct NetView {
    pub reachability: Reachability,
    /// Addresses through a relay that others may dial us at.
    pub relayed_addresses: Vec<String>,
    pub direct: usize,
    pub hole_punched: usize,
    pub relayed: usize,
    /// The peers that are not plainly direct, at most `shown` of them.
    pub peers: Vec<(String, PathKind)>,
}

struct Waiter {
    deadline: Instant,
    reply: oneshot::Sender<Option<PeerPath>>,
}

/// One connection to a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Link {
    Direct,
    /// Through a relay (its peer id, when the address names it).
    Relayed(Option<PeerId>),
}

/// Connections by peer, and what they tell of the path.
#[derive(Default)]
pub(super) struct Paths {
    /// Each open connection of each connected peer.
    connections: HashMap<PeerId, HashMap<ConnectionId, Link>>,
    /// Peers reached directly after a hole punch (while that lasts).
    punched: HashSet<PeerId>,
    /// Peers whose hole punch failed (while connected).
    punch_failed: HashSet<PeerId>,
    /// What a circuit through each relay may carry, as it last said (for
    /// the relays this node dialled through; forgotten when the relay
    /// disconnects).
    relay_data_max: HashMap<PeerId, u64>,
    /// What the circuit a connected peer opened to us may carry.
    inbound_data_max: HashMap<PeerId, u64>,
    /// Fetchers waiting for a direct connection to a peer.
    waiters: HashMap<PeerId, Vec<Waiter>>,
}

/// The relay a circuit address goes through: the peer before `/p2p-circuit`.
pub(super) fn relay_of(addr: &Multiaddr) -> Option<PeerId> {
    let mut last = None;
    for protocol in addr.iter() {
        match protocol {
            Protocol::P2p(peer) => last = Some(peer),
            Protocol::P2pCircuit => return last,
            _ => {}
        }
    }
    None
}

/// The IP address and TCP port of a direct address (not through a relay).
pub(super) fn ip_port(addr: &Multiaddr) -> Option<(std::net::IpAddr, u16)> {
    if is_relayed(addr) {
        return None;
    }
    let mut ip = None;
    let mut port = None;
    for protocol in addr.iter() {
        match protocol {
            Protocol::Ip4(a) => ip = Some(std::net::IpAddr::V4(a)),
            Protocol::Ip6(a) => ip = Some(std::net::IpAddr::V6(a)),
            Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    Some((ip?, port?))
}

pub(super) fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// An address on the public internet: not loopback, private (RFC 1918,
/// shared CGNAT space, unique local), link-local, documentation or
/// unspecified.
pub(super) fn is_global(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => {
            let [a, b, c, _] = ip.octets();
            !(ip.is_loopback()
                || ip.is_private()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_broadcast()
                || ip.is_multicast()
                || ip.is_documentation()
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19))
                || (a == 192 && b == 0 && c == 0)
                || a >= 240)
        }
        Protocol::Ip6(ip) => {
            let first = ip.segments()[0];
            !(ip.is_loopback()
                || ip.is_unspecified()
                || ip.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && ip.segments()[1] == 0x0db8)
        }
        _ => false,
    })
}

impl Paths {
    /// A connection opened. Returns the relayed connections to close: a
    /// direct connection to a peer makes its relayed ones useless (and
    /// streams opened on them would cross the relay's small limits).
    pub(super) fn opened(&mut self, peer: PeerId, id: ConnectionId, link: Link) -> Vec<ConnectionId> {
        let connections = self.connections.entry(peer).or_default();
        let had_relayed = connections.values().any(|l| *l != Link::Direct);
        connections.insert(id, link);
        if link != Link::Direct {
            return self.relayed_to_close(peer);
        }
        if had_relayed {
            // A direct connection while a relayed one exists: the hole
            // punch (ours or the peer's) worked.
            self.punched.insert(peer);
            self.punch_failed.remove(&peer);
        }
        self.answer(peer);
        self.relayed_to_close(peer)
    }

    fn relayed_to_close(&self, peer: PeerId) -> Vec<ConnectionId> {
        let Some(connections) = self.connections.get(&peer) else {
            return Vec::new();
        };
        if !connections.values().any(|l| *l == Link::Direct) {
            return Vec::new();
        }
        connections
            .iter()
            .filter(|(_, link)| **link != Link::Direct)
            .map(|(id, _)| *id)
            .collect()
    }

    pub(super) fn closed(&mut self, peer: PeerId, id: ConnectionId) {
        let Some(connections) = self.connections.get_mut(&peer) else {
            return;
        };
        connections.remove(&id);
        if connections.is_empty() {
            self.connections.remove(&peer);
            self.punched.remove(&peer);
            self.punch_failed.remove(&peer);
            self.inbound_data_max.remove(&peer);
            self.relay_data_max.remove(&peer);
            self.answer(peer);
        } else if !connections.values().any(|l| *l == Link::Direct) {
            self.punched.remove(&peer);
        } else {
            // The relayed connection closed after the hole punch.
            self.answer(peer);
        }
    }

    /// DCUtR gave up on `peer` after its attempts.
    pub(super) fn punch_failed(&mut self, peer: PeerId) {
        if self.connections.contains_key(&peer) {
            self.punch_failed.insert(peer);
        }
        self.answer(peer);
    }

    /// DCUtR made a direct connection to `peer`.
    pub(super) fn punched(&mut self, peer: PeerId) {
        if self.connections.contains_key(&peer) {
            self.punched.insert(peer);
        }
        self.punch_failed.remove(&peer);
        self.answer(peer);
    }

    /// What circuits through `relay` may carry, as it said when one of
    /// ours opened (kept while we are connected to the relay).
    pub(super) fn relay_limit(&mut self, relay: PeerId, data_max: Option<u64>) {
        match data_max {
            Some(bytes) if self.connections.contains_key(&relay) => {
                self.relay_data_max.insert(relay, bytes);
            }
            _ => {
                self.relay_data_max.remove(&relay);
            }
        }
    }

    /// What the circuit `peer` opened to us may carry (said before the
    /// connection is up: kept for at most [`INBOUND_LIMITS_MAX`] peers).
    pub(super) fn inbound_limit(&mut self, peer: PeerId, data_max: Option<u64>) {
        if self.inbound_data_max.len() >= INBOUND_LIMITS_MAX {
            // Circuits whose connection never came up.
            let connections = &self.connections;
            self.inbound_data_max.retain(|p, _| connections.contains_key(p));
        }
        match data_max {
            Some(bytes) if self.inbound_data_max.len() < INBOUND_LIMITS_MAX => {
                self.inbound_data_max.insert(peer, bytes);
            }
            _ => {
                self.inbound_data_max.remove(&peer);
            }
        }
    }

    /// The path to `peer`, or `None` when not connected.
    pub(super) fn path(&self, peer: &PeerId) -> Option<PeerPath> {
        let connections = self.connections.get(peer)?;
        if connections.values().any(|l| *l == Link::Direct) {
            let kind = if self.punched.contains(peer) {
                PathKind::HolePunched
            } else {
                PathKind::Direct
            };
            return Some(PeerPath {
                kind,
                data_max: None,
                punch_failed: false,
            });
        }
        let data_max = connections
            .values()
            .filter_map(|link| match link {
                Link::Relayed(Some(relay)) => self.relay_data_max.get(relay).copied(),
                _ => None,
            })
            .chain(self.inbound_data_max.get(peer).copied())
            .max();
        Some(PeerPath {
            kind: PathKind::Relayed,
            data_max,
            punch_failed: self.punch_failed.contains(peer),
        })
    }

    /// Whether the path to `peer` is settled: not connected, direct with
    /// no relayed connection left (a stream takes any connection to its
    /// peer), or relayed with the hole punch over.
    fn settled(&self, peer: &PeerId) -> bool {
        let Some(connections) = self.connections.get(peer) else {
            return true;
        };
        let relayed = connections.values().any(|l| *l != Link::Direct);
        !relayed || self.punch_failed.contains(peer)
    }

    /// Answers now when the path to `peer` is settled; otherwise keeps
    /// `reply` until it is, or until `deadline`.
    pub(super) fn wait_direct(&mut self, peer: PeerId, deadline: Instant, reply: oneshot::Sender<Option<PeerPath>>) {
        let path = self.path(&peer);
        let settled = self.settled(&peer);
        let waiting: usize = self.waiters.values().map(Vec::len).sum();
        if settled || waiting >= PATH_WAITERS_MAX {
            let _ = reply.send(path);
            return;
        }
        self.waiters.entry(peer).or_default().push(Waiter { deadline, reply });
    }

    fn answer(&mut self, peer: PeerId) {
        if !self.settled(&peer) {
            return;
        }
        if let Some(waiters) = self.waiters.remove(&peer) {
            let path = self.path(&peer);
            for waiter in waiters {
                let _ = waiter.reply.send(path);
            }
        }
    }

    pub(super) fn has_waiters(&self) -> bool {
        !self.waiters.is_empty()
    }

    /// Answers the waiters whose time is up with the path as it is.
    pub(super) fn expire(&mut self, now: Instant) {
        let due: Vec<PeerId> = self
            .waiters
            .iter()
            .filter(|(_, w)| w.iter().any(|w| w.deadline <= now))
            .map(|(p, _)| *p)
            .collect();
        for peer in due {
            // The hole punch is over for whoever waited this long: DCUtR
            // reports a failure only on the side that accepted the
            // relayed connection, so the dialling side learns it here.
            if self.path(&peer).is_some_and(|p| p.kind == PathKind::Relayed) {
                self.punch_failed.insert(peer);
            }
            let path = self.path(&peer);
            if let Some(waiters) = self.waiters.get_mut(&peer) {
                let (late, keep): (Vec<Waiter>, Vec<Waiter>) = waiters.drain(..).partition(|w| w.deadline <= now);
                *waiters = keep;
                for waiter in late {
                    let _ = waiter.reply.send(path);
                }
            }
            if self.waiters.get(&peer).is_some_and(Vec::is_empty) {
                self.waiters.remove(&peer);
            }
        }
    }

    /// Counts of peers by path, and the ones not plainly direct.
    pub(super) fn view(&self, reachability: Reachability, relayed_addresses: Vec<String>, shown: usize) -> NetView {
        let mut view = NetView {
            reachability,
            relayed_addresses,
            direct: 0,
            hole_punched: 0,
            relayed: 0,
            peers: Vec::new(),
        };
        for peer in self.connections.keys() {
            let Some(path) = self.path(peer) else { continue };
            match path.kind {
                PathKind::Direct => view.direct += 1,
                PathKind::HolePunched => view.hole_punched += 1,
                PathKind::Relayed => view.relayed += 1,
            }
            if path.kind != PathKind::Direct && view.peers.len() < shown {
                view.peers.push((peer.to_string(), path.kind));
            }
        }
        view.peers.sort_by(|a, b| a.0.cmp(&b.0));
        view
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn id(n: usize) -> ConnectionId {
        // Connection ids are opaque; fresh ones are distinct.
        let _ = n;
        ConnectionId::new_unchecked(n)
    }

    #[test]
    fn a_relayed_peer_becomes_hole_punched_when_a_direct_connection_opens_and_the_relayed_one_is_closed() {
        let mut paths = Paths::default();
        let (peer, relay) = (PeerId::random(), PeerId::random());
        paths.opened(relay, id(9), Link::Direct);
        paths.relay_limit(relay, Some(1 << 20));
        assert!(paths.opened(peer, id(1), Link::Relayed(Some(relay))).is_empty());
        let path = paths.path(&peer).unwrap();
        assert_eq!(path.kind, PathKind::Relayed);
        assert_eq!(path.data_max, Some(1 << 20));
        assert!(!path.punch_failed);

        let (tx, mut rx) = oneshot::channel();
        paths.wait_direct(peer, Instant::now() + std::time::Duration::from_secs(10), tx);
        assert!(rx.try_recv().is_err(), "a relayed path waits for the hole punch");
        let close = paths.opened(peer, id(2), Link::Direct);
        assert_eq!(close, vec![id(1)], "the relayed connection is to be closed");
        assert_eq!(paths.path(&peer).unwrap().kind, PathKind::HolePunched);
        assert!(
            rx.try_recv().is_err(),
            "answered once no stream can take the relayed connection"
        );
        paths.closed(peer, id(1));
        assert_eq!(rx.try_recv().unwrap().unwrap().kind, PathKind::HolePunched);
        assert_eq!(paths.path(&peer).unwrap().kind, PathKind::HolePunched);
        paths.closed(peer, id(2));
        assert_eq!(paths.path(&peer), None);
    }

    #[test]
    fn a_failed_hole_punch_answers_the_waiters_with_the_relayed_path() {
        let mut paths = Paths::default();
        let (peer, relay) = (PeerId::random(), PeerId::random());
        paths.opened(peer, id(1), Link::Relayed(Some(relay)));
        let (tx, mut rx) = oneshot::channel();
        paths.wait_direct(peer, Instant::now() + std::time::Duration::from_secs(10), tx);
        paths.punch_failed(peer);
        let path = rx.try_recv().unwrap().unwrap();
        assert_eq!(path.kind, PathKind::Relayed);
        assert!(path.punch_failed);
        // Asked again, the answer comes at once.
        let (tx, mut rx) = oneshot::channel();
        paths.wait_direct(peer, Instant::now() + std::time::Duration::from_secs(10), tx);
        assert!(rx.try_recv().unwrap().unwrap().punch_failed);
    }

    #[test]
    fn a_waiter_is_answered_at_its_deadline_and_waiters_are_bounded() {
        let mut paths = Paths::default();
        let (peer, relay) = (PeerId::random(), PeerId::random());
        paths.opened(peer, id(1), Link::Relayed(Some(relay)));
        let now = Instant::now();
        let mut answers = Vec::new();
        for _ in 0..PATH_WAITERS_MAX + 1 {
            let (tx, rx) = oneshot::channel();
            paths.wait_direct(peer, now, tx);
            answers.push(rx);
        }
        let mut last = answers.pop().unwrap();
        assert!(last.try_recv().is_ok(), "past the bound, answered at once");
        paths.expire(now);
        for mut rx in answers {
            let path = rx.try_recv().unwrap().unwrap();
            assert_eq!(path.kind, PathKind::Relayed);
            assert!(path.punch_failed, "a wait that ran out counts as a failed hole punch");
        }
        assert!(paths.waiters.is_empty());
    }

    #[test]
    fn the_relay_of_a_circuit_address_is_the_peer_before_p2p_circuit() {
        let relay = PeerId::random();
        let target = PeerId::random();
        let addr: Multiaddr = format!("/ip4/203.0.113.1/tcp/4001/p2p/{relay}/p2p-circuit/p2p/{target}")
            .parse()
            .unwrap();
        assert_eq!(relay_of(&addr), Some(relay));
        assert!(is_relayed(&addr));
        let direct: Multiaddr = format!("/ip4/203.0.113.1/tcp/4001/p2p/{relay}").parse().unwrap();
        assert_eq!(relay_of(&direct), None);
        assert!(!is_relayed(&direct));
    }

    #[test]
    fn only_public_internet_addresses_are_global() {
        for local in [
            "/ip4/127.0.0.1/tcp/1",
            "/ip4/10.1.2.3/tcp/1",
            "/ip4/192.168.1.2/tcp/1",
            "/ip4/172.16.0.1/tcp/1",
            "/ip4/100.64.0.1/tcp/1",
            "/ip4/203.0.113.7/tcp/1",
            "/ip4/169.254.0.1/tcp/1",
            "/ip6/::1/tcp/1",
            "/ip6/fd00::1/tcp/1",
            "/ip6/fe80::1/tcp/1",
        ] {
            assert!(!is_global(&local.parse().unwrap()), "{local}");
        }
        for public in [
            "/ip4/1.1.1.1/tcp/1",
            "/ip4/93.184.216.34/tcp/4001",
            "/ip6/2a00:1450::1/tcp/1",
        ] {
            assert!(is_global(&public.parse().unwrap()), "{public}");
        }
    }
}
