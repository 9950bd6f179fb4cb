#!/usr/bin/env python3
"""Benchmarks of the request flow on loopback (issue 5, BENCHMARKS.md).

Starts a bootstrap peer, a pinned coordinator and one worker from BIN_DIR
(default target/release), then measures, process start to exit:

  (a) `kiln request --json` for a build that exists (answered at once),
      against `kiln --version` (the floor: starting the binary) run the
      same number of times;
  (b) `kiln request --json --wait` for new builds of tests/recipes/sleep
      with secs=1 (distinct builds through its `n` option), minus the one
      second the recipe sleeps: queueing, dispatch, fetching inputs,
      sandbox setup, storing, replication and the answer.

Prints medians, minima and maxima. Needs bubblewrap (the worker builds in
its sandbox).

    cargo build --release --workspace
    python3 scripts/bench-request.py [BIN_DIR] [RUNS]
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else os.path.join(ROOT, "target", "release")
RUNS = int(sys.argv[2]) if len(sys.argv) > 2 else 30
RECIPE = os.path.join(ROOT, "tests", "recipes", "sleep", "recipe.toml")
SLEEP_S = 1.0


def start(args, log):
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True)
    line = proc.stdout.readline().strip()
    if "/p2p/" not in line:
        sys.exit(f"{args[0]} did not print its address: {line!r}")
    return proc, line


def timed(args):
    t0 = time.perf_counter()
    out = subprocess.run(args, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"{' '.join(args)} failed: {out.stderr}")
    return took, out.stdout


def report(name, samples_s):
    ms = [s * 1000 for s in samples_s]
    print(f"{name}: median {statistics.median(ms):.1f} ms, min {min(ms):.1f}, max {max(ms):.1f} ({len(ms)} runs)")
    return statistics.median(ms)


def main():
    kiln = os.path.join(BIN, "kiln")
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        log = open(os.path.join(tmp, "nodes.log"), "w")
        try:
            boot, addr = start([os.path.join(BIN, "kiln-bootstrap"), "--listen", "/ip4/127.0.0.1/tcp/0",
                                "--data-dir", f"{tmp}/boot"], log)
            procs.append(boot)
            node = [kiln, "node", "--listen", "/ip4/127.0.0.1/tcp/0", "--bootstrap", addr, "--data-dir"]
            procs.append(start(node + [f"{tmp}/c", "--coordinator"], log)[0])
            procs.append(start(node + [f"{tmp}/w", "--contribute", "--trust-any-recipe", "--no-coordinator",
                                       "--max-jobs", "1"], log)[0])
            deadline = time.time() + 60
            while True:
                out = subprocess.run([kiln, "status", "--json", "--bootstrap", addr], capture_output=True, text=True)
                if out.returncode == 0 and len(json.loads(out.stdout)["workers"]) == 1:
                    break
                if time.time() > deadline:
                    sys.exit("the worker never showed up in kiln status")
                time.sleep(0.2)

            request = [kiln, "request", "--json", "--bootstrap", addr, "--email", "bench@example.org",
                       "--recipe", RECIPE, "-o", f"secs={int(SLEEP_S)}"]
            overheads = []
            for n in range(1, 10):
                took, out = timed(request + ["-o", f"n={n}", "--wait"])
                state = json.loads(out.splitlines()[-1])["state"]
                if state != "done":
                    sys.exit(f"build n={n} ended {state}")
                overheads.append(took - SLEEP_S)
            b = report("(b) request to artifact ready, minus the recipe's 1 s", overheads)

            existing, floor = [], []
            for _ in range(RUNS):
                took, out = timed(request + ["-o", "n=1"])
                if json.loads(out)["state"] != "done":
                    sys.exit(f"an existing build was not answered at once: {out}")
                existing.append(took)
                floor.append(timed([kiln, "--version"])[0])
            a = report("(a) kiln request for an existing build", existing)
            f = report("    baseline: kiln --version", floor)
            print(f"    (a) minus the baseline: {a - f:.1f} ms; (b) target 500 ms: {'met' if b < 500 else 'NOT met'}; "
                  f"(a) target 50 ms: {'met' if a < 50 else 'NOT met'}")
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait()


if __name__ == "__main__":
    main()
