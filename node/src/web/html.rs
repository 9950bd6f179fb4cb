//! The dashboard's pages, rendered on the server as plain HTML; every
//! piece of text that came from a peer is escaped.

use std::fmt::Write as _;

use kiln_protocol::coord::{ContributorView, JobPhase, JobView, RequesterView, StatusReport};
use kiln_protocol::system::format_duration_secs;
use kiln_protocol::Hash;

use super::state::{BuildPage, LogSource, Snapshot};
use super::{PEERS_SHOWN_MAX, REFRESH_S};
use crate::contributions::{rows, Summary};
use crate::report::{peer_of, worker_state};

/// Escapes text for HTML.
pub(super) fn esc(text: &str) -> String {
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
.done{color:#070}.failed,.not-reproducible{color:#b00}.building,.replicating{color:#a60}.queued{color:#555}.muted{color:#777}";

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

pub(super) fn render_index(s: &Snapshot) -> String {
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
        Ok((coordinator, report, _, _)) => {
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
    if let Some(network) = &s.network {
        let reach = match network.reachability {
            crate::net::Reachability::Public => "reachable: peers can dial this node".to_string(),
            crate::net::Reachability::Private => format!(
                "behind NAT: reached through {}",
                if network.relayed_addresses.is_empty() {
                    "no relay yet".to_string()
                } else {
                    network.relayed_addresses.join(", ")
                }
            ),
            crate::net::Reachability::Unknown => "not tested (no NAT seen between this node and its peers)".into(),
        };
        let _ = write!(
            b,
            "<tr><th>reachability</th><td id=\"reachability\">{}</td></tr>",
            esc(&reach)
        );
    }
    let _ = write!(b, "<tr><th>peers</th><td>{} connected", s.peers.len());
    for p in s.peers.iter().take(PEERS_SHOWN_MAX) {
        let text = p.to_string();
        let path = s
            .network
            .as_ref()
            .and_then(|n| n.peers.iter().find(|(peer, _)| *peer == text))
            .map(|(_, kind)| format!(" ({})", kind.as_str()))
            .unwrap_or_default();
        let _ = write!(b, "<br><code>{p}</code>{path}");
    }
    b.push_str("</td></tr></table>");
    if let Ok((_, report, contributors, requesters)) = &s.farm {
        render_farm(&mut b, report);
        render_requesters(&mut b, requesters);
        render_contributors(&mut b, contributors);
    }
    if let Some(gave) = &s.gave {
        render_gave(&mut b, gave);
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
    render_workers(b, report);
    render_queue(b, report);
    render_recent(b, report);
    render_mail(b, report);
}

fn render_requesters(b: &mut String, requesters: &[RequesterView]) {
    if requesters.is_empty() {
        return;
    }
    b.push_str("<h2>Requesters</h2><table id=\"requesters\"><tr><th>requester</th><th>queued</th><th>running</th><th>oldest waits</th><th>share of workers, last hour</th></tr>");
    for r in requesters {
        let _ = write!(
            b,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{:.1} %</td></tr>",
            short(&r.requester.to_string()),
            r.queued,
            r.running,
            format_duration_secs(r.oldest_wait_ms / 1000),
            f64::from(r.share_permille) / 10.0
        );
    }
    b.push_str("</table>");
}

fn render_contributors(b: &mut String, contributors: &[ContributorView]) {
    if contributors.is_empty() {
        return;
    }
    b.push_str("<h2>Top contributors</h2><table id=\"contributors\"><tr><th>worker</th><th>builds</th><th>build time</th></tr>");
    for c in contributors {
        let _ = write!(
            b,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
            peer_of(&c.worker),
            c.builds,
            format_duration_secs(c.build_ms / 1000)
        );
    }
    b.push_str("</table>");
}

fn render_gave(b: &mut String, gave: &Summary) {
    let _ = write!(
        b,
        "<h2>What this machine gave</h2><table id=\"gave\"><tr><th></th><th>all time</th><th>last {} days</th></tr>",
        gave.window_days
    );
    for (name, all_time, recent) in rows(gave) {
        let _ = write!(b, "<tr><th>{name}</th><td>{all_time}</td><td>{recent}</td></tr>");
    }
    b.push_str("</table><p class=\"muted\">A signed proof: <code>kiln contributions</code> on this machine.</p>");
}

fn render_workers(b: &mut String, report: &StatusReport) {
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
}

fn render_queue(b: &mut String, report: &StatusReport) {
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
}

fn render_recent(b: &mut String, report: &StatusReport) {
    let _ = write!(b, "<h2>Recent builds ({})</h2>", report.recent.len());
    if report.recent.is_empty() {
        b.push_str("<p class=\"muted\">No build has ended since the coordinator started.</p>");
    } else {
        b.push_str(
            "<table id=\"builds\"><tr><th>build</th><th>recipe</th><th>options</th><th>state</th><th>result</th></tr>",
        );
        for job in &report.recent {
            let result = match &job.phase {
                JobPhase::Done { attestation } | JobPhase::Checked { attestation, .. } => attestation
                    .verify()
                    .map(|a| {
                        format!(
                            "artifact <code>{}</code>, {} bytes, built by <code>{}</code> in {:.1} s; {}",
                            a.artifact,
                            a.artifact_bytes,
                            short(&peer_of(&a.worker)),
                            a.finished_at_ms.saturating_sub(a.started_at_ms) as f64 / 1000.0,
                            esc(&crate::report::checked_line(&job.phase).unwrap_or_default())
                        )
                    })
                    .unwrap_or_else(|_| "attestation does not verify".into()),
                JobPhase::Failed { reason, attempts, .. } => format!("{} ({attempts} attempts)", esc(reason)),
                JobPhase::NotReproducible { .. } => esc(&crate::report::checked_line(&job.phase).unwrap_or_default()),
                _ => String::new(),
            };
            let name = job.phase.name();
            let class = name.replace(' ', "-");
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{} {}</td><td>{}</td><td class=\"{class}\">{name}</td><td>{result}</td></tr>",
                build_link(&job.build_key),
                esc(&job.recipe_name),
                esc(&job.recipe_version),
                options(job)
            );
        }
        b.push_str("</table>");
    }
}

fn render_mail(b: &mut String, report: &StatusReport) {
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

pub(super) fn render_build(p: &BuildPage) -> String {
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
    render_phase(&mut b, &job.phase);
    b.push_str("</table><h2>Log</h2>");
    render_log(&mut b, p);
    page(
        &format!("Kiln: {} {}", job.recipe_name, name),
        !job.phase.is_final(),
        &b,
    )
}

/// The rows that say where a build stands.
fn render_phase(b: &mut String, phase: &JobPhase) {
    match phase {
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
        JobPhase::Done { attestation }
        | JobPhase::Checked { attestation, .. }
        | JobPhase::Trusted { attestation, .. } => {
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
            if let Some(line) = crate::report::checked_line(phase) {
                let _ = write!(b, "<tr><th>checked</th><td id=\"checked\">{}</td></tr>", esc(&line));
            }
            if let JobPhase::Checked { check, .. } = phase {
                for a in check.disagreed.iter().filter_map(|s| s.verify().ok()) {
                    let _ = write!(
                        b,
                        "<tr><th>disagreed</th><td class=\"failed\"><code>{}</code> built <code>{}</code></td></tr>",
                        peer_of(&a.worker),
                        a.artifact
                    );
                }
            }
        }
        JobPhase::NotReproducible { attestations, .. } => {
            if let Some(line) = crate::report::checked_line(phase) {
                let _ = write!(b, "<tr><th>failed</th><td class=\"failed\">{}</td></tr>", esc(&line));
            }
            for a in attestations.iter().filter_map(|s| s.verify().ok()) {
                let _ = write!(
                    b,
                    "<tr><th>build</th><td><code>{}</code> built <code>{}</code></td></tr>",
                    peer_of(&a.worker),
                    a.artifact
                );
            }
        }
        JobPhase::Failed { reason, attempts, .. } => {
            let _ = write!(
                b,
                "<tr><th>failed</th><td class=\"failed\">{} ({attempts} attempts)</td></tr>",
                esc(reason)
            );
        }
        JobPhase::Cancelled => {
            let _ = write!(
                b,
                "<tr><th>cancelled</th><td>every requester took its request back</td></tr>"
            );
        }
        JobPhase::Log { .. } | JobPhase::Unknown => {}
    }
}

/// A build's log: live, the end of the stored one, or how to fetch it.
fn render_log(b: &mut String, p: &BuildPage) {
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
        None => match log_hash(&p.job.phase) {
            Some(hash) => {
                let _ = write!(
                    b,
                    "<p class=\"muted\">This node does not hold the log: <code>kiln fetch {hash}</code></p>"
                );
            }
            None => b.push_str("<p class=\"muted\">No log yet.</p>"),
        },
    }
}

/// The stored log of an ended build.
fn log_hash(phase: &JobPhase) -> Option<Hash> {
    match phase {
        JobPhase::Done { attestation } | JobPhase::Checked { attestation, .. } => {
            attestation.verify().ok().map(|a| a.log)
        }
        JobPhase::Failed { log, .. } => *log,
        _ => None,
    }
}

pub(super) fn render_error(message: &str) -> String {
    page(
        "Kiln dashboard",
        false,
        &format!("<h1>Not here</h1><p>{}</p>", esc(message)),
    )
}
