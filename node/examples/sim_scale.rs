//! Scale beyond one machine's processes: N Kiln nodes in one process, each
//! a real libp2p swarm (gossipsub with Kiln's configuration,
//! `net::gossip_behaviour`) over libp2p's memory transport, each running
//! Kiln's own election (`coordinator::election`, a bounded coordination set
//! of 3) and Kiln's own gossip encoding. Issue 14, point 6.
//!
//! Node 0 plays the bootstrap peer (never coordinates); every other node
//! dials it and three random earlier nodes. The run prints, for each N:
//! - the seconds until every node agrees on one acting coordinator;
//! - gossip messages delivered per node per second, idle, over 10 s;
//! - 20 job announcements (a real `GossipV1::Job`) from the coordinator:
//!   p50 and p99 of the time from publish to each node, and the median and
//!   largest time to reach every node;
//! - failover: the coordinator's swarm is dropped; the seconds until every
//!   remaining node agrees on one new acting coordinator.
//!
//!     cargo run --release -p kiln-node --example sim_scale -- 100 1000
//!
//! Not a test: a benchmark (BENCHMARKS.md).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kiln_node::clock::now_ms;
use kiln_node::coordinator::election::{Candidate, Election, HEARTBEAT_MS};
use kiln_protocol::messages::{
    decode_gossip, encode_gossip, topics, CoordinatorHeartbeat, Gossip, GossipV1, JobRequest,
};
use kiln_protocol::{Hash, Requirements, SecretKey};
use libp2p::core::transport::MemoryTransport;
use libp2p::core::{upgrade, Transport};
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance};
use libp2p::swarm::SwarmEvent;
use libp2p::{identity, noise, yamux, Multiaddr, PeerId, Swarm};
use tokio::sync::mpsc;

/// Members of the coordination set (Kiln's default).
const SET: usize = 3;
/// Kiln's coordinator tick.
const TICK_MS: u64 = 250;
/// Random earlier nodes each node dials, besides the bootstrap.
const DIALS: usize = 3;
const ANNOUNCEMENTS: u64 = 20;

/// What every node shows the driver.
struct Seen {
    leader: Mutex<Option<PeerId>>,
    acting: AtomicBool,
    member: AtomicBool,
    received: AtomicU64,
    /// Announcement number → when it arrived.
    jobs: Mutex<HashMap<u64, Instant>>,
}

enum Command {
    Announce(u64),
}

fn job(n: u64) -> JobRequest {
    JobRequest {
        build_key: Hash::of(format!("sim job {n}").as_bytes()),
        recipe_id: Hash::of(b"sim recipe"),
        recipe_name: "sim".into(),
        recipe_version: "1".into(),
        publisher: None,
        options: BTreeMap::new(),
        requirements: Requirements::new(),
        emails: vec!["sim@example.org".into()],
        requested_at_ms: now_ms(),
    }
}

fn swarm(keypair: identity::Keypair) -> Swarm<gossipsub::Behaviour> {
    let transport = MemoryTransport::default()
        .upgrade(upgrade::Version::V1)
        .authenticate(noise::Config::new(&keypair).unwrap())
        .multiplex(yamux::Config::default())
        .boxed();
    let mut behaviour = kiln_node::net::gossip_behaviour().unwrap();
    for topic in [topics::JOBS, topics::COORDINATOR] {
        behaviour.subscribe(&IdentTopic::new(topic)).unwrap();
    }
    Swarm::new(
        transport,
        behaviour,
        keypair.public().to_peer_id(),
        libp2p::swarm::Config::with_tokio_executor().with_idle_connection_timeout(Duration::from_secs(600)),
    )
}

/// One node: its swarm, Kiln's election, heartbeats while a member.
async fn node(
    mut swarm: Swarm<gossipsub::Behaviour>,
    key: SecretKey,
    eligible: bool,
    seen: Arc<Seen>,
    jobs: Arc<HashMap<Hash, u64>>,
    mut commands: mpsc::Receiver<Command>,
) {
    let me = *swarm.local_peer_id();
    let mut election = Election::new(me, eligible, false, now_ms()).bounded(SET);
    let mut tick = tokio::time::interval(Duration::from_millis(TICK_MS));
    let mut last_beat = 0;
    loop {
        tokio::select! {
            event = swarm.select_next_some() => {
                let SwarmEvent::Behaviour(gossipsub::Event::Message { propagation_source, message_id, message }) = event else {
                    continue;
                };
                let decoded = decode_gossip(&message.data);
                let acceptance = if decoded.is_ok() { MessageAcceptance::Accept } else { MessageAcceptance::Reject };
                let _ = swarm.behaviour_mut().report_message_validation_result(&message_id, &propagation_source, acceptance);
                let Ok((signer, Gossip::V1(inner))) = decoded else { continue };
                seen.received.fetch_add(1, Ordering::Relaxed);
                match inner {
                    GossipV1::Coordinator(beat) => {
                        let Some(peer) = kiln_node::identity::peer_id_of(&signer) else { continue };
                        election.heard(peer, Candidate {
                            pinned: beat.pinned,
                            acting: beat.acting,
                            delivers_mail: beat.delivers_mail,
                            addresses: beat.addresses,
                            seen_at_ms: now_ms(),
                        });
                    }
                    GossipV1::Job(job) => {
                        if let Some(n) = jobs.get(&job.build_key) {
                            seen.jobs.lock().unwrap().entry(*n).or_insert_with(Instant::now);
                        }
                    }
                    _ => {}
                }
            }
            _ = tick.tick() => {
                let now = now_ms();
                election.tick(now);
                let acting = election.acting(now);
                seen.acting.store(acting, Ordering::Relaxed);
                seen.member.store(election.member(), Ordering::Relaxed);
                *seen.leader.lock().unwrap() = election.leader(now);
                if election.member() && now.saturating_sub(last_beat) >= HEARTBEAT_MS {
                    last_beat = now;
                    let beat = CoordinatorHeartbeat {
                        pinned: false,
                        acting,
                        queued_jobs: 0,
                        running_jobs: 0,
                        addresses: vec![],
                        sent_at_ms: now,
                        delivers_mail: false,
                    };
                    let bytes = encode_gossip(&key, &Gossip::V1(GossipV1::Coordinator(beat))).unwrap();
                    let _ = swarm.behaviour_mut().publish(IdentTopic::new(topics::COORDINATOR), bytes);
                }
            }
            command = commands.recv() => match command {
                Some(Command::Announce(n)) => {
                    let bytes = encode_gossip(&key, &Gossip::V1(GossipV1::Job(job(n)))).unwrap();
                    let _ = swarm.behaviour_mut().publish(IdentTopic::new(topics::JOBS), bytes);
                }
                None => return,
            },
        }
    }
}

/// Waits until every living node names the same acting leader (not
/// `except`); that leader's index, or `None` after `limit`.
async fn agreed(
    seen: &[Arc<Seen>],
    alive: &[bool],
    peers: &[PeerId],
    except: Option<usize>,
    limit: Duration,
) -> Option<usize> {
    let start = Instant::now();
    while start.elapsed() < limit {
        let first = *seen
            .iter()
            .zip(alive)
            .find(|(_, a)| **a)
            .map(|(s, _)| s)
            .unwrap()
            .leader
            .lock()
            .unwrap();
        if let Some(leader) = first {
            let index = peers.iter().position(|p| *p == leader);
            let all = seen
                .iter()
                .zip(alive)
                .filter(|(_, a)| **a)
                .all(|(s, _)| *s.leader.lock().unwrap() == Some(leader));
            if let Some(i) = index {
                if all && alive[i] && Some(i) != except && seen[i].acting.load(Ordering::Relaxed) {
                    return Some(i);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// How the nodes see the set now: members, acting nodes, distinct leaders.
fn views(seen: &[Arc<Seen>]) -> String {
    let members = seen.iter().filter(|s| s.member.load(Ordering::Relaxed)).count();
    let acting = seen.iter().filter(|s| s.acting.load(Ordering::Relaxed)).count();
    let mut leaders: HashMap<Option<PeerId>, usize> = HashMap::new();
    for s in seen {
        *leaders.entry(*s.leader.lock().unwrap()).or_default() += 1;
    }
    let mut counts: Vec<usize> = leaders.values().copied().collect();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    counts.truncate(5);
    format!(
        "{members} members, {acting} acting, {} distinct leaders (largest groups {counts:?})",
        leaders.len()
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn run(n: usize) {
    let base = 1 + 100_000 * n as u64;
    let jobs: Arc<HashMap<Hash, u64>> = Arc::new((0..ANNOUNCEMENTS).map(|i| (job(i).build_key, i)).collect());
    let mut seen = Vec::new();
    let mut peers = Vec::new();
    let mut senders = Vec::new();
    let mut tasks = Vec::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64 ^ n as u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let started = Instant::now();
    for i in 0..n {
        let mut secret = [0u8; 32];
        secret[..8].copy_from_slice(&next().to_le_bytes());
        secret[8..16].copy_from_slice(&(i as u64).to_le_bytes());
        let key = SecretKey::from_bytes(&secret);
        let keypair = identity::Keypair::ed25519_from_bytes(secret).unwrap();
        let mut swarm = swarm(keypair);
        let addr: Multiaddr = format!("/memory/{}", base + i as u64).parse().unwrap();
        swarm.listen_on(addr).unwrap();
        let mut dials = vec![0usize];
        for _ in 0..DIALS.min(i.saturating_sub(1)) {
            dials.push(1 + (next() as usize) % (i - 1));
        }
        if i > 0 {
            for d in dials {
                let to: Multiaddr = format!("/memory/{}", base + d as u64).parse().unwrap();
                let _ = swarm.dial(to);
            }
        }
        peers.push(*swarm.local_peer_id());
        let s = Arc::new(Seen {
            leader: Mutex::new(None),
            acting: AtomicBool::new(false),
            member: AtomicBool::new(false),
            received: AtomicU64::new(0),
            jobs: Mutex::new(HashMap::new()),
        });
        seen.push(s.clone());
        let (tx, rx) = mpsc::channel(64);
        senders.push(tx);
        tasks.push(tokio::spawn(node(swarm, key, i != 0, s, jobs.clone(), rx)));
    }
    let mut alive = vec![true; n];
    let Some(leader) = agreed(&seen, &alive, &peers, None, Duration::from_secs(120)).await else {
        println!("N={n}: no coordinator agreed within 120 s; {}", views(&seen));
        return;
    };
    let formed_s = started.elapsed().as_secs_f64();

    // Idle: gossip delivered per node per second.
    let before: Vec<u64> = seen.iter().map(|s| s.received.load(Ordering::Relaxed)).collect();
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let span = t.elapsed().as_secs_f64();
    let mut rates: Vec<f64> = seen
        .iter()
        .zip(&before)
        .map(|(s, b)| (s.received.load(Ordering::Relaxed) - b) as f64 / span)
        .collect();
    rates.sort_by(f64::total_cmp);

    // Announcements from the coordinator.
    let mut published = Vec::new();
    for i in 0..ANNOUNCEMENTS {
        published.push(Instant::now());
        senders[leader].send(Command::Announce(i)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut delays = Vec::new();
    let mut to_all = Vec::new();
    let mut missed = 0;
    for (i, at) in published.iter().enumerate() {
        let mut worst: f64 = 0.0;
        for (j, s) in seen.iter().enumerate() {
            if j == leader {
                continue;
            }
            match s.jobs.lock().unwrap().get(&(i as u64)) {
                Some(arrived) => {
                    let ms = arrived.saturating_duration_since(*at).as_secs_f64() * 1000.0;
                    delays.push(ms);
                    worst = worst.max(ms);
                }
                None => missed += 1,
            }
        }
        to_all.push(worst);
    }
    delays.sort_by(f64::total_cmp);
    to_all.sort_by(f64::total_cmp);

    // Failover: the coordinator vanishes.
    tasks[leader].abort();
    alive[leader] = false;
    let t = Instant::now();
    let failover = match agreed(&seen, &alive, &peers, Some(leader), Duration::from_secs(60)).await {
        Some(_) => format!("{:.1} s", t.elapsed().as_secs_f64()),
        None => "no agreement within 60 s".into(),
    };
    println!(
        "N={n}: coordinator agreed {formed_s:.1} s after start; idle gossip per node {:.2} msg/s median ({:.2} p99); \
         announcement to a node p50 {:.0} ms, p99 {:.0} ms, to every node median {:.0} ms, max {:.0} ms ({missed} missed); \
         failover agreed after {failover}",
        percentile(&rates, 0.5),
        percentile(&rates, 0.99),
        percentile(&delays, 0.5),
        percentile(&delays, 0.99),
        percentile(&to_all, 0.5),
        percentile(&to_all, 1.0),
    );
    for task in tasks {
        task.abort();
    }
}

#[tokio::main]
async fn main() {
    let sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![100, 1000] } else { sizes };
    for n in sizes {
        run(n).await;
    }
}
