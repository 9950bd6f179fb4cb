//! `kiln request` and `kiln status`: what the user sees. The work is done
//! by `kiln_node::requester` and `kiln_node::coord_client`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use kiln_node::clock::now_ms;
use kiln_node::control::{self, ControlReply, ControlRequest};
use kiln_node::coord_client;
use kiln_node::report::{builds_json, peer_of, status_json, worker_state};
use kiln_node::requester::{self, RequestSpec};
use kiln_node::EphemeralNode;
use kiln_protocol::build::{builders_needed, trusted_summary, verify_name, VERIFY_AUTO};
use kiln_protocol::coord::{
    CancelOutcome, Cancellation, CoordReplyV1, CoordRequest, JobPhase, JobView, Priority, RequesterView, StatusReport,
    Submission,
};
use kiln_protocol::{Attestation, Hash, Recipe, SecretKey, Signed};
use libp2p::Multiaddr;
use serde_json::json;

#[derive(Clone)]
pub struct RequestArgs {
    pub emails: Vec<String>,
    pub recipe: String,
    pub options: Vec<String>,
    pub targets: Vec<String>,
    pub bootstrap: Vec<Multiaddr>,
    pub wait: bool,
    pub fetch: Option<PathBuf>,
    pub json: bool,
    pub accept_versions: Option<String>,
    /// Builders with distinct keys that must agree on the artifact, or
    /// `VERIFY_AUTO`; `None`: the recipe's default, else one.
    pub verify: Option<u32>,
    /// Only these builders' attestations count (none given: any builder's).
    pub trust_builders: Vec<libp2p::PeerId>,
    /// Only these peers are taken as the coordinator (none given: any).
    pub trust_coordinators: Vec<libp2p::PeerId>,
    /// Where the job stands among this requester's own.
    pub priority: Priority,
    /// The requester's key, which signs the request (`DATA_DIR/requester.key`).
    pub requester_key: PathBuf,
}

/// The requester's key file in its data dir (created on first use).
pub const REQUESTER_KEY_FILE: &str = "requester.key";

impl RequestArgs {
    /// The policy asked for (once the recipe's default is applied).
    fn verify(&self) -> u32 {
        self.verify.unwrap_or(1)
    }

    /// The attestations this requester's policy lets count: those of
    /// trusted builders, when any are named.
    fn trusted(&self, attestations: &[Signed<Attestation>]) -> Vec<Signed<Attestation>> {
        attestations
            .iter()
            .filter(|a| self.trusts_builder(&a.signer()))
            .cloned()
            .collect()
    }

    fn trusts_builder(&self, key: &kiln_protocol::PublicKey) -> bool {
        self.trust_builders.is_empty()
            || kiln_node::identity::peer_id_of(key).is_some_and(|peer| self.trust_builders.contains(&peer))
    }

    /// Fails a build whose settled attestation is by a builder this
    /// requester does not trust.
    fn check_builder(&self, build_key: Hash, a: &Attestation) -> anyhow::Result<()> {
        if !self.trusts_builder(&a.worker) {
            bail!(
                "build {build_key} was built by worker {}, which is not among the builders you trust (--trust-builder); its artifact {} is not accepted",
                peer_of(&a.worker),
                a.artifact
            );
        }
        Ok(())
    }
}

fn parse_options(options: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    options
        .iter()
        .map(|o| match o.split_once('=') {
            Some((name, value)) => Ok((name.trim().to_string(), value.trim().to_string())),
            None => bail!("-o {o:?} is not NAME=VALUE; `kiln recipe options RECIPE` lists the options"),
        })
        .collect()
}

/// `kiln request`; returns the artifact when the build is done by the time
/// it returns.
pub async fn run(args: RequestArgs) -> anyhow::Result<Option<Hash>> {
    if args.bootstrap.is_empty() {
        bail!("no bootstrap peer to join the network through: pass --bootstrap MULTIADDR or set KILN_BOOTSTRAP");
    }
    let options = parse_options(&args.options)?;
    let spec = RequestSpec {
        emails: &args.emails,
        options: &options,
        targets: &args.targets,
    };
    // Check what can be checked before joining the network.
    for email in &args.emails {
        kiln_protocol::messages::check_email(email).map_err(anyhow::Error::msg)?;
    }
    let key = kiln_node::identity::load_or_create_at(&args.requester_key)?;
    let dir = tempfile::tempdir().context("cannot create a temporary data dir")?;
    let node = EphemeralNode::start(dir.path(), args.bootstrap.clone()).await?;
    let result = request(&node, &args, &spec, &key).await;
    node.stop().await;
    result
}

async fn request(
    node: &EphemeralNode,
    args: &RequestArgs,
    spec: &RequestSpec<'_>,
    key: &SecretKey,
) -> anyhow::Result<Option<Hash>> {
    let (recipe, publisher) = load_recipe(node, &args.recipe).await?;
    // A request that does not say takes the recipe's default.
    let resolved;
    let args = match (args.verify, recipe.verify) {
        (None, Some(verify)) => {
            resolved = RequestArgs {
                verify: Some(verify),
                ..args.clone()
            };
            &resolved
        }
        _ => args,
    };
    let job = requester::prepare_job(&recipe, publisher, spec, now_ms())?;
    let build_key = job.build_key;
    let start = coord_client::bootstrap_peers(&args.bootstrap);
    // The DHT's record counts only as far as it meets the policy asked for.
    let found = args.trusted(&requester::lookup_built(&node.net, build_key).await);
    // Under `auto` a record (which anyone can write) counts only with two
    // agreeing builders: a streak is the coordinator's to judge. With
    // --trust-coordinator alone, one stranger's record is not the trusted
    // coordinator's word: it is not believed.
    let record_vouched =
        args.trust_coordinators.is_empty() || builders_needed(args.verify()) >= 2 || !args.trust_builders.is_empty();
    if let Some(agreed) =
        requester::agreeing(&found, build_key, builders_needed(args.verify())).filter(|_| record_vouched)
    {
        return finish_built(node, args, build_key, &agreed).await;
    }
    publish_recipe(node, &args.recipe, recipe.id()).await?;
    let accept_versions = match &args.accept_versions {
        Some(text) => Some(kiln_protocol::system::VersionRange::parse(text).map_err(anyhow::Error::msg)?),
        None => None,
    };
    // Signed by the requester's key, for this client's stream only.
    let submission = Submission {
        job,
        accept_versions,
        verify: args.verify(),
        priority: args.priority,
        sender: node.key,
    };
    let submit = CoordRequest::SubmitV3 {
        submission: Box::new(Signed::sign(key, &submission)),
    };
    let (coordinator, reply, _) =
        coord_client::ask_trusted_coordinator(&node.net, &start, &args.trust_coordinators, &submit).await?;
    match reply {
        CoordReplyV1::Built { attestations } => {
            // Another version's build (`--accept-versions`) has another key.
            let key = attestations
                .first()
                .and_then(|a| a.verify().ok())
                .map_or(build_key, |a| a.build_key);
            // Under `auto` the coordinator's answer is its judgement of
            // the builder's streak: one attestation may be enough.
            let needed = if args.verify() == VERIFY_AUTO { 1 } else { args.verify() };
            match requester::agreeing(&args.trusted(&attestations), key, needed) {
                Some(agreed) => finish_built(node, args, key, &agreed).await,
                None if !args.trust_builders.is_empty() => bail!(
                    "the coordinator answered that build {build_key} is done, but not by {needed} of the builders you trust (--trust-builder); ask without --trust-builder to see who built it"
                ),
                None => bail!(
                    "the coordinator answered that build {build_key} is done, but sent fewer than the {needed} agreeing builders' attestations asked for (--verify); it may run another kiln version: ask its operator"
                ),
            }
        }
        CoordReplyV1::Accepted { merged, phase, .. } => {
            if args.json && !args.wait && args.fetch.is_none() {
                println!(
                    "{}",
                    json!({"build_key": build_key.to_string(), "state": phase.name(), "merged": merged,
                           "coordinator": coordinator.to_string()})
                );
            } else if !args.json {
                println!("{build_key}");
                say!(
                    "{} build {build_key} of {} {}; coordinator {coordinator}",
                    if merged { "joined the queued" } else { "queued" },
                    recipe.name,
                    recipe.version
                );
                say!("{} will be emailed when it ends", args.emails.join(", "));
            }
            if args.wait || args.fetch.is_some() {
                return follow(node, args, build_key, &start).await.map(Some);
            }
            Ok(None)
        }
        CoordReplyV1::Refused { reason } => bail!("the coordinator refused the request: {reason}"),
        _ => bail!("the coordinator answered the request with something else than an acceptance; it may run another kiln version: try again, or ask its operator"),
    }
}

/// Reads a recipe from a file (hashing its source, storing nothing yet:
/// see [`publish_recipe`]) or fetches it from the network by its id.
async fn load_recipe(
    node: &EphemeralNode,
    recipe: &str,
) -> anyhow::Result<(Recipe, Option<kiln_protocol::PublisherSignature>)> {
    let path = Path::new(recipe);
    if !path.exists() {
        if let Ok(id) = recipe.parse::<Hash>() {
            kiln_node::blobs::fetch(&node.net, node.store()?, id, Arc::new(kiln_node::blobs::NoProgress))
                .await
                .with_context(|| format!("cannot fetch recipe {id} from the network"))?;
            let recipe = Recipe::from_canonical_bytes(&node.store()?.read(&id)?)
                .with_context(|| format!("blob {id} is not a recipe"))?;
            return Ok((recipe, None));
        }
        bail!("recipe {recipe:?} is neither a file nor a recipe id (64 hex characters)");
    }
    Ok(requester::read_recipe(path)?)
}

/// Stores the recipe file and its packed source and announces them, for
/// the coordinator to fetch (from this client first). Only for a build to
/// submit: a request answered by an existing build writes nothing. A
/// recipe given by id was fetched into the store already.
async fn publish_recipe(node: &EphemeralNode, recipe: &str, id: Hash) -> anyhow::Result<()> {
    let path = Path::new(recipe);
    if !path.exists() {
        return Ok(());
    }
    let (stored, _) = requester::load_recipe_into(node.store()?, path)?;
    if stored.id() != id {
        bail!(
            "recipe {} or its source changed while the request ran (id {} became {}); run the request again",
            path.display(),
            id,
            stored.id()
        );
    }
    // The announcements walk the DHT at once, not one after the other.
    let mut announcing = tokio::task::JoinSet::new();
    for (hash, _) in node.store()?.list() {
        let net = node.net.clone();
        announcing.spawn(async move { net.provide(hash).await });
    }
    while announcing.join_next().await.is_some() {}
    Ok(())
}

/// Fetches a recipe by its id through an ephemeral node.
pub async fn fetch_recipe(id: Hash, bootstrap: Vec<Multiaddr>) -> anyhow::Result<Recipe> {
    if bootstrap.is_empty() {
        bail!("{id} is not a file; to fetch it as a recipe id, pass --bootstrap MULTIADDR or set KILN_BOOTSTRAP");
    }
    let dir = tempfile::tempdir().context("cannot create a temporary data dir")?;
    let node = EphemeralNode::start(dir.path(), bootstrap).await?;
    let loaded = load_recipe(&node, &id.to_string()).await;
    node.stop().await;
    Ok(loaded?.0)
}

/// A build found done: `agreed` holds one attestation per builder of its
/// artifact, at least as many as `--verify` asked for.
async fn finish_built(
    node: &EphemeralNode,
    args: &RequestArgs,
    build_key: Hash,
    agreed: &[Signed<Attestation>],
) -> anyhow::Result<Option<Hash>> {
    let Some(attestation) = agreed.first() else {
        bail!("no attestation of build {build_key} was found");
    };
    let a = attestation.verify()?;
    let checked = builders_line(agreed.len());
    if args.json {
        let builders: Vec<_> = agreed
            .iter()
            .filter_map(|s| s.verify().ok())
            .map(|a| peer_of(&a.worker))
            .collect();
        println!(
            "{}",
            json!({"build_key": build_key.to_string(), "state": "done", "artifact": a.artifact.to_string(),
                   "attestation": attestation_json(&a), "checked": checked, "builders": builders})
        );
    } else {
        println!("{}", a.artifact);
        say!(
            "already built: build {build_key} is artifact {} ({} bytes)",
            a.artifact,
            a.artifact_bytes
        );
        say!("{checked}");
        say!("fetch it with: kiln fetch {}", a.artifact);
    }
    if let Some(path) = &args.fetch {
        fetch_artifact(node, a.artifact, path).await?;
    }
    Ok(Some(a.artifact))
}

/// How many builders vouch for a build found done, in words.
fn builders_line(agreeing: usize) -> String {
    if agreeing <= 1 {
        "checked: built by 1 worker, not checked by another".into()
    } else {
        format!("checked: {agreeing} builders with distinct keys built this same artifact")
    }
}

pub fn attestation_json(a: &Attestation) -> serde_json::Value {
    json!({
        "build_key": a.build_key.to_string(),
        "recipe_id": a.recipe_id.to_string(),
        "artifact": a.artifact.to_string(),
        "artifact_bytes": a.artifact_bytes,
        "log": a.log.to_string(),
        "worker": a.worker.to_string(),
        "worker_peer": peer_of(&a.worker),
        "system_digest": a.system_digest.to_string(),
        "started_at_ms": a.started_at_ms,
        "finished_at_ms": a.finished_at_ms,
    })
}

async fn fetch_artifact(node: &EphemeralNode, artifact: Hash, path: &Path) -> anyhow::Result<()> {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let progress = Arc::new(crate::progress::Bar::new(&artifact));
    let result = node.fetch(artifact, Some(&path), progress.clone()).await;
    progress.finish();
    result.with_context(|| format!("cannot fetch artifact {artifact}"))?;
    say!("artifact written to {}", path.display());
    Ok(())
}

/// `--wait`: prints each phase as it changes, then fetches if asked.
async fn follow(
    node: &EphemeralNode,
    args: &RequestArgs,
    build_key: Hash,
    start: &[libp2p::PeerId],
) -> anyhow::Result<Hash> {
    let mut phases = crate::progress::Phases::new();
    let end = coord_client::watch(&node.net, start, &args.trust_coordinators, build_key, |phase| {
        phases.show(describe(phase))
    })
    .await;
    phases.finish();
    let end = end?;
    let checked = kiln_node::report::checked_line(&end);
    match &end {
        JobPhase::Done { attestation }
        | JobPhase::Checked { attestation, .. }
        | JobPhase::Trusted { attestation, .. } => {
            let a = attestation.verify()?;
            let vouching = check_of(&end).map_or_else(|| vec![attestation.clone()], |c| c.agreed.clone());
            if args.trusted(&vouching).is_empty() {
                args.check_builder(build_key, &a)?;
            }
            if args.json {
                let mut out = json!({"build_key": build_key.to_string(), "state": "done",
                    "artifact": a.artifact.to_string(), "attestation": attestation_json(&a), "checked": checked});
                if let Some(check) = check_of(&end) {
                    out["agreed"] = json!(builds_json(&check.agreed));
                    out["disagreed"] = json!(builds_json(&check.disagreed));
                }
                if let JobPhase::Trusted { streak, .. } = &end {
                    out["streak"] = json!(streak);
                }
                println!("{out}");
            } else {
                println!("{}", a.artifact);
                if let Some(line) = &checked {
                    say!("checked: {line}");
                }
                for a in check_of(&end)
                    .iter()
                    .flat_map(|c| &c.disagreed)
                    .filter_map(|s| s.verify().ok())
                {
                    say!("disagreed: worker {} built {} instead", peer_of(&a.worker), a.artifact);
                }
            }
            let agreed = check_of(&end).map_or(1, |c| c.agreed.len());
            let enough = match args.verify() {
                VERIFY_AUTO => {
                    matches!(end, JobPhase::Trusted { .. }) || agreed >= builders_needed(VERIFY_AUTO) as usize
                }
                n => agreed >= n as usize,
            };
            if !enough {
                bail!(
                    "build {build_key} was accepted by {agreed} builder(s), fewer than --verify {} asks for; the coordinator may run another kiln version",
                    verify_name(args.verify())
                );
            }
            if let Some(path) = &args.fetch {
                fetch_artifact(node, a.artifact, path).await?;
            }
            Ok(a.artifact)
        }
        JobPhase::Failed { reason, log, attempts } => {
            if args.json {
                println!(
                    "{}",
                    json!({"build_key": build_key.to_string(), "state": "failed", "reason": reason,
                    "log": log.map(|l| l.to_string()), "attempts": attempts})
                );
            }
            let log = log.map(|l| format!("; its log: kiln fetch {l}")).unwrap_or_default();
            bail!("build {build_key} failed after {attempts} attempt(s): {reason}{log}")
        }
        JobPhase::NotReproducible { attestations, .. } => {
            let line = checked.unwrap_or_default();
            if args.json {
                println!(
                    "{}",
                    json!({"build_key": build_key.to_string(), "state": "not reproducible", "reason": line,
                           "builds": builds_json(attestations)})
                );
            }
            let builds: Vec<String> = attestations
                .iter()
                .filter_map(|s| s.verify().ok())
                .map(|a| format!("worker {} built {}", peer_of(&a.worker), a.artifact))
                .collect();
            bail!(
                "build {build_key} is {line}: {}; compare the artifacts (kiln fetch HASH) to see what differs",
                builds.join(", ")
            )
        }
        JobPhase::Cancelled => {
            if args.json {
                println!("{}", json!({"build_key": build_key.to_string(), "state": "cancelled"}));
            }
            bail!("build {build_key} was cancelled: every requester took its request back (kiln cancel)")
        }
        other => bail!("build {build_key} is {} on the coordinator", other.name()),
    }
}

fn check_of(phase: &JobPhase) -> Option<&kiln_protocol::build::Check> {
    match phase {
        JobPhase::Checked { check, .. } => Some(check),
        _ => None,
    }
}

fn describe(phase: &JobPhase) -> String {
    match phase {
        JobPhase::Queued {
            waiting_because: Some(why),
        } => format!("queued: {why}"),
        JobPhase::Queued { waiting_because: None } => "queued".into(),
        JobPhase::Assigned { worker, attempt } => {
            format!("building on worker {} (attempt {attempt})", peer_of(worker))
        }
        JobPhase::Log { tail } => format!("log: {}", tail.lines().last().unwrap_or("")),
        JobPhase::Replicating { artifact } => format!("built {artifact}; copying it to a second peer"),
        JobPhase::Done { .. } => "done".into(),
        JobPhase::Checked { check, .. } => format!("done: {}", check.summary()),
        JobPhase::Trusted { streak, .. } => format!("done: {}", trusted_summary(*streak)),
        JobPhase::NotReproducible { .. } => "not reproducible".into(),
        JobPhase::Failed { reason, .. } => format!("failed: {reason}"),
        JobPhase::Unknown => "unknown to the coordinator".into(),
        JobPhase::Cancelled => "cancelled: every requester took its request back".into(),
    }
}

/// `kiln status`.
pub async fn status(bootstrap: Vec<Multiaddr>, trusted: &[libp2p::PeerId], json: bool) -> anyhow::Result<()> {
    if bootstrap.is_empty() {
        bail!("no bootstrap peer to join the network through: pass --bootstrap MULTIADDR or set KILN_BOOTSTRAP");
    }
    let dir = tempfile::tempdir().context("cannot create a temporary data dir")?;
    let node = EphemeralNode::start(dir.path(), bootstrap.clone()).await?;
    let start = coord_client::bootstrap_peers(&bootstrap);
    let answer = coord_client::ask_trusted_coordinator(&node.net, &start, trusted, &CoordRequest::StatusV3).await;
    node.stop().await;
    let (coordinator, reply, _) = answer?;
    let CoordReplyV1::StatusV3 {
        report,
        contributors,
        requesters,
    } = reply
    else {
        bail!("the coordinator {coordinator} answered something else than its status; it may run another kiln version, try again later");
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status_json(
                &coordinator.to_string(),
                &report,
                &contributors,
                &requesters
            ))?
        );
    } else {
        print_status(&coordinator.to_string(), &report, &contributors);
        print_requesters(&requesters);
    }
    Ok(())
}

fn print_requesters(requesters: &[RequesterView]) {
    if requesters.is_empty() {
        return;
    }
    println!("requesters (served in turn; share of the busy workers over the last hour):");
    for r in requesters {
        println!(
            "  {}  {} queued, {} running, oldest waits {}, share {:.1} %",
            r.requester,
            r.queued,
            r.running,
            kiln_protocol::system::format_duration_secs(r.oldest_wait_ms / 1000),
            f64::from(r.share_permille) / 10.0
        );
    }
}

/// `kiln cancel`: takes this requester's request for a build back.
pub async fn cancel(
    build_key: Hash,
    bootstrap: Vec<Multiaddr>,
    trusted: &[libp2p::PeerId],
    requester_key: &Path,
    json: bool,
) -> anyhow::Result<()> {
    if bootstrap.is_empty() {
        bail!("no bootstrap peer to join the network through: pass --bootstrap MULTIADDR or set KILN_BOOTSTRAP");
    }
    if !requester_key.exists() {
        bail!(
            "no requester key at {}: a build can be cancelled only with the key that requested it (pass the --data-dir you requested it with)",
            requester_key.display()
        );
    }
    let key = kiln_node::identity::load_or_create_at(requester_key)?;
    let dir = tempfile::tempdir().context("cannot create a temporary data dir")?;
    let node = EphemeralNode::start(dir.path(), bootstrap.clone()).await?;
    let start = coord_client::bootstrap_peers(&bootstrap);
    let cancellation = Cancellation {
        build_key,
        sender: node.key,
    };
    let request = CoordRequest::CancelV1 {
        cancellation: Signed::sign(&key, &cancellation),
    };
    let answer = coord_client::ask_trusted_coordinator(&node.net, &start, trusted, &request).await;
    node.stop().await;
    let (coordinator, reply, _) = answer?;
    let outcome = match reply {
        CoordReplyV1::Cancelled { outcome, .. } => outcome,
        CoordReplyV1::Refused { reason } => bail!("the coordinator refused the cancel: {reason}"),
        _ => bail!("the coordinator {coordinator} answered the cancel with something else; it may run another kiln version: ask its operator"),
    };
    let (state, words) = match &outcome {
        CancelOutcome::Dropped => ("dropped", "nobody else wanted it: dropped from the queue".to_string()),
        CancelOutcome::Stopped { worker } => (
            "stopped",
            format!(
                "nobody else wanted it: its build on worker {} is being stopped",
                peer_of(worker)
            ),
        ),
        CancelOutcome::StillWanted { requesters } => (
            "still wanted",
            format!(
                "{requesters} other requester(s) still want it: it goes on without you, and your addresses get no mail"
            ),
        ),
    };
    if json {
        println!(
            "{}",
            json!({"build_key": build_key.to_string(), "cancelled": true, "state": state,
                   "coordinator": coordinator.to_string()})
        );
    } else {
        say!("cancelled your request for build {build_key}: {words}");
    }
    Ok(())
}

/// `kiln status --node`: the node running on `data_dir`, about itself.
pub async fn node_status(data_dir: &Path, json: bool) -> anyhow::Result<()> {
    let status = match control::ask(data_dir, &ControlRequest::Status).await? {
        Some(ControlReply::Status(status)) => status,
        Some(ControlReply::Error { message }) => bail!("{message}"),
        Some(_) => bail!(
            "the node on {} answered something else than its status; is it the same kiln version as this command?",
            data_dir.display()
        ),
        None => bail!(
            "no node runs on {}: start `kiln node --data-dir {}`, or pass the --data-dir of the node to ask",
            data_dir.display(),
            data_dir.display()
        ),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    let role = match status.role.as_str() {
        "coordinator" if status.pinned => "the coordinator (pinned)",
        "coordinator" => "the coordinator (elected)",
        "standby" => "a standby in the coordination set: may be elected if the coordinator goes",
        "reserve" => "a reserve: may coordinate, steps into the coordination set when it is short",
        _ => "not a coordinator (--no-coordinator)",
    };
    println!("node {}: {role}", status.peer_id);
    if status.role != "coordinator" {
        match &status.coordinator {
            Some(peer) => println!("coordinator: {peer}"),
            None => println!("coordinator: none known yet"),
        }
    }
    if status.role != "worker" {
        println!(
            "coordination set as heard here: {} node(s); heartbeats sent by this node: {}",
            status.coordination_set.len(),
            status.heartbeats_sent
        );
    }
    println!("connected to {} peer(s)", status.connected_peers);
    print_network(&status.network);
    println!("open jobs in this node's queue: {}", status.jobs_total);
    for job in &status.jobs {
        println!(
            "  {}  {} {}  {}",
            job["build_key"].as_str().unwrap_or(""),
            job["recipe"].as_str().unwrap_or(""),
            job["version"].as_str().unwrap_or(""),
            job["state"].as_str().unwrap_or("")
        );
    }
    if let Some(mail) = &status.mail {
        let problem = mail
            .last_error
            .as_deref()
            .map(|e| format!("; last attempt: {e}"))
            .unwrap_or_default();
        println!(
            "mail: {} pending, {} delivered{problem}; {}",
            mail.pending, mail.delivered, mail.route
        );
    }
    if !status.streaks.is_empty() {
        println!("workers' streaks (results in a row that independent builds agreed with; --verify auto):");
        for s in &status.streaks {
            println!(
                "  {}  streak {}, {} disagreement(s), {} built alone and not checked since",
                s.worker, s.streak, s.disagreements, s.unchecked
            );
        }
    }
    let store = &status.store;
    let cap = store.cap_bytes.map(|c| format!(" of {c} allowed")).unwrap_or_default();
    println!("store: {} blobs, {} bytes{cap}", store.blobs, store.bytes);
    if !store.quarantined.is_empty() {
        println!("blobs found corrupt on disk (quarantined): {}", store.quarantined.len());
        for q in &store.quarantined {
            let state = if q.restored {
                "a good copy is back"
            } else if q.pinned {
                "needed here, not yet fetched again"
            } else {
                "forgotten (not needed here)"
            };
            println!(
                "  {}  {} bytes, {} s ago: {state}",
                q.hash,
                q.bytes,
                q.found_ms_ago / 1000
            );
            if let Some(note) = &q.note {
                println!("      {note}");
            }
            if let Some(kept) = &q.kept {
                println!("      corrupt bytes kept in {kept}");
            }
        }
    }
    Ok(())
}

fn print_job(job: &JobView, detail: &str) {
    println!(
        "  {}  {} {}  {}{detail}",
        job.build_key,
        job.recipe_name,
        job.recipe_version,
        job.phase.name()
    );
}

fn print_status(coordinator: &str, report: &StatusReport, contributors: &[kiln_protocol::coord::ContributorView]) {
    println!(
        "coordinator {coordinator}{}",
        if report.pinned { " (pinned)" } else { " (elected)" }
    );
    println!("workers: {}", report.workers.len());
    for w in &report.workers {
        println!(
            "  {}  {}  {}/{} jobs  {}",
            peer_of(&w.worker),
            worker_state(w),
            w.running_jobs,
            w.max_jobs,
            w.system
        );
        for job in &w.jobs {
            println!("      building {job}");
        }
    }
    println!("open jobs: {}", report.jobs_total);
    for job in &report.jobs {
        let detail = match &job.phase {
            JobPhase::Queued {
                waiting_because: Some(why),
            } => format!(": {why}"),
            JobPhase::Assigned { worker, attempt } => format!(" on {} (attempt {attempt})", peer_of(worker)),
            _ => String::new(),
        };
        print_job(job, &detail);
    }
    println!("recent: {}", report.recent.len());
    for job in &report.recent {
        let detail = match &job.phase {
            JobPhase::Done { attestation } | JobPhase::Checked { attestation, .. } => attestation
                .verify()
                .map(|a| {
                    let checked = kiln_node::report::checked_line(&job.phase).unwrap_or_default();
                    format!(" artifact {} ({checked})", a.artifact)
                })
                .unwrap_or_default(),
            JobPhase::Failed { reason, .. } => format!(": {reason}"),
            JobPhase::NotReproducible { .. } => {
                format!(": {}", kiln_node::report::checked_line(&job.phase).unwrap_or_default())
            }
            _ => String::new(),
        };
        print_job(job, &detail);
    }
    if !contributors.is_empty() {
        println!("top contributors (attested build time of the builds this coordinator settled):");
        for c in contributors {
            println!(
                "  {}  {} build(s)  {}",
                peer_of(&c.worker),
                c.builds,
                kiln_protocol::system::format_duration_secs(c.build_ms / 1000)
            );
        }
    }
    let mail = &report.mail;
    let problem = mail
        .last_error
        .as_deref()
        .map(|e| format!("; last attempt: {e}"))
        .unwrap_or_default();
    println!("mail: {} pending, {} delivered{problem}", mail.pending, mail.delivered);
    if !mail.route.is_empty() {
        println!("mail on the coordinator is {}", mail.route);
    }
}

/// `kiln recipe check`: how often independent builders agreed on a
/// recipe's builds.
pub async fn recipe_checks(name: &str, bootstrap: Vec<Multiaddr>, json: bool) -> anyhow::Result<()> {
    if bootstrap.is_empty() {
        bail!("no bootstrap peer to join the network through: pass --bootstrap MULTIADDR or set KILN_BOOTSTRAP");
    }
    let dir = tempfile::tempdir().context("cannot create a temporary data dir")?;
    let node = EphemeralNode::start(dir.path(), bootstrap.clone()).await?;
    let start = coord_client::bootstrap_peers(&bootstrap);
    let request = CoordRequest::RecipeChecksV1 {
        recipe_name: name.to_string(),
    };
    let answer = coord_client::ask_coordinator(&node.net, &start, &request).await;
    node.stop().await;
    let (coordinator, reply, _) = answer?;
    let checks = match reply {
        CoordReplyV1::RecipeChecks(checks) => checks,
        CoordReplyV1::Refused { reason } => bail!("the coordinator refused: {reason}"),
        _ => bail!("the coordinator {coordinator} does not count recipe checks; it may run an older kiln version"),
    };
    let checked = checks.agreed + checks.agreed_after_disagreement;
    if json {
        println!(
            "{}",
            json!({"recipe": checks.recipe_name, "agreed": checks.agreed,
                   "agreed_after_disagreement": checks.agreed_after_disagreement,
                   "not_reproducible": checks.not_reproducible, "unchecked": checks.unchecked,
                   "coordinator": coordinator.to_string()})
        );
        return Ok(());
    }
    println!(
        "{}: builds checked by independent builders, as coordinator {coordinator} recorded them",
        checks.recipe_name
    );
    println!("  agreed:                        {}", checks.agreed);
    println!("  agreed after one disagreed:    {}", checks.agreed_after_disagreement);
    println!("  not reproducible:              {}", checks.not_reproducible);
    println!("  built by one worker, unchecked: {}", checks.unchecked);
    let verdict = if checked + checks.not_reproducible == 0 {
        "no build of it was checked yet: ask for one with `kiln request --verify 2`".to_string()
    } else if checks.not_reproducible == 0 && checks.agreed_after_disagreement == 0 {
        format!("independent builds agreed every time ({checked} of {checked}): it builds reproducibly")
    } else {
        format!(
            "independent builds agreed at once in {} of {} checks; a recipe that is not reproducible (the time, paths or randomness in its output) can never pass --verify",
            checks.agreed,
            checked + checks.not_reproducible
        )
    };
    println!("{verdict}");
    Ok(())
}

/// `kiln status --node`: whether this node can be dialled, and its peers by path.
fn print_network(net: &control::NodeNetwork) {
    let reach = match net.reachability.as_str() {
        "public" => "reachable: peers can dial it".to_string(),
        "private" if net.relayed_addresses.is_empty() => {
            "behind NAT: not reachable from outside, and no relay slot yet (are its bootstrap peers up?)".to_string()
        }
        "private" => format!("behind NAT: reached through {}", net.relayed_addresses.join(", ")),
        _ => "not tested: every peer sees it at an address it listens on (no NAT between them so far)".to_string(),
    };
    println!("reachability: {reach}");
    println!(
        "peers by path: {} direct, {} direct after a hole punch, {} relayed; hole punches {} tried, {} worked, {} failed; {} relayed",
        net.direct,
        net.hole_punched,
        net.relayed,
        net.hole_punch_attempts,
        net.hole_punch_successes,
        net.hole_punch_failures,
        kiln_protocol::system::format_bytes(net.relayed_bytes),
    );
    for peer in &net.peers {
        println!("  {}  {}", peer.peer, peer.path.replace('_', " "));
    }
    if net.relay_circuits > 0 {
        println!("relay: {} circuit(s) relayed for other peers", net.relay_circuits);
    }
}
