#!/usr/bin/env bash
# Compares the store with standard tools on one random file:
#   b3sum FILE                  hashing alone (if b3sum is on PATH: `cargo install b3sum`)
#   cp FILE DIR/x && sync       a plain durable copy
#   store put_file              hash while writing, fsync, rename (store_bench)
#   store verified read         open, read everything, check the hash (store_bench)
# Each is run RUNS times; the medians are printed.
#
# Usage: store/bench.sh [DIR]      (run from the workspace root)
#   SIZE=64M store/bench.sh        a smaller file (default 1G)
#   RUNS=5                         runs per measurement (default 5)
set -euo pipefail

SIZE="${SIZE:-1G}"
RUNS="${RUNS:-5}"
MIB=1048576
if [ $# -ge 1 ]; then
    DIR="$1"
    mkdir -p "$DIR"
    cleanup() { rm -rf "$DIR/input" "$DIR/x" "$DIR/kiln-store-bench"; }
else
    DIR="$(mktemp -d "${TMPDIR:-/tmp}/kiln-store-bench.XXXXXX")"
    cleanup() { rm -rf "$DIR"; }
fi
FILE="$DIR/input"
trap cleanup EXIT

echo "building store_bench (release)"
cargo build --release --quiet -p kiln-store --example store_bench
BENCH="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/release/examples/store_bench"

echo "making a $SIZE random file in $DIR"
head -c "$SIZE" /dev/urandom >"$FILE"
BYTES=$(stat -c %s "$FILE")

# Seconds taken by a command, as a decimal number.
seconds() {
    local start end
    start=$(date +%s.%N)
    "$@" >/dev/null
    end=$(date +%s.%N)
    echo "$end - $start" | bc -l
}

median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

report() { # name, median seconds
    awk -v name="$1" -v s="$2" -v bytes="$BYTES" -v mib="$MIB" \
        'BEGIN { printf "%-22s median %7.3f s  %8.0f MiB/s\n", name, s, bytes / mib / s }'
}

copy_and_sync() { rm -f "$DIR/x"; cp "$FILE" "$DIR/x" && sync; }

results=()

if command -v b3sum >/dev/null 2>&1; then
    times=$(for _ in $(seq "$RUNS"); do seconds b3sum "$FILE"; done | median)
    results+=("$(report "b3sum" "$times")")
    echo "b3sum:    $(b3sum "$FILE" | cut -d' ' -f1)"
else
    results+=("b3sum                  not found on PATH (install with: cargo install b3sum); skipped")
fi

sync
times=$(for _ in $(seq "$RUNS"); do seconds copy_and_sync; done | median)
results+=("$(report "cp + sync" "$times")")
rm -f "$DIR/x"

sync
store_out=$("$BENCH" "$FILE" "$DIR" "$RUNS")
echo "$store_out" | grep '^run ' | sed 's/^/  /'
echo "store:    $(echo "$store_out" | sed -n '1s/.*  \([0-9a-f]\{64\}\)$/\1/p')"
put=$(echo "$store_out" | sed -n 's/^median put_file: \([0-9.]*\) s.*/\1/p')
read=$(echo "$store_out" | sed -n 's/^median verified read: \([0-9.]*\) s.*/\1/p')
results+=("$(report "store put_file" "$put")")
results+=("$(report "store verified read" "$read")")

echo
echo "$SIZE file, $RUNS runs each (reads come from the page cache when the file fits in memory):"
printf '%s\n' "${results[@]}"
