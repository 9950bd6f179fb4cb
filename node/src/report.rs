//! The farm's status as JSON: what `kiln status --json` prints and the
//! dashboard's `/api/status` serves, one shape for both.

use kiln_protocol::coord::{ContributorView, JobPhase, JobView, RequesterView, StatusReport, WorkerView};
use serde_json::json;

/// A worker's peer id, as `kiln node` prints it.
pub fn peer_of(key: &kiln_protocol::PublicKey) -> String {
    crate::net::identity::peer_id_of(key)
        .map(|p| p.to_string())
        .unwrap_or_else(|| key.to_string())
}

/// One job: its state, and once built, the artifact, its builder and log.
pub fn job_json(job: &JobView) -> serde_json::Value {
    let mut value = json!({
        "build_key": job.build_key.to_string(),
        "recipe": job.recipe_name, "version": job.recipe_version, "options": job.options,
        "state": job.phase.name(), "waiting_because": null, "worker": null,
        "artifact": null, "reason": null,
        "requesters": job.requesters, "failed_attempts": job.failed_attempts,
    });
    match &job.phase {
        JobPhase::Queued { waiting_because } => value["waiting_because"] = json!(waiting_because),
        JobPhase::Assigned { worker, attempt } => {
            value["worker"] = json!(peer_of(worker));
            value["attempt"] = json!(attempt);
        }
        JobPhase::Replicating { artifact } => value["artifact"] = json!(artifact.to_string()),
        JobPhase::Done { attestation }
        | JobPhase::Checked { attestation, .. }
        | JobPhase::Trusted { attestation, .. } => {
            if let Ok(a) = attestation.verify() {
                value["artifact"] = json!(a.artifact.to_string());
                value["artifact_bytes"] = json!(a.artifact_bytes);
                value["builder"] = json!(peer_of(&a.worker));
                value["log"] = json!(a.log.to_string());
                value["build_ms"] = json!(a.finished_at_ms.saturating_sub(a.started_at_ms));
            }
            value["checked"] = json!(checked_line(&job.phase));
            if let JobPhase::Checked { check, .. } = &job.phase {
                value["agreed"] = json!(builds_json(&check.agreed));
                value["disagreed"] = json!(builds_json(&check.disagreed));
            }
            if let JobPhase::Trusted { streak, .. } = &job.phase {
                value["streak"] = json!(streak);
            }
        }
        JobPhase::NotReproducible { attestations, .. } => {
            value["reason"] = json!(checked_line(&job.phase));
            value["builds"] = json!(builds_json(attestations));
        }
        JobPhase::Failed { reason, log, attempts } => {
            value["reason"] = json!(reason);
            value["log"] = json!(log.map(|l| l.to_string()));
            value["attempts"] = json!(attempts);
        }
        JobPhase::Cancelled => value["reason"] = json!("cancelled by every requester"),
        JobPhase::Log { .. } | JobPhase::Unknown => {}
    }
    value
}

/// How a finished build was checked, in words: `2 of 2 builders agreed,
/// 2 needed`, `built by 1 worker, not checked by another`, or why it is
/// not reproducible. `None` for a build not finished.
pub fn checked_line(phase: &JobPhase) -> Option<String> {
    match phase {
        JobPhase::Done { .. } => Some("built by 1 worker, not checked by another".into()),
        JobPhase::Checked { check, .. } => Some(format!("{}, {} needed", check.summary(), check.needed)),
        JobPhase::Trusted { streak, .. } => Some(kiln_protocol::build::trusted_summary(*streak)),
        JobPhase::NotReproducible { needed, attestations } => {
            let mut artifacts: Vec<_> = attestations
                .iter()
                .filter_map(|s| s.verify().ok().map(|a| a.artifact))
                .collect();
            artifacts.sort();
            artifacts.dedup();
            Some(format!(
                "not reproducible: {} builds gave {} different artifacts, and none was built by the {needed} agreeing builders needed",
                attestations.len(),
                artifacts.len()
            ))
        }
        _ => None,
    }
}

/// Each build as `{peer, artifact, log}`.
pub fn builds_json(attestations: &[kiln_protocol::Signed<kiln_protocol::Attestation>]) -> Vec<serde_json::Value> {
    attestations
        .iter()
        .filter_map(|s| s.verify().ok())
        .map(|a| json!({"peer": peer_of(&a.worker), "artifact": a.artifact.to_string(), "log": a.log.to_string()}))
        .collect()
}

pub fn status_json(
    coordinator: &str,
    report: &StatusReport,
    contributors: &[ContributorView],
    requesters: &[RequesterView],
) -> serde_json::Value {
    json!({
        "coordinator": coordinator,
        "pinned": report.pinned,
        "workers": report.workers.iter().map(|w| json!({
            "worker": w.worker.to_string(), "peer": peer_of(&w.worker), "system": w.system, "running_jobs": w.running_jobs,
            "max_jobs": w.max_jobs, "waiting_because": w.waiting_because, "seen_ms_ago": w.seen_ms_ago,
            "state": worker_state(w), "jobs": w.jobs.iter().map(|j| j.to_string()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "jobs_total": report.jobs_total,
        "jobs": report.jobs.iter().map(job_json).collect::<Vec<_>>(),
        "recent": report.recent.iter().map(job_json).collect::<Vec<_>>(),
        "contributors": contributors.iter().map(|c| json!({
            "worker": c.worker.to_string(), "peer": peer_of(&c.worker), "builds": c.builds, "build_ms": c.build_ms,
        })).collect::<Vec<_>>(),
        "requesters": requesters.iter().map(|r| json!({
            "requester": r.requester.to_string(), "queued": r.queued, "running": r.running,
            "oldest_wait_ms": r.oldest_wait_ms, "share_last_hour": f64::from(r.share_permille) / 1000.0,
        })).collect::<Vec<_>>(),
        "mail": json!({
            "pending": report.mail.pending, "delivered": report.mail.delivered, "last_error": report.mail.last_error,
            "route": report.mail.route,
        }),
    })
}

/// `building`, `idle`, or why the worker takes nothing now.
pub fn worker_state(w: &WorkerView) -> String {
    match &w.waiting_because {
        Some(why) => format!("waiting: {why}"),
        None if w.running_jobs > 0 => "building".into(),
        None => "idle".into(),
    }
}
