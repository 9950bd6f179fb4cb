#!/usr/bin/env bash
# Fetch benchmark: a random blob over loopback, whole `kiln fetch` process
# from start to verified file on disk, from one provider and from two, and a
# 4 KiB blob, beside baselines in the same run: raw TCP (socat with 128 KiB
# blocks into a file, sync, then b3sum) and iroh's sendme (whole `sendme
# receive` process plus sync, run inside `unshare -n` so it makes no outside
# connections). Medians of RUNS runs.
#
# Usage: node/bench-fetch.sh            (from the workspace root; SIZE=1G RUNS=5 by default)
#        BASE=DIR node/bench-fetch.sh   also times the `kiln` and `kiln-bootstrap`
#                                       in DIR (an earlier build) in the same run
# Needs: socat, b3sum and sendme on PATH (apt-get install socat;
# cargo install b3sum sendme@0.37.1; without sendme its rows are skipped),
# bc, ip and unshare (root, for unshare -n).
set -euo pipefail
SIZE="${SIZE:-1G}"
RUNS="${RUNS:-5}"
cargo build --release --quiet --bins -p kiln-cli -p kiln-bootstrap
NEW_BIN="$(pwd)/target/release"
BASE="${BASE:-}"
DIR="$(mktemp -d "${TMPDIR:-/tmp}/kiln-fetch-bench.XXXXXX")"
PIDS=""
cleanup() { [ -z "$PIDS" ] || kill $PIDS 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT

head -c "$SIZE" /dev/urandom > "$DIR/blob"
BYTES=$(stat -c %s "$DIR/blob")
HASH=$(b3sum --no-names "$DIR/blob")

first_line() { for _ in $(seq 200); do [ -s "$1" ] && { head -1 "$1"; return; }; sleep 0.05; done; echo "no address in $1" >&2; exit 1; }
seconds() { local s e; s=$(date +%s.%N); "$@" > /dev/null; e=$(date +%s.%N); echo "$e - $s" | bc -l; }
median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
report() { awk -v n="$1" -v s="$2" -v b="$BYTES" 'BEGIN { printf "%-34s median %7.3f s  %8.0f MiB/s\n", n, s, b / 1048576 / s }'; }

# A bootstrap peer from $BIN; its address in $BOOT.
start_bootstrap() {
    "$BIN/kiln-bootstrap" --listen /ip4/127.0.0.1/tcp/0 --data-dir "$DIR/$1" > "$DIR/$1.addr" 2> /dev/null &
    PIDS="$PIDS $!"
    BOOT=$(first_line "$DIR/$1.addr")
}
start_provider() {
    "$BIN/kiln" node --listen /ip4/127.0.0.1/tcp/0 --bootstrap "$BOOT" --data-dir "$DIR/$1" > "$DIR/$1.addr" 2> /dev/null &
    PIDS="$PIDS $!"
    first_line "$DIR/$1.addr" > /dev/null
    "$BIN/kiln" publish "$DIR/blob" --data-dir "$DIR/$1" > /dev/null
    "$BIN/kiln" publish "$DIR/small" --data-dir "$DIR/$1" > /dev/null
}

# Seconds for one whole `kiln fetch` process into an empty data dir (the
# previous fetch's files are removed before the clock starts).
fetch_once() {
    rm -rf "$DIR/fetcher" "$DIR/out"
    sync
    seconds "$BIN/kiln" fetch "$HASH" -o "$DIR/out" --bootstrap "$BOOT" --data-dir "$DIR/fetcher"
}

socat_once() {
    rm -f "$DIR/socat.out"
    socat -u -b 131072 FILE:"$DIR/blob" TCP-LISTEN:0,bind=127.0.0.1,reuseaddr 2>/dev/null &
    local server=$!
    local port=""
    for _ in $(seq 100); do
        port=$(ss -ltnp 2>/dev/null | awk -v pid="pid=$server," '$0 ~ pid { split($4, a, ":"); print a[length(a)] }' | head -1)
        [ -n "$port" ] && break
        sleep 0.02
    done
    socat -u -b 131072 TCP:127.0.0.1:"$port" CREATE:"$DIR/socat.out"
    sync "$DIR/socat.out"
    b3sum --no-names "$DIR/socat.out"
    wait $server 2>/dev/null || true
}

# One `sendme receive` inside a network namespace with only loopback;
# prints the seconds from receive start to a synced file.
cat > "$DIR/sendme_once.sh" <<'INNER'
set -e
ip link set lo up
rx=$(mktemp -d "$2/rx.XXXXXX")
cd "$rx"
sendme send --no-progress --relay disabled "$1" > send.out 2>&1 &
sender=$!
i=0; until grep -q "sendme receive" send.out; do i=$((i + 1)); [ $i -lt 600 ] || exit 1; sleep 0.05; done
ticket=$(grep -o "sendme receive [^ ]*" send.out | head -1 | cut -d' ' -f3)
start=$(date +%s.%N)
sendme receive --no-progress --relay disabled "$ticket" > recv.out 2>&1
sync "$(basename "$1")"
end=$(date +%s.%N)
kill $sender 2>/dev/null || true
cd / && rm -rf "$rx"
echo "$end - $start" | bc -l
INNER
sendme_time() { unshare -n sh "$DIR/sendme_once.sh" "$1" "$DIR"; }

SMALL_BYTES=4096
head -c $SMALL_BYTES /dev/urandom > "$DIR/small"
SMALL_HASH=$(b3sum --no-names "$DIR/small")
BIG_HASH=$HASH BIG_BYTES=$BYTES
echo "blob: $BYTES bytes, $HASH"
results=()
t=$(for _ in $(seq "$RUNS"); do seconds socat_once; done | median); results+=("$(report "socat -b 131072 + sync + b3sum" "$t")")
have_sendme=""
command -v sendme > /dev/null && have_sendme=yes
if [ -n "$have_sendme" ]; then
    t=$(for _ in $(seq "$RUNS"); do sendme_time "$DIR/blob"; done | median); results+=("$(report "sendme (unshare -n) + sync" "$t")")
else
    results+=("sendme: not on PATH, skipped")
fi

# Every kiln figure, for one build: its own bootstrap peer and providers.
kiln_suite() {
    BIN="$1"
    local label="$2"
    HASH=$BIG_HASH BYTES=$BIG_BYTES
    start_bootstrap "boot-$label"
    start_provider "p1-$label"
    t=$(for _ in $(seq "$RUNS"); do fetch_once; done | median); results+=("$(report "kiln fetch, one provider ($label)" "$t")")
    cmp "$DIR/blob" "$DIR/out"
    start_provider "p2-$label"
    t=$(for _ in $(seq "$RUNS"); do fetch_once; done | median); results+=("$(report "kiln fetch, two providers ($label)" "$t")")
    cmp "$DIR/blob" "$DIR/out"
    HASH=$SMALL_HASH BYTES=$SMALL_BYTES
    t=$(for _ in $(seq "$RUNS"); do fetch_once; done | median)
    results+=("$(awk -v s="$t" -v n="kiln fetch 4 KiB ($label)" 'BEGIN { printf "%-34s median %7.1f ms\n", n, s * 1000 }')")
    cmp "$DIR/small" "$DIR/out"
}
[ -z "$BASE" ] || kiln_suite "$BASE" base
kiln_suite "$NEW_BIN" new
if [ -n "$have_sendme" ]; then
    t=$(for _ in $(seq "$RUNS"); do sendme_time "$DIR/small"; done | median)
    results+=("$(awk -v s="$t" 'BEGIN { printf "%-34s median %7.1f ms\n", "sendme 4 KiB (unshare -n)", s * 1000 }')")
fi
printf '%s\n' "${results[@]}"
