//! What the dashboard shows, gathered per page: this node's view of the
//! network, the farm's status from the acting coordinator (asked over
//! `/kiln/coord/1` when that is another node), artifacts' providers from the
//! DHT (cached briefly), and the live log tails heard on gossip.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use kiln_protocol::coord::{
    ContributorView, CoordReplyV1, CoordRequest, JobPhase, JobView, RequesterView, StatusReport,
};
use kiln_protocol::messages::{Gossip, GossipV1};
use kiln_protocol::{Hash, PublicKey, SecretKey};
use kiln_store::Store;
use libp2p::{Multiaddr, PeerId};
use serde_json::json;
use tokio::sync::Semaphore;
use tracing::debug;

use crate::contributions::{summarize, Summary};
use crate::coordinator::CoordHandle;
use crate::net::NetClient;
use crate::report::status_json;

use super::*;

/// The acting coordinator, its status report, its top contributors and
/// the queue per requester.
pub(super) type Farm = (PeerId, StatusReport, Vec<ContributorView>, Vec<RequesterView>);

/// What the dashboard reads from.
pub struct Dashboard {
    pub(super) net: NetClient,
    pub(super) store: Store,
    pub(super) coordination: CoordHandle,
    pub(super) started: Instant,
    pub(super) addresses: Mutex<Vec<Multiaddr>>,
    /// The latest log tail gossiped for a build, and who sent it.
    pub(super) live_logs: Mutex<VecDeque<(Hash, PublicKey, String)>>,
    pub(super) providers: Mutex<HashMap<Hash, (Instant, Vec<PeerId>)>>,
    pub(super) requests: Semaphore,
    /// This node's key, to sign what it gave.
    key: SecretKey,
    /// What this node gave, and when that was read (kept [`GAVE_KEEP_MS`]).
    gave: Mutex<Option<(Instant, Summary)>>,
}

/// How long the dashboard keeps what this node gave before reading it again.
const GAVE_KEEP_MS: u64 = 10_000;

impl Dashboard {
    pub fn new(net: NetClient, store: Store, key: SecretKey, coordination: CoordHandle) -> Dashboard {
        Dashboard {
            key,
            gave: Mutex::new(None),
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

    /// The farm's status from the acting coordinator, who that is, and its
    /// top contributors.
    pub(super) async fn farm(&self) -> Result<Farm, String> {
        let ask = async {
            match self.coordination.status().await {
                Some(CoordReplyV1::StatusV3 {
                    report,
                    contributors,
                    requesters,
                }) => Ok((self.net.peer_id(), report, contributors, requesters)),
                Some(CoordReplyV1::NotCoordinator {
                    coordinator: Some(contact),
                }) => {
                    let peer = crate::coord_client::reach(&self.net, &contact)
                        .await
                        .ok_or("the coordinator's peer id is not valid")?;
                    match crate::coord_client::ask_peer(&self.net, peer, &CoordRequest::StatusV3).await {
                        Ok((
                            CoordReplyV1::StatusV3 {
                                report,
                                contributors,
                                requesters,
                            },
                            _,
                        )) => Ok((peer, report, contributors, requesters)),
                        // A coordinator of an earlier version.
                        Ok((CoordReplyV1::Refused { .. }, _)) => {
                            match crate::coord_client::ask_peer(&self.net, peer, &CoordRequest::StatusV2).await {
                                Ok((CoordReplyV1::StatusV2 { report, contributors }, _)) => {
                                    Ok((peer, report, contributors, Vec::new()))
                                }
                                _ => Err(format!(
                                    "the coordinator {peer} did not send its status; this page refreshes until it does"
                                )),
                            }
                        }
                        Ok((_, _)) => Err(format!(
                            "the coordinator {peer} did not send its status; this page refreshes until it does"
                        )),
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

    /// What this node gave as a worker, if it ran any build or served
    /// any blob.
    async fn gave(&self) -> Option<Summary> {
        if let Ok(kept) = self.gave.lock() {
            if let Some((at, summary)) = kept.as_ref() {
                if at.elapsed() < Duration::from_millis(GAVE_KEEP_MS) {
                    return Some(summary.clone());
                }
            }
        }
        let (store, key) = (self.store.clone(), SecretKey::from_bytes(&self.key.to_bytes()));
        let (summary, _) = tokio::task::spawn_blocking(move || summarize(&store, &key, crate::clock::now_ms()))
            .await
            .ok()?
            .ok()?;
        let t = &summary.all_time;
        let any = t.builds_done + t.builds_failed + t.builds_abandoned + t.served_bytes > 0;
        if let Ok(mut kept) = self.gave.lock() {
            *kept = Some((Instant::now(), summary.clone()));
        }
        any.then_some(summary)
    }

    pub(super) async fn snapshot(&self) -> Snapshot {
        let (farm, peers, gave, network) =
            tokio::join!(self.farm(), self.net.connected_peers(), self.gave(), self.net.view());
        let artifacts = match &farm {
            Ok((_, report, _, _)) => self.artifacts(report).await,
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
            network: network.ok(),
            uptime_s: self.started.elapsed().as_secs(),
            farm,
            artifacts,
            gave,
        }
    }

    /// The artifacts of recent builds and the peers that provide them.
    async fn artifacts(&self, report: &StatusReport) -> Vec<Artifact> {
        let built: Vec<(Hash, u64, &JobView)> = report
            .recent
            .iter()
            .take(kiln_protocol::coord::STATUS_RECENT_MAX)
            .filter_map(|job| match &job.phase {
                JobPhase::Done { attestation } | JobPhase::Checked { attestation, .. } => {
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
    pub(super) async fn build(&self, build_key: Hash) -> Result<BuildPage, (StatusCode, String)> {
        let (_, report, _, _) = self.farm().await.map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e))?;
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
            JobPhase::Done { attestation } | JobPhase::Checked { attestation, .. } => {
                attestation.verify().ok().and_then(|a| self.stored_log(a.log))
            }
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

pub(super) struct Snapshot {
    pub(super) me: PeerId,
    pub(super) addresses: Vec<String>,
    pub(super) peers: Vec<PeerId>,
    /// Whether peers can dial this node, and its peers by path.
    pub(super) network: Option<crate::net::NetView>,
    pub(super) uptime_s: u64,
    pub(super) farm: Result<Farm, String>,
    pub(super) artifacts: Vec<Artifact>,
    /// What this node gave as a worker, if anything.
    pub(super) gave: Option<Summary>,
}

pub(super) struct Artifact {
    pub(super) hash: Hash,
    pub(super) bytes: u64,
    pub(super) build_key: Hash,
    pub(super) recipe: String,
    pub(super) providers: Vec<PeerId>,
}

pub(super) enum LogSource {
    Live,
    Stored(Hash),
}

pub(super) struct BuildPage {
    pub(super) job: JobView,
    pub(super) log: Option<(LogSource, String)>,
}

pub(super) fn snapshot_json(s: &Snapshot) -> serde_json::Value {
    let (farm, farm_error) = match &s.farm {
        Ok((coordinator, report, contributors, requesters)) => (
            status_json(&coordinator.to_string(), report, contributors, requesters),
            None,
        ),
        Err(e) => (serde_json::Value::Null, Some(e.clone())),
    };
    json!({
        "node": {
            "peer_id": s.me.to_string(),
            "addresses": s.addresses,
            "peers": s.peers.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            "network": s.network,
            "uptime_s": s.uptime_s,
        },
        "farm": farm,
        "farm_error": farm_error,
        "gave": s.gave,
        "artifacts": s.artifacts.iter().map(|a| json!({
            "artifact": a.hash.to_string(), "bytes": a.bytes, "build_key": a.build_key.to_string(),
            "recipe": a.recipe, "providers": a.providers.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}
