//! Running a node: open the identity and the store, start the network and
//! the roles this node plays, report listen addresses, route network events
//! to the roles, and stop cleanly when asked (roles finish their current
//! step first). A short-lived client ([`EphemeralNode`]) shares the same
//! start-up.
//!
//! - `start`: the start-up a node and a client share (identity, store,
//!   network task, blob server, announcer);
//! - `node`: [`run_node`] and its phases;
//! - `ephemeral`: [`EphemeralNode`];
//! - [`control`]: the data dir's control socket.
//!
//! Not for: any role's own logic; this module only wires roles together.

use std::path::PathBuf;

use libp2p::{Multiaddr, PeerId};

use crate::coordinator::CoordinatorOptions;
use crate::mailer::MailOptions;
use crate::net::{self, identity};
use crate::worker::WorkerPolicy;

pub mod control;
mod ephemeral;
mod node;
mod start;

pub use ephemeral::EphemeralNode;
pub use node::run_node;

/// How long a node waits for its first listen address.
const LISTEN_MS_MAX: u64 = 10_000;
/// How long a short-lived client waits to reach a bootstrap peer.
const JOIN_MS_MAX: u64 = 10_000;
/// How long the roles may take to finish their current step once told to
/// stop, before they are cut off.
const ROLES_STOP_MS_MAX: u64 = 10_000;

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
    Sandbox(#[from] crate::worker::sandbox::SandboxError),
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
    /// A bootstrap peer: a relay server under these limits.
    pub relay_server: Option<crate::net::RelayLimits>,
    /// Whether this node can be dialled: found out (AutoNAT), or said
    /// (`--reachability`).
    pub reachability: crate::net::ReachabilityMode,
    /// Contribute this machine (`--contribute`) under these rules.
    pub worker: Option<WorkerOptions>,
    /// The store's size cap (`--max-store-size`).
    pub max_store_bytes: Option<u64>,
    /// Whether this node may coordinate (`--coordinator`, `--no-coordinator`).
    pub coordinator: CoordinatorOptions,
    /// How a coordinator sends mail (`--smtp`, `--mail-from`).
    pub mail: MailOptions,
    /// Serve the dashboard on this listener (`--http`; see [`crate::web::bind`]).
    pub http: Option<std::net::TcpListener>,
}

/// How a contributed machine works.
pub struct WorkerOptions {
    pub policy: WorkerPolicy,
    /// The contributor's labels, added to the probed SystemInfo.
    pub labels: std::collections::BTreeMap<String, String>,
    /// What one build may take (`--cpus`, `--max-build-processes`).
    pub limits: crate::worker::limits::BuildLimits,
}
