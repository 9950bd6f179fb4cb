//! The messages: a subject naming what was built and for what, and a
//! plain-text body with the artifact, how to fetch and check it, and the
//! signed attestation (or, for a failure, why and the log's last lines).

use std::collections::BTreeMap;

use kiln_protocol::messages::{JobRequest, Settlement};
use kiln_protocol::wire;
use lettre::message::header::ContentTransferEncoding;
use lettre::message::Body;

/// The body as plain 7-bit text when it is valid as such (ASCII, no line
/// over RFC 5322's 998 characters), so hashes and commands stay whole for
/// anyone reading the raw message; encoded otherwise. (lettre's own choice
/// encodes every line over 76 characters.)
pub(super) fn plain_body(text: &str) -> Body {
    const LINE_MAX: usize = 998;
    let plain = text.is_ascii() && !text.contains(['\0', '\r']) && text.lines().all(|l| l.len() <= LINE_MAX);
    if plain {
        Body::dangerous_pre_encoded(
            text.replace('\n', "\r\n").into_bytes(),
            ContentTransferEncoding::SevenBit,
        )
    } else {
        Body::new(text.to_string())
    }
}

/// `os=linux arch=x86_64 site=lab`: the system a build is for, os and arch
/// first, then every other requirement (`--target` labels, tools).
fn target(job: &JobRequest) -> String {
    let mut parts = Vec::new();
    for key in ["os", "arch"] {
        if let Some(c) = job.requirements.get(key) {
            parts.push(format!("{key}{c}"));
        }
    }
    for (key, c) in job.requirements.iter() {
        if key != "os" && key != "arch" {
            parts.push(format!("{key}{c}"));
        }
    }
    if parts.is_empty() {
        "any system".into()
    } else {
        parts.join(" ")
    }
}

/// The longest subject line written (a recipe may have many options).
const SUBJECT_CHARS_MAX: usize = 200;

/// `kiln: hello-c 1.0.0 for os=linux arch=x86_64 site=lab (greeting=loud)
/// is built`: what was asked, so requests that differ in options or
/// targets get different subjects.
fn subject(job: &JobRequest, ended: &str) -> String {
    let options = if job.options.is_empty() {
        String::new()
    } else {
        format!(" ({})", options_line(&job.options))
    };
    let mut asked = format!(
        "{} {} for {}{options}",
        job.recipe_name,
        job.recipe_version,
        target(job)
    );
    if asked.chars().count() > SUBJECT_CHARS_MAX {
        asked = asked.chars().take(SUBJECT_CHARS_MAX - 1).collect::<String>() + "…";
    }
    format!("kiln: {asked} {ended}")
}

fn options_line(options: &BTreeMap<String, String>) -> String {
    if options.is_empty() {
        return "(none)".into();
    }
    options
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A worker as its peer id, the name `kiln status` shows.
fn worker_name(worker: &kiln_protocol::PublicKey) -> String {
    crate::net::identity::peer_id_of(worker)
        .map(|p| p.to_string())
        .unwrap_or_else(|| worker.to_string())
}

/// How the result was checked, in the lines of the mail: who agreed, who
/// built something else and what.
fn checked_lines(settlement: &Settlement) -> String {
    if let Settlement::Trusted { streak, .. } = settlement {
        return format!(
            "Checked:    {} (--verify auto: a worker whose results keep agreeing with\n            \
             independent builds builds alone, spot-checked at random)\n",
            kiln_protocol::build::trusted_summary(*streak)
        );
    }
    let Settlement::Checked { check, .. } = settlement else {
        return "Checked:    built by 1 worker, not checked by another (ask with --verify 2 to have \
                independent builders agree)\n"
            .into();
    };
    let mut lines = format!("Checked:    {}, {} needed\n", check.summary(), check.needed);
    for signed in &check.agreed {
        if let Ok(a) = signed.verify() {
            lines += &format!("Agreed:     worker {} built {}\n", worker_name(&a.worker), a.artifact);
        }
    }
    for signed in &check.disagreed {
        if let Ok(a) = signed.verify() {
            lines += &format!(
                "Disagreed:  worker {} built {} (not this artifact)\n",
                worker_name(&a.worker),
                a.artifact
            );
        }
    }
    lines
}

pub(super) fn compose_done(job: &JobRequest, settlement: &Settlement) -> (String, String) {
    let (Some(attestation), holders) = (settlement.attestation(), settlement.holders()) else {
        return compose_failed(job, settlement, None);
    };
    let Ok(a) = attestation.verify() else {
        return compose_failed(job, settlement, None);
    };
    let builder = worker_name(&a.worker);
    let checked = checked_lines(settlement);
    let seconds = a.finished_at_ms.saturating_sub(a.started_at_ms) as f64 / 1000.0;
    let subject = subject(job, "is built");
    // In lines a mail client shows whole.
    let hex = kiln_protocol::hash::to_hex(&wire::canonical(attestation));
    let signed = hex
        .as_bytes()
        .chunks(64)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("\n");
    let body = format!(
        "Your build of {name} {version} for {target} is ready.\n\
         \n\
         Artifact:   {artifact}\n\
         Size:       {bytes} bytes ({size})\n\
         Fetch it:   kiln fetch {artifact} -o {name}-{version}.tar\n\
         Check it:   b3sum {name}-{version}.tar  (prints {artifact})\n\
         Options:    {options}\n\
         Requires:   {requirements}\n\
         Built by:   worker {builder}\n\
         {checked}\
         Build time: {seconds:.1} s\n\
         Held by:    {holders} peers\n\
         Build key:  {build_key}\n\
         Build log:  kiln fetch {log}\n\
         \n\
         Attestation, signed by the worker's ed25519 key {worker}:\n\
         recipe {recipe}, system digest {system}, started {started} ms, finished {finished} ms (unix time).\n\
         Signed envelope (hex):\n{signed}\n",
        name = job.recipe_name,
        version = job.recipe_version,
        target = target(job),
        artifact = a.artifact,
        bytes = a.artifact_bytes,
        size = kiln_protocol::system::format_bytes(a.artifact_bytes),
        options = options_line(&job.options),
        requirements = job.requirements,
        build_key = job.build_key,
        log = a.log,
        worker = a.worker,
        recipe = a.recipe_id,
        system = a.system_digest,
        started = a.started_at_ms,
        finished = a.finished_at_ms,
    );
    (subject, body)
}

pub(super) fn compose_failed(job: &JobRequest, settlement: &Settlement, log_tail: Option<&str>) -> (String, String) {
    let (reason, log, attempts) = match settlement {
        Settlement::Failed {
            reason, log, attempts, ..
        } => (reason.clone(), *log, *attempts),
        Settlement::Done { .. }
        | Settlement::Checked { .. }
        | Settlement::NotReproducible { .. }
        | Settlement::Trusted { .. } => ("the build's attestation does not verify".to_string(), None, 0),
    };
    let subject = subject(job, "failed");
    let log_line = log.map(|l| format!("Full log:   kiln fetch {l}\n")).unwrap_or_default();
    let tail = log_tail
        .map(|t| format!("\nThe last lines of its log:\n\n{t}\n"))
        .unwrap_or_default();
    let body = format!(
        "Your build of {name} {version} for {target} failed.\n\
         \n\
         What failed: {reason}\n\
         Attempts:   {attempts}\n\
         Options:    {options}\n\
         Build key:  {build_key}\n\
         {log_line}{tail}",
        name = job.recipe_name,
        version = job.recipe_version,
        target = target(job),
        options = options_line(&job.options),
        build_key = job.build_key,
    );
    (subject, body)
}

/// Every build of a recipe whose builders disagreed: each artifact with
/// the workers that built it, and how to look at each.
pub(super) fn compose_not_reproducible(job: &JobRequest, settlement: &Settlement) -> (String, String) {
    let Settlement::NotReproducible {
        needed, attestations, ..
    } = settlement
    else {
        return compose_failed(job, settlement, None);
    };
    let mut by_artifact: BTreeMap<kiln_protocol::Hash, Vec<(String, kiln_protocol::Hash)>> = BTreeMap::new();
    for a in attestations.iter().filter_map(|s| s.verify().ok()) {
        by_artifact
            .entry(a.artifact)
            .or_default()
            .push((worker_name(&a.worker), a.log));
    }
    let mut builds = String::new();
    for (artifact, builders) in &by_artifact {
        builds += &format!("Artifact:   {artifact}\n");
        for (worker, log) in builders {
            builds += &format!("  built by worker {worker}, log: kiln fetch {log}\n");
        }
        builds += &format!("  fetch it:  kiln fetch {artifact}\n");
    }
    let subject = subject(job, "is not reproducible");
    let body = format!(
        "Your build of {name} {version} for {target} is not reproducible: {built} \
         independent builds gave {artifacts} different artifacts, and no artifact was built by the \
         {needed} agreeing builders needed.\n\
         \n\
         {builds}\
         \n\
         Options:    {options}\n\
         Build key:  {build_key}\n\
         \n\
         A recipe builds reproducibly when its output depends only on its inputs: no clock, \
         random numbers, host names or build paths in what it writes. Compare the artifacts \
         (for example with diffoscope) to see what differs.\n",
        name = job.recipe_name,
        version = job.recipe_version,
        target = target(job),
        built = attestations.len(),
        artifacts = by_artifact.len(),
        options = options_line(&job.options),
        build_key = job.build_key,
    );
    (subject, body)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use kiln_protocol::{Hash, Requirements};

    fn job(options: &[(&str, &str)], requirements: &[&str]) -> JobRequest {
        let mut wanted = Requirements::new();
        for r in requirements {
            wanted.set_from_str(r).unwrap();
        }
        JobRequest {
            build_key: Hash::of(b"k"),
            recipe_id: Hash::of(b"r"),
            recipe_name: "hello-c".into(),
            recipe_version: "1.0.0".into(),
            publisher: None,
            options: options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            requirements: wanted,
            emails: vec![],
            requested_at_ms: 0,
        }
    }

    #[test]
    fn a_subject_names_the_options_and_targets_asked_for() {
        let plain = subject(&job(&[], &["os=linux", "arch=x86_64"]), "is built");
        assert_eq!(plain, "kiln: hello-c 1.0.0 for os=linux arch=x86_64 is built");
        let loud = subject(&job(&[("greeting", "loud")], &["os=linux", "arch=x86_64"]), "is built");
        let lab = subject(
            &job(&[("greeting", "loud")], &["os=linux", "arch=x86_64", "site=lab"]),
            "failed",
        );
        assert_eq!(
            loud,
            "kiln: hello-c 1.0.0 for os=linux arch=x86_64 (greeting=loud) is built"
        );
        assert_eq!(
            lab,
            "kiln: hello-c 1.0.0 for os=linux arch=x86_64 site=lab (greeting=loud) failed"
        );
        let many: Vec<(String, String)> = (0..100).map(|n| (format!("option{n}"), "value".to_string())).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let long = subject(&job(&many, &["os=linux"]), "is built");
        assert!(
            long.chars().count() < SUBJECT_CHARS_MAX + 20 && long.ends_with("… is built"),
            "{long}"
        );
    }
}
