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
//!
//! - `state`: what a page shows, gathered from the node and the farm;
//! - `html`: rendering it;
//! - `limit`: how many connections, and how long each may idle or take to
//!   send its headers.
//!
//! Not for: changing anything. Every route reads.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use kiln_protocol::coord::{JobPhase, StatusReport};
use serde_json::json;
use tracing::{info, warn};

use limit::LimitedListener;

mod html;
mod limit;
mod state;

use crate::metrics::{metric, METRICS};
use crate::report::job_json;
use html::{render_build, render_error, render_index};
pub use state::Dashboard;
use state::{snapshot_json, LogSource};

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
pub(super) const PEERS_SHOWN_MAX: usize = 100;
/// Seconds between refreshes of a page.
pub(super) const REFRESH_S: u32 = 2;

/// Parses `--http`'s value: `PORT` (on 127.0.0.1) or `HOST:PORT`.
pub fn parse_addr(value: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = value.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    value
        .parse()
        .map_err(|_| format!("{value:?} is not PORT or HOST:PORT (for example 127.0.0.1:{DEFAULT_PORT})"))
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
    limit::serve(listener, router, Duration::from_millis(HEADERS_MS_MAX)).await;
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
    if let Ok((coordinator, report, _, _)) = farm {
        farm_metrics(&mut out, &report, coordinator == d.net.peer_id());
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        out,
    )
        .into_response()
}

/// The farm's gauges, as the acting coordinator's report gives them.
fn farm_metrics(out: &mut String, report: &StatusReport, acting: bool) {
    let acting = u8::from(acting);
    metric(
        out,
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
        out,
        "kiln_jobs_queued",
        "gauge",
        "Jobs waiting for a worker, as the coordinator sees them.",
        queued,
    );
    metric(
        out,
        "kiln_jobs_running",
        "gauge",
        "Jobs building or being replicated, as the coordinator sees them.",
        running,
    );
    metric(
        out,
        "kiln_workers",
        "gauge",
        "Workers the coordinator has heard from.",
        report.workers.len(),
    );
    metric(
        out,
        "kiln_mail_pending",
        "gauge",
        "Mail the coordinator has not delivered yet.",
        report.mail.pending,
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::html::esc;
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
