//! What this node gave (`kiln contributions`, the dashboard's "What this
//! machine gave"): the record of each build its worker ran, kept in the
//! store's `Builds` table when the build ends, the blob bytes it served to
//! peers, kept by day in the `Served` table, and the totals and signed
//! statement made of them ([`kiln_protocol::contrib`]).
//!
//! Cost: one small record per build, one per day served; a summary reads
//! them all (a worker's whole history: thousands of records, read on
//! demand, never on a timer).
//!
//! Not for: what the network says of a worker (the coordinator's top
//! contributors, from the attestations it settled).

use std::sync::atomic::{AtomicU64, Ordering};

use kiln_protocol::contrib::{
    attestations_digest, BuildEnd, BuildRecord, Proof, Statement, Totals, PROOF_ATTESTATIONS_MAX,
    RECORD_REASON_BYTES_MAX, WINDOW_DAYS, WINDOW_MS,
};
use kiln_protocol::system::{format_bytes, format_duration_secs};
use kiln_protocol::{wire, Attestation, SecretKey, Signed};
use kiln_store::{RecordTable, Store, RECORD_VALUE_BYTES_MAX};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::metrics::METRICS;

/// How often the bytes served are added to the day's record.
pub const SERVED_SAVE_MS: u64 = 60_000;
/// Builds listed in a summary, newest first.
pub const RECENT_BUILDS_SHOWN: usize = 10;
const DAY_MS: u64 = 24 * 3600 * 1000;

/// Bytes served already added to the store by this process.
static SERVED_SAVED: AtomicU64 = AtomicU64::new(0);

/// Keeps the record of a build that ended.
pub fn record_build(store: &Store, mut record: BuildRecord) {
    if let BuildEnd::Failed { reason } | BuildEnd::Abandoned { reason } = &mut record.ended {
        truncate(reason, RECORD_REASON_BYTES_MAX);
    }
    let mut key = record.finished_at_ms.to_be_bytes().to_vec();
    key.extend_from_slice(record.build_key.as_bytes());
    let saved = wire::encode(&record).map_err(|e| e.to_string()).and_then(|bytes| {
        store
            .put_record(RecordTable::Builds, &key, &bytes)
            .map_err(|e| e.to_string())
    });
    if let Err(e) = saved {
        warn!(job = %record.build_key, error = %e, "the build's record for `kiln contributions` was not kept");
    }
}

/// Adds the bytes served since the last call to today's record.
pub fn save_served(store: &Store, now_ms: u64) {
    // One save at a time: the timer's and the one at shutdown could meet.
    static SAVING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _saving = SAVING.lock();
    let total = METRICS.bytes_served.load(Ordering::Relaxed);
    let saved = SERVED_SAVED.load(Ordering::Relaxed);
    let new = total.saturating_sub(saved);
    if new == 0 {
        return;
    }
    let day = (now_ms / DAY_MS).to_be_bytes();
    let before = store
        .get_record(RecordTable::Served, &day)
        .ok()
        .flatten()
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map_or(0, u64::from_le_bytes);
    match store.put_record(RecordTable::Served, &day, &before.saturating_add(new).to_le_bytes()) {
        Ok(_) => SERVED_SAVED.store(total, Ordering::Relaxed),
        Err(e) => warn!(error = %e, "bytes served not counted for `kiln contributions`"),
    }
}

/// Saves the bytes served every [`SERVED_SAVE_MS`] until the node stops.
pub async fn keep_served(store: Store) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(SERVED_SAVE_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let store = store.clone();
        let _ = tokio::task::spawn_blocking(move || save_served(&store, crate::clock::now_ms())).await;
    }
}

/// What `kiln contributions` shows.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    /// The worker's key, as in its attestations.
    pub worker: String,
    /// Its peer id, as `kiln id` prints it.
    pub peer: String,
    pub all_time: Totals,
    /// The last [`WINDOW_DAYS`] days.
    pub recent: Totals,
    pub window_days: u64,
    /// The newest builds, newest first.
    pub builds: Vec<BuildLine>,
    /// The signed statement of these totals, hex of its canonical bytes.
    pub statement_hex: String,
    /// Where the proof was written, if asked for.
    pub proof_file: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BuildLine {
    pub build_key: String,
    pub recipe: String,
    /// done, failed or abandoned.
    pub ended: String,
    pub reason: Option<String>,
    pub finished_at_ms: u64,
    pub build_ms: u64,
    pub paused_ms: u64,
    pub cpu_ms: Option<u64>,
}

/// Reads every record and makes the totals, the signed statement and its
/// proof. Blocking: call off the async threads.
pub fn summarize(store: &Store, key: &SecretKey, now_ms: u64) -> Result<(Summary, Proof), String> {
    let window_from_ms = now_ms.saturating_sub(WINDOW_MS);
    let records = store
        .records(RecordTable::Builds)
        .map_err(|e| format!("cannot read this node's build records: {e}"))?;
    let mut all_time = Totals::default();
    let mut recent = Totals::default();
    let mut attestations: Vec<Signed<Attestation>> = Vec::new();
    let mut lines = Vec::new();
    // Keys sort by end time: oldest first.
    for (_, bytes) in &records {
        let Ok(record) = wire::decode::<BuildRecord, RECORD_VALUE_BYTES_MAX>(bytes) else {
            warn!("skipping a damaged build record");
            continue;
        };
        // A done build is in the window by its attestation's end, as a
        // proof's check counts it.
        let mut ended_at_ms = record.finished_at_ms;
        if let BuildEnd::Built { attestation } = &record.ended {
            // Only what a proof can show: the worker's own attestations.
            match attestation.verify() {
                Ok(a) if a.worker == key.public() => {
                    ended_at_ms = a.finished_at_ms;
                    attestations.push(attestation.clone());
                }
                _ => continue,
            }
        }
        all_time.add(&record);
        if ended_at_ms >= window_from_ms {
            recent.add(&record);
        }
        lines.push(line(&record));
    }
    for (day, bytes) in store
        .records(RecordTable::Served)
        .map_err(|e| format!("cannot read this node's served bytes: {e}"))?
    {
        let (Ok(day), Ok(bytes)) = (
            <[u8; 8]>::try_from(day.as_slice()),
            <[u8; 8]>::try_from(bytes.as_slice()),
        ) else {
            continue;
        };
        let (day, bytes) = (u64::from_be_bytes(day), u64::from_le_bytes(bytes));
        all_time.served_bytes += bytes;
        if (day + 1) * DAY_MS > window_from_ms {
            recent.served_bytes += bytes;
        }
    }
    // Served since the last save, not yet in the store.
    let unsaved = METRICS
        .bytes_served
        .load(Ordering::Relaxed)
        .saturating_sub(SERVED_SAVED.load(Ordering::Relaxed));
    all_time.served_bytes += unsaved;
    recent.served_bytes += unsaved;
    if attestations.len() > PROOF_ATTESTATIONS_MAX {
        return Err(format!(
            "this worker made more than {PROOF_ATTESTATIONS_MAX} attestations; a proof of them all is not supported yet"
        ));
    }
    let statement = Statement {
        worker: key.public(),
        made_at_ms: now_ms,
        all_time,
        recent,
        window_from_ms,
        attestations: attestations_digest(&attestations),
    };
    let signed = Signed::sign(key, &statement);
    lines.reverse();
    lines.truncate(RECENT_BUILDS_SHOWN);
    let summary = Summary {
        worker: key.public().to_string(),
        peer: crate::net::identity::peer_id_of(&key.public())
            .map(|p| p.to_string())
            .unwrap_or_default(),
        all_time,
        recent,
        window_days: WINDOW_DAYS,
        builds: lines,
        statement_hex: kiln_protocol::hash::to_hex(&wire::canonical(&signed)),
        proof_file: None,
    };
    Ok((
        summary,
        Proof {
            statement: signed,
            attestations,
        },
    ))
}

/// The totals as rows for people: what, over all time, over the window.
pub fn rows(summary: &Summary) -> Vec<(&'static str, String, String)> {
    type Show = fn(&Totals) -> String;
    let shown: [(&'static str, Show); 7] = [
        ("builds done", |t| t.builds_done.to_string()),
        ("builds failed", |t| t.builds_failed.to_string()),
        ("builds given to others", |t| t.builds_abandoned.to_string()),
        ("build time given", |t| format_duration_secs(t.build_ms / 1000)),
        ("CPU time given", cpu_time),
        ("bytes served to others", |t| format_bytes(t.served_bytes)),
        ("attested build time", |t| format_duration_secs(t.attested_ms / 1000)),
    ];
    shown
        .iter()
        .map(|(name, show)| (*name, show(&summary.all_time), show(&summary.recent)))
        .collect()
}

/// The CPU time in totals, or that it was not counted.
pub fn cpu_time(t: &Totals) -> String {
    if t.cpu_counted_builds == 0 {
        "not counted".into()
    } else {
        format_duration_secs(t.cpu_ms / 1000)
    }
}

fn line(record: &BuildRecord) -> BuildLine {
    let (ended, reason) = match &record.ended {
        BuildEnd::Built { .. } => ("done", None),
        BuildEnd::Failed { reason } => ("failed", Some(reason.clone())),
        BuildEnd::Abandoned { reason } => ("abandoned", Some(reason.clone())),
    };
    BuildLine {
        build_key: record.build_key.to_string(),
        recipe: record.recipe.clone(),
        ended: ended.into(),
        reason,
        finished_at_ms: record.finished_at_ms,
        build_ms: record.build_ms(),
        paused_ms: record.paused_ms,
        cpu_ms: record.cpu_ms,
    }
}

fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// The file in the data dir the newest proof is written to.
pub const PROOF_FILE: &str = "contributions.proof";

/// [`summarize`], with the proof written to `DATA_DIR/`[`PROOF_FILE`]
/// (replaced whole: written aside, then renamed).
pub fn summarize_to_file(store: &Store, key: &SecretKey, now_ms: u64) -> Result<Summary, String> {
    let (mut summary, proof) = summarize(store, key, now_ms)?;
    let path = store.dir().join(PROOF_FILE);
    let aside = store.dir().join(format!("{PROOF_FILE}.new"));
    std::fs::write(&aside, wire::canonical(&proof))
        .and_then(|()| std::fs::rename(&aside, &path))
        .map_err(|e| format!("cannot write the proof to {}: {e}", path.display()))?;
    summary.proof_file = Some(path.display().to_string());
    Ok(summary)
}

/// Reads a proof file (`kiln contributions --verify FILE`).
pub fn read_proof(path: &std::path::Path) -> Result<Proof, String> {
    let len = std::fs::metadata(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .len();
    if len > kiln_protocol::contrib::PROOF_BYTES_MAX as u64 {
        return Err(format!("{} is larger than any proof ({len} bytes)", path.display()));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    wire::decode::<Proof, { kiln_protocol::contrib::PROOF_BYTES_MAX }>(&bytes).map_err(|_| {
        format!(
            "{} is not a Kiln contribution proof (it does not decode as one); ask for the file `kiln contributions --proof FILE` writes",
            path.display()
        )
    })
}
