//! Who coordinates, decided by every node on its own from the heartbeats
//! it hears, with no I/O. Every node that may coordinate sends a heartbeat
//! each [`HEARTBEAT_MS`]; a node not heard for [`ELECTION_TIMEOUT_MS`] is
//! gone. Among the living, a pinned node (`--coordinator`) wins; otherwise
//! a node that sends mail over SMTP (`--smtp`) is preferred over one that
//! would only write `.eml` files, even if that one acts now (it hands over,
//! as to a pinned node that returns); then a node already acting keeps the
//! role (a newcomer does not take over a working coordinator's queue);
//! otherwise the smallest peer id wins. Ties
//! at each level go to the smallest peer id, so after a partition heals and
//! both sides' coordinators hear each other, one of them steps down. A new
//! node waits one timeout before it may act, so it hears the current
//! coordinator before it competes with it.
//!
//! On an open network any peer can send heartbeats, and claim to be
//! pinned. A node given the coordinators it trusts (`--trust-coordinator`)
//! hears only their heartbeats, and coordinates only if it is one of them.

use std::collections::{BTreeSet, HashMap};

use libp2p::PeerId;

/// How often a node that may coordinate says so.
pub const HEARTBEAT_MS: u64 = 1_000;
/// A candidate unheard of this long is gone: the time a failover takes.
pub const ELECTION_TIMEOUT_MS: u64 = 4_000;
/// Candidates tracked at once.
pub const CANDIDATES_MAX: usize = 1024;

/// A node that may coordinate, as last heard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub pinned: bool,
    pub acting: bool,
    /// Sends mail over SMTP.
    pub delivers_mail: bool,
    pub addresses: Vec<String>,
    pub seen_at_ms: u64,
}

/// This node's view of the election.
pub struct Election {
    me: PeerId,
    /// Whether this node may coordinate, and whether it is pinned.
    eligible: bool,
    pinned: bool,
    started_at_ms: u64,
    /// Whether this node acts now (as its own heartbeats say).
    acting: bool,
    /// Whether this node sends mail over SMTP.
    delivers_mail: bool,
    candidates: HashMap<PeerId, Candidate>,
    /// The only peers that may coordinate, if the node was given a list.
    trusted: Option<BTreeSet<PeerId>>,
}

impl Election {
    pub fn new(me: PeerId, eligible: bool, pinned: bool, now_ms: u64) -> Election {
        Election {
            me,
            eligible: eligible || pinned,
            pinned,
            started_at_ms: now_ms,
            acting: false,
            delivers_mail: false,
            candidates: HashMap::new(),
            trusted: None,
        }
    }

    /// Hears only the heartbeats of `trusted` peers (all, given `None`),
    /// and may coordinate only if it is one of them or pinned itself.
    pub fn trusting(mut self, trusted: Option<BTreeSet<PeerId>>) -> Election {
        if let Some(trusted) = &trusted {
            self.eligible = self.pinned || (self.eligible && trusted.contains(&self.me));
        }
        self.trusted = trusted;
        self
    }

    /// Says whether this node sends mail over SMTP: among nodes that are
    /// not pinned, one that does is preferred.
    pub fn delivering_mail(mut self, delivers_mail: bool) -> Election {
        self.delivers_mail = delivers_mail;
        self
    }

    pub fn delivers_mail(&self) -> bool {
        self.delivers_mail
    }

    /// Whether `peer` may coordinate, as far as this node trusts it.
    pub fn trusts(&self, peer: &PeerId) -> bool {
        self.trusted.as_ref().is_none_or(|trusted| trusted.contains(peer))
    }

    /// Whether this node takes `peer`'s word on the queue (a job assigned,
    /// a job ended): given trusted coordinators, any of them (even before
    /// its first heartbeat arrives); otherwise a peer whose recent
    /// heartbeats say it acts or is pinned. On an open network that only
    /// asks a stranger to claim the role; the list is what keeps it out.
    pub fn speaks_for_queue(&self, peer: &PeerId) -> bool {
        match &self.trusted {
            Some(trusted) => trusted.contains(peer),
            None => self.candidates.get(peer).is_some_and(|c| c.acting || c.pinned),
        }
    }

    /// Whether `peer` is a candidate this node has heard (and trusts): a
    /// member of the coordination set, which may read this node's outbox.
    pub fn is_candidate(&self, peer: &PeerId) -> bool {
        self.trusts(peer) && self.candidates.contains_key(peer)
    }

    pub fn eligible(&self) -> bool {
        self.eligible
    }

    pub fn pinned(&self) -> bool {
        self.pinned
    }

    /// A heartbeat from another node.
    pub fn heard(&mut self, peer: PeerId, candidate: Candidate) {
        if peer == self.me || !self.trusts(&peer) {
            return;
        }
        if self.candidates.len() >= CANDIDATES_MAX && !self.candidates.contains_key(&peer) {
            return;
        }
        self.candidates.insert(peer, candidate);
    }

    fn alive(&self, now_ms: u64) -> impl Iterator<Item = (&PeerId, &Candidate)> {
        self.candidates
            .iter()
            .filter(move |(_, c)| now_ms.saturating_sub(c.seen_at_ms) <= ELECTION_TIMEOUT_MS)
    }

    /// The coordinator as this node sees it now, if any: among the living,
    /// the pinned if any; else those that send mail over SMTP if any; among
    /// those, the acting ones if any; then the smallest peer id.
    pub fn leader(&self, now_ms: u64) -> Option<PeerId> {
        // A fresh node counts itself only after a full timeout, unless pinned.
        let me_counts =
            self.eligible && (self.pinned || now_ms.saturating_sub(self.started_at_ms) >= ELECTION_TIMEOUT_MS);
        let me = me_counts.then_some((self.me, self.pinned, self.delivers_mail, self.acting));
        let others = self
            .alive(now_ms)
            .map(|(peer, c)| (*peer, c.pinned, c.delivers_mail, c.acting));
        let mut all: Vec<(PeerId, bool, bool, bool)> = me.into_iter().chain(others).collect();
        if all.iter().any(|c| c.1) {
            all.retain(|c| c.1);
        } else if all.iter().any(|c| c.2) {
            all.retain(|c| c.2);
        }
        if all.iter().any(|c| c.3) {
            all.retain(|c| c.3);
        }
        all.into_iter().map(|c| c.0).min_by_key(|peer| peer.to_bytes())
    }

    /// Whether this node should act as the coordinator now; remembers the
    /// answer, which its next heartbeat tells the others.
    pub fn acting(&mut self, now_ms: u64) -> bool {
        self.acting = self.leader(now_ms) == Some(self.me);
        self.acting
    }

    /// How to reach `peer`, from its heartbeats.
    pub fn addresses(&self, peer: &PeerId) -> Vec<String> {
        self.candidates
            .get(peer)
            .map(|c| c.addresses.clone())
            .unwrap_or_default()
    }

    /// Forgets candidates gone for long.
    pub fn tick(&mut self, now_ms: u64) {
        self.candidates
            .retain(|_, c| now_ms.saturating_sub(c.seen_at_ms) <= 10 * ELECTION_TIMEOUT_MS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(n: usize) -> Vec<PeerId> {
        let mut peers: Vec<PeerId> = (0..n).map(|_| PeerId::random()).collect();
        peers.sort_by_key(|p| p.to_bytes());
        peers
    }

    fn beat(pinned: bool, at: u64) -> Candidate {
        Candidate {
            pinned,
            acting: pinned,
            delivers_mail: false,
            addresses: vec![],
            seen_at_ms: at,
        }
    }

    #[test]
    fn the_smallest_living_eligible_peer_leads_and_a_dead_one_is_replaced() {
        let p = peers(3);
        let mut views: Vec<Election> = p.iter().map(|me| Election::new(*me, true, false, 0)).collect();
        for t in (0..=6_000).step_by(1_000) {
            for view in &mut views {
                for peer in &p {
                    view.heard(*peer, beat(false, t));
                }
            }
        }
        for view in &views {
            assert_eq!(view.leader(6_000), Some(p[0]));
        }
        assert!(views[0].acting(6_000) && !views[1].acting(6_000));
        // p[0] dies at 6 s: the others agree on p[1] once it times out.
        for t in (7_000..=11_000).step_by(1_000) {
            for view in &mut views[1..] {
                view.heard(p[1], beat(false, t));
                view.heard(p[2], beat(false, t));
            }
        }
        assert_eq!(views[1].leader(10_000), Some(p[0]), "not yet timed out");
        assert_eq!(views[1].leader(11_000), Some(p[1]));
        assert_eq!(views[2].leader(11_000), Some(p[1]));
        assert!(views[1].acting(11_000));
    }

    #[test]
    fn a_pinned_node_wins_and_resumes_when_it_returns() {
        let p = peers(2);
        // p[1] is pinned; p[0] has the smaller id but is only eligible.
        let mut small = Election::new(p[0], true, false, 0);
        let mut pinned = Election::new(p[1], true, true, 0);
        assert!(pinned.acting(0), "a pinned node acts at once");
        small.heard(p[1], beat(true, 4_000));
        assert_eq!(small.leader(4_500), Some(p[1]));
        assert_eq!(small.leader(9_000), Some(p[0]), "pinned gone: elected node takes over");
        small.heard(p[1], beat(true, 9_500));
        assert_eq!(small.leader(9_500), Some(p[1]), "pinned back: it resumes");
    }

    #[test]
    fn a_new_node_waits_before_competing_and_ineligible_nodes_never_lead() {
        let p = peers(2);
        let fresh = Election::new(p[0], true, false, 1_000);
        assert_eq!(fresh.leader(1_500), None);
        assert_eq!(fresh.leader(5_000), Some(p[0]));
        let mut bystander = Election::new(p[0], false, false, 0);
        assert_eq!(bystander.leader(10_000), None);
        bystander.heard(p[1], beat(false, 10_000));
        assert_eq!(bystander.leader(10_000), Some(p[1]));
    }

    #[test]
    fn a_node_given_trusted_coordinators_hears_only_them() {
        let p = peers(3);
        let trusted: BTreeSet<PeerId> = [p[1], p[2]].into();
        let mut view = Election::new(p[2], true, false, 0).trusting(Some(trusted.clone()));
        // p[0] has the smallest id and even claims to be pinned.
        view.heard(p[0], beat(true, 5_000));
        view.heard(p[1], beat(false, 5_000));
        assert!(!view.speaks_for_queue(&p[0]), "not on the list, whatever it claims");
        assert!(view.speaks_for_queue(&p[1]) && view.speaks_for_queue(&p[2]));
        assert_eq!(view.leader(5_000), Some(p[1]));
        let outsider = Election::new(p[0], true, false, 0).trusting(Some(trusted.clone()));
        assert!(!outsider.eligible(), "a node not on its own list does not coordinate");
        let pinned = Election::new(p[0], true, true, 0).trusting(Some(trusted));
        assert!(pinned.eligible(), "its own --coordinator pin still holds for itself");
        let mut open = Election::new(p[0], true, false, 0).trusting(None);
        assert!(open.eligible() && open.trusts(&p[2]));
        open.heard(p[1], beat(false, 5_000));
        assert!(!open.speaks_for_queue(&p[1]), "a candidate that does not act");
        open.heard(p[2], beat(true, 5_000));
        assert!(open.speaks_for_queue(&p[2]));
    }

    #[test]
    fn a_newcomer_with_a_smaller_id_leaves_the_acting_coordinator_alone() {
        let p = peers(2);
        let mut newcomer = Election::new(p[0], true, false, 10_000);
        let acting = Candidate {
            pinned: false,
            acting: true,
            delivers_mail: false,
            addresses: vec![],
            seen_at_ms: 14_000,
        };
        newcomer.heard(p[1], acting);
        assert_eq!(newcomer.leader(14_500), Some(p[1]));
        assert!(!newcomer.acting(14_500));
        // The acting one dies: the newcomer takes over.
        assert!(newcomer.acting(20_000));
    }

    #[test]
    fn a_healed_partition_converges_on_one_leader() {
        let p = peers(3);
        let acting = |at| Candidate {
            pinned: false,
            acting: true,
            delivers_mail: false,
            addresses: vec![],
            seen_at_ms: at,
        };
        // Split: p[0] alone on one side, p[1] and p[2] on the other.
        let mut a = Election::new(p[0], true, false, 0);
        let mut c = Election::new(p[2], true, false, 0);
        c.heard(p[1], acting(5_000));
        assert!(a.acting(5_000), "alone, p[0] coordinates its side");
        assert!(!c.acting(5_000), "p[1] coordinates the other side");
        // Healed: both coordinators hear each other; the larger steps down.
        let mut b = Election::new(p[1], true, false, 0);
        assert!(b.acting(5_000));
        b.heard(p[0], acting(6_000));
        a.heard(p[1], acting(6_000));
        c.heard(p[0], acting(6_000));
        assert!(!b.acting(6_000));
        assert!(a.acting(6_000));
        assert_eq!(c.leader(6_000), Some(p[0]));
    }

    #[test]
    fn a_node_that_sends_mail_is_preferred_and_takes_over_from_one_that_does_not() {
        let p = peers(3);
        let mailing = |acting, at| Candidate {
            pinned: false,
            acting,
            delivers_mail: true,
            addresses: vec![],
            seen_at_ms: at,
        };
        // p[0] has the smallest id and acts, but writes only files.
        let mut files = Election::new(p[0], true, false, 0);
        assert!(files.acting(5_000));
        // p[2] sends mail: p[0] steps down once it hears it.
        files.heard(p[2], mailing(false, 6_000));
        assert_eq!(files.leader(6_000), Some(p[2]));
        assert!(!files.acting(6_000));
        let mut smtp = Election::new(p[2], true, false, 0).delivering_mail(true);
        smtp.heard(p[0], beat(false, 6_000));
        assert!(smtp.acting(6_000) && smtp.delivers_mail());
        // Among nodes that send mail, the acting one keeps the role.
        let mut newcomer = Election::new(p[1], true, false, 6_000).delivering_mail(true);
        newcomer.heard(p[2], mailing(true, 10_000));
        assert_eq!(newcomer.leader(10_500), Some(p[2]));
        // A pinned node still wins over all of them.
        newcomer.heard(p[0], beat(true, 10_500));
        assert_eq!(newcomer.leader(10_500), Some(p[0]));
    }
}
