//! Counters a node keeps about itself, shown at the dashboard's `/metrics`
//! in Prometheus' text format. One node runs per process, so they are
//! process-wide; every field is an atomic and never blocks.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds (seconds) of the dispatch-latency histogram's buckets.
pub const DISPATCH_BUCKETS_S: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0];

/// What this node counted since it started.
pub struct Metrics {
    /// Verified blob bytes fetched from other peers.
    pub bytes_fetched: AtomicU64,
    /// Blob bytes sent to other peers.
    pub bytes_served: AtomicU64,
    /// Builds this node saw end, by how they ended.
    pub jobs_done: AtomicU64,
    pub jobs_failed: AtomicU64,
    /// Gossip messages delivered to this node (each once, whatever the
    /// number of peers that forwarded it), and their bytes: an idle node's
    /// cost, which must not grow with the network.
    pub gossip_received: AtomicU64,
    pub gossip_received_bytes: AtomicU64,
    /// Jobs announced on gossip by a peer that does not coordinate:
    /// dropped, with nothing kept or fetched for them.
    pub gossip_jobs_refused: AtomicU64,
    /// Submissions refused for a requester's bound (open jobs, rate).
    pub requests_refused_bound: AtomicU64,
    /// Tasks started to fetch and hold a gossiped job's inputs (a member
    /// of the coordination set, in case it takes over).
    pub input_fetches_started: AtomicU64,
    /// Hole punches (DCUtR) this node took part in: started on a relayed
    /// connection, and ended with a direct connection or given up.
    pub hole_punch_attempts: AtomicU64,
    pub hole_punch_successes: AtomicU64,
    pub hole_punch_failures: AtomicU64,
    /// Bytes this node sent and received over relayed connections.
    pub relayed_bytes: AtomicU64,
    /// Circuits this node's relay server accepted (bootstrap peers).
    pub relay_circuits: AtomicU64,
    dispatch: Histogram,
}

/// A Prometheus histogram of milliseconds, reported in seconds.
struct Histogram {
    /// Observations at or under each bound (not cumulative here).
    buckets: [AtomicU64; DISPATCH_BUCKETS_S.len()],
    count: AtomicU64,
    sum_ms: AtomicU64,
}

/// The process's metrics.
pub static METRICS: Metrics = Metrics::new();

impl Metrics {
    const fn new() -> Metrics {
        Metrics {
            bytes_fetched: AtomicU64::new(0),
            bytes_served: AtomicU64::new(0),
            jobs_done: AtomicU64::new(0),
            jobs_failed: AtomicU64::new(0),
            gossip_received: AtomicU64::new(0),
            gossip_received_bytes: AtomicU64::new(0),
            gossip_jobs_refused: AtomicU64::new(0),
            requests_refused_bound: AtomicU64::new(0),
            input_fetches_started: AtomicU64::new(0),
            hole_punch_attempts: AtomicU64::new(0),
            hole_punch_successes: AtomicU64::new(0),
            hole_punch_failures: AtomicU64::new(0),
            relayed_bytes: AtomicU64::new(0),
            relay_circuits: AtomicU64::new(0),
            dispatch: Histogram {
                buckets: [const { AtomicU64::new(0) }; DISPATCH_BUCKETS_S.len()],
                count: AtomicU64::new(0),
                sum_ms: AtomicU64::new(0),
            },
        }
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// A job this node coordinates went to a worker `ms` after it was accepted.
    pub fn dispatched(&self, ms: u64) {
        let seconds = ms as f64 / 1000.0;
        if let Some(i) = DISPATCH_BUCKETS_S.iter().position(|bound| seconds <= *bound) {
            self.dispatch.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.dispatch.count.fetch_add(1, Ordering::Relaxed);
        self.dispatch.sum_ms.fetch_add(ms, Ordering::Relaxed);
    }

    /// Appends this node's counters in Prometheus' text format.
    pub fn render(&self, out: &mut String) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        metric(
            out,
            "kiln_bytes_fetched_total",
            "counter",
            "Verified blob bytes this node fetched from peers.",
            get(&self.bytes_fetched),
        );
        metric(
            out,
            "kiln_bytes_served_total",
            "counter",
            "Blob bytes this node served to peers.",
            get(&self.bytes_served),
        );
        metric(
            out,
            "kiln_jobs_done_total",
            "counter",
            "Builds this node saw finish since it started.",
            get(&self.jobs_done),
        );
        metric(
            out,
            "kiln_jobs_failed_total",
            "counter",
            "Builds this node saw fail since it started.",
            get(&self.jobs_failed),
        );
        metric(
            out,
            "kiln_gossip_received_total",
            "counter",
            "Gossip messages delivered to this node (each once).",
            get(&self.gossip_received),
        );
        metric(
            out,
            "kiln_gossip_received_bytes_total",
            "counter",
            "Bytes of the gossip messages delivered to this node.",
            get(&self.gossip_received_bytes),
        );
        metric(
            out,
            "kiln_gossip_jobs_refused_total",
            "counter",
            "Jobs announced on gossip by a peer that does not coordinate, dropped.",
            get(&self.gossip_jobs_refused),
        );
        metric(
            out,
            "kiln_requests_refused_bound_total",
            "counter",
            "Submissions refused because their requester was over one of its bounds (open jobs, submissions a minute).",
            get(&self.requests_refused_bound),
        );
        metric(
            out,
            "kiln_input_fetches_started_total",
            "counter",
            "Tasks started to fetch and hold a gossiped job's inputs, in case this node takes over.",
            get(&self.input_fetches_started),
        );
        for (name, help, counter) in [
            (
                "kiln_hole_punch_attempts_total",
                "Hole punches (DCUtR) started on a relayed connection.",
                &self.hole_punch_attempts,
            ),
            (
                "kiln_hole_punch_successes_total",
                "Hole punches that ended with a direct connection.",
                &self.hole_punch_successes,
            ),
            (
                "kiln_hole_punch_failures_total",
                "Hole punches given up after their attempts (the peer stays relayed).",
                &self.hole_punch_failures,
            ),
            (
                "kiln_relayed_bytes_total",
                "Bytes this node sent and received over relayed connections.",
                &self.relayed_bytes,
            ),
            (
                "kiln_relay_circuits_total",
                "Circuits this node's relay server accepted for other peers.",
                &self.relay_circuits,
            ),
        ] {
            metric(out, name, "counter", help, get(counter));
        }
        let name = "kiln_dispatch_latency_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from a job's acceptance by this node as coordinator to its first offer to a worker."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in DISPATCH_BUCKETS_S.iter().zip(&self.dispatch.buckets) {
            cumulative += get(bucket);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = get(&self.dispatch.count);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", get(&self.dispatch.sum_ms) as f64 / 1000.0);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Appends one metric with its help and type lines.
pub fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_histogram_is_cumulative_and_counts_slow_dispatches_only_in_inf() {
        let m = Metrics::new();
        Metrics::add(&m.bytes_served, 7);
        m.dispatched(3);
        m.dispatched(300);
        m.dispatched(120_000);
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("kiln_bytes_served_total 7\n"), "{out}");
        assert!(
            out.contains("kiln_dispatch_latency_seconds_bucket{le=\"0.005\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("kiln_dispatch_latency_seconds_bucket{le=\"0.25\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("kiln_dispatch_latency_seconds_bucket{le=\"0.5\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("kiln_dispatch_latency_seconds_bucket{le=\"60\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("kiln_dispatch_latency_seconds_bucket{le=\"+Inf\"} 3\n"),
            "{out}"
        );
        assert!(out.contains("kiln_dispatch_latency_seconds_sum 120.303\n"), "{out}");
        assert!(out.contains("kiln_dispatch_latency_seconds_count 3\n"), "{out}");
    }
}
