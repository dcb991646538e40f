#!/usr/bin/env bash
# End-to-end test of scripts/dev-cluster.sh.
# DESTRUCTIVE: purges the dev cluster (other engineers may be using it), then
# bootstraps it again and checks status/env, restart, idempotency, kill -9
# recovery, data persistence, locking, fd hygiene and the CSI users' caps.
# Leaves the cluster up.
set -u
[[ ${1:-} == --yes-purge ]] || {
    echo "usage: $0 --yes-purge   (purges the dev cluster)" >&2
    exit 2
}
S=$(cd "$(dirname "$0")/.." && pwd)/dev-cluster.sh
D=${FERROCEPH_CLUSTER_DIR:-/var/tmp/ferroceph-cluster}
A=(-c "$D/ceph.conf")
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
ms() { echo $(((${EPOCHREALTIME/./} - ${1/./}) / 1000)); }
step() { printf '\n=== %s\n' "$*"; }
fail() {
    echo "FAIL: $*"
    exit 1
}
same_data() { rados "${A[@]}" -p rbd get persist "$TMP/out" && cmp "$TMP/in" "$TMP/out"; }

step purge
"$S" purge || fail purge
[[ -e $D ]] && fail "state dir still there"

step "up (bootstrap)"
t=$EPOCHREALTIME
"$S" up || fail up
echo "BOOTSTRAP_MS=$(ms "$t")"

step status
"$S" status || fail status

step env
"$S" env >"$TMP/env" || fail env
cat "$TMP/env"
diff "$D/env" "$TMP/env" || fail "env file differs"
keys=$(cut -d= -f1 "$TMP/env" | tr '\n' ' ')
[[ $keys == "FERRO_MONITORS FERRO_MONITORS_V2 FERRO_FSID FERRO_ADMIN_ID FERRO_ADMIN_KEY FERRO_RBD_USER FERRO_RBD_KEY FERRO_CEPHFS_USER FERRO_CEPHFS_KEY FERRO_RBD_POOL FERRO_FS_NAME FERRO_CEPH_CONF FERRO_ADMIN_KEYRING " ]] ||
    fail "env keys: $keys"
grep -q '"' "$TMP/env" && fail "quotes in env"
for f in "$D/env" "$D"/keyring.* "$D"/*.key "$D"/{mon/a,mgr/x,osd/0,mds/a}/keyring; do
    [[ $(stat -c %a "$f") == 600 ]] || fail "$f is not 0600"
done

step "listening sockets"
ss -Htlnp | grep -E 'ceph-(mon|mgr|osd|mds)' | awk '{print $4}' | sort | tr '\n' ' '
echo
ss -Htlnp | grep -E 'ceph-(mon|mgr|osd|mds)' | awk '{print $4}' | grep -v '^127\.0\.0\.1:' &&
    fail "non-loopback listener"

step "subvolume group csi must not exist"
[[ $(ceph "${A[@]}" fs subvolumegroup ls cephfs) == "[]" ]] || fail "groups exist"

step "write data"
head -c 5000000 /dev/urandom >"$TMP/in"
rados "${A[@]}" -p rbd put persist "$TMP/in" || fail put

step down
t=$EPOCHREALTIME
"$S" down || fail down
echo "DOWN_MS=$(ms "$t")"
"$S" status >/dev/null 2>&1 && fail "status should fail when down"
pgrep -af "$D/ceph.conf" && fail "daemons left"

step "up (restart)"
t=$EPOCHREALTIME
"$S" up || fail up
echo "RESTART_MS=$(ms "$t")"

step "up (idempotent)"
t=$EPOCHREALTIME
"$S" up || fail up
echo "IDEMPOTENT_MS=$(ms "$t")"
same_data || fail "data lost over restart"

step "kill -9 osd"
kill -9 "$(cat "$D/run/osd.0.pid")"
sleep 0.5
"$S" status >/dev/null 2>&1 && fail "status should fail with a dead OSD"
t=$EPOCHREALTIME
"$S" up || fail up
echo "HEAL_OSD_MS=$(ms "$t")"
same_data || fail "data lost over OSD kill -9"

step "kill -9 everything"
for f in "$D"/run/*.pid; do kill -9 "$(cat "$f")"; done
sleep 0.5
t=$EPOCHREALTIME
"$S" up || fail up
echo "HEAL_ALL_MS=$(ms "$t")"
same_data || fail "data lost over kill -9 of everything"
rados "${A[@]}" -p rbd rm persist

step "two ups at once from stopped"
"$S" down >/dev/null 2>&1
("$S" up >"$TMP/u1" 2>&1; echo "rc=$?" >>"$TMP/u1") &
(sleep 0.1; "$S" up >"$TMP/u2" 2>&1; echo "rc=$?" >>"$TMP/u2") &
wait
cat "$TMP/u1" "$TMP/u2"
grep -q rc=0 "$TMP/u1" || fail "first concurrent up"
grep -q rc=0 "$TMP/u2" || fail "second concurrent up"

step "captured output does not hang"
"$S" down >/dev/null 2>&1
out=$(timeout 60 "$S" up 2>&1) || fail "captured up"
echo "$out"

step "lock fd not inherited"
for p in $(pgrep -f "$D/ceph.conf"); do
    for fd in /proc/"$p"/fd/*; do
        [[ $(readlink "$fd") == "$D.lock" ]] && fail "pid $p holds the lock"
    done
done
echo ok

step selftest
"$S" selftest || fail selftest

step "final status"
"$S" status || fail status
printf '\nALL OK\n'
