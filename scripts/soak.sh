#!/usr/bin/env bash
# The long chaos soak (issue 15, BENCHMARKS.md): the soak test of
# tests/tests/soak.rs, run for longer with a random seed that it prints.
# A bootstrap, two nodes that may coordinate, three workers and a real
# SMTP server (python3 with aiosmtpd) on loopback; every 10 to 16 s the
# acting coordinator or a random worker is SIGKILLed and restarted 3 s
# later. At the end it prints one line of figures: jobs, kills, lost jobs,
# duplicate and missing mails, and seconds to settle after the last kill.
#
#   scripts/soak.sh [SECONDS] [SEED]     defaults: 600 s, a random seed
#
# A failing run prints the command that replays it (the same seed).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-600}"
seed="${2:-random}"
jobs="${KILN_SOAK_JOBS:-$(( secs / 10 > 8 ? secs / 10 : 8 ))}"
# The test starts the binaries it finds beside it: build them first.
cargo build --workspace --all-targets --quiet
KILN_SOAK_SECS="$secs" KILN_SOAK_SEED="$seed" KILN_SOAK_JOBS="$jobs" \
    cargo test --quiet -p kiln-tests --test soak -- --nocapture --test-threads=1
