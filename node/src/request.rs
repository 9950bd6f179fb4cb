//! The requester (`kiln request`, `kiln status`): prepares a job from a
//! recipe, looks for an existing build in the DHT, finds the coordinator
//! (any node answers with the one it knows), submits, and follows a build.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use kiln_protocol::coord::{Contact, CoordReply, CoordReplyV1, CoordRequest, JobPhase, COORD_FRAME_BYTES_MAX};
use kiln_protocol::messages::{check_email, JobRequest, EMAILS_MAX};
use kiln_protocol::{build_key, wire, Attestation, Hash, PublisherSignature, Recipe, Requirements, Signed};
use kiln_store::Store;
use libp2p::{Multiaddr, PeerId, Stream};

use crate::archive;
use crate::frames::{read_frame_max, write_frame_max};
use crate::identity::peer_id_of;
use crate::net::{NetClient, COORD_PROTOCOL};

/// How long to look for a coordinator (an election takes up to 5 s).
pub const FIND_COORDINATOR_MS_MAX: u64 = 15_000;
/// How long a coordinator may take to answer (it fetches the inputs first).
const ANSWER_MS_MAX: u64 = 120_000;
/// How long the DHT lookup of an existing build may take.
const RECORD_LOOKUP_MS_MAX: u64 = 3_000;
/// Redirects followed from one node to the coordinator it names.
const REDIRECTS_MAX: usize = 4;
/// How long a watch waits for the next event before asking again.
const WATCH_QUIET_MS_MAX: u64 = 600_000;

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("cannot read recipe {path}: {reason}")]
    Recipe { path: String, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error("no coordinator answered within {} s: start one with `kiln node --coordinator`, or check that the --bootstrap peers are up (last problem: {last})", FIND_COORDINATOR_MS_MAX / 1000)]
    NoCoordinator { last: String },
    #[error("the coordinator refused the request: {0}")]
    Refused(String),
    #[error("store: {0}")]
    Store(#[from] kiln_store::StoreError),
}

/// What a requester asks for.
pub struct RequestSpec<'a> {
    pub emails: &'a [String],
    /// `-o NAME=VALUE`.
    pub options: &'a [(String, String)],
    /// `--target KEY=VALUE` (over the requester's own os and arch).
    pub targets: &'a [String],
}

/// Reads a recipe file into `store`: its `source.path` packed as an archive,
/// and the recipe's canonical bytes under its id, ready to be served.
pub fn load_recipe_into(store: &Store, path: &Path) -> Result<(Recipe, Option<PublisherSignature>), RequestError> {
    let fail = |reason: String| RequestError::Recipe {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("{e}; check the path")))?;
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let (recipe, publisher) = Recipe::from_toml_with_paths(&text, &mut |source| {
        let tmp = tempfile::NamedTempFile::new_in(store.dir()).map_err(|e| e.to_string())?;
        archive::pack_dir(&base.join(source), std::io::BufWriter::new(tmp.as_file())).map_err(|e| e.to_string())?;
        store
            .put_file(tmp.path(), None)
            .map(|(hash, _)| hash)
            .map_err(|e| e.to_string())
    })
    .map_err(|e| fail(e.to_string()))?;
    store.put_bytes(&recipe.canonical_bytes(), Some(recipe.id()))?;
    Ok((recipe, publisher))
}

/// The job for `recipe` as `spec` asks: options resolved (an unknown or
/// disallowed value is an error listing what is allowed), requirements of
/// this machine's os and arch, then the recipe's, then `--target`.
pub fn prepare_job(
    recipe: &Recipe,
    publisher: Option<PublisherSignature>,
    spec: &RequestSpec<'_>,
    now_ms: u64,
) -> Result<JobRequest, RequestError> {
    if spec.emails.is_empty() {
        return Err(RequestError::Invalid(
            "a request needs at least one --email ADDR to tell when the build is ready".into(),
        ));
    }
    if spec.emails.len() > EMAILS_MAX {
        return Err(RequestError::Invalid(format!(
            "at most {EMAILS_MAX} --email addresses per request"
        )));
    }
    let mut emails: Vec<String> = Vec::new();
    for email in spec.emails {
        check_email(email).map_err(RequestError::Invalid)?;
        if !emails.contains(email) {
            emails.push(email.clone());
        }
    }
    let options: BTreeMap<String, String> = recipe
        .resolve_options(spec.options)
        .map_err(|e| RequestError::Invalid(e.to_string()))?;
    let mut requirements = Requirements::new();
    let own = [
        format!("os={}", std::env::consts::OS),
        format!("arch={}", std::env::consts::ARCH),
    ];
    for text in &own {
        requirements
            .set_from_str(text)
            .map_err(|e| RequestError::Invalid(e.to_string()))?;
    }
    requirements = requirements
        .overlaid(&recipe.requirements)
        .map_err(|e| RequestError::Invalid(e.to_string()))?;
    for target in spec.targets {
        requirements.set_from_str(target).map_err(|e| {
            RequestError::Invalid(format!(
                "--target {target:?}: {e} (write it like arch=aarch64 or gcc>=12)"
            ))
        })?;
    }
    let recipe_id = recipe.id();
    Ok(JobRequest {
        build_key: build_key(&recipe_id, &options, &requirements),
        recipe_id,
        recipe_name: recipe.name.clone(),
        recipe_version: recipe.version.clone(),
        publisher,
        options,
        requirements,
        emails,
        requested_at_ms: now_ms,
    })
}

/// Attestations for `build_key` found in the DHT (signatures checked).
pub async fn lookup_built(net: &NetClient, build_key: Hash) -> Vec<Signed<Attestation>> {
    let lookup = tokio::time::timeout(Duration::from_millis(RECORD_LOOKUP_MS_MAX), net.get_record(build_key));
    let Ok(Ok(Some(bytes))) = lookup.await else {
        return Vec::new();
    };
    let Ok(list) = wire::decode::<Vec<Signed<Attestation>>, 65_536>(&bytes) else {
        return Vec::new();
    };
    list.into_iter()
        .filter(|s| s.verify().is_ok_and(|a| a.build_key == build_key))
        .collect()
}

/// The peers a bootstrap address list names.
pub fn bootstrap_peers(bootstrap: &[Multiaddr]) -> Vec<PeerId> {
    bootstrap
        .iter()
        .filter_map(|addr| match addr.iter().last() {
            Some(libp2p::multiaddr::Protocol::P2p(peer)) => Some(peer),
            _ => None,
        })
        .collect()
}

/// Sends `request` to the coordinator, starting from `start` peers and
/// following what they say of the coordinator. Returns the coordinator,
/// its first answer and the stream (a watch goes on reading it).
pub async fn ask_coordinator(
    net: &NetClient,
    start: &[PeerId],
    request: &CoordRequest,
) -> Result<(PeerId, CoordReplyV1, Stream), RequestError> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(FIND_COORDINATOR_MS_MAX);
    let mut last = "no peer to ask: pass --bootstrap MULTIADDR or set KILN_BOOTSTRAP".to_string();
    loop {
        for first in start {
            let mut peer = *first;
            for _ in 0..REDIRECTS_MAX {
                match ask_peer(net, peer, request).await {
                    Ok((
                        CoordReplyV1::NotCoordinator {
                            coordinator: Some(contact),
                        },
                        _,
                    )) if !is(&contact, peer) => match reach(net, &contact).await {
                        Some(next) => peer = next,
                        None => break,
                    },
                    Ok((CoordReplyV1::NotCoordinator { .. }, _)) => {
                        last = "no coordinator elected yet".into();
                        break;
                    }
                    Ok((reply, stream)) => return Ok((peer, reply, stream)),
                    Err(e) => {
                        last = format!("{peer}: {e}");
                        break;
                    }
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(RequestError::NoCoordinator { last });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn is(contact: &Contact, peer: PeerId) -> bool {
    peer_id_of(&contact.peer) == Some(peer)
}

/// Dials the peer a contact names at its addresses; its peer id.
pub async fn reach(net: &NetClient, contact: &Contact) -> Option<PeerId> {
    let peer = peer_id_of(&contact.peer)?;
    let addresses: Vec<Multiaddr> = contact.addresses.iter().filter_map(|a| a.parse().ok()).collect();
    if !addresses.is_empty() {
        let _ = net.dial(peer, addresses).await;
    }
    Some(peer)
}

/// Sends one coordinator-protocol request to `peer`; its first answer and
/// the stream.
pub async fn ask_peer(
    net: &NetClient,
    peer: PeerId,
    request: &CoordRequest,
) -> std::io::Result<(CoordReplyV1, Stream)> {
    let mut control = net.stream_control();
    let open = control.open_stream(peer, COORD_PROTOCOL);
    let mut stream = tokio::time::timeout(Duration::from_secs(10), open)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))?
        .map_err(std::io::Error::other)?;
    write_frame_max::<_, COORD_FRAME_BYTES_MAX>(&mut stream, request).await?;
    let reply = read_reply(&mut stream, ANSWER_MS_MAX).await?;
    Ok((reply, stream))
}

async fn read_reply(stream: &mut Stream, timeout_ms: u64) -> std::io::Result<CoordReplyV1> {
    match read_frame_max::<CoordReply, COORD_FRAME_BYTES_MAX>(stream, timeout_ms).await? {
        Some(CoordReply::V1(reply)) => Ok(reply),
        None => Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the peer closed the stream without answering",
        )),
    }
}

/// Follows a build until it ends, calling `seen` with each phase, asking
/// again (through `start`) when the coordinator goes away.
pub async fn watch(
    net: &NetClient,
    start: &[PeerId],
    build_key: Hash,
    mut seen: impl FnMut(&JobPhase),
) -> Result<JobPhase, RequestError> {
    let request = CoordRequest::WatchV1 { build_key };
    loop {
        let (coordinator, reply, mut stream) = ask_coordinator(net, start, &request).await?;
        let mut reply = Ok(reply);
        loop {
            match reply {
                Ok(CoordReplyV1::Event { phase, .. }) => {
                    seen(&phase);
                    if phase.is_final() {
                        return Ok(phase);
                    }
                }
                Ok(CoordReplyV1::Refused { reason }) => return Err(RequestError::Refused(reason)),
                Ok(_) | Err(_) => {
                    tracing::info!(coordinator = %coordinator, "lost the coordinator while watching; asking again");
                    break;
                }
            }
            reply = read_reply(&mut stream, WATCH_QUIET_MS_MAX).await;
        }
    }
}
