//! A worker's adverts, sent to each member of the coordination set
//! directly (`CoordRequest::AdvertV1`), not gossiped: gossip would bring
//! every worker's advert to every node, a cost per node that grows with
//! the network.
//!
//! Who sends: every worker. To whom: the members of the coordination set
//! it hears (the acting coordinator first; at most [`MEMBERS_MAX`]). How
//! often: at once when the advert changes (a build starts or ends, the
//! worker stops or starts waiting) or a member is new, then every
//! [`ADVERT_BUSY_MS`] while it builds (the lease heartbeat) and every
//! [`ADVERT_IDLE_MS`] while idle. A member that does not answer is tried
//! again after [`ADVERT_BUSY_MS`].
//!
//! Not for: deciding what to take (that is `policy`).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use kiln_protocol::coord::{CoordReplyV1, CoordRequest};
use kiln_protocol::messages::{WorkerAdvert, ADVERT_BUSY_MS, ADVERT_IDLE_MS};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::mpsc;
use tracing::debug;

use super::Worker;
use crate::clock::now_ms;
use crate::coord_client::ask_peer;
use crate::coordinator::CoordHandle;

/// How often the worker looks whether an advert is due.
const TICK_MS: u64 = 500;
/// Members of the coordination set advertised to at most.
const MEMBERS_MAX: usize = 8;
/// How long one advert may take to reach a member and be answered.
const SEND_MS_MAX: u64 = 5_000;

/// What was last sent to one member.
#[derive(Default)]
struct Sent {
    /// The advert (its `sequence` zeroed) the member last took.
    taken: Option<WorkerAdvert>,
    at_ms: u64,
    in_flight: bool,
    /// After a failed send, not before this.
    retry_at_ms: u64,
}

/// A send's end: the member, the advert it was sent (sequence zeroed),
/// whether it was taken.
type Ended = (PeerId, WorkerAdvert, bool);

impl Worker {
    /// This worker's advert as of now, with `sequence` zeroed (what is
    /// compared to find a change).
    fn advert_now(&self) -> WorkerAdvert {
        WorkerAdvert {
            system: self.system.clone(),
            max_jobs: self.policy.max_jobs,
            running_jobs: self.running.load(Ordering::SeqCst),
            waiting_because: self
                .sandbox
                .isolation_problem()
                .map(|p| format!("cannot isolate builds: {p}"))
                .or_else(|| self.paused_because()),
            sequence: 0,
            running: self.building(),
        }
    }

    /// Advertises this worker to the coordination set until the node stops.
    pub async fn advertise(self: Arc<Self>, coordination: CoordHandle) {
        let me = self.net.peer_id();
        let mut tick = tokio::time::interval(Duration::from_millis(TICK_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sent: HashMap<PeerId, Sent> = HashMap::new();
        let (ended_tx, mut ended) = mpsc::channel::<Ended>(MEMBERS_MAX);
        loop {
            tick.tick().await;
            let now = now_ms();
            while let Ok((peer, advert, taken)) = ended.try_recv() {
                if let Some(entry) = sent.get_mut(&peer) {
                    entry.in_flight = false;
                    if taken {
                        entry.taken = Some(advert);
                        entry.at_ms = now;
                    } else {
                        entry.taken = None;
                        entry.retry_at_ms = now + ADVERT_BUSY_MS;
                    }
                }
            }
            let Some(members) = coordination.members().await else {
                return;
            };
            let members: Vec<(PeerId, Vec<String>)> = members.into_iter().take(MEMBERS_MAX).collect();
            if let Ok(mut known) = self.members.lock() {
                *known = members.iter().map(|(p, _)| *p).collect();
            }
            sent.retain(|peer, entry| entry.in_flight || members.iter().any(|(p, _)| p == peer));
            let current = self.advert_now();
            let refresh_ms = if current.running.is_empty() && current.running_jobs == 0 {
                ADVERT_IDLE_MS
            } else {
                ADVERT_BUSY_MS
            };
            for (peer, addresses) in members {
                let entry = sent.entry(peer).or_default();
                let changed = entry.taken.as_ref() != Some(&current);
                let due = changed || now.saturating_sub(entry.at_ms) >= refresh_ms;
                if entry.in_flight || !due || now < entry.retry_at_ms {
                    continue;
                }
                let mut advert = current.clone();
                advert.sequence = self.sequence.fetch_add(1, Ordering::SeqCst);
                if peer == me {
                    coordination.advert(self.key.public(), advert);
                    entry.taken = Some(current.clone());
                    entry.at_ms = now;
                    continue;
                }
                entry.in_flight = true;
                let (net, ended_tx, unsent) = (self.net.clone(), ended_tx.clone(), current.clone());
                tokio::spawn(async move {
                    let taken = send(&net, peer, addresses, advert).await;
                    let _ = ended_tx.send((peer, unsent, taken)).await;
                });
            }
        }
    }
}

/// Sends one advert to `peer`; whether it was taken.
async fn send(net: &crate::net::NetClient, peer: PeerId, addresses: Vec<String>, advert: WorkerAdvert) -> bool {
    let addresses: Vec<Multiaddr> = addresses.iter().filter_map(|a| a.parse().ok()).collect();
    if !addresses.is_empty() {
        let _ = net.dial(peer, addresses).await;
    }
    let request = CoordRequest::AdvertV1 {
        advert: Box::new(advert),
    };
    match tokio::time::timeout(Duration::from_millis(SEND_MS_MAX), ask_peer(net, peer, &request)).await {
        Ok(Ok((CoordReplyV1::Noted, _))) => true,
        Ok(Ok((reply, _))) => {
            debug!(peer = %peer, ?reply, "advert not taken");
            false
        }
        Ok(Err(e)) => {
            debug!(peer = %peer, error = %e, "advert not sent");
            false
        }
        Err(_) => {
            debug!(peer = %peer, "advert not answered in time");
            false
        }
    }
}
