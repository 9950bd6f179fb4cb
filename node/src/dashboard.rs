//! The dashboard (`kiln node --http ADDR`): what the farm is doing, for the
//! people who run nodes. Server-rendered HTML that refreshes itself, the
//! same data as JSON, and Prometheus metrics:
//!
//! - `/`: the network (this node, its peers, the coordinator), workers,
//!   the queue, recent builds, artifacts and who provides them, mail;
//! - `/build/KEY`: one build, with its live log while it runs and the
//!   stored log once it ended;
//! - `/api/status`, `/api/build/KEY`: the same as JSON (`/api/status`'s
//!   `farm` is exactly `kiln status --json`);
//! - `/metrics`: jobs queued / running / done / failed, dispatch latency,
//!   bytes fetched and served, peers.
//!
//! The farm's state comes from the acting coordinator: this node itself
//! when it coordinates, otherwise one stream to the coordinator per page.
//! The dashboard has no login: it listens on 127.0.0.1 unless told
//! otherwise.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use kiln_protocol::coord::{CoordReplyV1, CoordRequest, JobPhase, JobView, StatusReport};
use kiln_protocol::messages::{Gossip, GossipV1};
use kiln_protocol::{Hash, PublicKey};
use kiln_store::Store;
use libp2p::{Multiaddr, PeerId};
use serde_json::json;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::coordinator::CoordHandle;
use crate::http_limit::{self, LimitedListener};
use crate::metrics::{metric, METRICS};
use crate::net::NetClient;
use crate::report::{job_json, peer_of, status_json, worker_state};

/// The dashboard's port when `--http` names none.
pub const DEFAULT_PORT: u16 = 8180;
/// How long a page waits for the coordinator's status.
const STATUS_MS_MAX: u64 = 3_000;
/// How long a page waits for an artifact's providers, and how long they are
/// remembered.
const PROVIDERS_MS_MAX: u64 = 3_000;
const PROVIDERS_KEEP_MS: u64 = 10_000;
const PROVIDERS_CACHED_MAX: usize = 256;
/// The most of a stored log a build page shows (its end).
const LOG_SHOWN_BYTES_MAX: u64 = 64 * 1024;
/// Running builds whose latest log tail is kept.
const LIVE_LOGS_MAX: usize = 64;
/// Requests answered at once; more get 503 and come back.
const REQUESTS_MAX: usize = 16;
/// Peers listed on the page.
const PEERS_SHOWN_MAX: usize = 100;
/// Seconds between refreshes of a page.
const REFRESH_S: u32 = 2;

/// Parses `--http`'s value: `PORT` (on 127.0.0.1) or `HOST:PORT`.
pub fn parse_addr(value: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = value.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    value
        .parse()
        .map_err(|_| format!("{value:?} is not PORT or HOST:PORT (for example 127.0.0.1:{DEFAULT_PORT})"))
}

/// What the dashboard reads from.
pub struct Dashboard {
    net: NetClient,
    store: Store,
    coordination: CoordHandle,
    started: Instant,
    addresses: Mutex<Vec<Multiaddr>>,
    /// The latest log tail gossiped for a build, and who sent it.
    live_logs: Mutex<VecDeque<(Hash, PublicKey, String)>>,
    providers: Mutex<HashMap<Hash, (Instant, Vec<PeerId>)>>,
    requests: Semaphore,
}

impl Dashboard {
    pub fn new(net: NetClient, store: Store, coordination: CoordHandle) -> Dashboard {
        Dashboard {
            net,
            store,
            coordination,
            started: Instant::now(),
            addresses: Mutex::new(Vec::new()),
            live_logs: Mutex::new(VecDeque::new()),
            providers: Mutex::new(HashMap::new()),
            requests: Semaphore::new(REQUESTS_MAX),
        }
    }

    pub fn addresses(&self, addresses: &[Multiaddr]) {
        if let Ok(mut known) = self.addresses.lock() {
            known.clear();
            known.extend_from_slice(addresses);
        }
    }

    /// Keeps the latest log tail a peer gossiped for a build; it is shown
    /// only while that peer is the build's assigned worker.
    pub fn heard(&self, signer: &PublicKey, message: &Gossip) {
        let Gossip::V1(GossipV1::Progress { build_key, log_tail }) = message else {
            return;
        };
        if let Ok(mut logs) = self.live_logs.lock() {
            logs.retain(|(key, from, _)| !(key == build_key && from == signer));
            if logs.len() >= LIVE_LOGS_MAX {
                logs.pop_front();
            }
            logs.push_back((*build_key, *signer, log_tail.clone()));
        }
    }

    fn live_log(&self, build_key: &Hash, worker: &PublicKey) -> Option<String> {
        let logs = self.live_logs.lock().ok()?;
        logs.iter()
            .find(|(key, from, _)| key == build_key && from == worker)
            .map(|(_, _, tail)| tail.clone())
    }

    /// The farm's status from the acting coordinator, and who that is.
    async fn farm(&self) -> Result<(PeerId, StatusReport), String> {
        let ask = async {
            match self.coordination.status().await {
                Some(CoordReplyV1::Status(report)) => Ok((self.net.peer_id(), report)),
                Some(CoordReplyV1::NotCoordinator {
                    coordinator: Some(contact),
                }) => {
                    let peer = crate::request::reach(&self.net, &contact)
                        .await
                        .ok_or("the coordinator's peer id is not valid")?;
                    match crate::request::ask_peer(&self.net, peer, &CoordRequest::StatusV1).await {
                        Ok((CoordReplyV1::Status(report), _)) => Ok((peer, report)),
                        Ok((other, _)) => Err(format!("the coordinator {peer} answered {other:?}")),
                        Err(e) => Err(format!("cannot reach the coordinator {peer}: {e}")),
                    }
                }
                Some(_) => Err("no coordinator elected yet; this page refreshes until there is one".to_string()),
                None => Err("this node is stopping".to_string()),
            }
        };
        tokio::time::timeout(Duration::from_millis(STATUS_MS_MAX), ask)
            .await
            .unwrap_or_else(|_| Err(format!("the coordinator did not answer within {STATUS_MS_MAX} ms")))
    }

    async fn snapshot(&self) -> Snapshot {
        let (farm, peers) = tokio::join!(self.farm(), self.net.connected_peers());
        let artifacts = match &farm {
            Ok((_, report)) => self.artifacts(report).await,
            Err(_) => Vec::new(),
        };
        Snapshot {
            me: self.net.peer_id(),
            addresses: self
                .addresses
                .lock()
                .map(|a| a.iter().map(|x| x.to_string()).collect())
                .unwrap_or_default(),
            peers: peers.unwrap_or_default(),
            uptime_s: self.started.elapsed().as_secs(),
            farm,
            artifacts,
        }
    }

    /// The artifacts of recent builds and the peers that provide them.
    async fn artifacts(&self, report: &StatusReport) -> Vec<Artifact> {
        let built: Vec<(Hash, u64, &JobView)> = report
            .recent
            .iter()
            .take(kiln_protocol::coord::STATUS_RECENT_MAX)
            .filter_map(|job| match &job.phase {
                JobPhase::Done { attestation } => {
                    attestation.verify().ok().map(|a| (a.artifact, a.artifact_bytes, job))
                }
                _ => None,
            })
            .collect();
        let lookups = built.iter().map(|(hash, _, _)| self.providers_of(*hash));
        let providers = futures::future::join_all(lookups).await;
        built
            .into_iter()
            .zip(providers)
            .map(|((hash, bytes, job), providers)| Artifact {
                hash,
                bytes,
                build_key: job.build_key,
                recipe: format!("{} {}", job.recipe_name, job.recipe_version),
                providers,
            })
            .collect()
    }

    /// Who provides `hash` (this node first if it holds it), from the DHT,
    /// remembered for a few seconds.
    async fn providers_of(&self, hash: Hash) -> Vec<PeerId> {
        let keep = Duration::from_millis(PROVIDERS_KEEP_MS);
        if let Some((at, peers)) = self.providers.lock().ok().and_then(|p| p.get(&hash).cloned()) {
            if at.elapsed() < keep {
                return peers;
            }
        }
        let mut peers = Vec::new();
        if self.store.has(&hash) {
            peers.push(self.net.peer_id());
        }
        let lookup = tokio::time::timeout(Duration::from_millis(PROVIDERS_MS_MAX), self.net.providers(hash)).await;
        match lookup {
            Ok(Ok(found)) => peers.extend(found.into_iter().filter(|p| *p != self.net.peer_id())),
            Ok(Err(e)) => debug!(blob = %hash, error = %e, "provider lookup failed"),
            Err(_) => debug!(blob = %hash, "provider lookup timed out"),
        }
        if let Ok(mut cache) = self.providers.lock() {
            if cache.len() >= PROVIDERS_CACHED_MAX {
                cache.retain(|_, (at, _)| at.elapsed() < keep);
            }
            if cache.len() < PROVIDERS_CACHED_MAX {
                cache.insert(hash, (Instant::now(), peers.clone()));
            }
        }
        peers
    }

    /// One open or recent build and its log (live while it runs).
    async fn build(&self, build_key: Hash) -> Result<BuildPage, (StatusCode, String)> {
        let (_, report) = self.farm().await.map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e))?;
        let Some(job) = report
            .jobs
            .iter()
            .chain(&report.recent)
            .find(|j| j.build_key == build_key)
            .cloned()
        else {
            return Err((
                StatusCode::NOT_FOUND,
                format!("{build_key} is neither open nor among the recent builds; the front page lists them"),
            ));
        };
        let log = match &job.phase {
            JobPhase::Done { attestation } => attestation.verify().ok().and_then(|a| self.stored_log(a.log)),
            JobPhase::Failed { log: Some(hash), .. } => self.stored_log(*hash),
            JobPhase::Assigned { worker, .. } => self.live_log(&build_key, worker).map(|text| (LogSource::Live, text)),
            _ => None,
        };
        Ok(BuildPage { job, log })
    }

    /// The end of a stored log this node holds (the coordinator holds every
    /// finished build's log). A page load fetches nothing: a log's size is
    /// its builder's choice; the page says how to fetch one not held here.
    fn stored_log(&self, hash: Hash) -> Option<(LogSource, String)> {
        let size = self.store.size(&hash)?;
        let from = size.saturating_sub(LOG_SHOWN_BYTES_MAX);
        let bytes = self.store.read_range(&hash, from, size - from).ok()?;
        Some((LogSource::Stored(hash), String::from_utf8_lossy(&bytes).into_owned()))
    }
}

struct Snapshot {
    me: PeerId,
    addresses: Vec<String>,
    peers: Vec<PeerId>,
    uptime_s: u64,
    farm: Result<(PeerId, StatusReport), String>,
    artifacts: Vec<Artifact>,
}

struct Artifact {
    hash: Hash,
    bytes: u64,
    build_key: Hash,
    recipe: String,
    providers: Vec<PeerId>,
}

enum LogSource {
    Live,
    Stored(Hash),
}

struct BuildPage {
    job: JobView,
    log: Option<(LogSource, String)>,
}

/// Binds the dashboard's address (before the node reports itself ready,
/// so a taken port is an error at start).
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot serve the dashboard on {addr}: {e}; pick another --http address"),
        )
    })?;
    if !addr.ip().is_loopback() {
        warn!(%addr, "the dashboard has no login and is reachable from other machines");
    }
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Most dashboard connections open at once; more wait to be accepted.
const CONNECTIONS_MAX: usize = 64;
/// A dashboard connection with no traffic for this long is closed (a page
/// refreshes every REFRESH_S seconds).
const CONNECTION_IDLE_MS_MAX: u64 = 30_000;
/// Time a client has to send a request's headers.
const HEADERS_MS_MAX: u64 = 10_000;

/// Serves the dashboard until the task is aborted.
pub async fn serve(listener: tokio::net::TcpListener, dashboard: Arc<Dashboard>) {
    if let Ok(addr) = listener.local_addr() {
        info!(url = %format!("http://{addr}/"), "dashboard listening");
    }
    let router = Router::new()
        .route("/", get(index))
        .route("/build/{key}", get(build))
        .route("/api/status", get(api_status))
        .route("/api/build/{key}", get(api_build))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(dashboard);
    let listener = LimitedListener::new(listener, CONNECTIONS_MAX, Duration::from_millis(CONNECTION_IDLE_MS_MAX));
    http_limit::serve(listener, router, Duration::from_millis(HEADERS_MS_MAX)).await;
}

type Shared = State<Arc<Dashboard>>;

fn busy() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        "the dashboard is busy; try again in a second\n",
    )
        .into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        "no such page; / is the dashboard, /api/status its data, /metrics its metrics\n",
    )
        .into_response()
}

fn bad_key(key: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        format!("{key:?} is not a build key (64 hex digits)\n"),
    )
        .into_response()
}

async fn index(State(d): Shared) -> Response {
    let Ok(_permit) = d.requests.try_acquire() else {
        return busy();
    };
    Html(render_index(&d.snapshot().await)).into_response()
}

async fn api_status(State(d): Shared) -> Response {
    let Ok(_permit) = d.requests.try_acquire() else {
        return busy();
    };
    Json(snapshot_json(&d.snapshot().await)).into_response()
}

async fn build(State(d): Shared, Path(key): Path<String>) -> Response {
    let Ok(_permit) = d.requests.try_acquire() else {
        return busy();
    };
    let Ok(build_key) = key.parse() else {
        return bad_key(&key);
    };
    match d.build(build_key).await {
        Ok(page) => Html(render_build(&page)).into_response(),
        Err((status, message)) => (status, Html(render_error(&message))).into_response(),
    }
}

async fn api_build(State(d): Shared, Path(key): Path<String>) -> Response {
    let Ok(_permit) = d.requests.try_acquire() else {
        return busy();
    };
    let Ok(build_key) = key.parse() else {
        return bad_key(&key);
    };
    match d.build(build_key).await {
        Ok(page) => {
            let mut value = job_json(&page.job);
            value["log_text"] = json!(page.log.as_ref().map(|(_, text)| text));
            value["log_source"] = json!(page.log.as_ref().map(|(source, _)| match source {
                LogSource::Live => "live",
                LogSource::Stored(_) => "stored",
            }));
            Json(value).into_response()
        }
        Err((status, message)) => (status, Json(json!({ "error": message }))).into_response(),
    }
}

async fn metrics(State(d): Shared) -> Response {
    let Ok(_permit) = d.requests.try_acquire() else {
        return busy();
    };
    let (farm, peers) = tokio::join!(d.farm(), d.net.connected_peers());
    let mut out = String::new();
    metric(
        &mut out,
        "kiln_peers",
        "gauge",
        "Peers this node is connected to.",
        peers.map(|p| p.len()).unwrap_or(0),
    );
    METRICS.render(&mut out);
    let reachable = u8::from(farm.is_ok());
    metric(
        &mut out,
        "kiln_coordinator_reachable",
        "gauge",
        "Whether this node reached the acting coordinator for the figures below.",
        reachable,
    );
    if let Ok((coordinator, report)) = farm {
        let acting = u8::from(coordinator == d.net.peer_id());
        metric(
            &mut out,
            "kiln_coordinator_acting",
            "gauge",
            "Whether this node is the acting coordinator.",
            acting,
        );
        let queued = report
            .jobs
            .iter()
            .filter(|j| matches!(j.phase, JobPhase::Queued { .. }))
            .count();
        let shown = report.jobs.len() as u64;
        // The report lists the oldest jobs in full; the rest count as queued.
        let running = shown - queued as u64;
        let queued = report.jobs_total.saturating_sub(running);
        metric(
            &mut out,
            "kiln_jobs_queued",
            "gauge",
            "Jobs waiting for a worker, as the coordinator sees them.",
            queued,
        );
        metric(
            &mut out,
            "kiln_jobs_running",
            "gauge",
            "Jobs building or being replicated, as the coordinator sees them.",
            running,
        );
        metric(
            &mut out,
            "kiln_workers",
            "gauge",
            "Workers the coordinator has heard from.",
            report.workers.len(),
        );
        metric(
            &mut out,
            "kiln_mail_pending",
            "gauge",
            "Mail the coordinator has not delivered yet.",
            report.mail.pending,
        );
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        out,
    )
        .into_response()
}

fn snapshot_json(s: &Snapshot) -> serde_json::Value {
    let (farm, farm_error) = match &s.farm {
        Ok((coordinator, report)) => (status_json(&coordinator.to_string(), report), None),
        Err(e) => (serde_json::Value::Null, Some(e.clone())),
    };
    json!({
        "node": {
            "peer_id": s.me.to_string(),
            "addresses": s.addresses,
            "peers": s.peers.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            "uptime_s": s.uptime_s,
        },
        "farm": farm,
        "farm_error": farm_error,
        "artifacts": s.artifacts.iter().map(|a| json!({
            "artifact": a.hash.to_string(), "bytes": a.bytes, "build_key": a.build_key.to_string(),
            "recipe": a.recipe, "providers": a.providers.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// Escapes text for HTML.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ccc}\
table{border-collapse:collapse}td,th{padding:.2em .8em .2em 0;text-align:left;vertical-align:top}\
code,pre{font-family:ui-monospace,monospace;font-size:.9em}pre{background:#f5f5f5;padding:.8em;overflow-x:auto}\
.done{color:#070}.failed{color:#b00}.building,.replicating{color:#a60}.queued{color:#555}.muted{color:#777}";

fn page(title: &str, refresh: bool, body: &str) -> String {
    let refresh = if refresh {
        format!("<meta http-equiv=\"refresh\" content=\"{REFRESH_S}\">")
    } else {
        String::new()
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">{refresh}<title>{}</title>\
         <style>{STYLE}</style></head><body>{body}<p class=\"muted\"><a href=\"/\">dashboard</a> · \
         <a href=\"/api/status\">/api/status</a> · <a href=\"/metrics\">/metrics</a></p></body></html>",
        esc(title)
    )
}

fn short(text: &str) -> String {
    if text.len() > 16 {
        format!("{}…", &text[..12])
    } else {
        text.to_string()
    }
}

fn build_link(key: &Hash) -> String {
    format!("<a href=\"/build/{key}\"><code>{}</code></a>", short(&key.to_string()))
}

fn options(job: &JobView) -> String {
    job.options
        .iter()
        .map(|(k, v)| format!("{}={}", esc(k), esc(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn render_index(s: &Snapshot) -> String {
    let mut b = String::new();
    let _ = write!(b, "<h1>Kiln node <code>{}</code></h1>", s.me);
    b.push_str("<h2>Network</h2><table>");
    let _ = write!(
        b,
        "<tr><th>this node</th><td><code>{}</code> · up {} s</td></tr>",
        s.me, s.uptime_s
    );
    for a in &s.addresses {
        let _ = write!(b, "<tr><th>listening</th><td><code>{}</code></td></tr>", esc(a));
    }
    match &s.farm {
        Ok((coordinator, report)) => {
            let how = if report.pinned { "pinned" } else { "elected" };
            let me = if *coordinator == s.me { " (this node)" } else { "" };
            let _ = write!(
                b,
                "<tr><th>coordinator</th><td id=\"coordinator\"><code>{coordinator}</code> {how}{me}</td></tr>"
            );
        }
        Err(e) => {
            let _ = write!(b, "<tr><th>coordinator</th><td class=\"failed\">{}</td></tr>", esc(e));
        }
    }
    let _ = write!(b, "<tr><th>peers</th><td>{} connected", s.peers.len());
    for p in s.peers.iter().take(PEERS_SHOWN_MAX) {
        let _ = write!(b, "<br><code>{p}</code>");
    }
    b.push_str("</td></tr></table>");
    if let Ok((_, report)) = &s.farm {
        render_farm(&mut b, report);
    }
    b.push_str("<h2>Artifacts</h2>");
    if s.artifacts.is_empty() {
        b.push_str("<p class=\"muted\">No recent build has finished.</p>");
    } else {
        b.push_str("<table id=\"artifacts\"><tr><th>artifact</th><th>build</th><th>bytes</th><th>providers</th><th>fetch with</th></tr>");
        for a in &s.artifacts {
            let providers: Vec<String> = a
                .providers
                .iter()
                .map(|p| format!("<code>{}</code>", short(&p.to_string())))
                .collect();
            let providers = if providers.is_empty() {
                "none found".to_string()
            } else {
                providers.join("<br>")
            };
            let _ = write!(
                b,
                "<tr><td><code>{}</code></td><td>{} {}</td><td>{}</td><td>{providers}</td><td><code>kiln fetch {}</code></td></tr>",
                a.hash,
                build_link(&a.build_key),
                esc(&a.recipe),
                a.bytes,
                a.hash
            );
        }
        b.push_str("</table>");
    }
    page("Kiln dashboard", true, &b)
}

fn render_farm(b: &mut String, report: &StatusReport) {
    let _ = write!(b, "<h2>Workers ({})</h2>", report.workers.len());
    if report.workers.is_empty() {
        b.push_str("<p class=\"muted\">No worker has announced itself. Contribute a machine with <code>kiln node --contribute</code>.</p>");
    } else {
        b.push_str("<table id=\"workers\"><tr><th>worker</th><th>state</th><th>jobs</th><th>system</th><th>seen</th><th>building</th></tr>");
        for w in &report.workers {
            let building: Vec<String> = w.jobs.iter().map(build_link).collect();
            let _ = write!(
                b,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}/{}</td><td>{}</td><td>{} s ago</td><td>{}</td></tr>",
                peer_of(&w.worker),
                esc(&worker_state(w)),
                w.running_jobs,
                w.max_jobs,
                esc(&w.system),
                w.seen_ms_ago / 1000,
                building.join("<br>")
            );
        }
        b.push_str("</table>");
    }
    let _ = write!(b, "<h2>Queue ({} open)</h2>", report.jobs_total);
    if report.jobs.is_empty() {
        b.push_str("<p class=\"muted\">Nothing waits or builds.</p>");
    } else {
        b.push_str("<table id=\"queue\"><tr><th>build</th><th>recipe</th><th>options</th><th>state</th><th>detail</th><th>requesters</th></tr>");
        for job in &report.jobs {
            let detail = match &job.phase {
                JobPhase::Queued { waiting_because } => {
                    esc(waiting_because.as_deref().unwrap_or("waiting for a free worker"))
                }
                JobPhase::Assigned { worker, attempt } => {
                    format!("on <code>{}</code>, attempt {attempt}", short(&peer_of(worker)))
                }
                JobPhase::Replicating { artifact } => format!("copying <code>{}</code>", short(&artifact.to_string())),
                _ => String::new(),
            };
            let name = job.phase.name();
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{} {}</td><td>{}</td><td class=\"{name}\">{name}</td><td>{detail}</td><td>{}</td></tr>",
                build_link(&job.build_key),
                esc(&job.recipe_name),
                esc(&job.recipe_version),
                options(job),
                job.requesters
            );
        }
        b.push_str("</table>");
    }
    let _ = write!(b, "<h2>Recent builds ({})</h2>", report.recent.len());
    if report.recent.is_empty() {
        b.push_str("<p class=\"muted\">No build has ended since the coordinator started.</p>");
    } else {
        b.push_str(
            "<table id=\"builds\"><tr><th>build</th><th>recipe</th><th>options</th><th>state</th><th>result</th></tr>",
        );
        for job in &report.recent {
            let result = match &job.phase {
                JobPhase::Done { attestation } => attestation
                    .verify()
                    .map(|a| {
                        format!(
                            "artifact <code>{}</code>, {} bytes, built by <code>{}</code> in {:.1} s",
                            a.artifact,
                            a.artifact_bytes,
                            short(&peer_of(&a.worker)),
                            a.finished_at_ms.saturating_sub(a.started_at_ms) as f64 / 1000.0
                        )
                    })
                    .unwrap_or_else(|_| "attestation does not verify".into()),
                JobPhase::Failed { reason, attempts, .. } => format!("{} ({attempts} attempts)", esc(reason)),
                _ => String::new(),
            };
            let name = job.phase.name();
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{} {}</td><td>{}</td><td class=\"{name}\">{name}</td><td>{result}</td></tr>",
                build_link(&job.build_key),
                esc(&job.recipe_name),
                esc(&job.recipe_version),
                options(job)
            );
        }
        b.push_str("</table>");
    }
    let mail = &report.mail;
    let _ = write!(
        b,
        "<h2>Mail</h2><p>{} pending, {} delivered",
        mail.pending, mail.delivered
    );
    if let Some(e) = &mail.last_error {
        let _ = write!(b, "; <span class=\"failed\">last attempt: {}</span>", esc(e));
    }
    b.push_str("</p>");
}

fn render_build(p: &BuildPage) -> String {
    let job = &p.job;
    let mut b = String::new();
    let name = job.phase.name();
    let _ = write!(
        b,
        "<h1>{} {} <span class=\"{name}\" id=\"state\">{name}</span></h1><table>",
        esc(&job.recipe_name),
        esc(&job.recipe_version)
    );
    let _ = write!(b, "<tr><th>build key</th><td><code>{}</code></td></tr>", job.build_key);
    let _ = write!(b, "<tr><th>options</th><td>{}</td></tr>", options(job));
    let _ = write!(b, "<tr><th>requesters</th><td>{}</td></tr>", job.requesters);
    match &job.phase {
        JobPhase::Queued { waiting_because } => {
            let why = waiting_because.as_deref().unwrap_or("waiting for a free worker");
            let _ = write!(b, "<tr><th>waiting</th><td>{}</td></tr>", esc(why));
        }
        JobPhase::Assigned { worker, attempt } => {
            let _ = write!(
                b,
                "<tr><th>worker</th><td><code>{}</code> (attempt {attempt})</td></tr>",
                peer_of(worker)
            );
        }
        JobPhase::Replicating { artifact } => {
            let _ = write!(
                b,
                "<tr><th>artifact</th><td><code>{artifact}</code> (copying to a second peer)</td></tr>"
            );
        }
        JobPhase::Done { attestation } => {
            if let Ok(a) = attestation.verify() {
                let _ = write!(
                    b,
                    "<tr><th>artifact</th><td><code id=\"artifact\">{}</code>, {} bytes</td></tr>",
                    a.artifact, a.artifact_bytes
                );
                let _ = write!(
                    b,
                    "<tr><th>fetch</th><td><code>kiln fetch {} -o FILE</code></td></tr>",
                    a.artifact
                );
                let _ = write!(
                    b,
                    "<tr><th>builder</th><td><code>{}</code></td></tr>",
                    peer_of(&a.worker)
                );
                let seconds = a.finished_at_ms.saturating_sub(a.started_at_ms) as f64 / 1000.0;
                let _ = write!(b, "<tr><th>build time</th><td>{seconds:.1} s</td></tr>");
            }
        }
        JobPhase::Failed { reason, attempts, .. } => {
            let _ = write!(
                b,
                "<tr><th>failed</th><td class=\"failed\">{} ({attempts} attempts)</td></tr>",
                esc(reason)
            );
        }
        JobPhase::Log { .. } | JobPhase::Unknown => {}
    }
    b.push_str("</table><h2>Log</h2>");
    match &p.log {
        Some((LogSource::Live, text)) => {
            let _ = write!(
                b,
                "<p class=\"muted\">The latest lines, as the worker sends them.</p><pre id=\"log\">{}</pre>",
                esc(text)
            );
        }
        Some((LogSource::Stored(hash), text)) => {
            let _ = write!(
                b,
                "<p class=\"muted\">The end of the log (<code>kiln fetch {hash}</code> for all of it).</p><pre id=\"log\">{}</pre>",
                esc(text)
            );
        }
        None => match log_hash(&job.phase) {
            Some(hash) => {
                let _ = write!(
                    b,
                    "<p class=\"muted\">This node does not hold the log: <code>kiln fetch {hash}</code></p>"
                );
            }
            None => b.push_str("<p class=\"muted\">No log yet.</p>"),
        },
    }
    page(
        &format!("Kiln: {} {}", job.recipe_name, name),
        !job.phase.is_final(),
        &b,
    )
}

/// The stored log of an ended build.
fn log_hash(phase: &JobPhase) -> Option<Hash> {
    match phase {
        JobPhase::Done { attestation } => attestation.verify().ok().map(|a| a.log),
        JobPhase::Failed { log, .. } => *log,
        _ => None,
    }
}

fn render_error(message: &str) -> String {
    page(
        "Kiln dashboard",
        false,
        &format!("<h1>Not here</h1><p>{}</p>", esc(message)),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn addresses_default_to_loopback_and_bad_ones_say_what_to_write() {
        assert_eq!(parse_addr("8181").unwrap(), "127.0.0.1:8181".parse().unwrap());
        assert_eq!(parse_addr("0.0.0.0:80").unwrap(), "0.0.0.0:80".parse().unwrap());
        assert!(parse_addr("localhost").unwrap_err().contains("HOST:PORT"));
    }

    #[test]
    fn text_from_peers_is_escaped() {
        assert_eq!(esc("<script>\"&'"), "&lt;script&gt;&quot;&amp;&#39;");
    }
}
