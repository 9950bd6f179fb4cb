#!/usr/bin/env python3
"""Scale benchmark (issue 14, BENCHMARKS.md): what an idle node costs as the
network grows, on loopback.

For each N: starts a bootstrap peer, a pinned coordinator and N real
`kiln node --contribute` workers from BIN_DIR (default target/release;
they may coordinate, as a default volunteer does), then prints:

  - seconds until `kiln status` lists all N workers;
  - RSS per idle worker (median of the workers, from /proc);
  - CPU per idle worker over SAMPLE_S seconds (% of one core, median, from
    /proc/PID/stat), after the network has been idle for SETTLE_S (130 s:
    past the 120 s after which a node drops idle connections outside its
    gossip meshes, so the figure is a node's steady state, not its start);
  - gossip messages and bytes delivered per idle worker per second, and its
    connected peers (median, from `kiln status --node --json`; "n/a" for a
    build without them);
  - a trivial request (tests/recipes/sleep, secs=1) from `kiln request` to
    `done`, minus the second the recipe sleeps;
  - a fetch of its artifact by hash into a fresh data dir;
  - how many "Send Queue full" warnings (gossipsub dropping messages for a
    peer that cannot keep up) all the nodes logged in the run.

    cargo build --release --workspace
    python3 scripts/bench-scale.py [BIN_DIR] [N ...]        e.g. target/release 25 50

Two builds in one run (a baseline): pass BIN_DIR of each, one after the other.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "tests", "recipes", "sleep", "recipe.toml")
SETTLE_S = float(os.environ.get("SETTLE_S", "130"))
SAMPLE_S = float(os.environ.get("SAMPLE_S", "30"))
TICKS = os.sysconf("SC_CLK_TCK")


def start(args, log):
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True)
    line = proc.stdout.readline().strip()
    if "/p2p/" not in line:
        sys.exit(f"{args[0]} did not print its address: {line!r}")
    return proc, line


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def gossip_counts(kiln, dirs):
    """(messages, bytes) delivered to each node so far, or None."""
    counts = []
    for d in dirs:
        out = subprocess.run([kiln, "status", "--node", "--json", "--data-dir", d], capture_output=True, text=True)
        if out.returncode != 0:
            return None
        view = json.loads(out.stdout)
        if "gossip_received" not in view:
            return None
        counts.append((view["gossip_received"], view["gossip_received_bytes"], view.get("connected_peers", 0)))
    return counts


def queue_full_count(tmp, log):
    log.flush()
    with open(os.path.join(tmp, "nodes.log"), errors="replace") as f:
        return sum("Send Queue full" in line for line in f)


def one(bin_dir, n):
    kiln = os.path.join(bin_dir, "kiln")
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        log = open(os.path.join(tmp, "nodes.log"), "w")
        try:
            boot, addr = start([os.path.join(bin_dir, "kiln-bootstrap"), "--listen", "/ip4/127.0.0.1/tcp/0",
                                "--data-dir", f"{tmp}/boot"], log)
            procs.append(boot)
            node = [kiln, "node", "--listen", "/ip4/127.0.0.1/tcp/0", "--bootstrap", addr, "--data-dir"]
            procs.append(start(node + [f"{tmp}/c", "--coordinator"], log)[0])
            t0 = time.time()
            workers, dirs = [], []
            for i in range(n):
                d = f"{tmp}/w{i}"
                workers.append(start(node + [d, "--contribute", "--trust-any-recipe"], log)[0])
                dirs.append(d)
            procs.extend(workers)
            deadline = t0 + 300
            listed = 0
            while True:
                out = subprocess.run([kiln, "status", "--json", "--bootstrap", addr], capture_output=True, text=True)
                if out.returncode == 0:
                    listed = len(json.loads(out.stdout)["workers"])
                if listed == n:
                    listed_s = time.time() - t0
                    break
                if time.time() > deadline:
                    print(f"{bin_dir} N={n}: {listed} of {n} workers listed in kiln status after 300 s; "
                          f"'Send Queue full' logged {queue_full_count(tmp, log)} times", flush=True)
                    return
                time.sleep(0.5)

            time.sleep(SETTLE_S)
            before_cpu = [cpu_ticks(p.pid) for p in workers]
            before_gossip = gossip_counts(kiln, dirs)
            t1 = time.time()
            time.sleep(SAMPLE_S)
            after_gossip = gossip_counts(kiln, dirs)
            span = time.time() - t1
            after_cpu = [cpu_ticks(p.pid) for p in workers]
            cpu = statistics.median((a - b) / TICKS / span * 100 for a, b in zip(after_cpu, before_cpu))
            rss = statistics.median(rss_mib(p.pid) for p in workers)
            if before_gossip and after_gossip:
                msgs = statistics.median((a[0] - b[0]) / span for a, b in zip(after_gossip, before_gossip))
                byts = statistics.median((a[1] - b[1]) / span for a, b in zip(after_gossip, before_gossip))
                peers = statistics.median(a[2] for a in after_gossip)
                gossip = f"{msgs:.1f} msg/s, {byts:.0f} B/s, {peers:.0f} connected peers"
            else:
                gossip = "n/a"

            t2 = time.perf_counter()
            out = subprocess.run([kiln, "request", "--json", "--wait", "--bootstrap", addr, "--email",
                                  "bench@example.org", "--recipe", RECIPE, "-o", "secs=1"],
                                 capture_output=True, text=True)
            request_s = time.perf_counter() - t2 - 1.0
            lines = out.stdout.splitlines()
            done = json.loads(lines[-1]) if out.returncode == 0 and lines else {}
            if done.get("state") == "done":
                request = f"{request_s:.2f} s beyond the build"
                t3 = time.perf_counter()
                out = subprocess.run([kiln, "fetch", done["artifact"], "--bootstrap", addr, "--data-dir",
                                      f"{tmp}/fetcher", "-o", f"{tmp}/artifact"], capture_output=True, text=True)
                fetch = f"{time.perf_counter() - t3:.2f} s" if out.returncode == 0 else f"failed ({out.stderr.strip()})"
            else:
                request = f"failed ({out.stderr.strip()})"
                fetch = "not tried"
            queue_full = queue_full_count(tmp, log)
            print(f"{bin_dir} N={n}: listed in {listed_s:.1f} s; idle worker: RSS {rss:.1f} MiB, "
                  f"CPU {cpu:.2f} % of a core, gossip {gossip}; request {request}; fetch {fetch}; "
                  f"'Send Queue full' logged {queue_full} times", flush=True)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()


def main():
    args = sys.argv[1:]
    bins = [a for a in args if not a.isdigit()] or [os.path.join(ROOT, "target", "release")]
    sizes = [int(a) for a in args if a.isdigit()] or [25, 50, 100, 200]
    for n in sizes:
        for bin_dir in bins:
            one(os.path.abspath(bin_dir), n)


if __name__ == "__main__":
    main()
