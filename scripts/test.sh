#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests and the integration tests against a real
# single-node Ceph cluster on 127.0.0.1 (booted here if it is not running), then checks that
# the tests left no image, trash entry or journal key behind.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
./scripts/dev-cluster.sh up

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

# Start from a clean pool so the leak check below judges this run only.
./scripts/pool-check.sh reset
rm -rf target/tmp/ferroceph-logs
cargo test --workspace --locked
cargo test --locked -p ferroceph --test outage -- --ignored --test-threads=1
./scripts/pool-check.sh check
./scripts/secrets-audit.sh
# Each fuzz target briefly (scripts/fuzz.sh 3600 for a long hunt).
./scripts/fuzz.sh 5
