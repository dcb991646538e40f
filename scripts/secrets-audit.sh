#!/usr/bin/env bash
# Suite-wide secrets audit, run after the tests: no cephx key of the dev cluster may appear
# in any driver log kept by the tests, in the keys directories, or in any file the tests
# left under /tmp (other than the cluster's own keyrings, which live elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(./scripts/dev-cluster.sh env)"
logs=target/tmp/ferroceph-logs
n=$(find "$logs" -type f 2>/dev/null | wc -l)
bad=0
for key in "$FERRO_ADMIN_KEY" "$FERRO_RBD_KEY" "$FERRO_CEPHFS_KEY"; do
  [ -n "$key" ] || continue
  if [ "$n" -gt 0 ] && grep -rlF -- "$key" "$logs" >/dev/null 2>&1; then
    echo "secrets-audit: a cephx key appears in: $(grep -rlF -- "$key" "$logs" | head -3 | tr '\n' ' ')"
    bad=1
  fi
  # the kernel VM's output: scenario logs, the driver logs they kept, console, kernel log
  if [ -d target/tmp/vm/last ] && grep -rlF -- "$key" target/tmp/vm/last >/dev/null 2>&1; then
    echo "secrets-audit: a cephx key appears in the kernel VM's output: $(grep -rlF -- "$key" target/tmp/vm/last | head -3 | tr '\n' ' ')"
    bad=1
  fi
  # key files must be gone after use, wherever the tests put their keys directories
  if grep -rlF -- "$key" /tmp --include='keyfile-*' 2>/dev/null | grep -q .; then
    echo "secrets-audit: a key file was left behind: $(grep -rlF -- "$key" /tmp --include='keyfile-*' | head -3)"
    bad=1
  fi
done
[ "$n" -gt 0 ] || { echo "secrets-audit: no driver logs found in $logs (did the tests run?)"; exit 1; }
[ $bad -eq 0 ] && echo "secrets-audit: $n driver logs and /tmp key files checked, no cephx key found"
exit $bad
