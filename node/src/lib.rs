//! Kiln's node: the libp2p swarm and the roles a node plays (provider and
//! fetcher of blobs for now; worker, coordinator and requester build on it).
//!
//! - [`net`]: the swarm's event loop and the client handle roles use.
//! - [`blobs`]: serving and fetching blobs by verified ranges.
//! - [`control`]: the data dir's control socket for `kiln` commands.
//! - [`node`]: starting and stopping a node.

pub mod archive;
pub mod blobs;
pub mod clock;
pub mod control;
pub mod coordinator;
pub mod dashboard;
pub mod election;
mod frames;
mod http_limit;
pub mod identity;
pub mod mailer;
pub mod metrics;
pub mod net;
pub mod node;
pub mod report;
pub mod request;
pub mod sandbox;
pub mod schedule;
pub mod system;
pub mod worker;

pub use node::{fetch_to, publish, run_node, shutdown_signal, EphemeralNode, NodeError, NodeOptions, WorkerOptions};
