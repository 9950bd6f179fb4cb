//! `kiln-bootstrap`: a long-lived rendezvous peer with a stable identity.
//! Kademlia server, gossipsub member and relay server; it runs no builds.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use kiln_node::NodeOptions;
use libp2p::Multiaddr;

#[derive(Parser)]
#[command(
    name = "kiln-bootstrap",
    version,
    about = "A stable entry point for a Kiln network (DHT server, gossip relay, relay server)."
)]
struct Cli {
    /// Address to listen on (repeatable); give a fixed port so others can list this peer
    #[arg(long, default_value = "/ip4/0.0.0.0/tcp/4001", value_parser = kiln_node::net::parse_multiaddr)]
    listen: Vec<Multiaddr>,
    /// Other bootstrap peers to join (repeatable; also KILN_BOOTSTRAP)
    #[arg(long, env = "KILN_BOOTSTRAP", value_delimiter = ',', value_parser = kiln_node::net::parse_multiaddr)]
    bootstrap: Vec<Multiaddr>,
    /// Where the identity and index live; keep it to keep the peer id
    /// (default: the platform's data dir, ~/.local/share/kiln/bootstrap)
    #[arg(long, env = "KILN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Bytes one relayed circuit may carry, both ways together (e.g. 1MiB); a peer behind NAT that
    /// cannot hole punch is reached through this relay, within this limit
    #[arg(long, value_name = "SIZE", default_value = "1MiB", value_parser = parse_size)]
    relay_circuit_bytes: u64,
    /// Seconds one relayed circuit may last
    #[arg(long, value_name = "SECS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    relay_circuit_secs: u64,
    /// Relayed circuits open at once; with --relay-circuit-bytes, this bounds the relay's bandwidth
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    relay_circuits: u64,
    /// Peers behind NAT that may hold a slot on this relay at once
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    relay_reservations: u64,
    /// Log only errors
    #[arg(short, long, conflicts_with = "verbose")]
    quiet: bool,
    /// Log more (-v: what the peer does, -vv: debug)
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (_, 0) => "warn,libp2p_kad=error,libp2p_autonat=error",
        (_, 1) => "warn,kiln_node=info,libp2p_autonat=error",
        _ => "info,kiln_node=debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("kiln-bootstrap: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kiln-bootstrap: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse_size(text: &str) -> Result<u64, String> {
    kiln_protocol::system::parse_bytes(text)
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{text:?} is not a size: use for example 512KiB, 1MiB or 64MiB"))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let data_dir = match cli.data_dir {
        Some(dir) => dir,
        None => kiln_store::Store::default_dir()?.join("bootstrap"),
    };
    let options = NodeOptions {
        data_dir,
        listen: cli.listen,
        bootstrap: cli.bootstrap,
        relay_server: Some(kiln_node::net::RelayLimits {
            circuit_bytes: cli.relay_circuit_bytes,
            circuit_secs: cli.relay_circuit_secs,
            circuits_max: cli.relay_circuits as usize,
            reservations_max: cli.relay_reservations as usize,
        }),
        // A bootstrap peer must be reachable: it is every node's way in,
        // and the relay of nodes behind NAT.
        reachability: kiln_node::net::ReachabilityMode::Public,
        worker: None,
        max_store_bytes: None,
        // Answers who the coordinator is; never coordinates itself.
        coordinator: kiln_node::coordinator::CoordinatorOptions::default(),
        mail: Default::default(),
        http: None,
    };
    kiln_node::run_node(options, |addr| println!("{addr}"), kiln_node::shutdown_signal()).await?;
    Ok(())
}
