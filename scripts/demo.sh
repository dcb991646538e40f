#!/usr/bin/env bash
# The main job: install what is needed, build, boot a single-node Ceph on 127.0.0.1 and walk
# an RBD volume and a CephFS volume through their whole life with the driver, calling the
# same RPCs, in the same order, as the CSI sidecars and kubelet would in Kubernetes.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
show() { printf '    %s\n' "$*"; } # what the driver answered or the node shows

step "installing packages (skipped when present)"
./scripts/setup.sh
step "building ferroceph (release)"
cargo build --release --locked -p ferroceph
BIN=$PWD/target/release/ferroceph
step "booting the single-node Ceph cluster on 127.0.0.1"
./scripts/dev-cluster.sh up
eval "$(./scripts/dev-cluster.sh env)"

WORK=$(mktemp -d /tmp/ferroceph-demo.XXXXXX)
PIDS=()
cleanup() {
  set +e
  for m in $(awk -v w="$WORK" '$5 ~ "^"w {print $5}' /proc/self/mountinfo | sort -r); do umount "$m" 2>/dev/null; done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT

cat >"$WORK/config.json" <<JSON
[{"clusterID": "$FERRO_FSID", "monitors": ["$FERRO_MONITORS"], "cephFS": {"subvolumeGroup": "csi"}}]
JSON
# Secrets go to the client in 0600 files, never on a command line.
install -m 0600 /dev/null "$WORK/rbd-secrets"
printf 'userID=%s\nuserKey=%s\n' "$FERRO_RBD_USER" "$FERRO_RBD_KEY" >"$WORK/rbd-secrets"
install -m 0600 /dev/null "$WORK/fs-secrets"
printf 'adminID=%s\nadminKey=%s\nuserID=%s\nuserKey=%s\n' "$FERRO_CEPHFS_USER" "$FERRO_CEPHFS_KEY" \
  "$FERRO_CEPHFS_USER" "$FERRO_CEPHFS_KEY" >"$WORK/fs-secrets"

# start_driver NAME TYPE NODEID: a plugin on its own socket, as one node's DaemonSet pod
start_driver() {
  "$BIN" --type="$2" --controllerserver=true --nodeserver=true --nodeid="$3" \
    --endpoint="unix://$WORK/$1/csi.sock" --configpath="$WORK/config.json" \
    --keysdir="$WORK/$1/keys" --metricsport=0 2>"$WORK/$1.log" &
  PIDS+=($!)
  for _ in $(seq 200); do [ -S "$WORK/$1/csi.sock" ] && break; sleep 0.05; done
}
csi() { local n=$1; shift; "$BIN" client --endpoint "unix://$WORK/$n/csi.sock" "$@"; }

step "starting the RBD plugin on node-a and node-b (ferroceph --type=rbd)"
start_driver rbd-a rbd node-a
start_driver rbd-b rbd node-b
csi rbd-a GetPluginInfo | jq -c '{name, vendorVersion}'
csi rbd-a Probe | jq -c .

RBD_PARAMS=(--param "clusterID=$FERRO_FSID" --param "pool=$FERRO_RBD_POOL"
  --param "imageFeatures=layering,exclusive-lock,object-map,fast-diff,deep-flatten"
  --param "csi.storage.k8s.io/fstype=xfs" --param "mounter=auto"
  --param "csi.storage.k8s.io/pvc/name=rbd-pvc" --param "csi.storage.k8s.io/pvc/namespace=default")

step "CreateVolume, as external-provisioner sends it for examples/rbd/pvc.yaml (1Gi, ReadWriteOnce)"
csi rbd-a CreateVolume --name pvc-rbd-demo --size 1Gi --access-mode RWO "${RBD_PARAMS[@]}" \
  --secrets-file "$WORK/rbd-secrets" >"$WORK/vol.json"
VID=$(jq -r .volume.volumeId "$WORK/vol.json")
jq -c .volume.volumeContext "$WORK/vol.json"
jq -r '.volume | "    CreateVolume answered: volume \(.volumeId), \(.capacityBytes) bytes"' "$WORK/vol.json"
show "the image in the pool: $(rbd -c "$FERRO_CEPH_CONF" info "$FERRO_RBD_POOL/$(jq -r .volume.volumeContext.imageName "$WORK/vol.json")" --format json | jq -c '{name, size, features}')"

# node_json STAGING [TARGET]: the request kubelet sends, built from CreateVolume's answer
node_json() {
  jq -c --arg st "$1" --arg tp "${2:-}" '{volumeId: .volume.volumeId, volumeContext: .volume.volumeContext,
      stagingTargetPath: $st} + (if $tp == "" then {} else {targetPath: $tp} end)' "$3"
}
stage_publish() { # NODE VOLJSON STAGING TARGET
  csi "$1" NodeStageVolume --json "$(node_json "$3" "" "$2")" --fs-type xfs --access-mode RWO \
    --secrets-file "$WORK/rbd-secrets" >/dev/null
  csi "$1" NodePublishVolume --json "$(node_json "$3" "$4" "$2")" --fs-type xfs --access-mode RWO \
    --secrets-file "$WORK/rbd-secrets" >/dev/null
}
unpublish_unstage() { # NODE VOLID STAGING TARGET
  csi "$1" NodeUnpublishVolume --volume-id "$2" --target-path "$4" >/dev/null
  csi "$1" NodeUnstageVolume --volume-id "$2" --staging-path "$3" >/dev/null
}

step "pod on node-a: NodeStageVolume (attach, format the blank image, mount) + NodePublishVolume (bind)"
SA=$WORK/node-a/plugins/pv-rbd/globalmount; TA=$WORK/node-a/pods/pod-1/mount
mkdir -p "$SA" "$TA"
stage_publish rbd-a "$WORK/vol.json" "$SA" "$TA"
echo "hello ceph" >"$TA/hello.txt"; sync
show "pod-1 on node-a writes: $(cat "$TA/hello.txt")"
df -h "$TA" | tail -1 | awk '{print "    df: " $2 " size, " $3 " used, mounted from " $1}'

step "ControllerExpandVolume to 2Gi, then NodeExpandVolume grows the mounted xfs filesystem"
csi rbd-a ControllerExpandVolume --volume-id "$VID" --size 2Gi --secrets-file "$WORK/rbd-secrets" | jq -c .
csi rbd-a NodeExpandVolume --volume-id "$VID" --target-path "$TA" --staging-path "$SA" --size 2Gi \
  --fs-type xfs --access-mode RWO --secrets-file "$WORK/rbd-secrets" | jq -c .
df -h "$TA" | tail -1 | awk '{print "    df after online growth: " $2 " size"}'
csi rbd-a NodeGetVolumeStats --volume-id "$VID" --target-path "$TA" | jq -c '[.usage[] | {unit, total, used}]'

step "pod deleted: NodeUnpublishVolume + NodeUnstageVolume on node-a"
unpublish_unstage rbd-a "$VID" "$SA" "$TA"
echo "    mounts left on node-a: $(grep -c "$WORK/node-a" /proc/self/mountinfo || true)"

step "pod rescheduled on node-b: stage + publish there; the data is still there"
SB=$WORK/node-b/plugins/pv-rbd/globalmount; TB=$WORK/node-b/pods/pod-2/mount
mkdir -p "$SB" "$TB"
stage_publish rbd-b "$WORK/vol.json" "$SB" "$TB"
show "pod-2 on node-b reads: $(cat "$TB/hello.txt")"

step "CreateSnapshot, as external-snapshotter sends it for examples/rbd/snapshot.yaml"
csi rbd-a CreateSnapshot --name snapshot-rbd-demo --source-volume-id "$VID" \
  --secrets-file "$WORK/rbd-secrets" >"$WORK/snap.json"
SID=$(jq -r .snapshot.snapshotId "$WORK/snap.json")
jq -c '.snapshot | {readyToUse, sizeBytes, creationTime}' "$WORK/snap.json"
echo "changed after the snapshot" >"$TB/hello.txt"; sync

step "CreateVolume from the snapshot (pvc-restore) and stage it: it holds the data of the snapshot's moment"
csi rbd-a CreateVolume --name pvc-rbd-restore --size 2Gi --access-mode RWO "${RBD_PARAMS[@]}" \
  --secrets-file "$WORK/rbd-secrets" \
  --json "{\"volumeContentSource\": {\"snapshot\": {\"snapshotId\": \"$SID\"}}}" >"$WORK/restore.json"
RVID=$(jq -r .volume.volumeId "$WORK/restore.json")
SR=$WORK/node-a/plugins/pv-restore/globalmount; TR=$WORK/node-a/pods/pod-3/mount
mkdir -p "$SR" "$TR"
stage_publish rbd-a "$WORK/restore.json" "$SR" "$TR"
show "restored volume reads: $(cat "$TR/hello.txt")   (the source now says: $(cat "$TB/hello.txt"))"
unpublish_unstage rbd-a "$RVID" "$SR" "$TR"

step "CreateVolume from the volume (a clone)"
CVID=$(csi rbd-a CreateVolume --name pvc-rbd-clone --size 2Gi "${RBD_PARAMS[@]}" --source-volume-id "$VID" \
  --secrets-file "$WORK/rbd-secrets" | jq -r .volume.volumeId)
echo "    clone: $CVID"

step "cleanup: unstage on node-b, DeleteVolume (refused while in use), then delete everything"
csi rbd-a DeleteVolume --volume-id "$VID" --secrets-file "$WORK/rbd-secrets" 2>&1 | jq -c .error.code || true
unpublish_unstage rbd-b "$VID" "$SB" "$TB"
for id in "$VID" "$RVID" "$CVID"; do csi rbd-a DeleteVolume --volume-id "$id" --secrets-file "$WORK/rbd-secrets" >/dev/null; done
csi rbd-a DeleteSnapshot --snapshot-id "$SID" --secrets-file "$WORK/rbd-secrets" >/dev/null
echo "    images left: $(rbd -c "$FERRO_CEPH_CONF" ls -p "$FERRO_RBD_POOL" | grep -c csi- || true)," \
  "loop devices: $(losetup -a | grep -c ferroceph || true)"

step "CephFS: plugins on node-a and node-b (ferroceph --type=cephfs)"
start_driver fs-a cephfs node-a
start_driver fs-b cephfs node-b
FS_PARAMS=(--param "clusterID=$FERRO_FSID" --param "fsName=$FERRO_FS_NAME" --param "mounter=fuse")
csi fs-a CreateVolume --name pvc-fs-demo --size 1Gi --access-mode RWX "${FS_PARAMS[@]}" \
  --secrets-file "$WORK/fs-secrets" >"$WORK/fsvol.json"
FVID=$(jq -r .volume.volumeId "$WORK/fsvol.json")
jq -c '.volume.volumeContext | {subvolumeName, subvolumePath, fsName}' "$WORK/fsvol.json"
jq -r '.volume | "    CreateVolume answered: volume \(.volumeId), \(.capacityBytes) bytes"' "$WORK/fsvol.json"
fs_stage_publish() { # NODE STAGING TARGET
  csi "$1" NodeStageVolume --json "$(node_json "$2" "" "$WORK/fsvol.json")" --access-mode RWX \
    --secrets-file "$WORK/fs-secrets" >/dev/null
  csi "$1" NodePublishVolume --json "$(node_json "$2" "$3" "$WORK/fsvol.json")" --access-mode RWX \
    --secrets-file "$WORK/fs-secrets" >/dev/null
}
FSA=$WORK/node-a/plugins/pv-fs/globalmount; FTA=$WORK/node-a/pods/pod-4/mount
FSB=$WORK/node-b/plugins/pv-fs/globalmount; FTB=$WORK/node-b/pods/pod-5/mount
mkdir -p "$FSA" "$FTA" "$FSB" "$FTB"
fs_stage_publish fs-a "$FSA" "$FTA"
fs_stage_publish fs-b "$FSB" "$FTB"
echo "shared across nodes" >"$FTA/shared.txt"; sync
show "pod-4 (node-a) wrote, pod-5 (node-b) reads: $(cat "$FTB/shared.txt")"
df -h "$FTB" | tail -1 | awk '{print "    df on node-b: " $2 " (the quota)"}'
csi fs-a ControllerExpandVolume --volume-id "$FVID" --size 2Gi --secrets-file "$WORK/fs-secrets" | jq -c .
df -h "$FTB" | tail -1 | awk '{print "    df on node-b after expansion, no remount: " $2}'
csi fs-a CreateSnapshot --name snapshot-fs-demo --source-volume-id "$FVID" --secrets-file "$WORK/fs-secrets" >"$WORK/fssnap.json"
FSID=$(jq -r .snapshot.snapshotId "$WORK/fssnap.json")
echo "    snapshot ready: $(jq -r .snapshot.readyToUse "$WORK/fssnap.json")"
for n in a b; do
  eval "csi fs-$n NodeUnpublishVolume --volume-id \"\$FVID\" --target-path \"\$FT${n^^}\"" >/dev/null
  eval "csi fs-$n NodeUnstageVolume --volume-id \"\$FVID\" --staging-path \"\$FS${n^^}\"" >/dev/null
done
csi fs-a DeleteSnapshot --snapshot-id "$FSID" --secrets-file "$WORK/fs-secrets" >/dev/null
csi fs-a DeleteVolume --volume-id "$FVID" --secrets-file "$WORK/fs-secrets" >/dev/null
echo "    subvolumes left in group csi: $(ceph -c "$FERRO_CEPH_CONF" fs subvolume ls "$FERRO_FS_NAME" --group_name csi --format json | jq length)"

step "driver log of node-a's RBD plugin (one line per RPC)"
grep -E "rpc (done|failed)" "$WORK/rbd-a.log" | sed -E 's/^[^ ]+ +//' | tail -n 25
echo
echo "demo finished: an RBD volume went through create, stage, publish, write, expand, move to another node,"
echo "snapshot, restore, clone and delete; a CephFS volume was shared by two nodes, expanded, snapshotted and deleted."
