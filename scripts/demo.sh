#!/usr/bin/env bash
# The main job: install what is needed, build, boot a single-node Ceph on 127.0.0.1 and walk
# an RBD volume through its life with the driver, the way kubelet and the CSI sidecars would.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "installing packages (skipped when present)"
./scripts/setup.sh
step "building ferroceph (release)"
cargo build --release --locked -p ferroceph
BIN=$PWD/target/release/ferroceph
step "booting the single-node Ceph cluster on 127.0.0.1"
./scripts/dev-cluster.sh up
eval "$(./scripts/dev-cluster.sh env)"

WORK=$(mktemp -d /tmp/ferroceph-demo.XXXXXX)
SOCK="$WORK/csi/csi.sock"
cleanup() {
  [ -n "${DRIVER_PID:-}" ] && kill "$DRIVER_PID" 2>/dev/null && wait "$DRIVER_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

cat >"$WORK/config.json" <<JSON
[{"clusterID": "$FERRO_FSID", "monitors": ["$FERRO_MONITORS"]}]
JSON
# Secrets go to the client in a 0600 file, never on a command line.
install -m 0600 /dev/null "$WORK/secrets"
printf 'userID=%s\nuserKey=%s\n' "$FERRO_RBD_USER" "$FERRO_RBD_KEY" >"$WORK/secrets"

step "starting the driver: ferroceph --type=rbd --controllerserver --nodeserver"
"$BIN" --type=rbd --controllerserver=true --nodeserver=true --nodeid=demo-node \
  --endpoint="unix://$SOCK" --configpath="$WORK/config.json" --keysdir="$WORK/keys" \
  --metricsport=0 2>"$WORK/driver.log" &
DRIVER_PID=$!
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.05; done

csi() { "$BIN" client --endpoint "unix://$SOCK" "$@"; }
csis() { csi "$@" --secrets-file "$WORK/secrets"; }

step "Identity: GetPluginInfo and Probe"
csi GetPluginInfo | jq -c '{name, vendorVersion}'
csi Probe | jq -c .

PARAMS=(--param "clusterID=$FERRO_FSID" --param "pool=$FERRO_RBD_POOL"
        --param "imageFeatures=layering,exclusive-lock,object-map,fast-diff,deep-flatten"
        --param "csi.storage.k8s.io/pvc/name=rbd-pvc" --param "csi.storage.k8s.io/pvc/namespace=default")

step "CreateVolume (a PVC asking for 1Gi, ReadWriteOnce)"
VOL=$(csis CreateVolume --name pvc-demo-1 --size 1Gi --access-mode RWO "${PARAMS[@]}")
VID=$(jq -r .volume.volumeId <<<"$VOL")
IMG=$(jq -r .volume.volumeContext.imageName <<<"$VOL")
echo "$VOL" | jq -c .volume.volumeContext
printf '%-12s %-8s %-48s %-9s %s\n' NAME STATUS VOLUME CAPACITY "ACCESS MODES"
printf '%-12s %-8s %-48s %-9s %s\n' rbd-pvc Bound "${VID:0:46}.." 1Gi RWO
echo "rbd image: $(rbd -c "$FERRO_CEPH_CONF" info "$FERRO_RBD_POOL/$IMG" | grep -E 'size|features' | tr -s ' ' | paste -sd ';')"

step "CreateVolume again with the same name: idempotent, same volume"
[ "$(csis CreateVolume --name pvc-demo-1 --size 1Gi "${PARAMS[@]}" | jq -r .volume.volumeId)" = "$VID" ] && echo "same volume id"

step "CreateSnapshot (a VolumeSnapshot of rbd-pvc)"
SNAP=$(csis CreateSnapshot --name snapshot-demo-1 --source-volume-id "$VID")
SID=$(jq -r .snapshot.snapshotId <<<"$SNAP")
echo "$SNAP" | jq -c '.snapshot | {readyToUse, sizeBytes, creationTime}'

step "CreateVolume from the snapshot (pvc-restore, 2Gi)"
RVID=$(csis CreateVolume --name pvc-demo-restore --size 2Gi "${PARAMS[@]}" \
  --json "{\"volumeContentSource\": {\"snapshot\": {\"snapshotId\": \"$SID\"}}}" | jq -r .volume.volumeId)
echo "restored: $RVID"

step "CreateVolume from the volume (a clone)"
CVID=$(csis CreateVolume --name pvc-demo-clone --size 1Gi "${PARAMS[@]}" --source-volume-id "$VID" | jq -r .volume.volumeId)
echo "clone: $CVID"

step "ControllerExpandVolume rbd-pvc to 3Gi"
csis ControllerExpandVolume --volume-id "$VID" --size 3Gi | jq -c .

step "ListSnapshots for rbd-pvc"
csis ListSnapshots --json "{\"sourceVolumeId\": \"$VID\"}" | jq -c '[.entries[].snapshot.snapshotId]'

step "DeleteVolume rbd-pvc (its snapshot, restore and clone keep their data)"
csis DeleteVolume --volume-id "$VID" | jq -c .
step "DeleteSnapshot, then the restored volume and the clone"
csis DeleteSnapshot --snapshot-id "$SID" | jq -c .
csis DeleteVolume --volume-id "$RVID" | jq -c .
csis DeleteVolume --volume-id "$CVID" | jq -c .

step "the pool holds nothing of the demo"
left=$(rbd -c "$FERRO_CEPH_CONF" ls -p "$FERRO_RBD_POOL" | grep -c csi- || true)
trash=$(rbd -c "$FERRO_CEPH_CONF" trash ls -p "$FERRO_RBD_POOL" | grep -c csi- || true)
echo "images: $left, trash entries: $trash"

step "driver log (one line per RPC)"
grep -E "rpc (done|failed)" "$WORK/driver.log" | tail -n 20
echo
echo "demo finished: the volume went through create, snapshot, restore, clone, expand and delete."
