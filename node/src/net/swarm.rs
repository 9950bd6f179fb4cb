//! The swarm's behaviours and the event loop that owns the swarm: it runs
//! commands from [`NetClient`]s, follows DHT queries to their end (each with
//! a deadline), validates gossip, and keeps bootstrap peers connected.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use kiln_protocol::messages::{decode_gossip, Gossip, GossipError};
use kiln_protocol::{Hash, PublicKey};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::{upgrade, ConnectedPoint, Transport};
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance};
use libp2p::kad::{self, store::MemoryStore, QueryId, QueryResult, RecordKey};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{autonat, dcutr, identify, noise, ping, relay, tcp, yamux, Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::client::Command;
use super::counted::Counted;
use super::identity;
use super::mesh_alive::MeshAlive;
use super::paths::{self, Link, Paths, Reachability, ReachabilityMode};
use super::probing::Probing;
use super::tls::TlsConfig;
use super::*;
use crate::metrics::{Metrics, METRICS};

#[derive(NetworkBehaviour)]
pub(super) struct Behaviour {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    kad: kad::Behaviour<MemoryStore>,
    gossipsub: MeshAlive<gossipsub::Behaviour>,
    relay: Toggle<relay::Behaviour>,
    /// Dials and listens through other peers' relays (`/p2p-circuit`).
    relay_client: relay::client::Behaviour,
    /// Replaces a relayed connection by a direct one (hole punching).
    dcutr: dcutr::Behaviour,
    /// Asks peers to dial our observed addresses back (long-lived nodes).
    autonat: Toggle<Probing<autonat::v2::client::Behaviour>>,
    /// Dials other peers' addresses back for them (long-lived nodes).
    autonat_server: Toggle<autonat::v2::server::Behaviour>,
    stream: libp2p_stream::Behaviour,
}

/// Starts listening and dialling; returns the client, the event stream and
/// the loop, which the caller spawns.
pub(super) fn start(config: NetConfig) -> Result<(NetClient, mpsc::Receiver<NetEvent>, EventLoop), NetError> {
    let keypair = identity::keypair(&config.key);
    let peer_id = keypair.public().to_peer_id();
    let mut swarm = build_swarm(keypair, &config)?;
    // Every port is checked before the first listener takes one.
    for addr in &config.listen {
        check_port_free(addr)?;
    }
    for addr in &config.listen {
        swarm.listen_on(addr.clone()).map_err(|e| NetError::Listen {
            addr: addr.clone(),
            reason: e.to_string(),
        })?;
    }
    let mut bootstrap = Vec::new();
    for addr in &config.bootstrap {
        let Some(Protocol::P2p(peer)) = addr.iter().last() else {
            return Err(NetError::BootstrapAddress(addr.clone()));
        };
        if peer == peer_id {
            continue;
        }
        swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
        swarm.behaviour_mut().gossipsub.keep(peer);
        bootstrap.push((peer, addr.clone()));
    }
    // Not `topics::WORKERS`: adverts go to the coordination set directly.
    for topic in [topics::JOBS, topics::COORDINATOR, topics::RESULTS] {
        // Subscribing only fails when the topic is filtered out, which we never do.
        let _ = swarm.behaviour_mut().gossipsub.subscribe(&IdentTopic::new(topic));
    }
    let (commands_tx, commands_rx) = mpsc::channel(COMMANDS_MAX);
    let (events_tx, events_rx) = mpsc::channel(EVENTS_MAX);
    let stream = swarm.behaviour().stream.new_control();
    let event_loop = EventLoop {
        swarm,
        commands: commands_rx,
        events: events_tx,
        bootstrap,
        bootstrap_seen: HashSet::new(),
        bootstrap_failing: HashSet::new(),
        dht_server: config.dht_server,
        reachability: Reachability::Unknown,
        autonat_failed_at: None,
        autonat: config.dht_server && config.reachability == ReachabilityMode::Auto,
        nat_evidence: HashMap::new(),
        nat_seen_at: None,
        relay_retry_at: None,
        closing: Vec::new(),
        listening: config.listen.is_empty(),
        relay_listeners: HashMap::new(),
        paths: Paths::default(),
        provided: HashSet::new(),
        provider_queries: HashMap::new(),
        provide_queries: HashMap::new(),
        put_queries: HashMap::new(),
        get_queries: HashMap::new(),
        invalid_gossip: HashMap::new(),
    };
    let mut event_loop = event_loop;
    if config.dht_server {
        match config.reachability {
            ReachabilityMode::Private => event_loop.set_reachability(Reachability::Private, "--reachability private"),
            ReachabilityMode::Public => event_loop.set_reachability(Reachability::Public, "--reachability public"),
            ReachabilityMode::Auto => {}
        }
    }
    Ok((NetClient::new(commands_tx, stream, peer_id), events_rx, event_loop))
}

pub(super) fn build_swarm(
    keypair: libp2p::identity::Keypair,
    config: &NetConfig,
) -> Result<Swarm<Behaviour>, NetError> {
    let relay_server = config.relay_server;
    let dht_server = config.dht_server;
    // Long-lived nodes find out whether they can be dialled; a short-lived
    // client only dials out.
    let autonat = dht_server && config.reachability == ReachabilityMode::Auto;
    let (relay_transport, relay_client) = relay::client::new(keypair.public().to_peer_id());
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        // TLS first, with a cipher the CPU accelerates (`net/tls.rs`);
        // noise for peers that speak only noise (js-libp2p among them).
        .with_tcp(
            tcp::Config::default().nodelay(true),
            (TlsConfig::new, noise::Config::new),
            yamux::Config::default,
        )
        .map_err(|e| NetError::Transport(e.to_string()))?
        // Relayed connections: through the relay client's transport,
        // counted (`kiln_relayed_bytes_total`), then secured and
        // multiplexed as TCP is.
        .with_other_transport(|key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
            let noise = noise::Config::new(key)?;
            Ok(relay_transport
                .map(|connection, _| Counted::new(connection))
                .upgrade(upgrade::Version::V1Lazy)
                .authenticate(noise)
                .multiplex(yamux::Config::default())
                .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer))))
        })
        .map_err(|e| NetError::Transport(e.to_string()))?
        .with_behaviour(|key| behaviour(key, relay_server, dht_server, autonat, relay_client))
        .map_err(|e| NetError::Transport(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    Ok(swarm)
}

fn behaviour(
    key: &libp2p::identity::Keypair,
    relay_server: Option<RelayLimits>,
    dht_server: bool,
    autonat: bool,
    relay_client: relay::client::Behaviour,
) -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
    let peer_id = key.public().to_peer_id();
    let mut kad_config = kad::Config::new(KAD_PROTOCOL);
    kad_config.set_query_timeout(Duration::from_millis(PROVIDERS_QUERY_MS_MAX));
    kad_config.set_provider_publication_interval(Some(Duration::from_secs(3600)));
    // The routing table is refreshed every 30 minutes, not every 5 (the
    // default). A refresh is a lookup per bucket, and each lookup dials up
    // to 20 peers: every 5 minutes each node connected to most of the
    // network again (at 50 nodes on one machine, to all of it), and the
    // connections were dropped idle 2 minutes later. A peer a node has
    // never met still reaches its table when the peer's own lookups arrive,
    // and a dead entry goes when a lookup fails to reach it.
    kad_config.set_periodic_bootstrap_interval(Some(Duration::from_secs(KAD_REFRESH_S)));
    let store_config = kad::store::MemoryStoreConfig {
        max_provided_keys: PROVIDED_KEYS_MAX,
        max_records: 65_536,
        max_providers_per_key: 32,
        ..Default::default()
    };
    let mut kad = kad::Behaviour::with_config(peer_id, MemoryStore::with_config(peer_id, store_config), kad_config);
    kad.set_mode(Some(if dht_server {
        kad::Mode::Server
    } else {
        kad::Mode::Client
    }));

    // Connections outside gossipsub's meshes may close when idle, except
    // on a relay server (every bootstrap peer is one), which keeps every
    // node that connects.
    let gossipsub = MeshAlive::new(gossip_behaviour()?, relay_server.is_some());

    Ok(Behaviour {
        identify: identify::Behaviour::new(identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())),
        ping: ping::Behaviour::default(),
        kad,
        gossipsub,
        relay: Toggle::from(relay_server.map(|limits| relay::Behaviour::new(peer_id, relay_config(limits)))),
        relay_client,
        dcutr: dcutr::Behaviour::new(peer_id),
        // A candidate (an address a peer saw us at) is tested once, by one
        // connected peer dialling it back on a new connection; the client
        // looks for untested candidates every 5 s (libp2p's default).
        autonat: Toggle::from(autonat.then(|| Probing::new(autonat::v2::client::Behaviour::default()))),
        autonat_server: Toggle::from(dht_server.then(autonat::v2::server::Behaviour::default)),
        stream: libp2p_stream::Behaviour::new(),
    })
}

/// The relay server's limits. Reservations and circuits are also rate
/// limited per peer and per IP address (libp2p's defaults: a reservation
/// or a circuit every 2 minutes per peer after a burst of 30, every minute
/// per address after a burst of 60).
fn relay_config(limits: RelayLimits) -> relay::Config {
    relay::Config {
        max_reservations: limits.reservations_max,
        max_circuits: limits.circuits_max,
        max_circuit_duration: Duration::from_secs(limits.circuit_secs),
        max_circuit_bytes: limits.circuit_bytes,
        ..relay::Config::default()
    }
}

/// Gossipsub as every Kiln node runs it (the in-process scale simulation,
/// `node/examples/sim_scale.rs`, runs the same).
pub fn gossip_behaviour() -> Result<gossipsub::Behaviour, String> {
    // Unsigned by gossipsub: see `validation_mode` below.
    gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, gossip_config()?).map_err(str::to_string)
}

fn gossip_config() -> Result<gossipsub::Config, String> {
    // Kiln's gossip is small and slow: each member of the coordination set
    // (3 by default) sends a heartbeat of ~200 bytes a second; jobs,
    // assignments, outcomes and settlements come a few per build; nothing
    // else is gossiped (adverts go to the set directly). So:
    gossipsub::ConfigBuilder::default()
        // Mesh upkeep and IHAVE gossip once a second (the default), not
        // faster: every node pays for each round, on each topic.
        .heartbeat_interval(Duration::from_secs(1))
        // The first round a second after start, not the default 5 s: a node
        // that just joined is in the mesh (and hears job announcements)
        // at once.
        .heartbeat_initial_delay(Duration::from_secs(1))
        // A node's own messages go to every connected peer on the topic
        // (the default), not only to its mesh: in a small network of
        // short-lived clients the mesh may not yet hold the peer that
        // needs a heartbeat. Only members of the coordination set publish
        // often; a member is connected to the workers that advertise to
        // it, so it sends each heartbeat to each of them (its cost grows
        // with the workers, as its adverts do), while an idle node receives
        // it once from the member and at most once from each mesh peer
        // (duplicates are dropped): flat in the size of the network.
        .flood_publish(true)
        // A mesh of 4 peers per topic (3 to 8), smaller than the default
        // 6 (5 to 12). A node keeps a connection to each mesh peer of each
        // of its three topics (`mesh_alive.rs`), and receives each message
        // from most of them, so the mesh bounds both its connections and
        // its copies per message. 4 still reaches N nodes in about log4(N)
        // hops (5 at 1,000), and a publisher also sends to every peer it is
        // connected to (`flood_publish`), so the mesh carries a message
        // only to the nodes that are not.
        .mesh_n(4)
        .mesh_n_low(3)
        .mesh_n_high(8)
        // IHAVE gossip, the repair path for a node the mesh missed, stays
        // at 6 peers outside the mesh per round (the default): with 3, the
        // simulation's slowest node at 300 and 500 got an announcement
        // only after 2 to 3 s.
        .gossip_lazy(6)
        // A message id is remembered 60 s (the default): far longer than a
        // message circulates (history_length 5 rounds of 1 s), so a late
        // duplicate is not delivered twice; at ~3 messages a second the
        // cache holds a few hundred ids.
        .duplicate_cache_time(Duration::from_secs(60))
        // Messages queued per connection before new ones are dropped (the
        // default): at Kiln's rates a peer that far behind is stuck; the
        // IHAVE gossip recovers what was dropped once it moves again.
        .connection_handler_queue_len(5000)
        // Kiln's gossip is signed by Kiln (each message carries its
        // author's key and signature, checked by `check_gossip_message`),
        // so gossipsub's own signature, author and sequence number are not
        // sent (`MessageAuthenticity::Anonymous`, as Ethereum's consensus
        // gossip does): they were about half of each heartbeat's bytes,
        // and gossipsub verified that signature on every copy it decoded,
        // duplicates included (each node gets each message from most of
        // its mesh), the largest share of an idle node's CPU once the DHT
        // lookups stopped. Kiln checks its signature once per message,
        // after duplicates are dropped and before it is forwarded.
        // `None` takes a message with or without gossipsub's fields, so a
        // message an older Kiln signed the old way is still heard (an
        // older Kiln does not take these: it requires them).
        .validation_mode(gossipsub::ValidationMode::None)
        // With no author or sequence number, a message's id is the hash
        // of its topic and signed bytes: a copy is a duplicate only if it
        // is the same message, and no peer can claim the id of a message
        // before its author sends it. (The same bytes published again
        // within the duplicate cache time are refused as a duplicate;
        // Kiln's repeats carry a time or an attempt, or are safe to drop.)
        .message_id_fn(|message: &gossipsub::Message| {
            gossipsub::MessageId::new(Hash::derive(message.topic.as_str(), &message.data).as_bytes())
        })
        .validate_messages()
        .max_transmit_size(kiln_protocol::messages::GOSSIP_BYTES_MAX + 1024)
        .build()
        .map_err(|e| e.to_string())
}

type RecordReply = oneshot::Sender<Result<Option<Vec<u8>>, NetError>>;

/// How long AutoNAT's failures must stand, with no success, before the node
/// takes itself to be behind NAT.
const PRIVATE_AFTER_MS: u64 = 6_000;
/// Peers that must see us at the same IP address we do not listen on
/// before AutoNAT's verdict counts.
const NAT_WITNESSES: usize = 2;
/// Addresses, and peers per address, kept as that evidence.
const NAT_EVIDENCE_MAX: usize = 16;
/// How long a relayed connection stays after a direct one replaced it.
const RELAYED_CLOSE_GRACE_MS: u64 = 1_000;
/// How long to wait before asking the relays for a slot again.
const RELAY_RETRY_MS: u64 = 60_000;
/// How long a node may go without any peer dialling it back, once
/// [`NAT_WITNESSES`] peers agree they see it at an address it does not
/// listen on, before it takes itself to be behind NAT: a reachable node is
/// dialled back within a probe round (5 s) and a dial.
const AUTONAT_SILENCE_MS: u64 = 20_000;
/// Peers listed by path in [`NetView`].
const PEERS_VIEWED_MAX: usize = 100;

struct ProviderQuery {
    reply: oneshot::Sender<Result<Vec<PeerId>, NetError>>,
    found: Vec<PeerId>,
    /// Providers after which the lookup ends early (at most
    /// [`PROVIDERS_PER_QUERY_MAX`]).
    enough: usize,
    deadline: Instant,
}

impl ProviderQuery {
    /// Adds providers the DHT returned (not `me`, not twice), at most
    /// [`PROVIDERS_PER_QUERY_MAX`] in all. Returns the new ones, to dial.
    fn add(&mut self, me: &PeerId, providers: impl IntoIterator<Item = PeerId>) -> Vec<PeerId> {
        let mut new = Vec::new();
        for peer in providers {
            if self.is_full() {
                break;
            }
            if peer != *me && !self.found.contains(&peer) {
                self.found.push(peer);
                new.push(peer);
            }
        }
        new
    }

    /// As many providers as a query keeps: it dials no more.
    fn is_full(&self) -> bool {
        self.found.len() >= PROVIDERS_PER_QUERY_MAX
    }

    /// Enough providers found: the query can end early (every provider
    /// of the answer that brought it there is kept).
    fn is_enough(&self) -> bool {
        self.is_full() || self.found.len() >= self.enough
    }
}

/// The task that owns the swarm.
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NetEvent>,
    bootstrap: Vec<(PeerId, Multiaddr)>,
    /// Bootstrap peers we have been connected to at least once.
    bootstrap_seen: HashSet<PeerId>,
    /// Bootstrap peers whose last dial failed (warned about once per streak).
    bootstrap_failing: HashSet<PeerId>,
    /// A long-running node (not a short-lived client).
    dht_server: bool,
    /// What AutoNAT found (or `--reachability` said).
    reachability: Reachability,
    /// AutoNAT's first failure while no test has succeeded, and why.
    autonat_failed_at: Option<(Instant, String)>,
    /// This node runs AutoNAT's client (`--reachability auto`, long-lived).
    autonat: bool,
    /// The peers that saw us at each IP address we do not listen on (a
    /// NAT's, as a rule); bounded by [`NAT_EVIDENCE_MAX`] both ways.
    nat_evidence: HashMap<std::net::IpAddr, HashSet<PeerId>>,
    /// When [`NAT_WITNESSES`] peers first agreed on such an address:
    /// AutoNAT's failures and silence count only from then.
    nat_seen_at: Option<Instant>,
    /// When to ask the relays for a slot again, after one was refused or lost.
    relay_retry_at: Option<Instant>,
    /// Relayed connections to close (a direct one replaced each), and when.
    closing: Vec<(Instant, libp2p::swarm::ConnectionId)>,
    /// A listener is up (or none was asked for): dials may reuse its port.
    listening: bool,
    /// Listening through these bootstrap peers' relays (behind NAT).
    relay_listeners: HashMap<libp2p::core::transport::ListenerId, PeerId>,
    /// How each connected peer is reached.
    paths: Paths,
    provided: HashSet<Hash>,
    provider_queries: HashMap<QueryId, ProviderQuery>,
    provide_queries: HashMap<QueryId, oneshot::Sender<Result<(), NetError>>>,
    put_queries: HashMap<QueryId, oneshot::Sender<Result<(), NetError>>>,
    get_queries: HashMap<QueryId, RecordReply>,
    /// Invalid gossip counted per connected peer.
    invalid_gossip: HashMap<PeerId, u32>,
}

impl EventLoop {
    /// Runs until every [`NetClient`] is dropped or `shutdown` resolves.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        // Bootstrap peers are dialled once a listener is up, from its port
        // (libp2p reuses it): behind a NAT that keeps ports, the address
        // peers then see is the one a hole punch must dial. The redial
        // timer dials anyway if no listener comes up.
        if self.listening {
            self.dial_bootstrap();
        }
        let started = Instant::now();
        let mut redial = tokio::time::interval(Duration::from_millis(REDIAL_MS));
        let mut close_tick = tokio::time::interval(Duration::from_millis(RELAYED_CLOSE_GRACE_MS / 4));
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => break,
                },
                _ = redial.tick() => {
                    if self.listening || started.elapsed() >= Duration::from_millis(REDIAL_MS) {
                        self.dial_bootstrap();
                    }
                    self.expire_queries();
                    self.paths.expire(Instant::now());
                    self.settle_reachability();
                    self.retry_relays();
                }
                _ = close_tick.tick(), if !self.closing.is_empty() || self.paths.has_waiters() => {
                    self.close_due();
                    self.paths.expire(Instant::now());
                }
                () = &mut shutdown => break,
            }
        }
        debug!("network loop stopped");
    }

    fn dial_bootstrap(&mut self) {
        for (peer, addr) in &self.bootstrap {
            if self.swarm.is_connected(peer) {
                continue;
            }
            let opts = DialOpts::peer_id(*peer)
                .addresses(vec![addr.clone()])
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            if let Err(e) = self.swarm.dial(opts) {
                debug!(peer = %peer, error = %e, "bootstrap dial not started");
            }
        }
    }

    fn expire_queries(&mut self) {
        let now = Instant::now();
        let expired: Vec<QueryId> = self
            .provider_queries
            .iter()
            .filter(|(_, q)| q.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(query) = self.provider_queries.remove(&id) {
                let _ = query.reply.send(Ok(query.found));
            }
        }
    }

    /// One arm per [`Command`], each a call into a behaviour and a bounded
    /// map of pending answers; long because the list of commands is.
    fn on_command(&mut self, command: Command) {
        match command {
            Command::Provide { hash, reply } => {
                debug!(blob = %hash, external = ?self.swarm.external_addresses().collect::<Vec<_>>(), "announcing");
                self.provided.insert(hash);
                match self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .start_providing(RecordKey::new(&hash.multihash()))
                {
                    Ok(id) => {
                        self.provide_queries.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(NetError::Provide(e.to_string())));
                    }
                }
            }
            Command::StopProviding { hashes } => {
                for hash in hashes {
                    if self.provided.remove(&hash) {
                        debug!(blob = %hash, "no longer held; withdrawn from the DHT");
                    }
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .stop_providing(&RecordKey::new(&hash.multihash()));
                }
            }
            Command::Providers { hash, enough, reply } => {
                if self.provider_queries.len() >= PROVIDER_QUERIES_MAX {
                    let _ = reply.send(Err(NetError::Busy));
                    return;
                }
                let id = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .get_providers(RecordKey::new(&hash.multihash()));
                let deadline = Instant::now() + Duration::from_millis(PROVIDERS_QUERY_MS_MAX);
                self.provider_queries.insert(
                    id,
                    ProviderQuery {
                        reply,
                        found: Vec::new(),
                        enough,
                        deadline,
                    },
                );
            }
            Command::Publish { topic, bytes, reply } => {
                let result = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(IdentTopic::new(topic), bytes);
                let _ = reply.send(result.map(|_| ()).map_err(|e| NetError::Publish(e.to_string())));
            }
            Command::Path { peer, wait_ms, reply } => {
                let deadline = Instant::now() + Duration::from_millis(wait_ms.min(HOLE_PUNCH_WAIT_MS_MAX));
                self.paths.wait_direct(peer, deadline, reply);
            }
            Command::View { reply } => {
                let relayed: Vec<String> = self
                    .swarm
                    .external_addresses()
                    .filter(|a| paths::is_relayed(a))
                    .map(ToString::to_string)
                    .collect();
                let _ = reply.send(self.paths.view(self.reachability, relayed, PEERS_VIEWED_MAX));
            }
            Command::ConnectedPeers { reply } => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            Command::Dial { peer, addresses } => {
                for addr in &addresses {
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                }
                let opts = DialOpts::peer_id(peer)
                    .addresses(addresses)
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build();
                if let Err(e) = self.swarm.dial(opts) {
                    debug!(peer = %peer, error = %e, "dial not started");
                }
            }
            Command::PutRecord { key, value, reply } => {
                if self.put_queries.len() >= PROVIDER_QUERIES_MAX {
                    let _ = reply.send(Err(NetError::Busy));
                    return;
                }
                let record = kad::Record::new(RecordKey::new(&key.multihash()), value);
                match self.swarm.behaviour_mut().kad.put_record(record, kad::Quorum::One) {
                    Ok(id) => {
                        self.put_queries.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(NetError::Provide(e.to_string())));
                    }
                }
            }
            Command::GetRecord { key, reply } => {
                if self.get_queries.len() >= PROVIDER_QUERIES_MAX {
                    let _ = reply.send(Err(NetError::Busy));
                    return;
                }
                let id = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .get_record(RecordKey::new(&key.multihash()));
                self.get_queries.insert(id, reply);
            }
        }
    }

    fn emit(&mut self, event: NetEvent) {
        if let Err(e) = self.events.try_send(event) {
            warn!(error = %e, "network event dropped: the roles are not keeping up");
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                // Provider records carry the provider's external addresses;
                // without any, a fetcher that has not met the provider
                // cannot dial it. A node is reachable where it listens,
                // unless AutoNAT found it behind NAT: then only through
                // the relay (whose address the relay client confirms).
                if paths::is_relayed(&address) {
                    info!(address = %address, "reachable through a relay");
                } else if self.reachability != Reachability::Private {
                    self.swarm.add_external_address(address.clone());
                }
                if !self.listening {
                    self.listening = true;
                    self.dial_bootstrap();
                }
                let full = address.with_p2p(*self.swarm.local_peer_id()).unwrap_or_else(|a| a);
                info!(address = %full, "listening");
                self.emit(NetEvent::Listening(full));
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => self.swarm.remove_external_address(&address),
            SwarmEvent::ListenerClosed {
                listener_id, reason, ..
            } => {
                if let Some(relay) = self.relay_listeners.remove(&listener_id) {
                    // The relay went away or dropped the reservation: taken
                    // again when its bootstrap peer is back.
                    warn!(relay = %relay, reason = ?reason.err().map(|e| e.to_string()), "the relay slot is gone; reserving again when the relay is back");
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                let address = match &endpoint {
                    ConnectedPoint::Dialer { address, .. } => address,
                    ConnectedPoint::Listener { local_addr, .. } => local_addr,
                };
                let link = if paths::is_relayed(address) {
                    Link::Relayed(paths::relay_of(address))
                } else {
                    Link::Direct
                };
                if link != Link::Direct {
                    // DCUtR starts a hole punch on every relayed connection.
                    Metrics::add(&METRICS.hole_punch_attempts, 1);
                    debug!(peer = %peer_id, "relayed connection; hole punching");
                }
                for stale in self.paths.opened(peer_id, connection_id, link) {
                    // Streams would otherwise go through the relay's small
                    // circuit half the time (a stream takes any connection).
                    // Closed after a grace, so that a request already on it
                    // (a fetch's outline, asked while the hole punch ran)
                    // gets its answer; a fetch starts its downloads only
                    // once it is closed (`Paths::wait_direct`).
                    debug!(peer = %peer_id, "direct connection up; closing the relayed one");
                    let at = Instant::now() + Duration::from_millis(RELAYED_CLOSE_GRACE_MS);
                    if !self.closing.iter().any(|(_, id)| *id == stale) {
                        self.closing.push((at, stale));
                    }
                }
                if num_established.get() == 1 {
                    self.on_connected(peer_id);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                self.paths.closed(peer_id, connection_id);
                if num_established == 0 {
                    // Counts live as long as the connection: the map stays
                    // as small as the set of connected peers.
                    self.invalid_gossip.remove(&peer_id);
                    self.emit(NetEvent::PeerDisconnected(peer_id));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                self.observed(peer_id, &info.observed_addr);
                // A peer sees us at a public address we listen on: we are
                // on the internet with no NAT (AutoNAT tests only the
                // addresses peers see that differ from ours). At a private
                // one, only that peer's network is known to reach us.
                if self.autonat
                    && paths::is_global(&info.observed_addr)
                    && self.swarm.listeners().any(|a| *a == info.observed_addr)
                {
                    let why = format!("{peer_id} sees it at {}, where it listens", info.observed_addr);
                    self.set_reachability(Reachability::Public, &why);
                }
                // Only DHT servers go into the routing table: a client (a
                // short-lived one, or a node behind NAT) cannot be asked.
                // A node that found itself behind NAT stops being one and
                // says so (identify pushes the change): it leaves the table,
                // or lookups would hand out its unreachable LAN addresses.
                if info.protocols.contains(&KAD_PROTOCOL) {
                    for addr in info.listen_addrs {
                        self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                    }
                } else {
                    self.swarm.behaviour_mut().kad.remove_peer(&peer_id);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(event)) => self.on_autonat(event),
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(dcutr::Event { remote_peer_id, result })) => match result {
                Ok(_) => {
                    Metrics::add(&METRICS.hole_punch_successes, 1);
                    info!(peer = %remote_peer_id, "hole punched: a direct connection replaces the relayed one");
                    self.paths.punched(remote_peer_id);
                }
                Err(e) => {
                    Metrics::add(&METRICS.hole_punch_failures, 1);
                    info!(peer = %remote_peer_id, error = %e, "hole punching failed; the peer stays reachable through the relay only");
                    self.paths.punch_failed(remote_peer_id);
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(event)) => self.on_relay_client(event),
            SwarmEvent::Behaviour(BehaviourEvent::Relay(event)) => {
                if let relay::Event::CircuitReqAccepted {
                    src_peer_id,
                    dst_peer_id,
                } = event
                {
                    Metrics::add(&METRICS.relay_circuits, 1);
                    debug!(from = %src_peer_id, to = %dst_peer_id, "relaying a circuit");
                } else {
                    debug!(event = ?event, "relay server");
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                let bootstrap = self.bootstrap.iter().find(|(p, _)| *p == peer).map(|(_, a)| a.clone());
                if let Some(addr) = bootstrap {
                    self.emit(NetEvent::BootstrapUnreachable(peer, error.to_string()));
                    // A client fails on this itself; a node keeps trying.
                    if self.dht_server && !self.swarm.is_connected(&peer) && self.bootstrap_failing.insert(peer) {
                        warn!(
                            address = %addr,
                            error = %error,
                            "cannot reach a bootstrap peer; retrying every {} s (is it running, and is the address right?)",
                            REDIAL_MS / 1000
                        );
                    }
                } else {
                    debug!(peer = %peer, error = %error, "dial failed");
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => self.on_kad_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => self.on_gossip(propagation_source, message_id, message),
            other => debug!(event = ?other, "swarm event"),
        }
    }

    fn on_connected(&mut self, peer: PeerId) {
        let is_bootstrap = self.bootstrap.iter().any(|(p, _)| *p == peer);
        if self.bootstrap_failing.remove(&peer) {
            info!(peer = %peer, "reached the bootstrap peer");
        }
        if is_bootstrap {
            // Join the DHT through it: a refresh (a lookup of our own id,
            // then of a random id per bucket) fills the routing table. Not
            // on a timer: a lookup asks up to 20 peers, so every node
            // repeating it every few seconds kept each node connected to,
            // and answering lookups from, every other (idle cost grew with
            // the network). Kademlia refreshes the table itself every
            // KAD_REFRESH_S (30 minutes).
            let _ = self.swarm.behaviour_mut().kad.bootstrap();
        }
        if is_bootstrap && self.reachability == Reachability::Private {
            self.listen_relayed();
        }
        if is_bootstrap && !self.bootstrap_seen.insert(peer) {
            // A bootstrap peer came back: it may have restarted and lost the
            // provider records it held for us.
            info!(peer = %peer, provided = self.provided.len(), "bootstrap peer back; announcing provided blobs again");
            self.announce_again();
        }
        self.emit(NetEvent::PeerConnected(peer));
    }

    /// Closes the relayed connections whose grace has passed.
    fn close_due(&mut self) {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = self.closing.drain(..).partition(|(at, _)| *at <= now);
        self.closing = later;
        for (_, id) in due {
            self.swarm.close_connection(id);
        }
    }

    /// Announces every provided blob again: the records carry this node's
    /// addresses as they are now.
    fn announce_again(&mut self) {
        let keys: Vec<Hash> = self.provided.iter().copied().collect();
        for hash in keys {
            let _ = self
                .swarm
                .behaviour_mut()
                .kad
                .start_providing(RecordKey::new(&hash.multihash()));
        }
    }

    /// An AutoNAT test of one of our addresses ended. One success makes
    /// the node reachable; failures with no success for
    /// [`PRIVATE_AFTER_MS`] (time for every candidate's test to answer: an
    /// address a peer misreported fails while the right one succeeds) put
    /// it behind NAT.
    fn on_autonat(&mut self, event: autonat::v2::client::Event) {
        match event.result {
            Ok(()) if paths::ip_port(&event.tested_addr).is_none() => {}
            Ok(()) => {
                self.autonat_failed_at = None;
                let why = format!("{} dialled {} back", event.server, event.tested_addr);
                self.set_reachability(Reachability::Public, &why);
            }
            Err(e) => {
                debug!(address = %event.tested_addr, server = %event.server, error = %e, "AutoNAT: not reachable at this address");
                // Only an IP address with a port says anything about us
                // (a peer reached through a relay sees no address at all).
                if paths::ip_port(&event.tested_addr).is_none() {
                    return;
                }
                if self.reachability == Reachability::Unknown && self.autonat_failed_at.is_none() {
                    self.autonat_failed_at = Some((
                        Instant::now(),
                        format!("{} could not dial {} back: {e}", event.server, event.tested_addr),
                    ));
                }
            }
        }
    }

    /// A peer says where it sees us. An IP address we do not listen on,
    /// said by [`NAT_WITNESSES`] peers, is a NAT's: only then do AutoNAT's
    /// failures and silence count (one peer, lying or reached through a
    /// relay, cannot make a reachable node take itself to be behind NAT).
    fn observed(&mut self, peer: PeerId, observed: &Multiaddr) {
        if !self.autonat || self.reachability != Reachability::Unknown || self.nat_seen_at.is_some() {
            return;
        }
        let Some((ip, _)) = paths::ip_port(observed) else {
            return;
        };
        let ours = self
            .swarm
            .listeners()
            .any(|a| paths::ip_port(a).is_some_and(|(mine, _)| mine == ip));
        if ours {
            return;
        }
        if !self.nat_evidence.contains_key(&ip) && self.nat_evidence.len() >= NAT_EVIDENCE_MAX {
            return;
        }
        let witnesses = self.nat_evidence.entry(ip).or_default();
        if witnesses.len() < NAT_EVIDENCE_MAX {
            witnesses.insert(peer);
        }
        if witnesses.len() >= NAT_WITNESSES {
            debug!(address = %ip, "peers see this node at an address it does not listen on: testing it (AutoNAT)");
            self.nat_seen_at = Some(Instant::now());
            self.nat_evidence.clear();
        }
    }

    /// Behind NAT once AutoNAT's failures stood [`PRIVATE_AFTER_MS`] with
    /// no success, or once no peer dialled us back within
    /// [`AUTONAT_SILENCE_MS`] of peers agreeing they see us at an address
    /// we do not listen on (a NAT's, as a rule): a router that drops unasked
    /// connections (most do) makes the dial-back time out, and libp2p's
    /// AutoNAT then retries the address without ever answering.
    fn settle_reachability(&mut self) {
        if !self.autonat || self.reachability != Reachability::Unknown {
            return;
        }
        if self.nat_seen_at.is_none() {
            return;
        }
        if let Some((since, why)) = &self.autonat_failed_at {
            if since.elapsed() >= Duration::from_millis(PRIVATE_AFTER_MS) {
                let why = why.clone();
                self.autonat_failed_at = None;
                self.set_reachability(Reachability::Private, &why);
                return;
            }
        }
        if self
            .nat_seen_at
            .is_some_and(|at| at.elapsed() >= Duration::from_millis(AUTONAT_SILENCE_MS))
        {
            let why = format!(
                "peers see it at an address it does not listen on, and none could dial it back within {} s",
                AUTONAT_SILENCE_MS / 1000
            );
            self.set_reachability(Reachability::Private, &why);
        }
    }

    fn set_reachability(&mut self, to: Reachability, why: &str) {
        if self.reachability == to || (to == Reachability::Private && self.reachability == Reachability::Public) {
            return;
        }
        self.reachability = to;
        self.emit(NetEvent::Reachability(to));
        match to {
            Reachability::Private => {
                // Nobody outside can dial our own addresses: only the
                // relayed ones go into provider records, and DHT peers
                // must not keep us in their routing tables.
                self.swarm.behaviour_mut().kad.set_mode(Some(kad::Mode::Client));
                if let Some(autonat) = self.swarm.behaviour_mut().autonat.as_mut() {
                    autonat.stop();
                }
                let direct: Vec<Multiaddr> = self
                    .swarm
                    .external_addresses()
                    .filter(|a| !paths::is_relayed(a))
                    .cloned()
                    .collect();
                for addr in direct {
                    self.swarm.remove_external_address(&addr);
                }
                if self.bootstrap.is_empty() {
                    warn!(why, "this node cannot be dialled from outside, and has no bootstrap peer whose relay it could use: peers behind other NATs will not reach it (pass --bootstrap)");
                } else {
                    warn!(why, "this node cannot be dialled from outside (behind NAT or a firewall): it is reached through its bootstrap peers' relays, with hole punching for direct connections, and answers no DHT queries");
                }
                self.listen_relayed();
            }
            Reachability::Public => {
                if self.dht_server {
                    self.swarm.behaviour_mut().kad.set_mode(Some(kad::Mode::Server));
                }
                info!(why, "reachable from outside");
            }
            Reachability::Unknown => {}
        }
    }

    /// Reserves a slot on the relays of up to [`RELAYS_MAX`] connected
    /// bootstrap peers (each keeps the reservation while the connection
    /// lasts; the relay client renews it).
    fn listen_relayed(&mut self) {
        let wanted: Vec<(PeerId, Multiaddr)> = self
            .bootstrap
            .iter()
            .filter(|(peer, _)| self.swarm.is_connected(peer))
            .filter(|(peer, _)| !self.relay_listeners.values().any(|p| p == peer))
            .take(RELAYS_MAX.saturating_sub(self.relay_listeners.len()))
            .cloned()
            .collect();
        for (peer, addr) in wanted {
            match self.swarm.listen_on(addr.clone().with(Protocol::P2pCircuit)) {
                Ok(id) => {
                    self.relay_listeners.insert(id, peer);
                }
                Err(e) => warn!(relay = %addr, error = %e, "cannot reserve a slot on this relay"),
            }
        }
    }

    /// Behind NAT with fewer relay slots than it could hold (a relay
    /// refused or dropped one while the connection to it stayed up): asks
    /// again, at most every [`RELAY_RETRY_MS`].
    fn retry_relays(&mut self) {
        if self.reachability != Reachability::Private
            || self.relay_listeners.len() >= RELAYS_MAX.min(self.bootstrap.len())
        {
            return;
        }
        let now = Instant::now();
        match self.relay_retry_at {
            Some(at) if at > now => {}
            Some(_) => {
                self.relay_retry_at = None;
                self.listen_relayed();
            }
            None => self.relay_retry_at = Some(now + Duration::from_millis(RELAY_RETRY_MS)),
        }
    }

    fn on_relay_client(&mut self, event: relay::client::Event) {
        match event {
            relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal: false,
                limit,
            } => {
                info!(
                    relay = %relay_peer_id,
                    circuit_bytes = ?limit.and_then(|l| l.data_in_bytes()),
                    "reserved a slot on the relay"
                );
                // The records announced so far carry the addresses this
                // node had before (its LAN's, or none): announced again,
                // they carry the relayed one, rather than in an hour.
                self.announce_again();
            }
            relay::client::Event::OutboundCircuitEstablished { relay_peer_id, limit } => {
                self.paths
                    .relay_limit(relay_peer_id, limit.and_then(|l| l.data_in_bytes()));
            }
            relay::client::Event::InboundCircuitEstablished { src_peer_id, limit } => {
                self.paths
                    .inbound_limit(src_peer_id, limit.and_then(|l| l.data_in_bytes()));
            }
            other => debug!(event = ?other, "relay client"),
        }
    }

    fn on_kad_event(&mut self, event: kad::Event) {
        let kad::Event::OutboundQueryProgressed { id, result, step, .. } = event else {
            return;
        };
        match result {
            QueryResult::StartProviding(result) => {
                if let Some(reply) = self.provide_queries.remove(&id) {
                    // With no peer to store the record on yet, the record is
                    // still kept locally and served to whoever asks.
                    if let Err(e) = &result {
                        debug!(error = ?e, "provider announcement reached no peer yet");
                    }
                    let _ = reply.send(Ok(()));
                }
            }
            QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders { providers, .. })) => {
                let me = *self.swarm.local_peer_id();
                let Some(query) = self.provider_queries.get_mut(&id) else {
                    return;
                };
                let new = query.add(&me, providers);
                let enough = query.is_enough();
                for peer in new {
                    // Dial now, while the query still knows the address.
                    let opts = DialOpts::peer_id(peer)
                        .condition(PeerCondition::DisconnectedAndNotDialing)
                        .build();
                    let _ = self.swarm.dial(opts);
                }
                if enough {
                    if let Some(mut running) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                        running.finish();
                    }
                }
                if step.last || enough {
                    self.finish_provider_query(id);
                }
            }
            QueryResult::GetProviders(_) if step.last => self.finish_provider_query(id),
            QueryResult::PutRecord(result) => {
                if let Some(reply) = self.put_queries.remove(&id) {
                    // Kept locally even when no other peer took it yet.
                    if let Err(e) = &result {
                        debug!(error = ?e, "record stored on no other peer yet");
                    }
                    let _ = reply.send(Ok(()));
                }
            }
            QueryResult::GetRecord(Ok(kad::GetRecordOk::FoundRecord(found))) => {
                if let Some(reply) = self.get_queries.remove(&id) {
                    let _ = reply.send(Ok(Some(found.record.value)));
                }
                if let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                    query.finish();
                }
            }
            QueryResult::GetRecord(_) if step.last => {
                if let Some(reply) = self.get_queries.remove(&id) {
                    let _ = reply.send(Ok(None));
                }
            }
            _ => {}
        }
    }

    fn finish_provider_query(&mut self, id: QueryId) {
        if let Some(query) = self.provider_queries.remove(&id) {
            let _ = query.reply.send(Ok(query.found));
        }
    }

    fn on_gossip(&mut self, source: PeerId, id: gossipsub::MessageId, message: gossipsub::Message) {
        Metrics::add(&METRICS.gossip_received, 1);
        Metrics::add(&METRICS.gossip_received_bytes, message.data.len() as u64);
        let verdict = check_gossip_message(&message);
        let acceptance = match &verdict {
            Ok(_) => MessageAcceptance::Accept,
            Err(_) => MessageAcceptance::Reject,
        };
        let _ = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(&id, &source, acceptance);
        match verdict {
            Ok((signer, gossip)) => {
                self.emit(NetEvent::Gossip {
                    topic: message.topic.into_string(),
                    signer,
                    message: Box::new(gossip),
                });
            }
            Err(e) => {
                let count = self.invalid_gossip.entry(source).or_insert(0);
                *count += 1;
                warn!(peer = %source, error = %e, invalid = *count, "gossip rejected");
                if *count >= INVALID_GOSSIP_MAX {
                    warn!(peer = %source, "too many invalid gossip messages; blacklisting the peer");
                    self.swarm.behaviour_mut().gossipsub.blacklist_peer(&source);
                    let _ = self.swarm.disconnect_peer_id(source);
                }
            }
        }
    }
}

/// Checks a gossip message: it decodes within limits and its Kiln
/// signature verifies. The signer is its author (gossipsub carries no
/// author of its own).
fn check_gossip_message(message: &gossipsub::Message) -> Result<(PublicKey, Gossip), GossipError> {
    decode_gossip(&message.data)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn query() -> ProviderQuery {
        ProviderQuery {
            reply: oneshot::channel().0,
            found: Vec::new(),
            enough: PROVIDERS_PER_QUERY_MAX,
            deadline: Instant::now(),
        }
    }

    #[test]
    fn a_provider_query_keeps_and_dials_a_bounded_number_of_providers() {
        let me = PeerId::random();
        let many: Vec<PeerId> = (0..PROVIDERS_PER_QUERY_MAX * 5).map(|_| PeerId::random()).collect();
        let mut q = query();
        let first = q.add(&me, [me, many[0], many[0]]);
        assert_eq!(first, vec![many[0]], "itself and repeats are not kept");
        let dialled = q.add(&me, many.clone());
        assert_eq!(dialled.len(), PROVIDERS_PER_QUERY_MAX - 1);
        assert_eq!(q.found.len(), PROVIDERS_PER_QUERY_MAX);
        assert!(q.is_full());
        assert!(
            q.add(&me, [PeerId::random()]).is_empty(),
            "a full query dials no one more"
        );
    }

    #[test]
    fn a_query_for_the_first_providers_ends_with_the_first_answer_naming_any_and_keeps_all_it_named() {
        let me = PeerId::random();
        let mut q = ProviderQuery { enough: 1, ..query() };
        assert!(q.add(&me, [me]).is_empty());
        assert!(!q.is_enough(), "only itself: the lookup goes on");
        let three: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        assert_eq!(q.add(&me, three.clone()), three);
        assert!(q.is_enough());
        assert!(!q.is_full(), "more could be kept");
    }
}
