//! A misbehaving Kiln peer for fault tests: a real libp2p node built from
//! kiln-node's network layer, with its own blob server that lies or dies,
//! and a sender of malformed gossip and stream frames. Never shipped.
//!
//! kiln-evil corrupt   --data-dir D --bootstrap B FILE   serve FILE with one flipped byte per range
//! kiln-evil die-after N --data-dir D --bootstrap B FILE serve N ranges honestly, then abort
//! kiln-evil huge      --data-dir D --bootstrap B FILE   claim FILE is an absurdly large blob
//! kiln-evil empty     --data-dir D --bootstrap B FILE   claim FILE is an empty blob
//! kiln-evil garbage   --data-dir D --bootstrap B PEER    send bad gossip and bad frames to PEER
//! kiln-evil settle    --data-dir D --bootstrap B KEY     gossip, signed as itself, that job KEY failed
//! kiln-evil watch     --data-dir D --bootstrap B ADDR:KEY,KEY  hold 40 watch streams per open job KEY on coordinator PEER
//! kiln-evil range     --data-dir D --bootstrap B ADDR:HASH:LEN  ask the peer at ADDR for LEN bytes of HASH, print the answer
//!                                                 (LEN `hashes`: ask for its range hashes instead)
//! kiln-evil forge     --data-dir D --bootstrap B KEY     put a DHT record under build key KEY: an attestation,
//!                                                 validly signed by itself, of an artifact nobody built
//! kiln-evil lie       --data-dir D --bootstrap B ADDR:GOFILE  a worker for the coordinator at ADDR that builds each
//!                                                 job honestly in the sandbox, flips a byte of the artifact, and
//!                                                 reports that, signed with its own valid key, once GOFILE exists
//! kiln-evil jobs      --data-dir D --bootstrap B N       gossip, signed as itself, N jobs nobody submitted
//! kiln-evil turncoat  --data-dir D --bootstrap B ADDR:LIEFILE  the same worker, but honest (reporting each real
//!                                                 artifact at once, and serving it) until LIEFILE exists; it lies
//!                                                 (at once) on every build after

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use kiln_node::net::{self, NetClient, NetConfig, BLOB_PROTOCOL, COORD_PROTOCOL};
use kiln_protocol::messages::{self, topics, BlobReply, BlobReplyV1, BlobRequest, Gossip, GossipV1};
use kiln_protocol::ranges::{RangeHasher, RANGE_BYTES};
use kiln_protocol::{wire, Hash, SecretKey, Signed};
use libp2p::{Multiaddr, PeerId};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args[1].clone();
    let (mode_arg, rest) = if mode == "die-after" {
        (args[2].parse::<u64>().unwrap(), &args[3..])
    } else {
        (0, &args[2..])
    };
    let data_dir = PathBuf::from(&rest[1]);
    let bootstrap: Multiaddr = rest[3].parse().unwrap();
    let target = rest[4].clone();
    let key = kiln_node::identity::load_or_create(&data_dir).unwrap();
    let secret = SecretKey::from_bytes(&key.to_bytes());
    let config = NetConfig {
        key,
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap: vec![bootstrap],
        relay_server: None,
        dht_server: true,
        reachability: net::ReachabilityMode::Public,
    };
    let (net, mut events, event_loop) = net::start(config).unwrap();
    tokio::spawn(event_loop.run(std::future::pending()));
    // Other events (its reachability) may come before the listen address.
    while let Some(event) = events.recv().await {
        if let net::NetEvent::Listening(addr) = event {
            println!("{addr}");
            break;
        }
    }
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    match mode.as_str() {
        "corrupt" | "die-after" | "huge" | "empty" => serve_file(net, PathBuf::from(target), &mode, mode_arg).await,
        "garbage" => garbage(net, target.parse().unwrap()).await,
        "settle" => settle(net, secret, target.parse().unwrap()).await,
        "watch" => watch(net, &target).await,
        "range" => range(net, &target).await,
        "lie" => lie(net, secret, &data_dir, &target, false).await,
        "turncoat" => lie(net, secret, &data_dir, &target, true).await,
        "forge" => forge(net, secret, target.parse().unwrap()).await,
        "jobs" => jobs(net, secret, target.parse().unwrap()).await,
        other => panic!("unknown mode {other}"),
    }
}

async fn serve_file(net: NetClient, file: PathBuf, mode: &str, die_after: u64) {
    let (corrupt, huge, empty) = (mode == "corrupt", mode == "huge", mode == "empty");
    let data = Arc::new(std::fs::read(&file).unwrap());
    let mut hasher = RangeHasher::new();
    hasher.update(&data);
    let (hash, list) = hasher.finish();
    let list = Arc::new(list);
    let mut control = net.stream_control();
    let mut incoming = control.accept(BLOB_PROTOCOL).unwrap();
    net.provide(hash).await.unwrap();
    println!("providing {hash}");
    let served = Arc::new(AtomicU64::new(0));
    while let Some((_, mut stream)) = incoming.next().await {
        let (data, list, served) = (data.clone(), list.clone(), served.clone());
        tokio::spawn(async move {
            loop {
                let mut header = [0u8; 4];
                if stream.read_exact(&mut header).await.is_err() {
                    return;
                }
                let mut body = vec![0u8; u32::from_le_bytes(header) as usize];
                stream.read_exact(&mut body).await.unwrap();
                let request: BlobRequest = wire::decode::<_, 4096>(&body).unwrap();
                let reply = match request {
                    BlobRequest::RangeHashesV1 { .. } => {
                        let reply = if huge {
                            BlobReplyV1::RangeHashes {
                                blob_bytes: 1 << 62,
                                count: 1 << 42,
                            }
                        } else if empty {
                            BlobReplyV1::RangeHashes {
                                blob_bytes: 0,
                                count: 0,
                            }
                        } else {
                            BlobReplyV1::RangeHashes {
                                blob_bytes: data.len() as u64,
                                count: list.len() as u64,
                            }
                        };
                        let mut out = messages::encode_frame(&BlobReply::V1(reply)).unwrap();
                        if !empty {
                            out.extend_from_slice(&list.concat());
                        }
                        out
                    }
                    BlobRequest::V1 { offset, length, .. } => {
                        if die_after > 0 && served.fetch_add(1, Ordering::SeqCst) >= die_after {
                            println!("dying");
                            std::process::abort();
                        }
                        let mut bytes = data[offset as usize..(offset + length) as usize].to_vec();
                        if corrupt {
                            bytes[(length / 2) as usize] ^= 0x40;
                        }
                        let reply = BlobReplyV1::Data {
                            blob_bytes: data.len() as u64,
                            length,
                        };
                        let mut out = messages::encode_frame(&BlobReply::V1(reply)).unwrap();
                        out.extend_from_slice(&bytes);
                        out
                    }
                };
                if stream.write_all(&reply).await.is_err() {
                    return;
                }
                let _ = stream.flush().await;
            }
        });
    }
    let _ = RANGE_BYTES;
}

/// Publishes on the jobs topic until a subscriber exists, with a deadline.
async fn publish(net: &NetClient, bytes: Vec<u8>) {
    publish_on(net, topics::JOBS, bytes).await;
}

async fn publish_on(net: &NetClient, topic: &'static str, bytes: Vec<u8>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match net.publish(topic, bytes.clone()).await {
            Ok(()) => return,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot publish: {e}"),
        }
    }
}

/// A peer that does not coordinate says, again and again (each message
/// new, so gossip does not drop repeats), that a job failed: nodes must
/// not believe it.
async fn settle(net: NetClient, key: SecretKey, build_key: Hash) {
    for n in 0.. {
        let settled = Gossip::V1(GossipV1::Settled(messages::Settlement::Failed {
            build_key,
            reason: format!("kiln-evil says so ({n})"),
            log: None,
            attempts: 3,
        }));
        publish_on(&net, topics::RESULTS, messages::encode_gossip(&key, &settled).unwrap()).await;
        println!("settlement sent");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn garbage(net: NetClient, target: PeerId) {
    // Stream frames first: an oversized length, then garbage, each on its
    // own stream. They connect this peer to the target, so the gossip
    // after reaches it directly (a peer in between drops invalid gossip
    // rather than forward it).
    let mut control = net.stream_control();
    let frames = [u32::MAX.to_le_bytes().to_vec(), vec![3, 0, 0, 0, 0xff, 0xff, 0xff]];
    for (frame, protocol) in frames.iter().flat_map(|f| [(f, BLOB_PROTOCOL), (f, COORD_PROTOCOL)]) {
        // The target's address comes with the DHT lookup that joining starts.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut stream = loop {
            match control.open_stream(target, protocol.clone()).await {
                Ok(stream) => break stream,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot reach the target: {e}"),
            }
        };
        stream.write_all(frame).await.unwrap();
        stream.flush().await.unwrap();
        let mut answer = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer)).await;
        println!("frame answered: closed={} bytes={}", closed.is_ok(), answer.len());
    }
    // Malformed gossip: not a Kiln envelope at all.
    publish(&net, b"this is not a kiln message".to_vec()).await;
    // Oversized: over Kiln's gossip limit (gossipsub still carries it).
    publish(&net, vec![0u8; messages::GOSSIP_BYTES_MAX + 100]).await;
    // Badly signed: a valid envelope signed by a key that is not ours.
    let stranger = SecretKey::from_bytes(&[42; 32]);
    let heartbeat = Gossip::V1(GossipV1::Coordinator(messages::CoordinatorHeartbeat {
        pinned: true,
        acting: true,
        queued_jobs: 0,
        running_jobs: 0,
        addresses: vec![],
        sent_at_ms: 0,
        delivers_mail: true,
    }));
    publish(&net, messages::encode_gossip(&stranger, &heartbeat).unwrap()).await;
    // A flipped bit in a correctly signed envelope.
    let own = kiln_protocol::wire::encode(&Signed::sign(&stranger, &heartbeat)).unwrap();
    let mut flipped = own.clone();
    flipped[5] ^= 1;
    publish(&net, flipped).await;
    println!("gossip sent");
    println!("frames sent");
    let _ = Hash::of(b"");
    std::future::pending::<()>().await;
}

/// Opens 40 watch streams per open job on the coordinator, more in all than
/// its 64 request permits, and holds them: submissions and status must
/// still be answered.
async fn watch(net: NetClient, target: &str) {
    let (addr, keys) = target.split_once(':').unwrap();
    let coordinator = dial(&net, addr).await;
    let mut held = Vec::new();
    for key in keys.split(',') {
        let build_key: Hash = key.parse().unwrap();
        for _ in 0..40 {
            let mut control = net.stream_control();
            let mut stream = control.open_stream(coordinator, COORD_PROTOCOL).await.unwrap();
            let request = kiln_protocol::coord::CoordRequest::WatchV1 { build_key };
            // The first answer (the job's phase) says the watch is held.
            kiln_tests::exchange_frame(&mut stream, &messages::encode_frame(&request).unwrap())
                .await
                .unwrap();
            held.push(stream);
        }
    }
    println!("watching {}", held.len());
    std::future::pending::<()>().await;
}

/// Dials a peer at its full address (`/ip4/.../p2p/PEER`); its peer id.
async fn dial(net: &NetClient, addr: &str) -> PeerId {
    let addr: Multiaddr = addr.parse().unwrap();
    let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last() else {
        panic!("{addr} names no peer");
    };
    net.dial(peer, vec![addr]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !net.connected_peers().await.unwrap().contains(&peer) {
        assert!(Instant::now() < deadline, "cannot connect to {peer}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    peer
}

/// Asks a provider for one range and prints its answer's kind.
async fn range(net: NetClient, target: &str) {
    let mut parts = target.split(':');
    let peer = dial(&net, parts.next().unwrap()).await;
    let hash: Hash = parts.next().unwrap().parse().unwrap();
    let request = match parts.next().unwrap() {
        "hashes" => BlobRequest::RangeHashesV1 { hash },
        length => BlobRequest::V1 {
            hash,
            offset: 0,
            length: length.parse().unwrap(),
        },
    };
    let mut control = net.stream_control();
    let mut stream = control.open_stream(peer, BLOB_PROTOCOL).await.unwrap();
    let frame = kiln_tests::exchange_frame(&mut stream, &messages::encode_frame(&request).unwrap())
        .await
        .unwrap();
    let (reply, _): (BlobReply, usize) = messages::decode_frame(&frame).unwrap().unwrap();
    let kind = match reply {
        BlobReply::V1(BlobReplyV1::Data { .. }) => "data",
        BlobReply::V1(BlobReplyV1::BadRange { .. }) => "bad range",
        BlobReply::V1(BlobReplyV1::NotFound) => "not found",
        BlobReply::V1(BlobReplyV1::RangeHashes { .. }) => "range hashes",
        BlobReply::V1(_) => "other",
    };
    println!("answer {kind}");
    std::process::exit(0);
}

/// A worker that lies: it advertises to the coordinator at ADDR, takes
/// every job offered over `/kiln/work/1`, builds it honestly in the real
/// sandbox, flips one byte of the artifact, stores that, and reports it as
/// built with an attestation signed by its own (valid) key. It holds each
/// report until GOFILE exists, advertising the build as running meanwhile,
/// so a test can choose when the lie arrives.
///
/// A `turncoat` reports at once, and honestly (serving its store, so its
/// artifacts can be copied) while the file is absent; it lies once the
/// file exists: a worker that earns a streak, then betrays it.
async fn lie(net: NetClient, key: SecretKey, data_dir: &std::path::Path, target: &str, turncoat: bool) {
    use kiln_protocol::messages::{BuildOutcome, WorkReply, WorkReplyV1, WorkRequest, WorkerAdvert};
    let (addr, go_file) = target.rsplit_once(':').unwrap();
    let go_file = PathBuf::from(go_file);
    let coordinator = dial(&net, addr).await;
    let store = kiln_store::Store::open(data_dir).unwrap();
    if turncoat {
        let _server = kiln_node::blobs::spawn_server(&net, store.clone());
    }
    let system = kiln_node::worker::system::probe(Default::default());
    let running: Arc<std::sync::Mutex<Vec<Hash>>> = Arc::default();
    // The advert, every second: what it is, and what it builds.
    let (advert_net, advert_running, advert_system) = (net.clone(), running.clone(), system.clone());
    tokio::spawn(async move {
        for sequence in 0.. {
            let running = advert_running.lock().unwrap().clone();
            let advert = WorkerAdvert {
                system: advert_system.clone(),
                max_jobs: 1,
                running_jobs: running.len() as u32,
                waiting_because: None,
                sequence,
                running,
            };
            let request = kiln_protocol::coord::CoordRequest::AdvertV1 {
                advert: Box::new(advert),
            };
            let _ = kiln_node::coord_client::ask_peer(&advert_net, coordinator, &request).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    println!(
        "{} worker {}",
        if turncoat { "turncoat" } else { "lying" },
        key.public()
    );
    let mut control = net.stream_control();
    let mut incoming = control.accept(kiln_node::net::WORK_PROTOCOL).unwrap();
    while let Some((from, mut stream)) = incoming.next().await {
        let mut header = [0u8; 4];
        stream.read_exact(&mut header).await.unwrap();
        let mut frame = header.to_vec();
        frame.resize(4 + u32::from_le_bytes(header) as usize, 0);
        stream.read_exact(&mut frame[4..]).await.unwrap();
        let (request, _): (WorkRequest, usize) = messages::decode_frame_max::<_, 65_536>(&frame).unwrap().unwrap();
        let WorkRequest::AssignV1 { job, .. } = request else {
            continue;
        };
        let reply = messages::encode_frame(&WorkReply::V1(WorkReplyV1::Accepted)).unwrap();
        stream.write_all(&reply).await.unwrap();
        stream.flush().await.unwrap();
        running.lock().unwrap().push(job.build_key);
        println!("assigned {}", job.build_key);
        // The build, honest up to its artifact.
        let hints = [from];
        let progress = Arc::new(kiln_node::blobs::NoProgress);
        kiln_node::blobs::fetch_from(&net, &store, job.recipe_id, &hints, progress.clone())
            .await
            .unwrap();
        let recipe = kiln_node::blobs::job_recipe(&store, &job).await.unwrap();
        let source = match &recipe.source {
            kiln_protocol::Source::Blob(hash) => {
                kiln_node::blobs::fetch_from(&net, &store, *hash, &hints, progress.clone())
                    .await
                    .unwrap();
                let path = data_dir.join(format!("source-{}.tar", job.build_key));
                store.export(hash, &path).unwrap();
                kiln_node::worker::sandbox::SourceInput::Archive(path)
            }
            _ => kiln_node::worker::sandbox::SourceInput::None,
        };
        let spec = kiln_node::worker::sandbox::BuildSpec {
            steps: recipe.render_steps(&job.options),
            outputs: recipe.outputs.clone(),
            options: job.options.clone(),
            network: false,
            timeout: Duration::from_secs(recipe.timeout_secs),
            memory_bytes: recipe.memory_bytes,
            source,
        };
        let sandbox = kiln_node::worker::sandbox::Sandbox::new(data_dir, false).unwrap();
        let started_at_ms = kiln_node::clock::now_ms();
        let result = sandbox.run(&spec).await.unwrap();
        let kiln_node::worker::sandbox::BuildStatus::Succeeded { artifact } = &result.status else {
            panic!("the honest build failed: {:?}", result.status);
        };
        // The lie: one byte of the real artifact flipped.
        let mut bytes = std::fs::read(artifact).unwrap();
        let lying = !turncoat || go_file.exists();
        if lying {
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x01;
        }
        let (artifact, artifact_bytes) = store.put_bytes(&bytes, None).unwrap();
        let (log, _) = store.put_bytes(&result.log, None).unwrap();
        let attestation = kiln_protocol::Attestation {
            build_key: job.build_key,
            recipe_id: job.recipe_id,
            artifact,
            artifact_bytes,
            log,
            worker: key.public(),
            system_digest: system.digest(),
            started_at_ms,
            finished_at_ms: kiln_node::clock::now_ms(),
        };
        if turncoat {
            println!("built {artifact}{}", if lying { ", a lie" } else { "" });
        } else {
            println!("built {artifact}, a lie; waiting for {}", go_file.display());
            while !go_file.exists() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let outcome = Gossip::V1(GossipV1::Outcome(BuildOutcome::Done {
            attestation: Signed::sign(&key, &attestation),
        }));
        publish_on(&net, topics::RESULTS, messages::encode_gossip(&key, &outcome).unwrap()).await;
        running.lock().unwrap().retain(|k| *k != job.build_key);
        println!("reported {artifact}");
    }
}

/// Announces `n` jobs on gossip, as the coordinator would announce
/// accepted ones: each well formed, with a build key of its own, for a
/// recipe nobody holds. No node may keep them or fetch their inputs.
async fn jobs(net: NetClient, key: SecretKey, n: u64) {
    let mut requirements = kiln_protocol::Requirements::new();
    requirements.set_from_str("os=linux").unwrap();
    for i in 0..n {
        let job = messages::JobRequest {
            build_key: Hash::derive("kiln-evil jobs", &i.to_le_bytes()),
            recipe_id: Hash::of(b"a recipe nobody holds"),
            recipe_name: "flood".into(),
            recipe_version: "1".into(),
            publisher: None,
            options: Default::default(),
            requirements: requirements.clone(),
            emails: vec!["flood@example.org".into()],
            requested_at_ms: kiln_node::clock::now_ms(),
        };
        let message = Gossip::V1(GossipV1::Job(job));
        publish(&net, messages::encode_gossip(&key, &message).unwrap()).await;
    }
    println!("jobs sent {n}");
    std::future::pending::<()>().await;
}

/// Writes a build record under `build_key` in the DHT, as any peer can: one
/// attestation of an artifact nobody built, signed (validly) by this peer.
async fn forge(net: NetClient, key: SecretKey, build_key: Hash) {
    let attestation = kiln_protocol::Attestation {
        build_key,
        recipe_id: Hash::of(b"forged recipe"),
        artifact: Hash::of(b"a trojan"),
        artifact_bytes: 8,
        log: Hash::of(b"forged log"),
        worker: key.public(),
        system_digest: Hash::of(b"forged system"),
        started_at_ms: kiln_node::clock::now_ms(),
        finished_at_ms: kiln_node::clock::now_ms(),
    };
    let record = kiln_protocol::wire::encode(&vec![Signed::sign(&key, &attestation)]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Err(e) = net.put_record(build_key, record.clone()).await {
        assert!(Instant::now() < deadline, "cannot put the record: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("forged {}", attestation.artifact);
    std::future::pending::<()>().await;
}
