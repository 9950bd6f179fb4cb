//! The control socket: how `kiln` commands reach a node running on the same
//! data dir. The store's index can be open in one process only, so while a
//! node runs, `kiln publish` and `kiln fetch` hand their work to it through
//! `DATA_DIR/node.sock` (a Unix socket, reachable only by users who can
//! reach the data dir). Each connection carries one JSON request line and
//! gets one JSON answer line.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kiln_protocol::Hash;
use kiln_store::Store;
use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::blobs::{fetch_to, publish, Announce, NoProgress};
use crate::coordinator::CoordHandle;
use crate::metrics::METRICS;
use crate::net::NetClient;

/// The socket's name inside the data dir.
pub const SOCKET_FILE: &str = "node.sock";
/// Longest request or answer line.
const CONTROL_LINE_BYTES_MAX: usize = 64 * 1024;
/// Control connections served at once.
const CONTROL_CONNECTIONS_MAX: usize = 16;

#[derive(Debug, Serialize, Deserialize)]
pub enum ControlRequest {
    /// Store a file or a directory (packed) and announce it.
    Publish { path: PathBuf },
    /// Fetch a blob into the node's store and copy it to `output`.
    Fetch { hash: Hash, output: Option<PathBuf> },
    /// The node's peer id and full listen addresses.
    Info,
    /// What the node itself holds and does (`kiln status --node`).
    Status,
    /// What this node gave as a worker (`kiln contributions`); the proof
    /// is written to the data dir.
    Contributions,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum ControlReply {
    Published { hash: Hash, bytes: u64 },
    Fetched { hash: Hash, bytes: u64 },
    Info { peer_id: String, addresses: Vec<String> },
    Status(Box<NodeStatus>),
    Contributions(Box<crate::contributions::Summary>),
    Error { message: String },
}

/// One node's own view, whether or not it coordinates: its role, the open
/// jobs in its queue, its outbox and its store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    pub peer_id: String,
    /// `coordinator` (acts now), `standby` (in the coordination set: may
    /// be elected), `reserve` (may coordinate, outside the set: silent on
    /// the coordinator topic, holds no job inputs) or `worker` (does not
    /// coordinate: `--no-coordinator`).
    pub role: String,
    /// Gossip messages (and their bytes) delivered to this node since it
    /// started, each once.
    pub gossip_received: u64,
    pub gossip_received_bytes: u64,
    /// Jobs announced on gossip by a peer that does not coordinate, dropped
    /// (nothing kept, no input fetched).
    #[serde(default)]
    pub gossip_jobs_refused: u64,
    /// Tasks started to fetch a gossiped job's inputs (one per job a member
    /// of the coordination set heard of).
    #[serde(default)]
    pub input_fetches_started: u64,
    /// Heartbeats this node has sent on the coordinator topic since it
    /// started.
    pub heartbeats_sent: u64,
    /// The coordination set as this node hears it: the peers whose
    /// heartbeats arrive, and itself if it is a member.
    pub coordination_set: Vec<String>,
    /// Peers this node is connected to now (its per-connection upkeep is
    /// much of an idle node's cost).
    pub connected_peers: usize,
    pub pinned: bool,
    /// The coordinator this node takes now, if it knows one.
    pub coordinator: Option<String>,
    /// Open jobs in this node's queue (its replica, if it does not act),
    /// in the shape `kiln status --json` lists them.
    pub jobs_total: u64,
    pub jobs: Vec<serde_json::Value>,
    /// This node's outbox, if it may coordinate.
    pub mail: Option<NodeMail>,
    pub store: NodeStore,
    /// Workers' streaks of results agreed with by independent builds, as
    /// this node keeps them (`--verify auto`), longest first.
    #[serde(default)]
    pub streaks: Vec<NodeStreak>,
    /// Whether this node can be dialled, and how it reaches its peers.
    #[serde(default)]
    pub network: NodeNetwork,
}

/// This node's reachability and its peers by path (`kiln status --node`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeNetwork {
    /// `public` (a peer dialled it back), `private` (behind NAT: reached
    /// through relays) or `unknown`.
    pub reachability: String,
    /// Where peers dial it through a relay (behind NAT).
    pub relayed_addresses: Vec<String>,
    /// Connected peers by path: plainly direct, direct after a hole punch,
    /// only through a relay.
    pub direct: usize,
    pub hole_punched: usize,
    pub relayed: usize,
    /// The peers not plainly direct (at most 100), with their path.
    pub peers: Vec<NodePeerPath>,
    pub hole_punch_attempts: u64,
    pub hole_punch_successes: u64,
    pub hole_punch_failures: u64,
    /// Bytes sent and received over relayed connections.
    pub relayed_bytes: u64,
    /// Circuits this node's relay server accepted (a bootstrap peer).
    pub relay_circuits: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodePeerPath {
    pub peer: String,
    /// `hole_punched` or `relayed`.
    pub path: String,
}

impl NodeNetwork {
    pub(crate) fn new(view: crate::net::NetView) -> NodeNetwork {
        let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        NodeNetwork {
            reachability: match view.reachability {
                crate::net::Reachability::Unknown => "unknown",
                crate::net::Reachability::Public => "public",
                crate::net::Reachability::Private => "private",
            }
            .into(),
            relayed_addresses: view.relayed_addresses,
            direct: view.direct,
            hole_punched: view.hole_punched,
            relayed: view.relayed,
            peers: view
                .peers
                .into_iter()
                .map(|(peer, path)| NodePeerPath {
                    peer,
                    path: match path {
                        crate::net::PathKind::Direct => "direct",
                        crate::net::PathKind::HolePunched => "hole_punched",
                        crate::net::PathKind::Relayed => "relayed",
                    }
                    .into(),
                })
                .collect(),
            hole_punch_attempts: get(&METRICS.hole_punch_attempts),
            hole_punch_successes: get(&METRICS.hole_punch_successes),
            hole_punch_failures: get(&METRICS.hole_punch_failures),
            relayed_bytes: get(&METRICS.relayed_bytes),
            relay_circuits: get(&METRICS.relay_circuits),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStreak {
    pub worker: String,
    pub streak: u32,
    /// Builds of its that disagreed with independent builds.
    pub disagreements: u32,
    /// Its builds accepted alone, not checked since.
    pub unchecked: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeMail {
    pub pending: u64,
    pub delivered: u64,
    pub last_error: Option<String>,
    /// Where this node's mail goes, in words.
    pub route: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStore {
    pub blobs: u64,
    pub bytes: u64,
    pub cap_bytes: Option<u64>,
    /// Blobs found corrupt since the node started, oldest first.
    pub quarantined: Vec<NodeQuarantined>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeQuarantined {
    pub hash: String,
    /// What its bytes hashed to instead.
    pub actual: String,
    pub bytes: u64,
    pub found_ms_ago: u64,
    pub pinned: bool,
    /// A good copy is in the store again.
    pub restored: bool,
    /// Where the corrupt bytes were kept, if they were.
    pub kept: Option<String>,
    pub note: Option<String>,
}

/// What the node does for a control request.
pub trait ControlHandler: Send + Sync + 'static {
    fn handle(&self, request: ControlRequest) -> impl std::future::Future<Output = ControlReply> + Send;
}

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_FILE)
}

/// Binds the socket, replacing a stale one left by a node that died.
pub fn bind(data_dir: &Path) -> std::io::Result<UnixListener> {
    let path = socket_path(data_dir);
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("a node is already running on this data dir ({})", path.display()),
            ));
        }
        std::fs::remove_file(&path)?;
    }
    UnixListener::bind(&path)
}

/// Serves control connections until the listener fails.
pub async fn serve<H: ControlHandler>(listener: UnixListener, handler: Arc<H>) {
    let permits = Arc::new(Semaphore::new(CONTROL_CONNECTIONS_MAX));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "control socket stopped accepting");
                return;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_one(stream, handler).await {
                debug!(error = %e, "control connection ended");
            }
            drop(permit);
        });
    }
}

async fn serve_one<H: ControlHandler>(stream: UnixStream, handler: Arc<H>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(CONTROL_LINE_BYTES_MAX as u64);
    reader.read_line(&mut line).await?;
    let reply = match serde_json::from_str::<ControlRequest>(&line) {
        Ok(request) => handler.handle(request).await,
        Err(e) => ControlReply::Error {
            message: format!("bad control request: {e}"),
        },
    };
    let mut out = serde_json::to_vec(&reply).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await
}

/// What a running node does for `kiln publish`, `kiln fetch` and `kiln id`
/// sent to its socket.
pub(crate) struct NodeControl {
    net: NetClient,
    pub(crate) store: Store,
    key: kiln_protocol::SecretKey,
    coordination: CoordHandle,
    addresses: Mutex<Vec<Multiaddr>>,
}

impl NodeControl {
    pub(crate) fn new(
        net: NetClient,
        store: Store,
        key: kiln_protocol::SecretKey,
        coordination: CoordHandle,
    ) -> NodeControl {
        NodeControl {
            net,
            store,
            key,
            coordination,
            addresses: Mutex::new(Vec::new()),
        }
    }

    async fn status(&self) -> ControlReply {
        let Some(local) = self.coordination.local().await else {
            return ControlReply::Error {
                message: "the node is stopping; try again once it runs".into(),
            };
        };
        let role = if local.acting {
            "coordinator"
        } else if local.eligible && local.member {
            "standby"
        } else if local.eligible {
            "reserve"
        } else {
            "worker"
        };
        let now = crate::clock::now_ms();
        let store = &self.store;
        let quarantined = store
            .quarantined()
            .into_iter()
            .map(|q| NodeQuarantined {
                hash: q.hash.to_string(),
                actual: q.actual.to_string(),
                bytes: q.size_bytes,
                found_ms_ago: now.saturating_sub(q.found_at_ms),
                pinned: q.pinned,
                restored: store.has(&q.hash),
                kept: q.kept.map(|p| p.display().to_string()),
                note: q.note,
            })
            .collect();
        ControlReply::Status(Box::new(NodeStatus {
            peer_id: self.net.peer_id().to_string(),
            role: role.into(),
            gossip_received: METRICS.gossip_received.load(std::sync::atomic::Ordering::Relaxed),
            gossip_received_bytes: METRICS.gossip_received_bytes.load(std::sync::atomic::Ordering::Relaxed),
            gossip_jobs_refused: METRICS.gossip_jobs_refused.load(std::sync::atomic::Ordering::Relaxed),
            input_fetches_started: METRICS.input_fetches_started.load(std::sync::atomic::Ordering::Relaxed),
            heartbeats_sent: local.heartbeats_sent,
            coordination_set: local.set.iter().map(|p| p.to_string()).collect(),
            connected_peers: self.net.connected_peers().await.map(|p| p.len()).unwrap_or(0),
            pinned: local.pinned,
            coordinator: local.coordinator.map(|p| p.to_string()),
            jobs_total: local.jobs_total,
            jobs: local.jobs.iter().map(crate::report::job_json).collect(),
            mail: local.mail.map(|m| NodeMail {
                pending: m.pending,
                delivered: m.delivered,
                last_error: m.last_error,
                route: m.route,
            }),
            store: NodeStore {
                blobs: store.blob_count(),
                bytes: store.total_bytes(),
                cap_bytes: store.size_cap(),
                quarantined,
            },
            streaks: local
                .streaks
                .iter()
                .map(|s| NodeStreak {
                    worker: crate::report::peer_of(&s.worker),
                    streak: s.streak,
                    disagreements: s.disagreements,
                    unchecked: s.unchecked,
                })
                .collect(),
            network: match self.net.view().await {
                Ok(view) => NodeNetwork::new(view),
                Err(_) => NodeNetwork::default(),
            },
        }))
    }

    /// The node's full listen addresses, as `Info` answers them.
    pub(crate) fn addresses(&self, addresses: &[Multiaddr]) {
        if let Ok(mut known) = self.addresses.lock() {
            known.clear();
            known.extend_from_slice(addresses);
        }
    }
}

impl ControlHandler for NodeControl {
    async fn handle(&self, request: ControlRequest) -> ControlReply {
        match request {
            ControlRequest::Publish { path } => match publish(&self.store, &path).await {
                Ok((hash, bytes)) => {
                    if let Err(e) = self.net.provide(hash).await {
                        warn!(blob = %hash, error = %e, "stored but not announced");
                    }
                    ControlReply::Published { hash, bytes }
                }
                Err(message) => ControlReply::Error { message },
            },
            ControlRequest::Fetch { hash, output } => {
                match fetch_to(
                    &self.net,
                    &self.store,
                    hash,
                    output.as_deref(),
                    Arc::new(NoProgress),
                    Announce::Yes,
                )
                .await
                {
                    Ok(bytes) => ControlReply::Fetched { hash, bytes },
                    Err(e) => ControlReply::Error { message: e.to_string() },
                }
            }
            ControlRequest::Info => ControlReply::Info {
                peer_id: self.net.peer_id().to_string(),
                addresses: self
                    .addresses
                    .lock()
                    .map(|a| a.iter().map(|x| x.to_string()).collect())
                    .unwrap_or_default(),
            },
            ControlRequest::Status => self.status().await,
            ControlRequest::Contributions => {
                let (store, key) = (
                    self.store.clone(),
                    kiln_protocol::SecretKey::from_bytes(&self.key.to_bytes()),
                );
                let summary = tokio::task::spawn_blocking(move || {
                    crate::contributions::summarize_to_file(&store, &key, crate::clock::now_ms())
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|summary| summary);
                match summary {
                    Ok(summary) => ControlReply::Contributions(Box::new(summary)),
                    Err(message) => ControlReply::Error { message },
                }
            }
        }
    }
}

/// Sends one request to the node on `data_dir`. `Ok(None)`: no node runs
/// there.
pub async fn ask(data_dir: &Path, request: &ControlRequest) -> std::io::Result<Option<ControlReply>> {
    let stream = match UnixStream::connect(socket_path(data_dir)).await {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request).map_err(std::io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    let mut answer = String::new();
    BufReader::new(read)
        .take(CONTROL_LINE_BYTES_MAX as u64)
        .read_line(&mut answer)
        .await?;
    serde_json::from_str(&answer).map(Some).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad answer from the node: {e}"),
        )
    })
}
