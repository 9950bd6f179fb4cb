//! Settlements heard from a peer not yet known to coordinate, held for a
//! while instead of dropped: a node that just restarted has not heard the
//! new coordinator's heartbeat when that coordinator settles a job, and
//! dropping the settlement left the job open on this node for good. Once a
//! heartbeat shows the sender may speak for the queue, its held
//! settlements are taken; a peer that never shows it has them expire.
//! Bounded per peer and in peers; settlements from a peer the node does
//! not trust (`--trust-coordinator`) are never held.

use std::collections::{HashMap, VecDeque};

use kiln_protocol::messages::Settlement;
use libp2p::PeerId;

/// How long a settlement is held: longer than a new coordinator takes to be
/// heard (one heartbeat, at most an election timeout).
pub(super) const HELD_MS: u64 = 30_000;
/// Peers whose settlements are held at once, and settlements per peer.
pub(super) const HELD_PEERS_MAX: usize = 16;
pub(super) const HELD_PER_PEER_MAX: usize = 256;

/// Settlements waiting for their sender to be known as a coordinator.
#[derive(Default)]
pub(super) struct Held {
    by_peer: HashMap<PeerId, VecDeque<(u64, Settlement)>>,
}

impl Held {
    /// Holds `settlement` from `peer`. When settlements from too many
    /// peers are held already, the peer heard from least recently makes
    /// room: a handful of strangers resending cannot keep a new
    /// coordinator's settlements out for long.
    pub(super) fn hold(&mut self, peer: PeerId, settlement: Settlement, now_ms: u64) -> bool {
        if !self.by_peer.contains_key(&peer) && self.by_peer.len() >= HELD_PEERS_MAX {
            let stalest = self
                .by_peer
                .iter()
                .min_by_key(|(_, list)| list.back().map(|(at, _)| *at).unwrap_or(0))
                .map(|(peer, _)| *peer);
            if let Some(stalest) = stalest {
                self.by_peer.remove(&stalest);
            }
        }
        let list = self.by_peer.entry(peer).or_default();
        if list.len() >= HELD_PER_PEER_MAX {
            list.pop_front();
        }
        list.push_back((now_ms, settlement));
        true
    }

    /// The settlements `peer` sent within [`HELD_MS`], oldest first.
    pub(super) fn take(&mut self, peer: &PeerId, now_ms: u64) -> Vec<Settlement> {
        self.by_peer
            .remove(peer)
            .unwrap_or_default()
            .into_iter()
            .filter(|(at, _)| now_ms.saturating_sub(*at) <= HELD_MS)
            .map(|(_, settlement)| settlement)
            .collect()
    }

    /// Forgets settlements held longer than [`HELD_MS`].
    pub(super) fn expire(&mut self, now_ms: u64) {
        self.by_peer.retain(|_, list| {
            list.retain(|(at, _)| now_ms.saturating_sub(*at) <= HELD_MS);
            !list.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_protocol::Hash;

    fn failed(n: u8) -> Settlement {
        Settlement::Failed {
            build_key: Hash::of(&[n]),
            reason: "r".into(),
            log: None,
            attempts: 1,
        }
    }

    #[test]
    fn held_settlements_are_taken_in_time_and_bounded() {
        let mut held = Held::default();
        let peer = PeerId::random();
        assert!(held.hold(peer, failed(1), 0));
        assert!(held.hold(peer, failed(2), 1_000));
        assert_eq!(held.take(&peer, 2_000), vec![failed(1), failed(2)]);
        assert!(held.take(&peer, 2_000).is_empty(), "taken once");

        held.hold(peer, failed(3), 0);
        assert!(held.take(&peer, HELD_MS + 1).is_empty(), "too old");
        held.hold(peer, failed(4), 0);
        held.expire(HELD_MS + 1);
        assert!(held.by_peer.is_empty());

        for n in 0..(HELD_PER_PEER_MAX + 10) {
            held.hold(peer, failed(n as u8), 0);
        }
        assert_eq!(held.take(&peer, 0).len(), HELD_PER_PEER_MAX);
        for n in 0..HELD_PEERS_MAX {
            held.hold(PeerId::random(), failed(0), 10 + n as u64);
        }
        assert_eq!(held.by_peer.len(), HELD_PEERS_MAX);
        let newcomer = PeerId::random();
        held.hold(newcomer, failed(9), 100);
        assert_eq!(held.by_peer.len(), HELD_PEERS_MAX, "still bounded");
        assert_eq!(held.take(&newcomer, 100), vec![failed(9)], "the newest peer is held");
    }
}
