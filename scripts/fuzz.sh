#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS each (default 10; CI runs them briefly, a long
# hunt is e.g. `scripts/fuzz.sh 3600`). cargo-fuzz needs nightly-only compiler flags; the
# stable toolchain accepts them with RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_EACH=${1:-10}
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked --quiet
fi
total=0
for target in $(cargo fuzz list); do
  mkdir -p "corpus/$target"
  out=$(cargo fuzz run -O "$target" -- -max_total_time="$SECONDS_EACH" 2>&1) || {
    echo "$out" | tail -40
    echo "fuzz: $target FAILED"
    exit 1
  }
  runs=$(echo "$out" | sed -n 's/^Done \([0-9]*\) runs.*/\1/p' | tail -1)
  echo "fuzz: $target ok, ${runs:-?} executions in ${SECONDS_EACH}s"
  total=$((total + ${runs:-0}))
done
echo "fuzz: all targets ok, $total executions"
