#!/usr/bin/env bash
# What checking a build by a second builder costs (issue 16, BENCHMARKS.md):
# a bootstrap peer, a pinned coordinator and two workers on 127.0.0.1, then
# RUNS whole `kiln request --wait` processes for new builds of
# tests/recipes/sleep (secs=1, distinct builds through its `n` option) with
# --verify 1, then RUNS with --verify 2, then RUNS with --verify auto (the
# --verify 2 runs gave both workers a streak of RUNS; the coordinator
# trusts a worker alone from a streak of TRUSTED, default 3). Prints each
# time, how it was checked, and the medians.
# Needs bubblewrap (the workers build in their sandbox).
#
#   cargo build --workspace && scripts/bench-verify.sh [BIN_DIR] [RUNS (6)] [TRUSTED (3)]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$root/target/debug}
runs=${2:-6}
trusted=${3:-3}
# Each run is a new build: the recipe's `n` option has 20 values.
if [ $((runs * 3)) -gt 20 ]; then echo "at most 6 runs (3 x RUNS new builds of 20)" >&2; exit 2; fi
recipe=$root/tests/recipes/sleep/recipe.toml
dir=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

first_line() { # FILE: waits for the process writing FILE to print its address
    for _ in $(seq 1 200); do
        if grep -q /p2p/ "$1" 2>/dev/null; then head -1 "$1"; return; fi
        sleep 0.05
    done
    echo "no address in $1" >&2; exit 1
}

"$bin/kiln-bootstrap" --listen /ip4/127.0.0.1/tcp/0 --data-dir "$dir/boot" >"$dir/boot.out" 2>"$dir/boot.err" &
pids+=($!)
boot=$(first_line "$dir/boot.out")
"$bin/kiln" node --listen /ip4/127.0.0.1/tcp/0 --bootstrap "$boot" --data-dir "$dir/c" --coordinator \
    --trusted-streak "$trusted" >"$dir/c.out" 2>"$dir/c.err" &
pids+=($!)
for w in 1 2; do
    "$bin/kiln" node --listen /ip4/127.0.0.1/tcp/0 --bootstrap "$boot" --data-dir "$dir/w$w" \
        --contribute --trust-any-recipe --no-coordinator >"$dir/w$w.out" 2>"$dir/w$w.err" &
    pids+=($!)
done
for _ in $(seq 1 200); do
    listed=$("$bin/kiln" status --json --bootstrap "$boot" 2>/dev/null \
        | python3 -c "import json,sys; print(len(json.load(sys.stdin)['workers']))" 2>/dev/null || echo 0)
    [ "$listed" = 2 ] && break
    sleep 0.1
done
[ "$listed" = 2 ] || { echo "the two workers were not listed" >&2; exit 1; }

n=0
for verify in 1 2 auto; do
    times=()
    for _ in $(seq 1 "$runs"); do
        n=$((n + 1))
        start=$(date +%s.%N)
        "$bin/kiln" request --json --wait --bootstrap "$boot" --email a@example.org --recipe "$recipe" \
            -o secs=1 -o "n=$n" --verify "$verify" >"$dir/answer.json" 2>/dev/null
        end=$(date +%s.%N)
        seconds=$(python3 -c "print(round($end - $start, 3))")
        checked=$(python3 -c "import json; print(json.load(open('$dir/answer.json'))['checked'])")
        echo "--verify $verify  n=$n  ${seconds} s  ($checked)"
        times+=("$seconds")
    done
    median=$(printf '%s\n' "${times[@]}" | python3 -c "import statistics,sys; print(round(statistics.median(float(l) for l in sys.stdin), 3))")
    echo "--verify $verify median: ${median} s"
done
