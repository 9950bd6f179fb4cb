//! Running a node: open the store and the identity, start the network,
//! serve blobs and the control socket, report listen addresses, and stop
//! cleanly when asked.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kiln_protocol::Hash;
use kiln_store::Store;
use libp2p::{Multiaddr, PeerId};
use tracing::{info, warn};

use crate::blobs::{self, FetchError, Progress};
use crate::control::{self, ControlHandler, ControlReply, ControlRequest};
use crate::coordinator::{self, CoordinatorOptions};
use crate::dashboard::{self, Dashboard};
use crate::mailer::{self, MailOptions};
use crate::net::{self, NetClient, NetConfig, NetEvent};
use crate::sandbox::Sandbox;
use crate::worker::{Worker, WorkerPolicy};
use crate::{archive, identity};
use kiln_protocol::SecretKey;

/// How long a node waits for its first listen address.
const LISTEN_MS_MAX: u64 = 10_000;
/// How long a short-lived client waits to reach a bootstrap peer.
const JOIN_MS_MAX: u64 = 10_000;

/// Why a node could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error(transparent)]
    Store(#[from] kiln_store::StoreError),
    #[error(transparent)]
    Net(#[from] net::NetError),
    #[error("control socket: {0}")]
    Control(std::io::Error),
    #[error("{0}")]
    Dashboard(std::io::Error),
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    #[error(transparent)]
    Mail(#[from] crate::mailer::MailError),
    #[error("the node did not start listening within {LISTEN_MS_MAX} ms; check the --listen addresses")]
    NoListen,
    #[error("cannot reach the bootstrap peer {0}; is it running, and is the address right (as `kiln-bootstrap` or `kiln node` printed it, with its /p2p/ peer id)?")]
    NoBootstrap(String),
    #[error("this node ({0}) is pinned with --coordinator but is not in its own --trust-coordinator list, so the nodes sharing that list would not follow it: add --trust-coordinator {0}")]
    PinnedUntrusted(PeerId),
}

/// What `kiln node` and `kiln-bootstrap` start.
pub struct NodeOptions {
    pub data_dir: PathBuf,
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    /// A bootstrap peer: relay server, no control socket needed by users.
    pub relay_server: bool,
    /// Contribute this machine (`--contribute`) under these rules.
    pub worker: Option<WorkerOptions>,
    /// The store's size cap (`--max-store-size`).
    pub max_store_bytes: Option<u64>,
    /// Whether this node may coordinate (`--coordinator`, `--no-coordinator`).
    pub coordinator: CoordinatorOptions,
    /// How a coordinator sends mail (`--smtp`, `--mail-from`).
    pub mail: MailOptions,
    /// Serve the dashboard on this listener (`--http`; see [`dashboard::bind`]).
    pub http: Option<std::net::TcpListener>,
}

/// How a contributed machine works.
pub struct WorkerOptions {
    pub policy: WorkerPolicy,
    /// The contributor's labels, added to the probed SystemInfo.
    pub labels: std::collections::BTreeMap<String, String>,
}

/// Runs a node until `shutdown` resolves. `ready` gets each full listen
/// address once the node listens.
pub async fn run_node(
    options: NodeOptions,
    mut ready: impl FnMut(&Multiaddr),
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), NodeError> {
    let key = identity::load_or_create(&options.data_dir)?;
    let me = identity::keypair(&key).public().to_peer_id();
    if let (true, Some(trusted)) = (options.coordinator.pinned, &options.coordinator.trusted) {
        if !trusted.contains(&me) {
            return Err(NodeError::PinnedUntrusted(me));
        }
    }
    let worker_key_bytes = key.to_bytes();
    let worker_key = SecretKey::from_bytes(&worker_key_bytes);
    let store_options = kiln_store::StoreOptions {
        size_cap_bytes: options.max_store_bytes,
    };
    let store = Store::open_with(&options.data_dir, store_options)?;
    let listener = control::bind(&options.data_dir).map_err(NodeError::Control)?;
    let http = match options.http {
        Some(listener) => Some(tokio::net::TcpListener::from_std(listener).map_err(NodeError::Dashboard)?),
        None => None,
    };
    let sandbox = match &options.worker {
        Some(worker) => Some(Sandbox::new(&options.data_dir, worker.policy.allow_network)?),
        None => None,
    };
    let config = NetConfig {
        key,
        listen: options.listen,
        bootstrap: options.bootstrap,
        relay_server: options.relay_server,
        dht_server: true,
    };
    let (net, mut events, event_loop) = net::start(config)?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let network = tokio::spawn(event_loop.run(async {
        let _ = stop_rx.await;
    }));
    // Register every protocol before telling anyone our address.
    let server = blobs::spawn_server(&net, store.clone());
    let mut roles = Vec::new();
    // A worker releases what it built once the network holds a copy.
    if let (Some(worker), Some(sandbox)) = (options.worker, sandbox) {
        let labels = worker.labels;
        let system = tokio::task::spawn_blocking(move || crate::system::probe(labels))
            .await
            .map_err(|e| NodeError::Control(std::io::Error::other(e.to_string())))?;
        info!(system = %system.summary(), max_jobs = worker.policy.max_jobs, "contributing this machine");
        let worker = Arc::new(Worker::new(
            net.clone(),
            store.clone(),
            sandbox,
            worker_key,
            system,
            worker.policy,
        ));
        roles.push(worker.clone().spawn_server());
        roles.push(tokio::spawn(worker.advertise()));
    }
    let coordinator_key = SecretKey::from_bytes(&worker_key_bytes);
    let mail = if options.coordinator.eligible || options.coordinator.pinned {
        let acting = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mail_key = SecretKey::from_bytes(&worker_key_bytes);
        let (handle, task) = mailer::spawn(net.clone(), store.clone(), mail_key, &options.mail, acting.clone())?;
        roles.push(task);
        Some((handle, acting))
    } else {
        None
    };
    let (coordination, tasks) =
        coordinator::spawn(net.clone(), store.clone(), coordinator_key, options.coordinator, mail);
    roles.extend(tasks);
    let dashboard = http.map(|listener| {
        let dashboard = Arc::new(Dashboard::new(net.clone(), store.clone(), coordination.clone()));
        roles.push(tokio::spawn(dashboard::serve(listener, dashboard.clone())));
        dashboard
    });
    let mut addresses = Vec::new();
    // Other events (a bootstrap peer refusing a dial) may come first.
    let first = tokio::time::timeout(Duration::from_millis(LISTEN_MS_MAX), async {
        while let Some(event) = events.recv().await {
            if let NetEvent::Listening(addr) = event {
                return Some(addr);
            }
        }
        None
    })
    .await;
    match first {
        Ok(Some(addr)) => {
            ready(&addr);
            addresses.push(addr);
            coordination.addresses(addresses.clone());
        }
        _ => return Err(NodeError::NoListen),
    }
    // Announce what the store already holds, without holding up start-up.
    let announcer = {
        let (net, held) = (net.clone(), store.list());
        tokio::spawn(async move {
            for (hash, _) in held {
                if let Err(e) = net.provide(hash).await {
                    warn!(blob = %hash, error = %e, "cannot announce a stored blob");
                }
            }
        })
    };
    let handler = Arc::new(Handler {
        net: net.clone(),
        store: store.clone(),
        addresses: Default::default(),
    });
    let control = tokio::spawn(control::serve(listener, handler.clone()));
    // The control socket and the dashboard learn the listen addresses when
    // they change, not on every network event.
    let share_addresses = |addresses: &[Multiaddr]| {
        if let Ok(mut known) = handler.addresses.lock() {
            known.clear();
            known.extend_from_slice(addresses);
        }
        if let Some(dashboard) = &dashboard {
            dashboard.addresses(addresses);
        }
    };
    share_addresses(&addresses);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(NetEvent::Listening(addr)) => {
                    ready(&addr);
                    addresses.push(addr);
                    coordination.addresses(addresses.clone());
                    share_addresses(&addresses);
                }
                Some(NetEvent::Gossip { signer, message, .. }) => {
                    if let Some(dashboard) = &dashboard {
                        dashboard.heard(&signer, &message);
                    }
                    coordination.gossip(signer, message);
                }
                Some(other) => tracing::debug!(event = ?other, "network event"),
                None => break,
            },
            () = &mut shutdown => break,
        }
    }
    info!("shutting down");
    control.abort();
    server.abort();
    announcer.abort();
    for role in roles {
        role.abort();
    }
    let _ = stop_tx.send(());
    let _ = network.await;
    let _ = std::fs::remove_file(control::socket_path(&options.data_dir));
    Ok(())
}

struct Handler {
    net: NetClient,
    store: Store,
    addresses: std::sync::Mutex<Vec<Multiaddr>>,
}

impl ControlHandler for Handler {
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
                match fetch_to(&self.net, &self.store, hash, output.as_deref(), Arc::new(NoProgress)).await {
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
        }
    }
}

/// Stores a file as it is, or a directory as a deterministic archive.
pub async fn publish(store: &Store, path: &Path) -> Result<(Hash, u64), String> {
    let (store, path) = (store.clone(), path.to_path_buf());
    tokio::task::spawn_blocking(move || publish_blocking(&store, &path))
        .await
        .map_err(|e| e.to_string())?
}

fn publish_blocking(store: &Store, path: &Path) -> Result<(Hash, u64), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.is_dir() {
        let tmp =
            tempfile::NamedTempFile::new_in(store.dir()).map_err(|e| format!("cannot create a temporary file: {e}"))?;
        archive::pack_dir(path, std::io::BufWriter::new(tmp.as_file())).map_err(|e| e.to_string())?;
        store.put_file(tmp.path(), None).map_err(|e| e.to_string())
    } else {
        store.put_file(path, None).map_err(|e| e.to_string())
    }
}

/// Fetches a blob into the store and, if asked, copies it to `output`.
pub async fn fetch_to(
    net: &NetClient,
    store: &Store,
    hash: Hash,
    output: Option<&Path>,
    progress: Arc<dyn Progress>,
) -> Result<u64, FetchError> {
    let bytes = blobs::fetch(net, store, hash, progress).await?;
    if let Err(e) = net.provide(hash).await {
        warn!(blob = %hash, error = %e, "fetched but not announced");
    }
    if let Some(output) = output {
        let (store, output) = (store.clone(), output.to_path_buf());
        tokio::task::spawn_blocking(move || store.export(&hash, &output))
            .await
            .map_err(|e| FetchError::Writer(e.to_string()))??;
    }
    Ok(bytes)
}

/// Resolves on SIGINT or SIGTERM: how `kiln node` and `kiln-bootstrap` stop.
/// The handlers are installed when this is called (inside the runtime), not
/// when the future is first polled: a signal sent right after the node
/// prints its address is already caught.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        match (term, interrupt) {
            (Ok(mut term), Ok(mut interrupt)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = interrupt.recv() => {}
                }
            }
            _ => {
                warn!("cannot install signal handlers; stop this node with SIGKILL");
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Progress that shows nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _total_bytes: u64, _done_bytes: u64) {}
    fn advance(&self, _bytes: u64) {}
}

/// A short-lived client node: joins through the bootstrap peers, does one
/// thing, and stops. Used by `kiln fetch` when no node runs on the data dir.
pub struct EphemeralNode {
    pub net: NetClient,
    pub store: Store,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    server: tokio::task::JoinHandle<()>,
    /// Drains the network's events (a client acts on none of them).
    drain: tokio::task::JoinHandle<()>,
}

impl EphemeralNode {
    pub async fn start(data_dir: &Path, bootstrap: Vec<Multiaddr>) -> Result<EphemeralNode, NodeError> {
        let key = identity::load_or_create(data_dir)?;
        let store = Store::open(data_dir)?;
        let entry: Vec<PeerId> = crate::request::bootstrap_peers(&bootstrap);
        let shown: Vec<String> = bootstrap.iter().map(|a| a.to_string()).collect();
        let config = NetConfig {
            key,
            listen: Vec::new(),
            bootstrap,
            relay_server: false,
            dht_server: false,
        };
        let (net, mut events, event_loop) = net::start(config)?;
        // The network never dials itself.
        let entry: Vec<PeerId> = entry.into_iter().filter(|p| *p != net.peer_id()).collect();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(event_loop.run(async {
            let _ = stop_rx.await;
        }));
        // Serves what it publishes (a requester's recipe and source).
        let server = blobs::spawn_server(&net, store.clone());
        // Nothing works before a bootstrap peer answers: say so at once
        // rather than time out later on something else.
        let joining = async {
            if entry.is_empty() {
                return Ok(());
            }
            let mut failed = std::collections::BTreeMap::new();
            while let Some(event) = events.recv().await {
                match event {
                    NetEvent::PeerConnected(peer) if entry.contains(&peer) => return Ok(()),
                    NetEvent::BootstrapUnreachable(peer, why) => {
                        failed.insert(peer, why);
                        if entry.iter().all(|p| failed.contains_key(p)) {
                            return Err(failed.into_values().collect::<Vec<_>>().join("; "));
                        }
                    }
                    _ => {}
                }
            }
            Err("the network task stopped".to_string())
        };
        let joined = tokio::time::timeout(Duration::from_millis(JOIN_MS_MAX), joining)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {} s", JOIN_MS_MAX / 1000)));
        if let Err(why) = joined {
            server.abort();
            let _ = stop_tx.send(());
            let _ = task.await;
            return Err(NodeError::NoBootstrap(format!("{}: {why}", shown.join(", "))));
        }
        Ok(EphemeralNode {
            net,
            store,
            stop: Some(stop_tx),
            task,
            server,
            drain: tokio::spawn(async move { while events.recv().await.is_some() {} }),
        })
    }

    pub async fn stop(mut self) {
        self.server.abort();
        self.drain.abort();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}
