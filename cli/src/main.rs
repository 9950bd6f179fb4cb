//! The `kiln` command: parses arguments, runs one subcommand, prints the
//! error chain and exits non-zero on failure. The work is done in the
//! library crates; this binary stays thin.

/// Set by `-q`: the `kiln:` lines that tell a person what a command did
/// are left out (errors are still printed).
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Prints `kiln: ...` on stderr, unless `-q` was given.
macro_rules! say {
    ($($arg:tt)*) => {
        if !crate::QUIET.load(std::sync::atomic::Ordering::Relaxed) {
            // Formatted first, written at once: stderr is unbuffered, and
            // each piece of a format would be a write of its own.
            eprint!("{}", format!("kiln: {}\n", format_args!($($arg)*)));
        }
    };
}

mod config;
mod contributions;
mod demo;
mod progress;
mod request;
mod service;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use kiln_node::control::{self, ControlReply, ControlRequest};
use kiln_node::{EphemeralNode, NodeOptions};
use kiln_protocol::{Hash, Recipe};
use libp2p::Multiaddr;

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "A peer-to-peer build farm: contribute a machine, request builds, fetch them by hash."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log only errors (RUST_LOG, when set, decides instead)
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Log more: -v what nodes do, -vv Kiln's debug detail, -vvv every library's
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Args, Clone)]
struct DataDir {
    /// Where this node keeps its identity, blobs and index [default: the platform's data dir for kiln]
    #[arg(long, env = "KILN_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
}

impl DataDir {
    fn resolve(&self) -> anyhow::Result<PathBuf> {
        match &self.data_dir {
            Some(dir) => Ok(dir.clone()),
            None => kiln_store::Store::default_dir()
                .context("no --data-dir given and no default data dir for this user; pass --data-dir DIR"),
        }
    }
}

#[derive(Args, Clone)]
struct Bootstrap {
    /// A peer to join the network through (repeatable; also KILN_BOOTSTRAP, comma separated)
    #[arg(long, env = "KILN_BOOTSTRAP", value_delimiter = ',', value_parser = kiln_node::net::parse_multiaddr)]
    bootstrap: Vec<Multiaddr>,
}

#[derive(Args, Clone)]
struct Contribute {
    /// Lend this machine to the network: run builds for others in the sandbox
    #[arg(long)]
    contribute: bool,
    /// Most builds run at once
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    max_jobs: u32,
    /// Run only recipes signed by this publisher key (repeatable; see `kiln keygen`)
    #[arg(long = "trust-publisher", value_name = "KEY")]
    trust_publishers: Vec<kiln_protocol::PublicKey>,
    /// Run recipes from anyone (still in the sandbox)
    #[arg(long, conflicts_with = "trust_publishers")]
    trust_any_recipe: bool,
    /// Let recipes that declare `network = true` use the network
    #[arg(long)]
    allow_network: bool,
    /// Take work only while the machine is otherwise idle (its owner uses under half the CPUs; Kiln's builds not counted),
    /// and pause a running build while it is not
    #[arg(long)]
    idle_only: bool,
    /// With --idle-only: how long a build may stay paused for the owner (e.g. 30m) before it is given
    /// to another worker
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "15m", requires = "idle_only")]
    max_pause: u64,
    /// A label added to this worker's system description (repeatable), e.g. --label site=basement
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// CPUs one build may use (a cpuset cgroup where this node may create one, CPU affinity otherwise);
    /// the build's `nproc` prints it. Default: every CPU
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
    cpus: Option<u32>,
    /// Processes one build may run at once; a build that tries to run more (a fork bomb) is stopped
    #[arg(long, value_name = "N", default_value_t = kiln_node::worker::limits::BUILD_PROCESSES_MAX_DEFAULT,
          value_parser = clap::value_parser!(u32).range(8..=1_000_000))]
    max_build_processes: u32,
    /// Space one build may take in its build directory (e.g. 20GiB); a build that writes more is stopped
    #[arg(long, value_name = "SIZE", value_parser = parse_size,
          default_value = "32GiB")]
    max_build_disk: u64,
}

impl Contribute {
    fn worker_options(&self) -> anyhow::Result<Option<kiln_node::WorkerOptions>> {
        use kiln_node::worker::{Trust, WorkerPolicy};
        if !self.contribute {
            return Ok(None);
        }
        let trust = if self.trust_any_recipe {
            Trust::AnyRecipe
        } else if !self.trust_publishers.is_empty() {
            Trust::Publishers(self.trust_publishers.iter().copied().collect())
        } else {
            bail!("a contributed machine must say whose recipes it runs: --trust-publisher KEY (repeatable) or --trust-any-recipe");
        };
        let mut labels = std::collections::BTreeMap::new();
        for label in &self.labels {
            let Some((key, value)) = label.split_once('=') else {
                bail!("--label {label:?} is not KEY=VALUE (for example --label site=basement)");
            };
            labels.insert(key.trim().to_string(), value.trim().to_string());
        }
        let policy = WorkerPolicy {
            max_jobs: self.max_jobs,
            idle_only: self.idle_only,
            trust,
            allow_network: self.allow_network,
            // Set from the node's --trust-coordinator.
            coordinators: None,
            pause_max: std::time::Duration::from_secs(self.max_pause),
        };
        let limits = kiln_node::worker::limits::BuildLimits {
            cpus: self.cpus,
            processes_max: self.max_build_processes,
            disk_bytes_max: self.max_build_disk,
        };
        Ok(Some(kiln_node::WorkerOptions { policy, labels, limits }))
    }
}

#[derive(Args, Clone)]
struct Mail {
    /// Send requesters' mail through this SMTP server: smtp://HOST:PORT (plain), smtp://HOST?tls=required
    /// (STARTTLS), smtps://HOST (TLS); USER:PASSWORD@HOST to log in. Without it, mail is written as .eml
    /// files to DATA_DIR/outbox
    #[arg(long, env = "KILN_SMTP_URL", value_name = "URL", hide_env_values = true)]
    smtp: Option<String>,
    /// A file holding the SMTP password (instead of putting it in the URL; also KILN_SMTP_PASSWORD)
    #[arg(long, value_name = "FILE", requires = "smtp")]
    smtp_password_file: Option<PathBuf>,
    /// The sender of requesters' mail, e.g. "Kiln <kiln@example.org>"
    #[arg(long, value_name = "ADDR")]
    mail_from: Option<String>,
}

impl Mail {
    fn options(&self) -> anyhow::Result<kiln_node::mailer::MailOptions> {
        let password = match &self.smtp_password_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read --smtp-password-file {}", path.display()))?
                    .trim_end_matches(['\n', '\r'])
                    .to_string(),
            ),
            None => std::env::var("KILN_SMTP_PASSWORD").ok().filter(|p| !p.is_empty()),
        };
        Ok(kiln_node::mailer::MailOptions {
            smtp_url: self.smtp.clone(),
            smtp_password: password,
            from: self.mail_from.clone(),
        })
    }
}

/// `kiln node --reachability`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Reachability {
    Auto,
    Public,
    Private,
}

impl From<Reachability> for kiln_node::net::ReachabilityMode {
    fn from(r: Reachability) -> Self {
        match r {
            Reachability::Auto => kiln_node::net::ReachabilityMode::Auto,
            Reachability::Public => kiln_node::net::ReachabilityMode::Public,
            Reachability::Private => kiln_node::net::ReachabilityMode::Private,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: join the network, serve and announce the blobs it holds.
    Node {
        /// Address to listen on (repeatable)
        #[arg(long, default_value = "/ip4/0.0.0.0/tcp/0", value_parser = kiln_node::net::parse_multiaddr)]
        listen: Vec<Multiaddr>,
        #[command(flatten)]
        bootstrap: Bootstrap,
        #[command(flatten)]
        data_dir: DataDir,
        #[command(flatten)]
        contribute: Contribute,
        /// Most bytes of blobs this node keeps (e.g. 20GiB); the least recently used unpinned ones are evicted
        #[arg(long, value_parser = parse_size)]
        max_store_size: Option<u64>,
        /// Always play the coordinator (queueing and matching) while this node runs
        #[arg(long, conflicts_with = "no_coordinator")]
        coordinator: bool,
        /// Never be elected coordinator
        #[arg(long)]
        no_coordinator: bool,
        /// Nodes in the coordination set: the acting coordinator and its standbys, which send heartbeats and
        /// hold job inputs and the outbox; other nodes that may coordinate stay silent until the set is short
        #[arg(long, value_name = "N", default_value_t = kiln_node::coordinator::election::COORDINATION_SET_DEFAULT as u16,
              value_parser = clap::value_parser!(u16).range(1..=64))]
        coordination_set: u16,
        /// Take only this peer as coordinator (repeatable): hear only its heartbeats and settlements, take
        /// work only from it, and coordinate only if this node is one of them. `kiln id` prints a peer id
        #[arg(long = "trust-coordinator", value_name = "PEER_ID", value_parser = parse_peer_id)]
        trust_coordinators: Vec<libp2p::PeerId>,
        /// When coordinating, the streak (results in a row that independent builds agreed with) from which
        /// a worker builds a `--verify auto` job alone, spot-checked with probability 1/streak
        #[arg(long, value_name = "N", default_value_t = kiln_node::coordinator::verification::TRUSTED_STREAK,
              value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        trusted_streak: u32,
        /// When coordinating, the most open jobs one requester (its key) may have; more are refused until some end
        #[arg(long, value_name = "N", default_value_t = kiln_node::coordinator::REQUESTER_JOBS_DEFAULT,
              value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        max_requester_jobs: u32,
        /// When coordinating, the most jobs one requester (its key) may submit in a minute
        #[arg(long, value_name = "N", default_value_t = kiln_node::coordinator::REQUESTER_RATE_DEFAULT,
              value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        max_requester_rate: u32,
        /// When coordinating, the most bytes of inputs (recipes and sources) held for one requester's open
        /// jobs, each input counted once (e.g. 8GiB)
        #[arg(long, value_name = "SIZE", default_value = "8GiB", value_parser = parse_size)]
        max_requester_inputs: u64,
        #[command(flatten)]
        mail: Mail,
        /// Serve the dashboard (HTML, JSON at /api/status, Prometheus at /metrics) on HOST:PORT, or on
        /// 127.0.0.1:PORT given a port alone; --http alone uses 127.0.0.1:8180
        #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "8180", value_parser = kiln_node::web::parse_addr)]
        http: Option<std::net::SocketAddr>,
        /// Whether peers can dial this node: `auto` asks peers to dial it back (AutoNAT); `private` (behind a
        /// NAT or firewall) reserves a slot on the bootstrap peers' relays at once; `public` never does
        #[arg(long, value_enum, default_value_t = Reachability::Auto)]
        reachability: Reachability,
    },
    /// Ask the network for a build; everyone given with --email hears when it ends.
    Request {
        /// Who to tell when the build ends (repeatable)
        #[arg(long = "email", value_name = "ADDR", required = true)]
        emails: Vec<String>,
        /// A recipe file, or the id of a recipe already in the network
        #[arg(long, value_name = "PATH|HASH")]
        recipe: String,
        /// A recipe option (repeatable); `kiln recipe options RECIPE` lists them
        #[arg(short = 'o', long = "option", value_name = "NAME=VALUE")]
        options: Vec<String>,
        /// Build for this system instead of this machine's (repeatable), e.g. --target arch=aarch64
        #[arg(long = "target", value_name = "KEY=VALUE")]
        targets: Vec<String>,
        #[command(flatten)]
        bootstrap: Bootstrap,
        /// Follow the build until it ends
        #[arg(long)]
        wait: bool,
        /// Wait for the build and write the artifact here
        #[arg(long, value_name = "PATH")]
        fetch: Option<PathBuf>,
        /// Print one JSON document
        #[arg(long)]
        json: bool,
        /// Also accept an existing build of another version of the recipe in this range, e.g. ">=1.2, <2"
        #[arg(long, value_name = "RANGE")]
        accept_versions: Option<String>,
        /// Accept the artifact only when N workers with distinct keys built it independently and got the
        /// same hash (1 to 5); builds that disagree end as "not reproducible". `auto`: built twice, unless
        /// the first worker's last 10 or more results all agreed with independent builds (then alone, and
        /// spot-checked at random) [default: the recipe's `verify`, else 1]
        #[arg(long, value_name = "N|auto", value_parser = parse_verify)]
        verify: Option<u32>,
        /// Accept only artifacts built by this worker (its peer id; repeatable): attestations signed by any
        /// other key do not count
        #[arg(long = "trust-builder", value_name = "PEER_ID", value_parser = parse_peer_id)]
        trust_builders: Vec<libp2p::PeerId>,
        /// Submit to, follow and believe only this coordinator (its peer id; repeatable): any other peer is
        /// only asked who coordinates, and a build record found in the DHT counts only if --verify or
        /// --trust-builder vouches for it
        #[arg(long = "trust-coordinator", value_name = "PEER_ID", value_parser = parse_peer_id)]
        trust_coordinators: Vec<libp2p::PeerId>,
        /// Where this job goes among your own queued jobs (never ahead of another requester's turn)
        #[arg(long, value_enum, default_value_t = PriorityArg::Normal)]
        priority: PriorityArg,
        /// Holds your requester key (requester.key, created on first use), which signs your requests and
        /// alone can cancel them
        #[command(flatten)]
        data_dir: DataDir,
    },
    /// Take back your request for a build (signed with your requester key): a build nobody else wants is
    /// dropped from the queue, or stopped on its worker; one others want goes on without you, and your
    /// addresses get no mail.
    Cancel {
        /// The build key `kiln request` printed
        build_key: Hash,
        #[command(flatten)]
        bootstrap: Bootstrap,
        /// Send the cancel to and believe only this coordinator (its peer id; repeatable)
        #[arg(long = "trust-coordinator", value_name = "PEER_ID", value_parser = parse_peer_id)]
        trust_coordinators: Vec<libp2p::PeerId>,
        /// Print one JSON document
        #[arg(long)]
        json: bool,
        /// The data dir holding the requester key the build was requested with
        #[command(flatten)]
        data_dir: DataDir,
    },
    /// See Kiln work on this machine: a local network (bootstrap, coordinator, two workers) builds the
    /// example C program, mails you (to a file), and a fresh node fetches it by hash; nothing to configure.
    Demo {
        /// Keep the demo network (and its dashboard) running at the end, until Ctrl-C
        #[arg(long)]
        keep: bool,
    },
    /// Print a shell completion script, e.g. `kiln completions bash > ~/.local/share/bash-completion/completions/kiln`
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Show the coordinator, the workers, the queue and recent builds; with --node, what the node running on
    /// this data dir holds: its role, its open jobs, where its mail goes, blobs found corrupt.
    Status {
        #[command(flatten)]
        bootstrap: Bootstrap,
        /// Print JSON
        #[arg(long)]
        json: bool,
        /// Ask the node running on --data-dir about itself instead of the network's coordinator
        #[arg(long)]
        node: bool,
        /// Take only this peer's answer as the coordinator's (its peer id; repeatable)
        #[arg(long = "trust-coordinator", value_name = "PEER_ID", value_parser = parse_peer_id, conflicts_with = "node")]
        trust_coordinators: Vec<libp2p::PeerId>,
        #[command(flatten)]
        data_dir: DataDir,
    },
    /// Show what this machine gave as a worker (builds, build and CPU time, bytes served; all time and the
    /// last 30 days) and write a signed proof of it; with --verify, check someone's proof.
    Contributions {
        /// Print JSON
        #[arg(long)]
        json: bool,
        /// Also copy the proof (the signed statement and the attestations behind it) to this file
        #[arg(long, value_name = "FILE", conflicts_with = "verify")]
        proof: Option<PathBuf>,
        /// Check a proof file instead: its signature, and that its attestations add up to its totals
        #[arg(long, value_name = "FILE")]
        verify: Option<PathBuf>,
        #[command(flatten)]
        data_dir: DataDir,
    },
    /// Print this node's peer id.
    Id {
        #[command(flatten)]
        data_dir: DataDir,
    },
    /// Add a file or a directory to the network and print its hash.
    Publish {
        /// A file (stored as it is) or a directory (packed as a deterministic archive)
        path: PathBuf,
        #[command(flatten)]
        data_dir: DataDir,
    },
    /// Download a blob by its hash, verifying every byte.
    Fetch {
        /// The blob's hash: 64 hex characters, as `b3sum` prints
        hash: String,
        /// Where to write the blob [default: keep it in the store only]
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        bootstrap: Bootstrap,
        #[command(flatten)]
        data_dir: DataDir,
    },
    /// Work with recipe files.
    Recipe {
        #[command(subcommand)]
        command: RecipeCommand,
    },
    /// Print what this machine is, as a worker would advertise it.
    System {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Run this machine's worker as a systemd service: from boot, or from login with --user.
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
    },
    /// Create a recipe publisher key (if the file does not exist) and print its public half.
    Keygen {
        /// Where the secret key is kept (mode 0600)
        #[arg(long, default_value = "publisher.key")]
        key: PathBuf,
    },
}

#[derive(Subcommand)]
enum ServiceCommand {
    /// Write, enable and start a systemd unit running `kiln node --contribute` with the node flags given
    /// after `--`, e.g. `kiln service install -- --trust-publisher KEY --bootstrap MULTIADDR --cpus 2`
    Install {
        /// A unit of your own user's systemd (runs while you are logged in, keeps its data in your data dir)
        /// instead of the system's (runs from boot as its own user, data in /var/lib/kiln)
        #[arg(long)]
        user: bool,
        /// Only write the unit into this directory (not enabled), to read it or install it by hand
        #[arg(long, value_name = "DIR")]
        unit_dir: Option<PathBuf>,
        /// Flags for `kiln node --contribute`, after `--`
        #[arg(last = true, value_name = "NODE_FLAGS")]
        node_args: Vec<String>,
    },
    /// Stop and disable the worker's systemd unit, and remove it.
    Uninstall {
        /// The unit of your own user's systemd, as installed with --user
        #[arg(long)]
        user: bool,
        /// Remove the unit written into this directory with `install --unit-dir`
        #[arg(long, value_name = "DIR")]
        unit_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum RecipeCommand {
    /// List a recipe's options with their allowed values and defaults.
    Options {
        /// A recipe TOML file, or the id of a recipe already in the network
        #[arg(value_name = "PATH|HASH")]
        recipe: String,
        #[command(flatten)]
        bootstrap: Bootstrap,
    },
    /// Sign a recipe with a publisher key, writing its [signature] section.
    Sign {
        /// Path to a recipe TOML file (rewritten in place)
        recipe: PathBuf,
        /// The publisher's secret key, made by `kiln keygen`
        #[arg(long, default_value = "publisher.key")]
        key: PathBuf,
    },
    /// Print a recipe's id: the hash of its canonical bytes.
    Id {
        /// Path to a recipe TOML file
        recipe: PathBuf,
    },
    /// Show how often independent builders agreed on this recipe's builds (every version), as the
    /// coordinator recorded them: reproducible recipes agree every time
    Check {
        /// A recipe TOML file, or a recipe name
        #[arg(value_name = "PATH|NAME")]
        recipe: String,
        #[command(flatten)]
        bootstrap: Bootstrap,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let typed: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let file = config::path();
    let args = match &file {
        Some(file) => match config::apply::<Cli>(typed.clone(), file) {
            Ok(args) => args,
            Err(err) => {
                eprintln!("kiln: error: {err:#}");
                return ExitCode::FAILURE;
            }
        },
        None => typed.clone(),
    };
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(err) => {
            // A value the command line alone would not have given: it came
            // from the config file, so say where to fix it.
            let shown = matches!(
                err.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            );
            if let (Some(file), false, Ok(_)) = (&file, shown, Cli::try_parse_from(&typed)) {
                let _ = err.print();
                eprintln!(
                    "kiln: that setting comes from the config file {}: fix it there",
                    file.display()
                );
                return ExitCode::from(2);
            }
            err.exit()
        }
    };
    // Commands that print end quietly when their reader goes away; a node
    // (and the demo's nodes) must not die of a client's closed socket.
    let sigpipe_restored = !matches!(cli.command, Command::Node { .. } | Command::Demo { .. });
    if sigpipe_restored {
        restore_sigpipe();
    }
    // A node is a daemon: its log says what it does (jobs, mail). Other
    // commands print their results and log only problems.
    // The demo prints its own story; its nodes log only errors.
    let default = match cli.command {
        // libp2p's Kademlia warns when a lone node has no peer to refresh
        // from; Kiln says what matters about bootstrap peers itself.
        // AutoNAT's server warns each time a peer behind NAT has it dial
        // back in vain; Kiln says what it found itself.
        Command::Node { .. } => "warn,kiln_node=info,libp2p_kad=error,libp2p_autonat=error",
        Command::Demo { .. } => "error",
        _ => "warn",
    };
    QUIET.store(cli.quiet, std::sync::atomic::Ordering::Relaxed);
    init_logging(match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (_, 0) => default,
        (_, 1) => "warn,kiln=info,kiln_node=info,kiln_store=info",
        (_, 2) => "info,kiln=debug,kiln_node=debug,kiln_store=debug",
        _ => "debug",
    });
    // The runtime's threads do the network's writes: a peer that went away
    // must be an error there (EPIPE), not the end of the process.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(move || {
            if sigpipe_restored {
                block_sigpipe_in_this_thread();
            }
        })
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("kiln: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kiln: error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  because: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Rust ignores SIGPIPE, so `kiln status | head -1` would panic writing to
/// a closed pipe; like other command-line tools, kiln just ends instead.
/// Called after parsing, before any thread is started.
#[allow(unsafe_code)]
fn restore_sigpipe() {
    // SAFETY: called first thing in main, before any thread exists;
    // resetting a signal to its default action has no other effect.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// With SIGPIPE back to its default (above), a write to a socket whose peer
/// has gone would end the process: a TLS connection's goodbye to a peer
/// that was killed did, in `kiln fetch`. Each runtime thread blocks it, so
/// such a write fails with EPIPE and the connection closes; only the main
/// thread, which prints, ends quietly on a closed pipe.
#[allow(unsafe_code)]
fn block_sigpipe_in_this_thread() {
    // SAFETY: the set is initialised by sigemptyset before use, and
    // pthread_sigmask changes only the calling thread's signal mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let shown = filter.to_string();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    tracing::debug!(filter = shown, "log filter (RUST_LOG, -q or -v)");
}

/// One arm per subcommand, each turning its flags into one call; long
/// because the list of subcommands is.
async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Node {
            listen,
            bootstrap,
            data_dir,
            contribute,
            max_store_size,
            coordinator,
            no_coordinator,
            coordination_set,
            trust_coordinators,
            trusted_streak,
            max_requester_jobs,
            max_requester_rate,
            max_requester_inputs,
            mail,
            http,
            reachability,
        } => {
            let http = match http {
                Some(addr) => Some(kiln_node::web::bind(addr)?),
                None => None,
            };
            let trusted = (!trust_coordinators.is_empty()).then(|| trust_coordinators.into_iter().collect());
            let mut worker = contribute.worker_options()?;
            if let Some(worker) = &mut worker {
                worker.policy.coordinators.clone_from(&trusted);
            }
            let options = NodeOptions {
                data_dir: data_dir.resolve()?,
                listen,
                bootstrap: bootstrap.bootstrap,
                relay_server: None,
                reachability: reachability.into(),
                worker,
                max_store_bytes: max_store_size,
                coordinator: kiln_node::coordinator::CoordinatorOptions {
                    eligible: !no_coordinator,
                    pinned: coordinator,
                    trusted,
                    set_size: Some(usize::from(coordination_set)),
                    trusted_streak: Some(trusted_streak),
                    requester_jobs_max: Some(max_requester_jobs),
                    requester_rate_max: Some(max_requester_rate),
                    requester_input_bytes_max: Some(max_requester_inputs),
                    ..Default::default()
                },
                mail: mail.options()?,
                http,
            };
            if options.bootstrap.is_empty() {
                tracing::warn!("no --bootstrap given (nor KILN_BOOTSTRAP): this node is alone until other nodes list it as their bootstrap peer");
            }
            kiln_node::run_node(options, |addr| println!("{addr}"), kiln_node::shutdown_signal()).await?;
            Ok(())
        }
        Command::Request {
            emails,
            recipe,
            options,
            targets,
            bootstrap,
            wait,
            fetch,
            json,
            accept_versions,
            verify,
            trust_builders,
            trust_coordinators,
            priority,
            data_dir,
        } => request::run(request::RequestArgs {
            priority: priority.into(),
            requester_key: data_dir.resolve()?.join(request::REQUESTER_KEY_FILE),
            accept_versions,
            verify,
            trust_builders,
            trust_coordinators,
            emails,
            recipe,
            options,
            targets,
            bootstrap: bootstrap.bootstrap,
            wait,
            fetch,
            json,
        })
        .await
        .map(|_| ()),
        Command::Cancel {
            build_key,
            bootstrap,
            trust_coordinators,
            json,
            data_dir,
        } => {
            let key = data_dir.resolve()?.join(request::REQUESTER_KEY_FILE);
            request::cancel(build_key, bootstrap.bootstrap, &trust_coordinators, &key, json).await
        }
        Command::Status {
            bootstrap,
            json,
            node,
            trust_coordinators,
            data_dir,
        } => {
            if node {
                request::node_status(&data_dir.resolve()?, json).await
            } else {
                request::status(bootstrap.bootstrap, &trust_coordinators, json).await
            }
        }
        Command::Contributions {
            json,
            proof,
            verify,
            data_dir,
        } => match verify {
            Some(file) => contributions::verify(&file, json),
            None => contributions::show(&data_dir.resolve()?, json, proof).await,
        },
        Command::Demo { keep } => demo::run(keep).await,
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "kiln", &mut std::io::stdout());
            Ok(())
        }
        Command::Id { data_dir } => {
            let key = kiln_node::identity::load_or_create(&data_dir.resolve()?)?;
            println!("{}", kiln_node::identity::keypair(&key).public().to_peer_id());
            Ok(())
        }
        Command::Publish { path, data_dir } => publish(&path, &data_dir.resolve()?).await,
        Command::Fetch {
            hash,
            output,
            bootstrap,
            data_dir,
        } => {
            let hash: Hash = hash.parse()?;
            fetch(hash, output, bootstrap.bootstrap, &data_dir.resolve()?).await
        }
        Command::Recipe {
            command: RecipeCommand::Options { recipe, bootstrap },
        } => recipe_options(&recipe, bootstrap.bootstrap).await,
        Command::Recipe {
            command: RecipeCommand::Sign { recipe, key },
        } => recipe_sign(&recipe, &key),
        Command::Recipe {
            command:
                RecipeCommand::Check {
                    recipe,
                    bootstrap,
                    json,
                },
        } => {
            let name = if Path::new(&recipe).exists() {
                load_recipe(Path::new(&recipe))?.0.name
            } else {
                recipe
            };
            request::recipe_checks(&name, bootstrap.bootstrap, json).await
        }
        Command::Recipe {
            command: RecipeCommand::Id { recipe },
        } => {
            println!("{}", load_recipe(&recipe)?.0.id());
            Ok(())
        }
        Command::System { json } => system(json),
        Command::Service { command } => {
            let done = match command {
                ServiceCommand::Install {
                    user,
                    unit_dir,
                    node_args,
                } => {
                    let node_args: Vec<String> = node_args.into_iter().filter(|a| a != "--contribute").collect();
                    check_node_flags(&node_args)?;
                    service::install(&service::Install {
                        user,
                        unit_dir,
                        node_args,
                    })?
                }
                ServiceCommand::Uninstall { user, unit_dir } => service::uninstall(user, unit_dir.as_deref())?,
            };
            say!("{done}");
            Ok(())
        }
        Command::Keygen { key } => {
            let secret = kiln_node::identity::load_or_create_at(&key)?;
            println!("{}", secret.public());
            say!(
                "publisher key in {}; workers trust it with --trust-publisher {}",
                key.display(),
                secret.public()
            );
            Ok(())
        }
    }
}

/// `--verify`: `auto`, or 1 to 5 builders.
/// `--priority`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum PriorityArg {
    Low,
    Normal,
    High,
}

impl From<PriorityArg> for kiln_protocol::coord::Priority {
    fn from(p: PriorityArg) -> Self {
        match p {
            PriorityArg::Low => kiln_protocol::coord::Priority::Low,
            PriorityArg::Normal => kiln_protocol::coord::Priority::Normal,
            PriorityArg::High => kiln_protocol::coord::Priority::High,
        }
    }
}

fn parse_verify(text: &str) -> Result<u32, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("auto") {
        return Ok(kiln_protocol::build::VERIFY_AUTO);
    }
    match text.parse::<u32>() {
        Ok(n) if (1..=kiln_protocol::build::VERIFY_MAX).contains(&n) => Ok(n),
        _ => Err(format!(
            "{text:?} is neither a count of builders from 1 to {} nor `auto`",
            kiln_protocol::build::VERIFY_MAX
        )),
    }
}

fn parse_peer_id(text: &str) -> Result<libp2p::PeerId, String> {
    text.trim().parse().map_err(|_| {
        format!("{text:?} is not a peer id: `kiln id --data-dir DIR` prints a node's (it starts with 12D3KooW)")
    })
}

/// Checks node flags for a service now, as `kiln node --contribute` would
/// read them, rather than at the next boot.
fn check_node_flags(node_args: &[String]) -> anyhow::Result<()> {
    let mut full = vec!["kiln".to_string(), "node".into(), "--contribute".into()];
    full.extend(node_args.iter().cloned());
    match Cli::try_parse_from(&full) {
        Ok(Cli {
            command: Command::Node { contribute, .. },
            ..
        }) => contribute.worker_options().map(|_| ()),
        Ok(_) => bail!("the flags after -- are not flags of `kiln node`"),
        Err(err) => {
            let text = err.render().to_string();
            let first = text.lines().next().unwrap_or("").trim_start_matches("error: ");
            bail!("the flags after -- are not valid for `kiln node --contribute`: {first}")
        }
    }
}

fn parse_duration(text: &str) -> Result<u64, String> {
    kiln_protocol::recipe::parse_duration_text(text)
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{text:?} is not a duration: use for example 90s, 15m or 2h"))
}

fn parse_size(text: &str) -> Result<u64, String> {
    kiln_protocol::system::parse_bytes(text)
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{text:?} is not a size: use for example 512MiB, 20GiB or 1TiB"))
}

async fn publish(path: &Path, data_dir: &Path) -> anyhow::Result<()> {
    let path = std::fs::canonicalize(path)
        .with_context(|| format!("cannot publish {}: no such file or directory", path.display()))?;
    match control::ask(data_dir, &ControlRequest::Publish { path: path.clone() }).await? {
        Some(ControlReply::Published { hash, .. }) => println!("{hash}"),
        Some(ControlReply::Error { message }) => bail!("the node could not publish {}: {message}", path.display()),
        Some(_) => bail!(
            "the node on {} answered something else than a publish; is it the same kiln version as this command?",
            data_dir.display()
        ),
        None => {
            let store = kiln_store::Store::open(data_dir)?;
            let (hash, _) = kiln_node::publish(&store, &path).await.map_err(anyhow::Error::msg)?;
            println!("{hash}");
            say!("stored in {}; no node runs on this data dir, so nobody can fetch it yet: start `kiln node --data-dir {}` to serve it", data_dir.display(), data_dir.display());
        }
    }
    Ok(())
}

/// Checks `-o PATH` before anything is downloaded.
fn check_output(output: &Path) -> anyhow::Result<()> {
    if output.is_dir() {
        bail!(
            "-o {} is a directory: give the file to write, e.g. -o {}",
            output.display(),
            output.join("NAME").display()
        );
    }
    if let Some(parent) = output.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            bail!(
                "-o {}: the directory {} does not exist; create it first",
                output.display(),
                parent.display()
            );
        }
    }
    Ok(())
}

fn fetched(hash: &Hash, bytes: u64, output: Option<&Path>) {
    let place = match output {
        Some(path) => format!("to {}", path.display()),
        None => "into the store".into(),
    };
    say!("fetched {bytes} bytes {place}; every range checked against {hash}");
}

async fn fetch(hash: Hash, output: Option<PathBuf>, bootstrap: Vec<Multiaddr>, data_dir: &Path) -> anyhow::Result<()> {
    let output = output.map(|o| std::path::absolute(&o).unwrap_or(o));
    if let Some(output) = &output {
        check_output(output)?;
    }
    match control::ask(
        data_dir,
        &ControlRequest::Fetch {
            hash,
            output: output.clone(),
        },
    )
    .await?
    {
        Some(ControlReply::Fetched { bytes, .. }) => {
            fetched(&hash, bytes, output.as_deref());
            return Ok(());
        }
        Some(ControlReply::Error { message }) => bail!("{message}"),
        Some(_) => bail!(
            "the node on {} answered something else than a fetch; is it the same kiln version as this command?",
            data_dir.display()
        ),
        None => {}
    }
    if bootstrap.is_empty() {
        bail!("no bootstrap peer to join the network through: pass --bootstrap MULTIADDR or set KILN_BOOTSTRAP");
    }
    let node = EphemeralNode::start(data_dir, bootstrap).await?;
    let progress = Arc::new(progress::Bar::new(&hash));
    let result = node.fetch(hash, output.as_deref(), progress.clone()).await;
    progress.finish();
    node.stop().await;
    fetched(&hash, result?, output.as_deref());
    Ok(())
}

/// Reads a recipe file; a `source.path` (relative to the recipe) is packed
/// and hashed, exactly as `kiln request` would publish it.
fn load_recipe(path: &Path) -> anyhow::Result<(Recipe, Option<kiln_protocol::PublisherSignature>)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read recipe {}: check the path", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    Recipe::from_toml_with_paths(&text, &mut |source| {
        let mut hasher = kiln_protocol::hash::Hasher::new();
        kiln_node::archive::pack_dir(&base.join(source), &mut hasher).map_err(|e| e.to_string())?;
        Ok(Hash::from(hasher.finalize()))
    })
    .with_context(|| format!("recipe {} is not valid", path.display()))
}

fn recipe_sign(path: &Path, key: &Path) -> anyhow::Result<()> {
    let secret = kiln_node::identity::load_or_create_at(key)?;
    let (recipe, signature) = sign_recipe_file(path, &secret)?;
    println!(
        "signed recipe {} (id {}) as {}",
        recipe.name,
        recipe.id(),
        signature.publisher
    );
    Ok(())
}

/// Signs the recipe at `path` in place with a publisher key.
fn sign_recipe_file(
    path: &Path,
    secret: &kiln_protocol::SecretKey,
) -> anyhow::Result<(Recipe, kiln_protocol::PublisherSignature)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read recipe {}: check the path", path.display()))?;
    let unsigned = without_signature(&text);
    let tmp = path.with_extension("toml.unsigned-check");
    std::fs::write(&tmp, &unsigned).with_context(|| format!("cannot write next to {}", path.display()))?;
    let loaded = load_recipe(&tmp);
    let _ = std::fs::remove_file(&tmp);
    let (recipe, _) = loaded?;
    let signature = kiln_protocol::PublisherSignature::sign(secret, &recipe.id());
    let signed = format!(
        "{}\n[signature]\npublisher = \"{}\"\nsignature = \"{}\"\n",
        unsigned.trim_end(),
        signature.publisher,
        signature.signature
    );
    std::fs::write(path, signed).with_context(|| format!("cannot rewrite {}", path.display()))?;
    Ok((recipe, signature))
}

/// The recipe text without its `[signature]` table (up to the next table).
fn without_signature(text: &str) -> String {
    let mut out = String::new();
    let mut in_signature = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            in_signature = trimmed == "[signature]";
        }
        if !in_signature {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn system(json: bool) -> anyhow::Result<()> {
    let info = kiln_node::worker::system::probe(Default::default());
    if json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    println!("os             {}", info.os);
    println!("arch           {}", info.arch);
    println!("endian         {}", info.endian);
    println!("pointer_width  {}", info.pointer_width);
    println!("libc           {} {}", info.libc, info.libc_version);
    println!("cpus           {}", info.cpus);
    println!(
        "memory         {}",
        kiln_protocol::system::format_bytes(info.memory_bytes)
    );
    println!(
        "features       {}",
        info.features.iter().cloned().collect::<Vec<_>>().join(" ")
    );
    for (tool, version) in &info.tools {
        println!("tool           {tool} {version}");
    }
    Ok(())
}

async fn recipe_options(recipe: &str, bootstrap: Vec<Multiaddr>) -> anyhow::Result<()> {
    let recipe = if Path::new(recipe).exists() || recipe.parse::<Hash>().is_err() {
        load_recipe(Path::new(recipe))?.0
    } else {
        request::fetch_recipe(recipe.parse()?, bootstrap).await?
    };
    println!("{} {}", recipe.name, recipe.version);
    if recipe.options.is_empty() {
        println!("  (no options)");
    }
    for (name, spec) in &recipe.options {
        println!("  -o {name}=VALUE   {}", spec.help);
        println!("      allowed: {}   default: {}", spec.values.join(", "), spec.default);
    }
    Ok(())
}
