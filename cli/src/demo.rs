//! `kiln demo`: a whole build on this machine in one command, with nothing
//! configured. It starts a bootstrap peer, a coordinator and two workers
//! (each a real node with its own data dir and libp2p swarm on 127.0.0.1)
//! in a temporary directory, signs the example C recipe with a fresh
//! publisher key the workers trust, requests it with an email address as
//! `kiln request --wait` does, prints the mail the coordinator wrote to its
//! outbox, fetches the artifact by hash on a fresh node as `kiln fetch`
//! does, runs the built program, and stops every node, also on Ctrl-C.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use kiln_node::coordinator::CoordinatorOptions;
use kiln_node::worker::{Trust, WorkerPolicy};
use kiln_node::{EphemeralNode, NodeError, NodeOptions, WorkerOptions};
use kiln_protocol::coord::{CoordReplyV1, CoordRequest};
use kiln_protocol::Hash;
use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

const RECIPE: &str = include_str!("../../recipes/hello-c/recipe.toml");
const HELLO_C: &str = include_str!("../../recipes/hello-c/src/hello.c");
const EMAIL: &str = "you@example.org";
/// How long a node may take to start listening.
const NODE_START_MS_MAX: u64 = 30_000;
/// How long the workers may take to be known to the coordinator.
const WORKERS_MS_MAX: u64 = 60_000;
/// How long the mail may take to appear in the outbox after the build.
const MAIL_MS_MAX: u64 = 30_000;
/// How long the nodes may take to stop.
const STOP_MS_MAX: u64 = 15_000;
const WORKERS: usize = 2;

fn say(text: &str) {
    println!("==> {text}");
}

/// The demo's nodes, stopped together.
struct Network {
    stop: watch::Sender<bool>,
    nodes: Vec<(String, JoinHandle<Result<(), NodeError>>)>,
}

impl Network {
    fn new() -> Network {
        Network {
            stop: watch::channel(false).0,
            nodes: Vec::new(),
        }
    }

    /// Starts a node and returns its listen address once it listens.
    async fn start(&mut self, name: &str, options: NodeOptions) -> anyhow::Result<Multiaddr> {
        let (ready_tx, ready) = oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        let mut stop = self.stop.subscribe();
        let task = tokio::spawn(kiln_node::run_node(
            options,
            move |addr| {
                if let Some(tx) = ready_tx.take() {
                    let _ = tx.send(addr.clone());
                }
            },
            async move {
                let _ = stop.wait_for(|stop| *stop).await;
            },
        ));
        let started = tokio::time::timeout(Duration::from_millis(NODE_START_MS_MAX), ready).await;
        match started {
            Ok(Ok(addr)) => {
                self.nodes.push((name.to_string(), task));
                Ok(addr)
            }
            _ if task.is_finished() => match task.await {
                Ok(Err(e)) => Err(anyhow::Error::new(e).context(format!("the {name} did not start"))),
                _ => bail!("the {name} stopped as it started"),
            },
            _ => {
                task.abort();
                bail!("the {name} did not start listening within {NODE_START_MS_MAX} ms")
            }
        }
    }

    /// Stops every node and waits for each to finish.
    async fn stop(self) {
        let _ = self.stop.send(true);
        for (name, task) in self.nodes {
            match tokio::time::timeout(Duration::from_millis(STOP_MS_MAX), task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => eprintln!("kiln: the {name} stopped with an error: {e}"),
                Ok(Err(e)) => eprintln!("kiln: the {name} crashed: {e}"),
                Err(_) => eprintln!("kiln: the {name} did not stop within {STOP_MS_MAX} ms"),
            }
        }
    }
}

fn node_options(data_dir: PathBuf, bootstrap: Vec<Multiaddr>) -> NodeOptions {
    NodeOptions {
        data_dir,
        listen: vec![Multiaddr::empty()
            .with(Protocol::Ip4(std::net::Ipv4Addr::LOCALHOST))
            .with(Protocol::Tcp(0))],
        bootstrap,
        relay_server: None,
        // Every demo node runs on this machine: each can dial the others.
        reachability: kiln_node::net::ReachabilityMode::Public,
        worker: None,
        max_store_bytes: None,
        coordinator: CoordinatorOptions::default(),
        mail: Default::default(),
        http: None,
    }
}

/// Runs the demo; Ctrl-C stops it early, cleanly. With `keep`, the network
/// (and its dashboard) stays up after the demo until Ctrl-C.
pub async fn run(keep: bool) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("kiln-demo-")
        .tempdir()
        .context("cannot create a temporary directory for the demo")?;
    let mut network = Network::new();
    let stop = kiln_node::shutdown_signal();
    tokio::pin!(stop);
    let result = tokio::select! {
        result = demo(dir.path(), &mut network) => result,
        _ = &mut stop => Err(anyhow::anyhow!("interrupted; the demo network is stopped and its directory removed")),
    };
    if keep && result.is_ok() {
        say("the demo network keeps running (--keep): the dashboard is at the address above; Ctrl-C stops it");
        stop.await;
    }
    say("stopping the demo network");
    network.stop().await;
    say(&format!("removed {}", dir.path().display()));
    result
}

async fn demo(dir: &Path, network: &mut Network) -> anyhow::Result<()> {
    say(&format!("a local Kiln network in {}", dir.display()));
    let probe = kiln_node::worker::sandbox::Sandbox::new(&dir.join("probe"), false)?;
    if let Some(problem) = probe.isolation_problem() {
        bail!("builds cannot be isolated on this machine ({problem}); install bubblewrap (apt-get install bubblewrap) and run `kiln demo` again");
    }
    // The recipe, signed by a publisher key made for the demo.
    let recipe_dir = dir.join("hello-c");
    std::fs::create_dir_all(recipe_dir.join("src"))?;
    std::fs::write(recipe_dir.join("src/hello.c"), HELLO_C)?;
    let recipe = recipe_dir.join("recipe.toml");
    std::fs::write(&recipe, RECIPE)?;
    let publisher = kiln_node::identity::load_or_create_at(&dir.join("publisher.key"))?;
    crate::sign_recipe_file(&recipe, &publisher)?;

    let (boot, coordinator_dir) = start_farm(dir, network, publisher.public()).await?;
    wait_for_workers(dir, &boot).await?;

    say(&format!(
        "kiln request --email {EMAIL} --recipe hello-c/recipe.toml -o greeting=loud --wait"
    ));
    let artifact = crate::request::run(crate::request::RequestArgs {
        emails: vec![EMAIL.to_string()],
        recipe: recipe.display().to_string(),
        options: vec!["greeting=loud".to_string()],
        targets: vec![],
        bootstrap: vec![boot.clone()],
        wait: true,
        fetch: None,
        json: false,
        accept_versions: None,
        verify: None,
        trust_builders: Vec::new(),
        trust_coordinators: Vec::new(),
        priority: Default::default(),
        requester_key: dir.join("requester.key"),
    })
    .await?
    .context("the request ended without an artifact")?;

    let mail = wait_for_mail(&coordinator_dir.join("outbox")).await?;
    say(&format!("the mail to {EMAIL} ({})", mail.display()));
    println!("{}", std::fs::read_to_string(&mail)?.replace("\r\n", "\n").trim_end());
    fetch_and_run(dir, &boot, artifact).await?;
    say("done: requested, built in a sandbox, mailed, fetched by hash and verified, run");
    Ok(())
}

/// Starts the bootstrap peer, the coordinator (with the dashboard) and the
/// workers, which trust `publisher`; the bootstrap address and the
/// coordinator's data dir.
async fn start_farm(
    dir: &Path,
    network: &mut Network,
    publisher: kiln_protocol::PublicKey,
) -> anyhow::Result<(Multiaddr, PathBuf)> {
    let boot = network
        .start(
            "bootstrap peer",
            NodeOptions {
                relay_server: Some(Default::default()),
                ..node_options(dir.join("bootstrap"), vec![])
            },
        )
        .await?;
    say(&format!("bootstrap peer  {boot}"));
    let coordinator_dir = dir.join("coordinator");
    let http = kiln_node::web::bind((std::net::Ipv4Addr::LOCALHOST, 0).into())?;
    let dashboard = http.local_addr()?;
    let coordinator = network
        .start(
            "coordinator",
            NodeOptions {
                coordinator: CoordinatorOptions {
                    eligible: true,
                    pinned: true,
                    trusted: None,
                    ..Default::default()
                },
                http: Some(http),
                ..node_options(coordinator_dir.clone(), vec![boot.clone()])
            },
        )
        .await?;
    say(&format!("coordinator     {coordinator}"));
    say(&format!("dashboard       http://{dashboard}/ (while the demo runs)"));
    for n in 1..=WORKERS {
        let trusted = [publisher].into_iter().collect();
        let worker = network
            .start(
                &format!("worker {n}"),
                NodeOptions {
                    worker: Some(WorkerOptions {
                        policy: WorkerPolicy {
                            max_jobs: 1,
                            idle_only: false,
                            trust: Trust::Publishers(trusted),
                            allow_network: false,
                            coordinators: None,
                            pause_max: kiln_node::worker::PAUSE_MAX_DEFAULT,
                        },
                        labels: Default::default(),
                        limits: Default::default(),
                    }),
                    ..node_options(dir.join(format!("worker{n}")), vec![boot.clone()])
                },
            )
            .await?;
        say(&format!("worker {n}        {worker}"));
    }
    Ok((boot, coordinator_dir))
}

/// Fetches the artifact by hash on a fresh node, unpacks it and runs the
/// program the network built.
async fn fetch_and_run(dir: &Path, boot: &Multiaddr, artifact: Hash) -> anyhow::Result<()> {
    say(&format!("kiln fetch {artifact} -o hello.tar   (on a fresh node)"));
    let tarball = dir.join("hello.tar");
    fetch(dir, boot, artifact, &tarball).await?;
    let unpacked = dir.join("hello");
    tar::Archive::new(std::fs::File::open(&tarball)?)
        .unpack(&unpacked)
        .context("cannot unpack the artifact")?;
    say("./hello   (the program the network built)");
    let output = std::process::Command::new(unpacked.join("hello"))
        .output()
        .context("cannot run the built program")?;
    print!("{}", String::from_utf8_lossy(&output.stdout));
    if !output.status.success() {
        bail!("the built program failed: {}", output.status);
    }
    Ok(())
}

/// Waits until the coordinator knows every worker.
async fn wait_for_workers(dir: &Path, boot: &Multiaddr) -> anyhow::Result<()> {
    let node = EphemeralNode::start(&dir.join("status"), vec![boot.clone()]).await?;
    let start = kiln_node::coord_client::bootstrap_peers(std::slice::from_ref(boot));
    let deadline = tokio::time::Instant::now() + Duration::from_millis(WORKERS_MS_MAX);
    let known = loop {
        let reply = kiln_node::coord_client::ask_coordinator(&node.net, &start, &CoordRequest::StatusV1).await;
        if let Ok((_, CoordReplyV1::Status(report), _)) = reply {
            if report.workers.len() >= WORKERS {
                break true;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    node.stop().await;
    if !known {
        bail!("the coordinator did not hear from both workers within {WORKERS_MS_MAX} ms");
    }
    say("the coordinator knows both workers");
    Ok(())
}

/// Waits for the first message in the coordinator's outbox.
async fn wait_for_mail(outbox: &Path) -> anyhow::Result<PathBuf> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(MAIL_MS_MAX);
    loop {
        let found = std::fs::read_dir(outbox)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "eml"));
        if let Some(path) = found {
            return Ok(path);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("no mail appeared in {} within {MAIL_MS_MAX} ms", outbox.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Fetches `artifact` by hash on a node that never saw it.
async fn fetch(dir: &Path, boot: &Multiaddr, artifact: Hash, to: &Path) -> anyhow::Result<()> {
    let node = EphemeralNode::start(&dir.join("fetcher"), vec![boot.clone()]).await?;
    let fetched = node
        .fetch(artifact, Some(to), Arc::new(kiln_node::blobs::NoProgress))
        .await;
    node.stop().await;
    let bytes = fetched.with_context(|| format!("cannot fetch artifact {artifact}"))?;
    println!("fetched {bytes} bytes; every range checked against {artifact}");
    Ok(())
}
