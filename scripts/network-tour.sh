#!/bin/sh
# A tour of Kiln's network on this machine, with embedded defaults: a
# bootstrap peer, a node that publishes a file, and a fetch by hash from a
# third, freshly started peer. Everything lives in a temporary directory and
# stops when the tour ends.
set -eu
cd "$(dirname "$0")/.."
cargo build -q --bins
dir=$(mktemp -d)
pids=""
cleanup() { [ -z "$pids" ] || kill $pids 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT INT TERM

wait_for_line() { i=0; while [ ! -s "$1" ]; do i=$((i + 1)); [ $i -lt 200 ] || { echo "no address in $1" >&2; exit 1; }; sleep 0.1; done; }

target/debug/kiln-bootstrap --listen /ip4/127.0.0.1/tcp/0 --data-dir "$dir/boot" > "$dir/boot.addr" &
pids="$pids $!"
wait_for_line "$dir/boot.addr"
bootstrap=$(head -1 "$dir/boot.addr")
echo "bootstrap peer:   $bootstrap"

target/debug/kiln node --listen /ip4/127.0.0.1/tcp/0 --bootstrap "$bootstrap" --data-dir "$dir/a" > "$dir/a.addr" &
pids="$pids $!"
wait_for_line "$dir/a.addr"
echo "publishing node:  $(head -1 "$dir/a.addr")"

hash=$(target/debug/kiln publish README.md --data-dir "$dir/a")
echo "published README.md as $hash"
target/debug/kiln fetch "$hash" -o "$dir/fetched" --bootstrap "$bootstrap" --data-dir "$dir/c"
cmp README.md "$dir/fetched"
echo "a new peer fetched $hash by hash alone, and every byte verified"
