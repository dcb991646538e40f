#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests and the integration tests against a real
# single-node Ceph cluster on 127.0.0.1 (booted here if it is not running), then checks that
# the tests left no image, trash entry or journal key behind.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
./scripts/dev-cluster.sh up
# The kernel scenarios (crates/ferroceph/tests/kernel.rs) boot Debian's own kernel under
# QEMU: install QEMU, fetch the kernel and build the initramfs (fails loudly if it cannot).
./scripts/vm.sh prepare

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

# Start from a clean pool so the leak check below judges this run only.
./scripts/pool-check.sh reset
rm -rf target/tmp/ferroceph-logs
# Build every test first, then run the kernel scenarios (a VM on one core, ~2-6 min) beside
# the host tests, which mostly wait on the cluster; the VM's results are shown at the end.
cargo test --workspace --locked --no-run
kernel_log=$(mktemp /tmp/ferroceph-kernel.XXXXXX)
# (a session of its own, so that a failure here stops the VM too)
setsid -w cargo test --locked -p ferroceph --test kernel -- --ignored >"$kernel_log" 2>&1 &
kernel_pid=$!
trap 'kill -- -"$kernel_pid" 2>/dev/null || kill "$kernel_pid" 2>/dev/null || true' EXIT
cargo test --workspace --locked
kernel_rc=0
wait "$kernel_pid" || kernel_rc=$?
trap - EXIT
if ((kernel_rc != 0)); then
    cat "$kernel_log"
    rm -f "$kernel_log"
    echo "test.sh: the kernel scenarios failed (exit $kernel_rc)" >&2
    exit 1
fi
grep -E '^test |^test result' "$kernel_log" || true
rm -f "$kernel_log"
cargo test --locked -p ferroceph --test outage -- --ignored --test-threads=1
# Crash soak, short form: >= 20 SIGKILLs under a mixed workload, then no leaks.
soak_log=$(mktemp /tmp/ferroceph-soak.XXXXXX)
if ! cargo test --locked -p ferroceph --test soak -- --ignored --nocapture soak_short >"$soak_log" 2>&1; then
    tail -n 80 "$soak_log"
    rm -f "$soak_log"
    exit 1
fi
grep -E '^(soak:|SOAK RESULT)' "$soak_log" || true
rm -f "$soak_log"
# The container image, built offline and smoke-run against the dev cluster: seconds when
# nothing changed, ~3 min after a change to the driver (its release build), ~9 min cold.
./scripts/image.sh build
./scripts/image.sh smoke
./scripts/pool-check.sh check
./scripts/secrets-audit.sh
# The fuzz targets' properties ran above over generated inputs (tests/fuzz_inputs.rs);
# coverage-guided hunts with cargo-fuzz are `scripts/fuzz.sh SECONDS`, outside CI (building
# cargo-fuzz and the instrumented targets took a quarter of the CI budget).
