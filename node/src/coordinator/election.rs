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
/// Nodes in the coordination set by default (`--coordination-set`): the
/// acting coordinator and two standbys.
pub const COORDINATION_SET_DEFAULT: usize = 3;
/// A reserve that finds the set short steps in after a delay spread over
/// this span by its peer id, so reserves that notice together do not all
/// step in at once.
pub const STEP_IN_SPREAD_MS: u64 = 3_000;

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
    /// Whether it could coordinate if it were reachable (its options and
    /// trust list say so).
    eligible_if_reachable: bool,
    started_at_ms: u64,
    /// Whether this node acts now (as its own heartbeats say).
    acting: bool,
    /// Whether this node sends mail over SMTP.
    delivers_mail: bool,
    /// Most nodes in the coordination set (`None`: every eligible node is
    /// in it), whether this node is, and since when it has found the set
    /// short (a reserve).
    set_size: Option<usize>,
    member: bool,
    short_since_ms: Option<u64>,
    /// When this node last joined the set (its start, unless bounded). It
    /// counts itself for the role only a full timeout later, once every
    /// member has heard its heartbeats and it has heard theirs: two nodes
    /// stepping in together must not both act, and both send the mail.
    member_since_ms: u64,
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
            eligible_if_reachable: eligible || pinned,
            started_at_ms: now_ms,
            acting: false,
            delivers_mail: false,
            set_size: None,
            member: eligible || pinned,
            short_since_ms: None,
            member_since_ms: now_ms,
            candidates: HashMap::new(),
            trusted: None,
        }
    }

    /// Hears only the heartbeats of `trusted` peers (all, given `None`),
    /// and may coordinate only if it is one of them or pinned itself.
    pub fn trusting(mut self, trusted: Option<BTreeSet<PeerId>>) -> Election {
        if let Some(trusted) = &trusted {
            self.eligible = self.pinned || (self.eligible && trusted.contains(&self.me));
            self.eligible_if_reachable = self.eligible;
        }
        self.trusted = trusted;
        self
    }

    /// Says whether peers can dial this node. Behind NAT, workers could
    /// not reach it (their adverts, the catch-up of standbys and the
    /// requesters' watches all dial the coordination set), so it leaves
    /// the set and steps in no more; a pinned node stays (its operator
    /// chose it). Reachable again, it may step in again.
    pub fn behind_nat(&mut self, behind: bool) {
        self.eligible = self.pinned || (self.eligible_if_reachable && !behind);
        if !self.eligible {
            self.member = false;
            self.acting = false;
        }
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

    /// Bounds the coordination set to `set_size` nodes (at least one): an
    /// eligible node outside it is a *reserve*, silent on the coordinator
    /// topic, holding no job inputs, until the set is short and it steps in.
    pub fn bounded(mut self, set_size: usize) -> Election {
        self.set_size = Some(set_size.max(1));
        self.member = self.pinned;
        self
    }

    /// Whether this node is in the coordination set now: it sends
    /// heartbeats, holds job inputs and the outbox, and may be elected.
    pub fn member(&self) -> bool {
        self.member
    }

    /// Joins or leaves the coordination set. Only members send heartbeats,
    /// so the living candidates are the set as far as this node knows.
    /// A member leaves when the set is over its size and it ranks last
    /// (pinned, acting, sending mail, smaller peer id rank first; pinned
    /// and acting nodes never leave). A reserve joins when the set has
    /// been short for its step-in delay.
    fn update_membership(&mut self, now_ms: u64) {
        let Some(set_size) = self.set_size else {
            self.member = self.eligible;
            return;
        };
        if !self.eligible || (!self.pinned && now_ms.saturating_sub(self.started_at_ms) < ELECTION_TIMEOUT_MS) {
            // Not eligible, or still listening for the set after starting.
            self.member = self.pinned;
            return;
        }
        let others: Vec<(PeerId, &Candidate)> = self.alive(now_ms).map(|(p, c)| (*p, c)).collect();
        if self.member {
            if self.pinned || self.acting || others.len() < set_size {
                return;
            }
            let rank =
                |pinned: bool, acting: bool, mails: bool, peer: &PeerId| (!pinned, !acting, !mails, peer.to_bytes());
            let mine = rank(self.pinned, self.acting, self.delivers_mail, &self.me);
            let better = others
                .iter()
                .filter(|(p, c)| rank(c.pinned, c.acting, c.delivers_mail, p) < mine)
                .count();
            if better >= set_size {
                self.member = false;
            }
            return;
        }
        if others.len() >= set_size {
            self.short_since_ms = None;
            return;
        }
        let since = *self.short_since_ms.get_or_insert(now_ms);
        if now_ms.saturating_sub(since) >= self.step_in_delay_ms() {
            self.member = true;
            self.member_since_ms = now_ms;
            self.short_since_ms = None;
        }
    }

    /// This node's step-in delay: spread by its peer id.
    fn step_in_delay_ms(&self) -> u64 {
        let bytes = self.me.to_bytes();
        let tail: [u8; 8] = bytes[bytes.len().saturating_sub(8)..].try_into().unwrap_or([0; 8]);
        u64::from_le_bytes(tail) % STEP_IN_SPREAD_MS
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
        // A fresh member counts itself only after a full timeout, unless
        // pinned.
        let me_counts = self.eligible
            && self.member
            && (self.pinned || now_ms.saturating_sub(self.member_since_ms) >= ELECTION_TIMEOUT_MS);
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
        self.update_membership(now_ms);
        self.acting = self.leader(now_ms) == Some(self.me);
        self.acting
    }

    /// The coordination set as this node knows it: the members it hears
    /// (only members heartbeat), and itself if it is one; sorted.
    pub fn set(&self, now_ms: u64) -> Vec<PeerId> {
        let me = (self.eligible && self.member).then_some(self.me);
        let mut set: Vec<PeerId> = me.into_iter().chain(self.alive(now_ms).map(|(p, _)| *p)).collect();
        set.sort_by_key(|p| p.to_bytes());
        set
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

    fn member_beat(acting: bool, at: u64) -> Candidate {
        Candidate {
            pinned: false,
            acting,
            delivers_mail: false,
            addresses: vec![],
            seen_at_ms: at,
        }
    }

    #[test]
    fn a_bounded_set_keeps_reserves_silent_and_refills_when_a_member_dies() {
        let p = peers(3);
        // p[2] starts after p[0] (acting) and p[1] (standby) formed a set of 2.
        let mut reserve = Election::new(p[2], true, false, 0).bounded(2);
        assert!(!reserve.member(), "a bounded node starts as a reserve");
        for t in (0..=10_000).step_by(250) {
            reserve.heard(p[0], member_beat(true, t));
            reserve.heard(p[1], member_beat(false, t));
            assert!(!reserve.acting(t));
            assert!(!reserve.member(), "the set is full at {t} ms");
        }
        assert_eq!(reserve.leader(10_000), Some(p[0]));
        // p[0] dies at 10 s: once it times out the set is short, and the
        // reserve steps in within its spread.
        let mut joined_at = None;
        for t in (10_250..=10_000 + ELECTION_TIMEOUT_MS + STEP_IN_SPREAD_MS + 250).step_by(250) {
            reserve.heard(p[1], member_beat(t > 10_000 + ELECTION_TIMEOUT_MS, t));
            reserve.acting(t);
            if reserve.member() && joined_at.is_none() {
                joined_at = Some(t);
            }
        }
        let joined_at = joined_at.expect("the reserve stepped in");
        assert!(
            joined_at > 10_000 + ELECTION_TIMEOUT_MS,
            "not before the member timed out"
        );
        assert!(joined_at <= 10_000 + ELECTION_TIMEOUT_MS + STEP_IN_SPREAD_MS + 250);
    }

    #[test]
    fn nodes_stepping_in_together_never_both_act() {
        // Three nodes start at once with a set of two; heartbeats arrive
        // 600 ms after they are sent (a slow, loaded machine).
        let p = peers(3);
        let mut views: Vec<Election> = p
            .iter()
            .map(|me| Election::new(*me, true, false, 0).bounded(2))
            .collect();
        let mut in_flight: Vec<(u64, usize, PeerId, Candidate)> = Vec::new();
        let mut acted = BTreeSet::new();
        for t in (0..=30_000).step_by(250) {
            for (to, peer, beat) in in_flight.iter().filter(|f| f.0 == t).map(|f| (f.1, f.2, f.3.clone())) {
                views[to].heard(peer, beat);
            }
            in_flight.retain(|f| f.0 > t);
            let acting: Vec<bool> = views.iter_mut().map(|v| v.acting(t)).collect();
            assert!(acting.iter().filter(|a| **a).count() <= 1, "two act at {t} ms");
            for (i, view) in views.iter().enumerate() {
                if acting[i] {
                    acted.insert(i);
                }
                if view.member() && t % HEARTBEAT_MS == 0 {
                    for to in (0..3).filter(|to| *to != i) {
                        in_flight.push((t + 500, to, p[i], member_beat(acting[i], t)));
                    }
                }
            }
        }
        assert_eq!(acted.len(), 1, "one node acted, and kept the role");
        assert_eq!(
            views.iter().filter(|v| v.member()).count(),
            2,
            "the set formed at its size"
        );
    }

    #[test]
    fn an_overfull_set_sheds_its_last_ranked_member_but_never_the_acting_one() {
        let p = peers(3);
        // p[2] (largest id) and two better members: it steps out.
        let mut last = Election::new(p[2], true, false, 0).bounded(2);
        last.member = true;
        last.heard(p[0], member_beat(true, 5_000));
        last.heard(p[1], member_beat(false, 5_000));
        last.acting(5_000);
        assert!(!last.member(), "ranked third of a set of two");
        // p[1] is a member too, but ranks second: it stays.
        let mut second = Election::new(p[1], true, false, 0).bounded(2);
        second.member = true;
        second.heard(p[0], member_beat(true, 5_000));
        second.heard(p[2], member_beat(false, 5_000));
        second.acting(5_000);
        assert!(second.member());
        // An acting node with the largest id keeps its place (and role).
        let mut acting = Election::new(p[2], true, false, 0).bounded(1);
        acting.member = true;
        assert!(acting.acting(5_000));
        acting.heard(p[0], member_beat(false, 5_000));
        acting.heard(p[1], member_beat(false, 5_000));
        assert!(acting.acting(5_000) && acting.member());
        // Unbounded (the default of `new`): every eligible node is a member.
        let mut open = Election::new(p[2], true, false, 0);
        open.heard(p[0], member_beat(true, 5_000));
        open.heard(p[1], member_beat(false, 5_000));
        open.acting(5_000);
        assert!(open.member());
    }

    #[test]
    fn a_node_behind_nat_leaves_the_set_and_steps_in_no_more_unless_pinned() {
        let p = peers(2);
        let mut lone = Election::new(p[0], true, false, 0).bounded(3);
        lone.acting(ELECTION_TIMEOUT_MS + 1);
        lone.acting(ELECTION_TIMEOUT_MS + STEP_IN_SPREAD_MS + 2);
        assert!(lone.member(), "alone, it steps into the short set");
        lone.behind_nat(true);
        assert!(!lone.member() && !lone.eligible());
        assert!(!lone.acting(10 * (ELECTION_TIMEOUT_MS + STEP_IN_SPREAD_MS)));
        assert!(!lone.member(), "behind NAT it does not step in again");
        lone.behind_nat(false);
        assert!(lone.eligible(), "reachable again, it may step in");

        let mut pinned = Election::new(p[1], true, true, 0).bounded(3);
        pinned.behind_nat(true);
        assert!(pinned.member() && pinned.eligible(), "a pinned node stays");
    }
}
