#!/usr/bin/env bash
# Leak check for the test suite, against the dev cluster only.
#   pool-check.sh reset   remove every image, trash entry and csi.* journal object from the
#                         dev cluster's rbd pool (leftovers of an earlier, interrupted run)
#   pool-check.sh check   fail if anything of the kind is left after the tests
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(./scripts/dev-cluster.sh env)"
C=(-c "$FERRO_CEPH_CONF")
POOL=${FERRO_RBD_POOL:-rbd}
FS=${FERRO_FS_NAME:-cephfs}
FS_META=$(ceph "${C[@]}" fs ls -f json | jq -r --arg fs "$FS" '.[] | select(.name == $fs) | .metadata_pool')
GROUP=csi

subvolumes() {
  ceph "${C[@]}" fs subvolume ls "$FS" --group_name "$GROUP" -f json 2>/dev/null | jq -r '.[].name' || true
}

fs_journal_keys() {
  for obj in $(rados "${C[@]}" -p "$FS_META" -N csi ls 2>/dev/null | grep '^csi\.' || true); do
    rados "${C[@]}" -p "$FS_META" -N csi listomapkeys "$obj" 2>/dev/null | sed "s|^|$FS_META/csi/$obj: |"
  done
}

# "<namespace> <object>" for every csi.* object in every RADOS namespace of the pool.
csi_objects() {
  rados "${C[@]}" -p "$POOL" ls --all 2>/dev/null | awk -F'\t' 'NF==1 {print "-", $1} NF==2 {print ($1==""?"-":$1), $2}' | awk '$2 ~ /^csi\./'
}

journal_keys() {
  csi_objects | while read -r ns obj; do
    [ "$ns" = "-" ] && ns=""
    rados "${C[@]}" -p "$POOL" -N "$ns" listomapkeys "$obj" 2>/dev/null | sed "s|^|$ns/$obj: |"
  done
}

case "${1:-check}" in
  reset)
    # Leftovers of an interrupted run can include images Ceph refuses to remove piecemeal
    # (trashed parents whose trash-namespace snapshots outlived their clones), so the
    # dev cluster's rbd pool is recreated instead of emptied.
    ceph "${C[@]}" osd pool rm "$POOL" "$POOL" --yes-i-really-really-mean-it >/dev/null
    ceph "${C[@]}" osd pool create "$POOL" 8 8 --autoscale-mode=off >/dev/null 2>&1 \
      || ceph "${C[@]}" osd pool create "$POOL" 8 8 >/dev/null
    rbd "${C[@]}" pool init "$POOL"
    for _ in $(seq 60); do
      ceph "${C[@]}" pg ls-by-pool "$POOL" -f json 2>/dev/null \
        | jq -e '[.pg_stats[].state] | length > 0 and all(. == "active+clean")' >/dev/null && break
      sleep 0.5
    done
    for sub in $(subvolumes); do
      for snap in $(ceph "${C[@]}" fs subvolume snapshot ls "$FS" "$sub" --group_name "$GROUP" -f json 2>/dev/null | jq -r '.[].name'); do
        ceph "${C[@]}" fs subvolume snapshot rm "$FS" "$sub" "$snap" --group_name "$GROUP" --force >/dev/null 2>&1 || true
      done
      ceph "${C[@]}" fs clone cancel "$FS" "$sub" --group_name "$GROUP" >/dev/null 2>&1 || true
      ceph "${C[@]}" fs subvolume rm "$FS" "$sub" --group_name "$GROUP" --force >/dev/null 2>&1 || true
    done
    for obj in $(rados "${C[@]}" -p "$FS_META" -N csi ls 2>/dev/null | grep '^csi\.' || true); do
      rados "${C[@]}" -p "$FS_META" -N csi rm "$obj" || true
    done
    echo "pool-check: $POOL and $FS group $GROUP reset" >&2
    ;;
  check)
    bad=0
    images=$(rbd "${C[@]}" ls -p "$POOL")
    trash=$(rbd "${C[@]}" trash ls -p "$POOL" --all)
    keys=$(journal_keys)
    if [ -n "$images" ]; then echo "pool-check: images left in $POOL:"; echo "$images"; bad=1; fi
    if [ -n "$trash" ]; then echo "pool-check: trash entries left in $POOL:"; echo "$trash"; bad=1; fi
    if [ -n "$keys" ]; then echo "pool-check: journal keys left in $POOL:"; echo "$keys"; bad=1; fi
    subs=$(subvolumes)
    fskeys=$(fs_journal_keys)
    if [ -n "$subs" ]; then echo "pool-check: subvolumes left in $FS group $GROUP:"; echo "$subs"; bad=1; fi
    if [ -n "$fskeys" ]; then echo "pool-check: CephFS journal keys left:"; echo "$fskeys"; bad=1; fi
    [ $bad -eq 0 ] && echo "pool-check: $POOL and $FS are clean (no image, trash entry, subvolume or journal key)"
    exit $bad
    ;;
  *) echo "usage: $0 reset|check" >&2; exit 2 ;;
esac
