//! A stand-in coordinator for worker tests (it drives one worker directly,
//! without an election or a queue): publishes a recipe and its source, assigns the job to the
//! given workers over `/kiln/work/1`, and prints what they answer and how
//! their builds end (from the results gossip). Never shipped.
//!
//! kiln-assign DATA_DIR BOOTSTRAP RECIPE.toml signed|unsigned WORKER_PEER...
//!
//! With `KILN_ASSIGN_JOBS=N` (for the sleep recipe), it instead assigns N
//! distinct jobs (`-o n=1..N -o secs=20`) to the first worker, one after
//! another.
//!
//! Prints: `publisher KEY`, `job BUILD_KEY`, then per worker `accepted PEER`
//! or `refused PEER: REASON`, then `done WORKER_KEY ARTIFACT LOG` or
//! `failed WORKER_KEY LOG REASON` as outcomes arrive, and
//! `advert PEER RUNNING/MAX ARCH WAITING` for each worker advert heard.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_node::net::{self, NetConfig, NetEvent, WORK_PROTOCOL};
use kiln_protocol::messages::{
    decode_frame, encode_frame, BuildOutcome, Gossip, GossipV1, JobRequest, WorkReply, WorkRequest,
};
use kiln_protocol::{build_key, PublisherSignature, Recipe};
use kiln_store::Store;
use libp2p::PeerId;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let data_dir = PathBuf::from(&args[1]);
    let bootstrap = args[2].parse().unwrap();
    let recipe_path = PathBuf::from(&args[3]);
    let signed = args[4] == "signed";
    let workers: Vec<PeerId> = args[5..].iter().map(|p| p.parse().unwrap()).collect();

    let key = kiln_node::identity::load_or_create(&data_dir).unwrap();
    let publisher_key = kiln_protocol::SecretKey::from_bytes(&key.to_bytes());
    let store = Store::open(&data_dir).unwrap();
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
    let _server = kiln_node::blobs::spawn_server(&net, store.clone());

    let recipe = load_and_publish(&store, &recipe_path);
    let recipe_id = recipe.id();
    let (stored, _) = store.put_bytes(&recipe.canonical_bytes(), Some(recipe_id)).unwrap();
    for (hash, _) in store.list() {
        net.provide(hash).await.unwrap();
    }
    assert_eq!(stored, recipe_id);
    let options: BTreeMap<String, String> = recipe.resolve_options(&[]).unwrap();
    let publisher = signed.then(|| PublisherSignature::sign(&publisher_key, &recipe_id));
    println!("publisher {}", publisher_key.public());
    let job = JobRequest {
        build_key: build_key(&recipe_id, &options, &recipe.requirements),
        recipe_id,
        recipe_name: recipe.name.clone(),
        recipe_version: recipe.version.clone(),
        publisher,
        options,
        requirements: recipe.requirements.clone(),
        emails: vec!["tests@example.org".into()],
        requested_at_ms: 0,
    };
    println!("job {}", job.build_key);
    if let Ok(count) = std::env::var("KILN_ASSIGN_JOBS") {
        for n in 1..=count.parse::<u32>().unwrap() {
            let chosen = [("n".to_string(), n.to_string()), ("secs".to_string(), "20".to_string())];
            let options = recipe.resolve_options(&chosen).unwrap();
            let job = JobRequest {
                build_key: build_key(&recipe_id, &options, &recipe.requirements),
                options,
                ..job.clone()
            };
            // One after another, each answered before the next: the offers
            // past 16 arrive while 16 or more builds run, never while 16
            // other offers are still being read.
            assign(&net, workers[0], &job).await;
        }
        std::future::pending::<()>().await;
    }
    let job = Arc::new(job);
    for worker in workers {
        let (net, job) = (net.clone(), job.clone());
        tokio::spawn(async move { assign(&net, worker, &job).await });
    }
    while let Some(event) = events.recv().await {
        let NetEvent::Gossip { message, .. } = event else {
            continue;
        };
        let Gossip::V1(GossipV1::Outcome(outcome)) = *message else {
            continue;
        };
        match outcome {
            BuildOutcome::Done { attestation } => {
                let a = attestation.verify().unwrap();
                assert_eq!(attestation.signer(), a.worker, "attestation signed by its worker");
                if a.build_key == job.build_key {
                    println!("done {} {} {}", a.worker, a.artifact, a.log);
                }
            }
            BuildOutcome::Failed {
                build_key,
                worker,
                log,
                reason,
                ..
            } if build_key == job.build_key => {
                let log = log.map(|l| l.to_string()).unwrap_or_else(|| "-".into());
                println!("failed {worker} {log} {reason}");
            }
            BuildOutcome::Aborted {
                build_key,
                worker,
                reason,
                ..
            } if build_key == job.build_key => println!("aborted {worker} {reason}"),
            BuildOutcome::Failed { .. } | BuildOutcome::Aborted { .. } => {}
        }
    }
}

/// Loads the recipe, packing and storing its `source.path`.
fn load_and_publish(store: &Store, path: &Path) -> Recipe {
    let text = std::fs::read_to_string(path).unwrap();
    let base = path.parent().unwrap().to_path_buf();
    let (recipe, _) = Recipe::from_toml_with_paths(&text, &mut |source| {
        let tmp = tempfile::NamedTempFile::new_in(store.dir()).unwrap();
        kiln_node::archive::pack_dir(&base.join(source), std::io::BufWriter::new(tmp.as_file())).unwrap();
        Ok(store.put_file(tmp.path(), None).unwrap().0)
    })
    .unwrap();
    recipe
}

async fn assign(net: &kiln_node::net::NetClient, worker: PeerId, job: &JobRequest) {
    let mut control = net.stream_control();
    let mut stream = control.open_stream(worker, WORK_PROTOCOL).await.unwrap();
    let frame = encode_frame(&WorkRequest::AssignV1 {
        job: job.clone(),
        attempt: 1,
    })
    .unwrap();
    let frame = kiln_tests::exchange_frame(&mut stream, &frame).await.unwrap();
    match decode_frame::<WorkReply>(&frame).unwrap().unwrap().0 {
        WorkReply::V1(kiln_protocol::messages::WorkReplyV1::Accepted) => println!("accepted {worker}"),
        WorkReply::V1(kiln_protocol::messages::WorkReplyV1::Refused { reason }) => {
            println!("refused {worker}: {reason}")
        }
    }
}
