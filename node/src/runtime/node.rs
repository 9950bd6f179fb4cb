//! [`run_node`], in its phases: open what the node keeps on disk, start the
//! network, start the roles, wait for the first listen address, route
//! network events to the roles, and stop.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use kiln_protocol::SecretKey;
use kiln_store::Store;
use libp2p::Multiaddr;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::control::{self, NodeControl};
use super::start::{self, Start};
use super::{NodeError, NodeOptions, WorkerOptions, LISTEN_MS_MAX, ROLES_STOP_MS_MAX};
use crate::coordinator::{self, CoordHandle, CoordinatorOptions};
use crate::mailer::{self, MailOptions};
use crate::net::{identity, NetClient, NetEvent};
use crate::shutdown::{self, Shutdown, ShutdownSender};
use crate::web::{self, Dashboard};
use crate::worker::sandbox::Sandbox;
use crate::worker::{system, Worker};

/// Runs a node until `shutdown` resolves. `ready` gets each full listen
/// address once the node listens (every protocol is registered by then).
pub async fn run_node(
    mut options: NodeOptions,
    mut ready: impl FnMut(&Multiaddr),
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), NodeError> {
    let data_dir = options.data_dir.clone();
    let opened = open(&mut options)?;
    let how = Start {
        listen: options.listen,
        bootstrap: options.bootstrap,
        relay_server: options.relay_server,
        reachability: options.reachability,
        long_lived: true,
    };
    let (started, mut events) = start::start(opened.key(), &opened.store, how)?;
    let (stop_roles, roles_shutdown) = shutdown::channel();
    let roles = Roles::start(
        &started.net,
        opened,
        options.worker,
        options.coordinator,
        &options.mail,
        roles_shutdown,
    )
    .await;
    let roles = match roles {
        Ok(roles) => roles,
        Err(e) => {
            started.stop().await;
            return Err(e);
        }
    };
    let result = match wait_listening(&mut events).await {
        Some(first) => {
            let mut addresses = vec![first];
            ready(&addresses[0]);
            roles.share_addresses(&addresses);
            route_events(&mut events, &roles, &mut addresses, &mut ready, shutdown).await;
            Ok(())
        }
        None => Err(NodeError::NoListen),
    };
    info!("shutting down");
    roles.stop(stop_roles).await;
    started.stop().await;
    let _ = std::fs::remove_file(control::socket_path(&data_dir));
    result
}

/// What the node keeps on disk, opened before the network starts, so a
/// bad data dir, a taken port or a missing sandbox fails at once.
struct Opened {
    key_bytes: [u8; 32],
    store: Store,
    control: tokio::net::UnixListener,
    http: Option<tokio::net::TcpListener>,
    sandbox: Option<Sandbox>,
}

impl Opened {
    /// The node key (one copy per role that signs).
    fn key(&self) -> SecretKey {
        SecretKey::from_bytes(&self.key_bytes)
    }
}

fn open(options: &mut NodeOptions) -> Result<Opened, NodeError> {
    let key = identity::load_or_create(&options.data_dir)?;
    let me = identity::keypair(&key).public().to_peer_id();
    if let (true, Some(trusted)) = (options.coordinator.pinned, &options.coordinator.trusted) {
        if !trusted.contains(&me) {
            return Err(NodeError::PinnedUntrusted(me));
        }
    }
    let store_options = kiln_store::StoreOptions {
        size_cap_bytes: options.max_store_bytes,
    };
    let store = Store::open_with(&options.data_dir, store_options)?;
    let control = control::bind(&options.data_dir).map_err(NodeError::Control)?;
    let http = match options.http.take() {
        Some(listener) => Some(tokio::net::TcpListener::from_std(listener).map_err(NodeError::Dashboard)?),
        None => None,
    };
    let sandbox = match &options.worker {
        Some(worker) => Some(Sandbox::with_limits(
            &options.data_dir,
            worker.policy.allow_network,
            worker.limits,
        )?),
        None => None,
    };
    Ok(Opened {
        key_bytes: key.to_bytes(),
        store,
        control,
        http,
        sandbox,
    })
}

/// The roles this node plays, and how each is stopped.
struct Roles {
    coordination: CoordHandle,
    dashboard: Option<Arc<Dashboard>>,
    control: Arc<NodeControl>,
    /// Tasks that keep durable state, in the order they stop: the
    /// coordinator finishes its current step when told to stop; the mailer
    /// then writes what the coordinator last sent it and returns.
    draining: Vec<JoinHandle<()>>,
    /// Tasks with nothing to finish (servers, adverts): cut off.
    others: Vec<JoinHandle<()>>,
}

impl Roles {
    /// Starts every role; each registers its protocol before this returns.
    async fn start(
        net: &NetClient,
        mut opened: Opened,
        worker: Option<WorkerOptions>,
        coordinator: CoordinatorOptions,
        mail_options: &MailOptions,
        shutdown: Shutdown,
    ) -> Result<Roles, NodeError> {
        let mut others = Vec::new();
        let mut draining = Vec::new();
        let mut advertising = None;
        if let (Some(worker), Some(sandbox)) = (worker, opened.sandbox.take()) {
            let labels = worker.labels;
            let mut probed = tokio::task::spawn_blocking(move || system::probe(labels))
                .await
                .map_err(|e| NodeError::Control(std::io::Error::other(e.to_string())))?;
            // A build sees only the CPUs --cpus gives it: advertise those.
            if let Some(cpus) = sandbox.build_cpus() {
                probed.cpus = probed.cpus.min(cpus);
            }
            info!(system = %probed.summary(), max_jobs = worker.policy.max_jobs, "contributing this machine");
            info!(limits = %sandbox.limits_summary(), "build limits");
            let store = opened.store.clone();
            let worker = Arc::new(Worker::new(
                net.clone(),
                store,
                sandbox,
                opened.key(),
                probed,
                worker.policy,
            ));
            others.push(worker.clone().spawn_server());
            advertising = Some(worker);
        }
        let mut mailer_task = None;
        let mail = if coordinator.eligible || coordinator.pinned {
            let acting = Arc::new(AtomicBool::new(false));
            let (handle, task) = mailer::spawn(
                net.clone(),
                opened.store.clone(),
                opened.key(),
                mail_options,
                acting.clone(),
            )?;
            mailer_task = Some(task);
            Some((handle, acting))
        } else {
            None
        };
        let coordinator = CoordinatorOptions {
            delivers_mail: mail_options.smtp_url.is_some(),
            ..coordinator
        };
        let (coordination, server, task) = coordinator::spawn(
            net.clone(),
            opened.store.clone(),
            opened.key(),
            coordinator,
            mail,
            shutdown,
        );
        others.push(server);
        if let Some(worker) = advertising {
            others.push(tokio::spawn(worker.advertise(coordination.clone())));
        }
        // In this order: the coordinator's last settlements reach the
        // mailer, which stops once the coordinator (its only feeder) has.
        draining.push(task);
        draining.extend(mailer_task);
        let dashboard = opened.http.take().map(|listener| {
            let dashboard = Arc::new(Dashboard::new(
                net.clone(),
                opened.store.clone(),
                opened.key(),
                coordination.clone(),
            ));
            others.push(tokio::spawn(web::serve(listener, dashboard.clone())));
            dashboard
        });
        let control = Arc::new(NodeControl::new(
            net.clone(),
            opened.store.clone(),
            opened.key(),
            coordination.clone(),
        ));
        others.push(tokio::spawn(crate::contributions::keep_served(opened.store.clone())));
        others.push(tokio::spawn(control::serve(opened.control, control.clone())));
        Ok(Roles {
            coordination,
            dashboard,
            control,
            draining,
            others,
        })
    }

    /// The listen addresses changed: the roles that show them learn it.
    fn share_addresses(&self, addresses: &[Multiaddr]) {
        self.coordination.addresses(addresses.to_vec());
        self.control.addresses(addresses);
        if let Some(dashboard) = &self.dashboard {
            dashboard.addresses(addresses);
        }
    }

    /// Cuts off the servers, then tells the stateful roles to stop and
    /// waits (bounded) for each to finish its current step.
    async fn stop(self, stop: ShutdownSender) {
        for task in &self.others {
            task.abort();
        }
        stop.stop();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ROLES_STOP_MS_MAX);
        for mut task in self.draining {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                warn!(
                    "a role did not finish within {} s of being told to stop; cut off",
                    ROLES_STOP_MS_MAX / 1000
                );
                task.abort();
            }
        }
        let store = self.control.store.clone();
        let _ = tokio::task::spawn_blocking(move || crate::contributions::save_served(&store, crate::clock::now_ms()))
            .await;
    }
}

/// The first full listen address. Other events (a bootstrap peer refusing
/// a dial) may come first.
async fn wait_listening(events: &mut mpsc::Receiver<NetEvent>) -> Option<Multiaddr> {
    let first = async {
        while let Some(event) = events.recv().await {
            if let NetEvent::Listening(addr) = event {
                return Some(addr);
            }
        }
        None
    };
    tokio::time::timeout(Duration::from_millis(LISTEN_MS_MAX), first)
        .await
        .ok()
        .flatten()
}

/// Hands network events to the roles until `shutdown` resolves or the
/// network stops.
async fn route_events(
    events: &mut mpsc::Receiver<NetEvent>,
    roles: &Roles,
    addresses: &mut Vec<Multiaddr>,
    ready: &mut impl FnMut(&Multiaddr),
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(NetEvent::Listening(addr)) => {
                    ready(&addr);
                    addresses.push(addr);
                    roles.share_addresses(addresses);
                }
                Some(NetEvent::Reachability(reachability)) => {
                    roles
                        .coordination
                        .behind_nat(reachability == crate::net::Reachability::Private);
                }
                Some(NetEvent::Gossip { signer, message, .. }) => {
                    if let Some(dashboard) = &roles.dashboard {
                        dashboard.heard(&signer, &message);
                    }
                    roles.coordination.gossip(signer, message);
                }
                Some(other) => debug!(event = ?other, "network event"),
                None => break,
            },
            () = &mut shutdown => break,
        }
    }
}
