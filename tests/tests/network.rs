//! The network, with real processes on 127.0.0.1: join through a bootstrap
//! peer, publish on one node, fetch on another that knows only the
//! bootstrap; lying, dying and garbage-sending peers.

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kiln_protocol::Hash;
use kiln_tests::{
    bin, fetch, is_listen_line, kiln, output_within, start_bootstrap, start_node, test_bytes, Proc, COMMAND_TIME_MAX,
    START,
};

const FETCH: Duration = Duration::from_secs(60);
const MIB: usize = 1024 * 1024;

fn peer_of(addr: &str) -> &str {
    addr.rsplit('/').next().unwrap()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Writes `len` test bytes to `dir/blob.bin`; returns the file, the bytes and their hash.
fn write_blob(dir: &Path, len: usize, seed: u64) -> (PathBuf, Vec<u8>, Hash) {
    let data = test_bytes(len, seed);
    let file = dir.join("blob.bin");
    std::fs::write(&file, &data).unwrap();
    let hash = Hash::of(&data);
    (file, data, hash)
}

/// `kiln publish FILE --data-dir DIR`, which must succeed; returns what it printed.
fn publish(file: &Path, data_dir: &Path) -> String {
    let (ok, out, err) = kiln(&["publish", path(file), "--data-dir", path(data_dir)]);
    assert!(ok, "publish failed: {err}");
    out
}

/// `kiln fetch HASH -o OUTPUT` into `data_dir` with Kiln's info log on
/// stderr (which providers it found, and what it did with them).
fn fetch_logged(data_dir: &Path, bootstrap: &str, hash: Hash, output: &Path) -> std::process::Output {
    output_within(
        Command::new(bin("kiln"))
            .env("RUST_LOG", "kiln_node=info")
            .env("KILN_CONFIG", "/dev/null")
            .args([
                "fetch",
                &hash.to_string(),
                "-o",
                path(output),
                "--bootstrap",
                bootstrap,
                "--data-dir",
            ])
            .arg(data_dir),
        COMMAND_TIME_MAX,
    )
}

/// Starts `kiln-evil MODE...` and waits until it listens.
fn evil(mode: &[&str], data_dir: &Path, bootstrap: &str, target: &str) -> Proc {
    let mut command = Command::new(bin("kiln-evil"));
    command
        .args(mode)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--bootstrap", bootstrap, target]);
    let mut proc = Proc::spawn(&format!("evil {}", mode[0]), command);
    proc.wait_line(START, is_listen_line);
    proc
}

/// Starts a misbehaving provider of `file` and waits until it is announced.
fn evil_provider(mode: &[&str], data_dir: &Path, bootstrap: &str, file: &Path) -> Proc {
    let mut proc = evil(mode, data_dir, bootstrap, path(file));
    proc.wait_line(START, |l| l.starts_with("providing"));
    proc
}

#[test]
fn publish_on_one_node_fetch_on_another_through_the_bootstrap() {
    let tmp = tempfile::tempdir().unwrap();
    let (_boot, boot_addr) = start_bootstrap(&tmp.path().join("boot"));
    let (_a, a_addr) = start_node("a", &tmp.path().join("a"), &boot_addr, &[]);
    let (_b, _) = start_node("b", &tmp.path().join("b"), &boot_addr, &[]);

    // `kiln id` on a running node's data dir names the same peer.
    let (ok, id, _) = kiln(&["id", "--data-dir", path(&tmp.path().join("a"))]);
    assert!(ok);
    assert_eq!(id.trim(), peer_of(&a_addr));

    // A file of three ranges and a bit, published through the running node.
    let (file, _, hash) = write_blob(tmp.path(), 3 * MIB + 12345, 1);
    let printed: Hash = publish(&file, &tmp.path().join("a")).trim().parse().unwrap();
    assert_eq!(printed, hash, "the printed hash is what b3sum prints");

    // A third machine that knows only the bootstrap fetches it.
    let output = tmp.path().join("fetched.bin");
    let (ok, _, err) = fetch(&tmp.path().join("c"), &boot_addr, hash, &output);
    assert!(ok, "fetch failed: {err}");
    assert_eq!(Hash::of(&std::fs::read(&output).unwrap()), hash);

    // A directory is published as a deterministic archive: same tree, same hash.
    let tree = tmp.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("sub/x.txt"), b"x").unwrap();
    let first = publish(&tree, &tmp.path().join("a"));
    let second = publish(&tree, &tmp.path().join("d"));
    assert_eq!(first, second);
}

#[test]
fn a_provider_that_lies_is_dropped_and_nothing_corrupt_is_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let (_boot, boot_addr) = start_bootstrap(&tmp.path().join("boot"));
    let (file, data, hash) = write_blob(tmp.path(), 6 * MIB + 7, 2);
    let _liar = evil_provider(&["corrupt"], &tmp.path().join("liar"), &boot_addr, &file);
    let (_honest, _) = start_node("honest", &tmp.path().join("honest"), &boot_addr, &[]);
    publish(&file, &tmp.path().join("honest"));

    let output = tmp.path().join("fetched.bin");
    let fetcher_dir = tmp.path().join("fetcher");
    let (ok, _, err) = fetch(&fetcher_dir, &boot_addr, hash, &output);
    assert!(ok, "fetch failed: {err}");
    assert!(
        err.contains("provider sent bytes that do not match the hash"),
        "the liar was never caught: {err}"
    );
    assert_eq!(std::fs::read(&output).unwrap(), data);
    // Every blob the fetcher kept verifies: no corrupt byte was stored.
    let store = kiln_store::Store::open(&fetcher_dir).unwrap();
    for (blob, _) in store.list() {
        assert!(store.verify(&blob).unwrap(), "{blob} does not verify");
    }
}

#[test]
fn a_provider_claiming_a_blob_is_empty_is_caught_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let (_boot, boot_addr) = start_bootstrap(&tmp.path().join("boot"));
    // An empty blob has no range to check as it arrives, so the claim
    // itself must be checked against the hash: on the way into memory (one
    // range, to a file) and on the way into the store (no -o).
    for (name, len) in [("small", 4096), ("large", 2 * MIB)] {
        let sub = tmp.path().join(name);
        std::fs::create_dir_all(&sub).unwrap();
        let (file, _, hash) = write_blob(&sub, len, 10);
        let _liar = evil_provider(&["empty"], &tmp.path().join(format!("liar-{name}")), &boot_addr, &file);
        let fetcher = tmp.path().join(format!("fetcher-{name}"));
        let output = tmp.path().join(format!("{name}.bin"));
        let hash_arg = hash.to_string();
        let mut args = vec![
            "fetch",
            &hash_arg,
            "--bootstrap",
            &boot_addr,
            "--data-dir",
            path(&fetcher),
        ];
        if name == "small" {
            args.extend(["-o", path(&output)]);
        }
        let (ok, _, err) = kiln(&args);
        assert!(!ok, "the {name} blob was fetched from a provider claiming it is empty");
        assert!(err.contains("claims the blob is empty"), "{err}");
        assert!(!output.exists(), "a file was written for the {name} blob");
        if fetcher.join("index.redb").exists() {
            let store = kiln_store::Store::open(&fetcher).unwrap();
            assert!(!store.has(&hash), "the {name} blob was stored");
        }
    }
}

#[test]
fn a_small_blob_goes_straight_to_the_file_with_a_liar_among_its_providers_and_a_larger_one_through_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let (_boot, boot_addr) = start_bootstrap(&tmp.path().join("boot"));
    let (file, data, hash) = write_blob(tmp.path(), 4096, 8);
    let _liar = evil_provider(&["corrupt"], &tmp.path().join("liar"), &boot_addr, &file);
    let honest_dir = tmp.path().join("honest");
    let (_honest, _) = start_node("honest", &honest_dir, &boot_addr, &[]);
    publish(&file, &honest_dir);

    // One range: fetched into memory, checked, written to the file; the
    // fetcher's store is never opened, so it has no index.
    let output = tmp.path().join("small.bin");
    let fetcher_dir = tmp.path().join("fetcher");
    let (ok, _, err) = fetch(&fetcher_dir, &boot_addr, hash, &output);
    assert!(ok, "fetch failed: {err}");
    assert_eq!(std::fs::read(&output).unwrap(), data);
    assert!(
        !fetcher_dir.join("index.redb").exists(),
        "a small fetch to a file opened the store"
    );
    assert!(
        !std::fs::metadata(&output).unwrap().permissions().readonly(),
        "the file is the user's own, not a read-only link into a store"
    );

    // One byte more than a range: through the store, where a fetch that
    // is interrupted resumes, and kept there.
    let sub = tmp.path().join("large");
    std::fs::create_dir_all(&sub).unwrap();
    let (file, data, hash) = write_blob(&sub, MIB + 1, 9);
    publish(&file, &honest_dir);
    let output = tmp.path().join("large.bin");
    let (ok, _, err) = fetch(&fetcher_dir, &boot_addr, hash, &output);
    assert!(ok, "fetch failed: {err}");
    assert_eq!(std::fs::read(&output).unwrap(), data);
    let store = kiln_store::Store::open(&fetcher_dir).unwrap();
    assert!(store.has(&hash), "the larger blob is kept in the store");
    assert!(store.verify(&hash).unwrap());
}

#[test]
fn a_provider_killed_mid_transfer_is_replaced_by_another() {
    let tmp = tempfile::tempdir().unwrap();
    let (_boot, boot_addr) = start_bootstrap(&tmp.path().join("boot"));
    let (file, _, hash) = write_blob(tmp.path(), 24 * MIB, 3);
    let mut dying = evil_provider(&["die-after", "3"], &tmp.path().join("dying"), &boot_addr, &file);
    let (_honest, _) = start_node("honest", &tmp.path().join("honest"), &boot_addr, &[]);
    publish(&file, &tmp.path().join("honest"));

    let output = tmp.path().join("fetched.bin");
    let (ok, _, err) = fetch(&tmp.path().join("fetcher"), &boot_addr, hash, &output);
    assert!(ok, "fetch failed: {err}");
    assert_eq!(Hash::of(&std::fs::read(&output).unwrap()), hash);
    dying.wait_line(FETCH, |l| l == "dying");
}

#[test]
fn an_unknown_hash_is_a_clear_error_in_bounded_time() {
    let tmp = tempfile::tempdir().unwrap();
    let (_boot, boot_addr) = start_bootstrap(&tmp.path().join("boot"));
    let (_a, _) = start_node("a", &tmp.path().join("a"), &boot_addr, &[]);
    let started = std::time::Instant::now();
    let (ok, _, err) = fetch(
        &tmp.path().join("f"),
        &boot_addr,
        Hash::of(b"nobody has this"),
        &tmp.path().join("out"),
    );
    assert!(!ok);
    assert!(err.contains("no peer in the network holds"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "took {:?}",
        started.elapsed()
    );
    assert!(!tmp.path().join("out").exists());

    let (ok, _, err) = kiln(&["fetch", "not-a-hash", "--bootstrap", &boot_addr]);
    assert!(!ok);
    assert!(err.contains("64 lowercase hex characters"), "{err}");
}

#[test]
fn garbage_gossip_and_frames_are_rejected_and_the_node_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let (_boot, boot_addr) = start_bootstrap(&tmp.path().join("boot"));
    let (victim, victim_addr) = start_node("victim", &tmp.path().join("victim"), &boot_addr, &[]);
    let (file, data, hash) = write_blob(tmp.path(), 2 * MIB + 1, 4);
    publish(&file, &tmp.path().join("victim"));

    let mut sender = evil(
        &["garbage"],
        &tmp.path().join("evil"),
        &boot_addr,
        peer_of(&victim_addr),
    );
    sender.wait_line(FETCH, |l| l == "frames sent");
    // The victim refused the messages.
    victim.wait_stderr(FETCH, "gossip rejected");

    let output = tmp.path().join("fetched.bin");
    let (ok, _, err) = fetch(&tmp.path().join("fetcher"), &boot_addr, hash, &output);
    assert!(ok, "the victim stopped serving: {err}");
    assert_eq!(std::fs::read(&output).unwrap(), data);
}

#[test]
fn a_node_stops_cleanly_on_sigterm_and_keeps_its_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let (_boot, boot_addr) = start_bootstrap(&tmp.path().join("boot"));
    let (mut a, first) = start_node("a", &tmp.path().join("a"), &boot_addr, &[]);
    let status = a.terminate(START);
    assert!(status.success(), "exit status {status:?}: {}", a.stderr());
    assert!(!tmp.path().join("a/node.sock").exists(), "control socket left behind");
    let (_a, second) = start_node("a again", &tmp.path().join("a"), &boot_addr, &[]);
    assert_eq!(peer_of(&first), peer_of(&second));
}

#[test]
fn an_interrupted_fetch_resumes_where_it_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let (_boot, boot_addr) = start_bootstrap(&tmp.path().join("boot"));
    let (file, _, hash) = write_blob(tmp.path(), 12 * MIB, 5);

    // The only provider dies after serving a few ranges: the fetch fails
    // and keeps what it verified.
    let mut dying = evil_provider(&["die-after", "4"], &tmp.path().join("dying"), &boot_addr, &file);
    let fetcher = tmp.path().join("fetcher");
    let output = tmp.path().join("fetched.bin");
    let (ok, _, err) = fetch(&fetcher, &boot_addr, hash, &output);
    assert!(!ok, "the fetch cannot succeed with a dead provider");
    assert!(err.contains("every provider of"), "{err}");
    dying.kill();

    // Another provider appears; the next fetch starts from what is there.
    let (_honest, _) = start_node("honest", &tmp.path().join("honest"), &boot_addr, &[]);
    publish(&file, &tmp.path().join("honest"));
    let out = fetch_logged(&fetcher, &boot_addr, hash, &output);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("resuming an interrupted fetch"), "{err}");
    assert_eq!(Hash::of(&std::fs::read(&output).unwrap()), hash);
}

#[test]
fn nodes_rejoin_a_restarted_bootstrap_and_announce_their_blobs_again() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut boot, boot_addr) = start_bootstrap(&tmp.path().join("boot"));
    let (_a, _) = start_node("a", &tmp.path().join("a"), &boot_addr, &[]);
    let (file, data, hash) = write_blob(tmp.path(), 1000, 6);
    publish(&file, &tmp.path().join("a"));

    // The bootstrap restarts on the same address with the same identity,
    // having lost every provider record it held.
    boot.kill();
    let listen = boot_addr.rsplit_once("/p2p/").unwrap().0.to_string();
    let mut command = Command::new(bin("kiln-bootstrap"));
    command
        .args(["--listen", &listen, "--data-dir"])
        .arg(tmp.path().join("boot"));
    let mut boot = Proc::spawn("bootstrap again", command);
    assert_eq!(boot.wait_line(START, is_listen_line), boot_addr);

    // Node a redials it and announces its blob again, so a newcomer finds it.
    let output = tmp.path().join("fetched.bin");
    let newcomer = tmp.path().join("newcomer");
    kiln_tests::wait_until(Duration::from_secs(30), "the blob to be announced again", || {
        fetch(&newcomer, &boot_addr, hash, &output).0
    });
    assert_eq!(std::fs::read(&output).unwrap(), data);
}

#[test]
fn a_provider_claiming_an_absurd_blob_size_is_refused_before_allocating() {
    let tmp = tempfile::tempdir().unwrap();
    let (_boot, boot_addr) = start_bootstrap(&tmp.path().join("boot"));
    let (file, _, hash) = write_blob(tmp.path(), 3 * MIB, 7);
    let _liar = evil_provider(&["huge"], &tmp.path().join("liar"), &boot_addr, &file);

    let (ok, _, err) = fetch(&tmp.path().join("fetcher"), &boot_addr, hash, &tmp.path().join("out"));
    assert!(!ok, "a fetch from a provider that lies about the size cannot succeed");
    assert!(err.contains("over Kiln's limit"), "{err}");
    assert!(!tmp.path().join("out").exists());
}

/// A peer that speaks only noise (as js-libp2p does) still connects: Kiln
/// offers TLS first on TCP and noise second. The peer here is a plain
/// libp2p swarm with noise, yamux and ping, nothing of Kiln's; it dials a
/// real bootstrap peer and a real node, and a ping crosses each connection.
#[test]
fn a_peer_that_speaks_only_noise_connects() {
    use futures::StreamExt;
    use libp2p::swarm::SwarmEvent;
    use libp2p::{noise, ping, tcp, yamux, Multiaddr, PeerId};

    let tmp = tempfile::tempdir().unwrap();
    let (_boot, boot_addr) = start_bootstrap(&tmp.path().join("boot"));
    let (_node, node_addr) = start_node("a", &tmp.path().join("a"), &boot_addr, &[]);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
            .unwrap()
            .with_behaviour(|_| ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_millis(200))))
            .unwrap()
            .build();
        let mut waiting: Vec<PeerId> = Vec::new();
        for addr in [&boot_addr, &node_addr] {
            let addr: Multiaddr = addr.parse().unwrap();
            waiting.push(peer_of(&addr.to_string()).parse().unwrap());
            swarm.dial(addr).unwrap();
        }
        let mut connected = Vec::new();
        let pinged = tokio::time::timeout(COMMAND_TIME_MAX, async {
            while !waiting.is_empty() {
                match swarm.select_next_some().await {
                    SwarmEvent::ConnectionEstablished { peer_id, .. } => connected.push(peer_id),
                    SwarmEvent::Behaviour(ping::Event {
                        peer, result: Ok(_), ..
                    }) => waiting.retain(|p| *p != peer),
                    SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                        panic!("a noise-only peer could not connect to {peer_id:?}: {error}")
                    }
                    _ => {}
                }
            }
        })
        .await;
        assert!(
            pinged.is_ok(),
            "no ping answered within {COMMAND_TIME_MAX:?}; connected to {connected:?}"
        );
    });
}

/// A `kiln fetch` client stops right after fetching: it must not announce
/// itself as a provider, or every later fetch finds a dead peer (and spent
/// retries and stream timeouts on it). A third fetcher finds the one real
/// provider only.
#[test]
fn a_finished_fetch_leaves_no_provider_record_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let (_boot, boot_addr) = start_bootstrap(&tmp.path().join("boot"));
    let (_a, _) = start_node("a", &tmp.path().join("a"), &boot_addr, &[]);
    // Larger than one range: a smaller blob goes straight to the file and
    // never into the fetcher's store, from which it could be announced.
    let (file, data, hash) = write_blob(tmp.path(), 2 * MIB, 7);
    publish(&file, &tmp.path().join("a"));

    // Two fetchers before, each of which would have announced itself.
    for fetcher in ["first", "second"] {
        let output = tmp.path().join(format!("{fetcher}.bin"));
        let (ok, _, err) = fetch(&tmp.path().join(fetcher), &boot_addr, hash, &output);
        assert!(ok, "the {fetcher} fetch failed: {err}");
    }

    let output = tmp.path().join("third.bin");
    let out = fetch_logged(&tmp.path().join("third"), &boot_addr, hash, &output);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("providers=1"),
        "an earlier fetcher was announced as a provider: {err}"
    );
    assert_eq!(std::fs::read(&output).unwrap(), data);
}
