//! The client side of the coordinator protocol (`/kiln/coord/1`): finding
//! the acting coordinator from any peer (each answers with the one it
//! knows), sending one request, and following a build as it changes. The
//! requester, the dashboard and a standby's catch-up all use it.
//!
//! Not for: answering the protocol (that is `coordinator::server`).

use std::time::Duration;

use kiln_protocol::coord::{Contact, CoordReply, CoordReplyV1, CoordRequest, JobPhase, COORD_FRAME_BYTES_MAX};
use kiln_protocol::Hash;
use libp2p::{Multiaddr, PeerId, Stream};

use crate::net::frames::{open_stream, read_frame_max, write_frame_max};
use crate::net::identity::peer_id_of;
use crate::net::{NetClient, COORD_PROTOCOL};

/// How long to look for a coordinator (an election takes up to 5 s).
pub const FIND_COORDINATOR_MS_MAX: u64 = 15_000;
/// How long a coordinator may take to answer (it fetches the inputs first).
const ANSWER_MS_MAX: u64 = 120_000;
/// Redirects followed from one node to the coordinator it names.
const REDIRECTS_MAX: usize = 4;
/// How long a watch waits for the next event before asking again.
const WATCH_QUIET_MS_MAX: u64 = 600_000;

/// How long opening a stream to a peer may take.
const OPEN_MS_MAX: u64 = 10_000;

/// Why the coordinator could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error("no coordinator answered within {} s: start one with `kiln node --coordinator`, or check that the --bootstrap peers are up (last problem: {last})", FIND_COORDINATOR_MS_MAX / 1000)]
    NoCoordinator { last: String },
    #[error("the coordinator refused the request: {0}")]
    Refused(String),
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
) -> Result<(PeerId, CoordReplyV1, Stream), CoordError> {
    ask_trusted_coordinator(net, start, &[], request).await
}

/// [`ask_coordinator`], taking only a peer in `trusted` as the coordinator
/// (`--trust-coordinator`; any peer when empty). A peer not trusted is
/// never sent `request` itself (it might take a job, or answer for a
/// queue it does not hold): it is only asked who coordinates
/// (`StatusV1`, which only the acting coordinator answers), and its
/// answer is followed to a trusted peer or not at all. The trusted peers
/// are asked after `start`, which may know their addresses.
pub async fn ask_trusted_coordinator(
    net: &NetClient,
    start: &[PeerId],
    trusted: &[PeerId],
    request: &CoordRequest,
) -> Result<(PeerId, CoordReplyV1, Stream), CoordError> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(FIND_COORDINATOR_MS_MAX);
    let mut last = "no peer to ask: pass --bootstrap MULTIADDR or set KILN_BOOTSTRAP".to_string();
    let trusts = |peer: &PeerId| trusted.is_empty() || trusted.contains(peer);
    let mut first_asked: Vec<PeerId> = start.to_vec();
    first_asked.extend(trusted.iter().filter(|p| !start.contains(p)));
    let probe = CoordRequest::StatusV1;
    loop {
        for first in &first_asked {
            let mut peer = *first;
            for _ in 0..REDIRECTS_MAX {
                let asked = if trusts(&peer) { request } else { &probe };
                match ask_peer(net, peer, asked).await {
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
                    Ok((reply, stream)) if trusts(&peer) => return Ok((peer, reply, stream)),
                    Ok(_) => {
                        last = format!(
                            "peer {peer} coordinates now, and it is not among the coordinators you trust (--trust-coordinator); wait for one of them to take over, or ask without --trust-coordinator"
                        );
                        break;
                    }
                    Err(e) => {
                        last = format!("{peer}: {e}");
                        break;
                    }
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CoordError::NoCoordinator { last });
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
    let mut stream = open_stream(net, peer, COORD_PROTOCOL, OPEN_MS_MAX).await?;
    write_frame_max::<_, COORD_FRAME_BYTES_MAX>(&mut stream, request).await?;
    let reply = read_reply(&mut stream, ANSWER_MS_MAX).await?;
    Ok((reply, stream))
}

pub(crate) async fn read_reply(stream: &mut Stream, timeout_ms: u64) -> std::io::Result<CoordReplyV1> {
    match read_frame_max::<CoordReply, COORD_FRAME_BYTES_MAX>(stream, timeout_ms).await? {
        Some(CoordReply::V1(reply)) => Ok(reply),
        None => Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the peer closed the stream without answering",
        )),
    }
}

/// Follows a build until it ends, calling `seen` with each phase, asking
/// again (through `start`) when the coordinator goes away; only a peer in
/// `trusted` counts as the coordinator, if any is listed (see
/// [`ask_trusted_coordinator`]).
pub async fn watch(
    net: &NetClient,
    start: &[PeerId],
    trusted: &[PeerId],
    build_key: Hash,
    mut seen: impl FnMut(&JobPhase),
) -> Result<JobPhase, CoordError> {
    let request = CoordRequest::WatchV1 { build_key };
    loop {
        let (coordinator, reply, mut stream) = ask_trusted_coordinator(net, start, trusted, &request).await?;
        let mut reply = Ok(reply);
        loop {
            match reply {
                Ok(CoordReplyV1::Event { phase, .. }) => {
                    seen(&phase);
                    if phase.is_final() {
                        return Ok(phase);
                    }
                }
                Ok(CoordReplyV1::Refused { reason }) => return Err(CoordError::Refused(reason)),
                Ok(_) | Err(_) => {
                    tracing::info!(coordinator = %coordinator, "lost the coordinator while watching; asking again");
                    break;
                }
            }
            reply = read_reply(&mut stream, WATCH_QUIET_MS_MAX).await;
        }
    }
}
