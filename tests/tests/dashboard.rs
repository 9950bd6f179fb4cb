//! The dashboard (`kiln node --http`), with real processes on 127.0.0.1: a
//! coordinator and a worker each serve one; builds run; the pages, the
//! JSON and the Prometheus metrics are read over HTTP, and the page is
//! loaded in a real headless browser (Debian's chromium).

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_tests::farm::{peer_of, recipe, request, request_waiting, wait_json, worker, BUILD};
use kiln_tests::{start_bootstrap, start_node, wait_until, Proc, START};
use serde_json::Value;

/// The dashboard's URL, from the node's log.
fn dashboard_url(node: &Proc) -> String {
    node.wait_stderr(START, "dashboard listening");
    let log = node.stderr();
    let at = log.find("url=http://").expect("url in the log") + "url=".len();
    log[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_string()
}

/// A plain HTTP/1.0 GET: (status, body).
fn get(base: &str, path: &str) -> (u16, String) {
    let host = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(host).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a complete HTTP response");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

fn get_json(base: &str, path: &str) -> Value {
    let (status, body) = get(base, path);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path} is not JSON ({e}): {body}"))
}

/// One sample's value in Prometheus text.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
        .parse()
        .unwrap()
}

/// The DOM of `url` once Debian's chromium has loaded it headless.
fn browser_dom(url: &str, profile: &Path) -> String {
    let browser = std::env::var("KILN_TEST_BROWSER").unwrap_or_else(|_| "chromium".into());
    let out_path = profile.with_extension("html");
    let mut child = Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--dump-dom", url])
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {browser} ({e}): the dashboard test needs a headless browser; apt-get install chromium"
            )
        });
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{browser} did not finish loading {url} within 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{browser} failed on {url}: {status}");
    std::fs::read_to_string(out_path).unwrap()
}

#[test]
fn the_dashboard_shows_workers_live_logs_finished_builds_their_providers_and_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let (_boot, boot) = start_bootstrap(&tmp.path().join("boot"));
    let (c, c_addr) = start_node(
        "coordinator",
        &tmp.path().join("c"),
        &boot,
        &["--coordinator", "--http", "127.0.0.1:0"],
    );
    let (w, w_addr) = worker("worker", &tmp.path().join("w"), &boot, &["--http", "127.0.0.1:0"]);
    let (coordinator, worker_peer) = (peer_of(&c_addr), peer_of(&w_addr));
    let (site, worker_site) = (dashboard_url(&c), dashboard_url(&w));

    // The page is there before anything is built, and names the coordinator.
    wait_until(START, "the coordinator's dashboard to list the worker", || {
        let status = get_json(&site, "/api/status");
        status["farm"]["workers"].as_array().is_some_and(|w| w.len() == 1)
    });

    // A running build's log is shown live.
    let (ok, chatty, err) = request(&boot, &recipe("chatty"), "a@example.org", &[]);
    assert!(ok, "{err}");
    let chatty_key = chatty["build_key"].as_str().unwrap().to_string();
    let mut live = Value::Null;
    wait_until(BUILD, "the chatty build's live log on the dashboard", || {
        live = get_json(&site, &format!("/api/build/{chatty_key}"));
        live["log_source"] == "live"
            && live["log_text"]
                .as_str()
                .is_some_and(|t| t.contains("printing") || t.contains("\n1999"))
    });
    assert_eq!(live["state"], "building", "{live}");
    assert_eq!(live["worker"], worker_peer.as_str(), "{live}");
    let (status, page) = get(&site, &format!("/build/{chatty_key}"));
    assert_eq!(status, 200);
    assert!(
        page.contains("http-equiv=\"refresh\""),
        "a running build's page refreshes itself: {page}"
    );

    // A second build, followed to the end.
    let mut hello = request_waiting("hello", &boot, &recipe("hello-c"), "b@example.org", &[]);
    let built = wait_json(&mut hello);
    assert_eq!(built["state"], "done", "{built}");
    let (hello_key, artifact) = (
        built["build_key"].as_str().unwrap(),
        built["artifact"].as_str().unwrap(),
    );
    wait_until(BUILD, "the chatty build to finish", || {
        get_json(&site, &format!("/api/build/{chatty_key}"))["state"] == "done"
    });

    // The worker's dashboard reaches the coordinator over the network and
    // shows the same farm; artifacts list both holders.
    let mut status = Value::Null;
    wait_until(BUILD, "both holders of the artifact listed as providers", || {
        status = get_json(&worker_site, "/api/status");
        status["artifacts"]
            .as_array()
            .and_then(|list| list.iter().find(|a| a["artifact"] == artifact))
            .and_then(|a| a["providers"].as_array())
            .is_some_and(|p| p.len() >= 2)
    });
    assert_eq!(status["farm"]["coordinator"], coordinator.as_str(), "{status}");
    assert_eq!(status["node"]["peer_id"], worker_peer.as_str(), "{status}");
    let providers = status["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["artifact"] == artifact)
        .unwrap()["providers"]
        .clone();
    for peer in [&coordinator, &worker_peer] {
        assert!(
            providers.as_array().unwrap().iter().any(|p| p == peer.as_str()),
            "{peer} provides it: {status}"
        );
    }
    let recent = status["farm"]["recent"].as_array().unwrap();
    assert_eq!(recent.len(), 2, "{status}");
    let hello_view = recent.iter().find(|j| j["build_key"] == hello_key).unwrap();
    assert_eq!(hello_view["builder"], worker_peer.as_str(), "{status}");

    // An ended build's page shows the end of its stored log.
    let ended = get_json(&site, &format!("/api/build/{hello_key}"));
    assert_eq!(ended["log_source"], "stored", "{ended}");
    assert!(ended["log_text"].as_str().unwrap().contains("$ cc -O2"), "{ended}");

    // Metrics, as Prometheus reads them.
    let (status_code, metrics) = get(&site, "/metrics");
    assert_eq!(status_code, 200);
    assert_eq!(sample(&metrics, "kiln_jobs_done_total"), 2.0, "{metrics}");
    assert_eq!(sample(&metrics, "kiln_jobs_failed_total"), 0.0, "{metrics}");
    assert_eq!(sample(&metrics, "kiln_jobs_queued"), 0.0, "{metrics}");
    assert_eq!(sample(&metrics, "kiln_jobs_running"), 0.0, "{metrics}");
    assert_eq!(sample(&metrics, "kiln_workers"), 1.0, "{metrics}");
    assert_eq!(sample(&metrics, "kiln_coordinator_acting"), 1.0, "{metrics}");
    assert_eq!(
        sample(&metrics, "kiln_dispatch_latency_seconds_count"),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "kiln_dispatch_latency_seconds_bucket{le=\"+Inf\"}"),
        2.0,
        "{metrics}"
    );
    assert!(sample(&metrics, "kiln_peers") >= 2.0, "{metrics}");
    // The coordinator copied both artifacts from the worker.
    assert!(sample(&metrics, "kiln_bytes_fetched_total") > 18_000.0, "{metrics}");
    let (_, worker_metrics) = get(&worker_site, "/metrics");
    assert!(
        sample(&worker_metrics, "kiln_bytes_served_total") > 18_000.0,
        "{worker_metrics}"
    );
    assert_eq!(
        sample(&worker_metrics, "kiln_coordinator_acting"),
        0.0,
        "{worker_metrics}"
    );

    // What the worker gave, on its own dashboard; the top contributors on
    // the coordinator's.
    let gave = &status["gave"];
    assert_eq!(gave["all_time"]["builds_done"], 2, "{status}");
    assert!(gave["all_time"]["build_ms"].as_u64().unwrap() > 0, "{status}");
    let (_, page) = get(&worker_site, "/");
    assert!(page.contains("<h2>What this machine gave</h2>"), "{page}");
    let farm = get_json(&site, "/api/status");
    let top = &farm["farm"]["contributors"][0];
    assert_eq!(top["peer"], worker_peer.as_str(), "{farm}");
    assert_eq!(top["builds"], 2, "{farm}");
    let (_, page) = get(&site, "/");
    assert!(page.contains("<table id=\"contributors\">"), "{page}");

    // Wrong addresses say what is there instead.
    let (code, body) = get(&site, "/build/nonsense");
    assert_eq!(code, 400, "{body}");
    let (code, body) = get(&site, &format!("/build/{}", "0".repeat(64)));
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("recent builds"), "{body}");

    // In a real browser: the page loads and shows the worker and the
    // finished builds with their artifacts.
    let dom = browser_dom(&format!("{site}/"), &tmp.path().join("browser"));
    assert!(dom.contains("<table id=\"workers\">"), "{dom}");
    assert!(dom.contains(&worker_peer), "the worker: {dom}");
    assert!(dom.contains(&format!("<code>{artifact}</code>")), "the artifact: {dom}");
    assert!(dom.contains("hello-c 1.0.0"), "{dom}");
    assert!(dom.contains("class=\"done\">done<"), "{dom}");
    let dom = browser_dom(&format!("{site}/build/{hello_key}"), &tmp.path().join("browser2"));
    assert!(dom.contains("$ cc -O2"), "the build page shows the log: {dom}");
    assert!(dom.contains(artifact), "{dom}");
}
