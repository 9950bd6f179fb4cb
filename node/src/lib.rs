//! Kiln's node: the libp2p network and the roles a peer plays in the farm.
//! Every role is its own task with its own state, talking to the network
//! through a [`net::NetClient`] and to disk through a `kiln_store::Store`.
//! See ARCHITECTURE.md at the repository's root for the whole picture.
//!
//! - [`net`]: the swarm's event loop, the client handle, stream frames and
//!   the node identity;
//! - [`blobs`]: serving and fetching blobs by verified ranges, and keeping
//!   the DHT's provider records in step with the store;
//! - [`coordinator`]: the acting coordinator and its standbys (queue,
//!   matching, leases, settlement), with the pure [`coordinator::schedule`]
//!   and election;
//! - [`worker`]: taking assignments and building in the sandbox;
//! - [`mailer`]: the durable outbox and its delivery;
//! - [`contributions`]: what this node gave as a worker;
//! - [`requester`] and [`coord_client`]: preparing a job, and the client
//!   side of the coordinator protocol;
//! - [`web`]: the dashboard and `/metrics`;
//! - `runtime`: starting, running and stopping a node or a client
//!   ([`run_node`], [`EphemeralNode`], the [`control`] socket).
//!
//! Dependencies point one way: `kiln_protocol` (pure) and `kiln_store` (no
//! network) below, `kiln` (the CLI) above. Inside this crate the roles use
//! `net`, `blobs` and the small shared modules, never each other, except
//! that the coordinator feeds the mailer and the dashboard asks the
//! coordinator.

pub mod archive;
pub mod blobs;
pub mod clock;
pub mod contributions;
pub mod coord_client;
pub mod coordinator;
pub mod mailer;
mod metrics;
pub mod net;
pub mod report;
pub mod requester;
mod runtime;
mod shutdown;
pub mod web;
pub mod worker;

pub use blobs::{fetch_to, publish, Announce};
pub use net::identity;
pub use runtime::control;
pub use runtime::{run_node, EphemeralNode, NodeError, NodeOptions, WorkerOptions};
pub use shutdown::shutdown_signal;
