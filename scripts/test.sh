#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests and the integration tests against a real
# single-node Ceph cluster on 127.0.0.1 (booted here if it is not running).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
./scripts/dev-cluster.sh up

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
