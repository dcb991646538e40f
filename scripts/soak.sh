#!/usr/bin/env bash
# Long crash soak: a mixed RBD workload (create, write, snapshot, restore, clone, expand,
# stage/publish through the FUSE attachment, unpublish/unstage, delete) against a
# controller+node driver that is SIGKILLed at random moments and restarted; every
# operation is retried until it succeeds; at the end the kept volumes must hold their
# data, pods' files must have survived a move, and nothing of the test may be left in
# the pool or on the node.
#
#   scripts/soak.sh [MINUTES]     default 10; at least FERRO_SOAK_KILLS kills (default 200)
#
# FERRO_SOAK_WORKERS (default 2) sets the number of concurrent workload streams.
# Prints: kills survived, operations, leaks found (and the rest of the figures).
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=${1:-10}
[[ $minutes =~ ^[0-9]+$ ]] || {
    echo "usage: $0 [MINUTES]" >&2
    exit 2
}
./scripts/dev-cluster.sh up
log=$(mktemp /tmp/ferroceph-soak.XXXXXX)
trap 'rm -f "$log"' EXIT
rc=0
FERRO_SOAK_MINUTES=$minutes FERRO_SOAK_KILLS=${FERRO_SOAK_KILLS:-200} \
    cargo test --release --locked -p ferroceph --test soak -- --ignored --nocapture soak_long \
    2>&1 | tee "$log" | grep -E '^(soak:|SOAK RESULT|thread .* panicked|test result)' || rc=1
grep -q '^test result: ok' "$log" || rc=1
if ((rc)); then
    echo "soak FAILED; why:" >&2
    grep -A3 'panicked at' "$log" | grep -v '^\s*[0-9]*: \|^\s*at ' >&2 || true
    echo "the end of its output:" >&2
    tail -n 40 "$log" >&2
fi
exit "$rc"
