#!/usr/bin/env bash
# Builds and checks the ferroceph container image with nothing but Debian's packages.
#
#   scripts/image.sh build   the image (default tag localhost/ferroceph:dev; FERRO_IMAGE overrides)
#   scripts/image.sh smoke   runs it against the dev cluster: the controller read-only and without
#                            capabilities, privileged node plugins staging/publishing an RBD
#                            volume through FUSE and a CephFS volume through ceph-fuse
#   scripts/image.sh size    prints the uncompressed size; fails above FERRO_IMAGE_MAX_MB (150)
#   scripts/image.sh base    only makes docker.io/library/debian:bookworm-slim if it is missing
#
# No registry has to be reachable (deb.debian.org must be):
# - docker.io/library/debian:bookworm-slim, when not in podman's storage, is made with
#   `debootstrap --variant=minbase`, slimmed (no docs, man pages, locales, apt lists) and imported;
#   the slimmed root filesystem is cached in $FERRO_IMAGE_CACHE (/var/tmp/ferroceph-image).
# - The binary: when the Rust builder image of deploy/Containerfile cannot be pulled (or
#   FERRO_IMAGE_PREBUILT=1), `cargo build --release --locked -p ferroceph` runs here, the binary
#   is stripped into target/image/out/ferroceph and given to the build as the `build` stage
#   (`--build-context build=target/image`), so the Containerfile's own build stage is skipped.
#   With FERRO_IMAGE_PREBUILT=0 the Containerfile builds from source, the commit passed in.
# Facts about podman/buildah/crun on these machines: ../shared/CLUSTER.md, "Containers here".
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

IMAGE=${FERRO_IMAGE:-localhost/ferroceph:dev}
BASE=docker.io/library/debian:bookworm-slim
RUST_IMAGE=docker.io/library/rust:1-bookworm
CACHE=${FERRO_IMAGE_CACHE:-/var/tmp/ferroceph-image}
MAX_MB=${FERRO_IMAGE_MAX_MB:-150}
MIRROR=${FERRO_DEBIAN_MIRROR:-http://deb.debian.org/debian}

say() { echo "image: $*" >&2; }
die() { echo "image: $*" >&2; exit 1; }

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# Installs what the build and the smoke test need, like scripts/setup.sh: only what is missing,
# apt's index refreshed only then.
install_tools() {
  local p missing=()
  for p in podman buildah crun debootstrap binutils util-linux jq; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    $SUDO apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# debian:bookworm-slim, made here: debootstrap minbase, then what the official slim image
# leaves out (docs but copyright files, man/info pages, locales, apt lists and caches, logs).
make_base() {
  if podman image exists "$BASE"; then return; fi
  local tar=$CACHE/bookworm-slim.tar
  mkdir -p "$CACHE"
  if [ ! -s "$tar" ]; then
    local t0=$SECONDS rootfs
    rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    say "debootstrap --variant=minbase bookworm ($MIRROR)"
    if ! debootstrap --variant=minbase --arch=amd64 bookworm "$rootfs" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1; then
      tail -n 20 "$CACHE/debootstrap.log" >&2
      rm -rf "$rootfs"
      die "debootstrap failed (log: $CACHE/debootstrap.log)"
    fi
    slim_rootfs "$rootfs"
    tar --numeric-owner --xattrs --acls -C "$rootfs" -cf "$tar.tmp" .
    mv "$tar.tmp" "$tar"
    rm -rf "$rootfs"
    say "base root filesystem cached in $tar ($((SECONDS - t0)) s)"
  fi
  podman import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' "$tar" "$BASE" >/dev/null
  say "imported $BASE ($(size_mb "$BASE") MB)"
}

slim_rootfs() {
  local r=$1
  # Later package installs in images built on it skip these paths too.
  cat >"$r/etc/dpkg/dpkg.cfg.d/docker-nodoc" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  cat >"$r/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  printf 'Acquire::Languages "none";\n' >"$r/etc/apt/apt.conf.d/docker-no-languages"
  printf 'Acquire::GzipIndexes "true";\n' >"$r/etc/apt/apt.conf.d/docker-gzip-indexes"
  printf 'APT::AutoRemove::SuggestsImportant "false";\n' >"$r/etc/apt/apt.conf.d/docker-autoremove-suggests"
  rm -f "$r/etc/apt/sources.list"
  cat >"$r/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${MIRROR%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  find "$r/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
  find "$r/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$r"/usr/share/{man,groff,info,lintian,linda}/*
  find "$r/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
  rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin "$r"/var/cache/apt/archives/*.deb \
    "$r"/var/cache/debconf/*-old "$r"/var/lib/dpkg/*-old "$r"/var/cache/ldconfig/aux-cache
  find "$r/var/log" -type f -delete
  # The runtime provides these.
  : >"$r/etc/resolv.conf"
  : >"$r/etc/hostname"
  : >"$r/etc/machine-id"
  rm -f "$r/var/lib/dbus/machine-id"
}

size_mb() { # IMAGE -> uncompressed size in MB (10^6 bytes, as podman prints it)
  local b
  b=$(podman image inspect --format '{{.Size}}' "$1")
  echo $(((b + 500000) / 1000000))
}

# Uncover cgroup v2 for crun: this host mounts cgroups in hybrid mode, where crun refuses to start
# any container, even with --cgroups=disabled. Called in a private mount namespace (podman_ns),
# it covers the cgroup2 mount with an empty tmpfs so crun sees a v1-only host. Nothing changes
# for anyone outside that namespace.
cover_cgroup2() {
  local v1 c2
  v1=$(awk '$9 == "cgroup" {n++} END {print n + 0}' /proc/self/mountinfo)
  c2=$(awk '$9 == "cgroup2" {print $5}' /proc/self/mountinfo)
  [ "$v1" -gt 0 ] && [ -n "$c2" ] || return 0
  mount --make-rprivate /sys/fs/cgroup
  local m
  for m in $c2; do mount -t tmpfs -o size=4k,mode=0555 ferroceph-no-cgroup2 "$m"; done
}

# podman run options every container here needs: no cgroups (see cover_cgroup2), and limits
# this host can grant (root lacks CAP_SYS_RESOURCE, so the default nofile limit is refused).
RUN_OPTS=(--cgroups=disabled --ulimit nofile=20000:20000 --ulimit nproc=8192:8192)

commit() { git rev-parse HEAD 2>/dev/null || echo "${FERROCEPH_COMMIT:-}"; }

build_image() {
  install_tools
  make_base
  local t0=$SECONDS mode=${FERRO_IMAGE_PREBUILT:-auto} c
  c=$(commit)
  if [ "$mode" = auto ]; then
    if podman image exists "$RUST_IMAGE" || timeout 120 podman pull -q "$RUST_IMAGE" >/dev/null 2>&1; then
      mode=0
    else
      say "$RUST_IMAGE cannot be pulled: building the binary here"
      mode=1
    fi
  fi
  local args=(--isolation=chroot -f deploy/Containerfile -t "$IMAGE")
  if [ "$mode" = 1 ]; then
    # The workspace's release profile (debug line tables) is kept so target/release is shared
    # with every other release build here; the copy in the image is stripped of all of it.
    local tc=$SECONDS
    cargo build --release --locked -p ferroceph --bin ferroceph
    say "cargo build --release: $((SECONDS - tc)) s"
    mkdir -p target/image/out
    strip --strip-all -o target/image/out/ferroceph.tmp target/release/ferroceph
    mv target/image/out/ferroceph.tmp target/image/out/ferroceph
    # The label names the commit the binary says it was built from (build.rs read it from git),
    # so the two always agree.
    local built
    built=$(target/image/out/ferroceph --version | sed -nE 's/.*commit ([0-9a-f]{7,40}).*/\1/p')
    c=$(git rev-parse --verify -q "$built^{commit}" 2>/dev/null || echo "$built")
    args+=(--build-context "build=$ROOT/target/image")
  fi
  args+=(--build-arg "FERROCEPH_COMMIT=$c")
  say "podman build $IMAGE (commit ${c:0:12}, $([ "$mode" = 1 ] && echo "binary built here" || echo "binary built in $RUST_IMAGE"))"
  local old tb=$SECONDS
  old=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
  podman build "${args[@]}" . >"$CACHE/build.log" 2>&1 || { tail -n 40 "$CACHE/build.log" >&2; die "podman build failed (log: $CACHE/build.log)"; }
  # The image this tag named before is dropped if nothing else names it (stage images stay:
  # they are the layer cache that makes the next build fast).
  if [ -n "$old" ] && [ "$old" != "$(podman image inspect --format '{{.Id}}' "$IMAGE")" ] \
    && [ -z "$(podman image inspect --format '{{join .RepoTags " "}}' "$old" 2>/dev/null)" ]; then
    podman rmi "$old" >/dev/null 2>&1 || true
  fi
  say "built $IMAGE: $(size_mb "$IMAGE") MB (podman build $((SECONDS - tb)) s, all $((SECONDS - t0)) s)"
}

check_size() {
  local mb
  mb=$(size_mb "$IMAGE")
  if [ "$mb" -gt "$MAX_MB" ]; then
    podman history --format '{{.Size}}\t{{.CreatedBy}}' "$IMAGE" | cut -c1-160 >&2
    die "FAIL image_size: $IMAGE is $mb MB, above the $MAX_MB MB target"
  fi
  echo "ok   image_size: $mb MB (target <= $MAX_MB MB)"
}

# The smoke test. The host part (smoke) makes a scratch directory that is a shared mount, so
# that what the node plugin mounts under it with rshared propagation reaches the host, and then
# runs the containers from smoke_ns in a mount namespace of their own (cover_cgroup2).
smoke() {
  install_tools
  podman image exists "$IMAGE" || die "no image $IMAGE: run $0 build"
  [ -x target/release/ferroceph ] || cargo build --release --locked -p ferroceph --bin ferroceph
  scripts/dev-cluster.sh status >/dev/null 2>&1 || die "the dev cluster is not up: scripts/dev-cluster.sh up"
  local t0=$SECONDS rc=0
  mkdir -p "$CACHE"
  SMOKE_DIR=$(mktemp -d "$CACHE/smoke.XXXXXX")
  trap smoke_host_cleanup EXIT
  mount --bind "$SMOKE_DIR" "$SMOKE_DIR"
  mount --make-shared "$SMOKE_DIR"
  unshare --mount --propagation unchanged "$0" smoke-ns "$SMOKE_DIR" "$$" || rc=$?
  # Whatever the test left mounted (it should be nothing) is seen here, on the host.
  local left
  left=$(awk -v w="$SMOKE_DIR/" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo)
  if [ -n "$left" ]; then
    echo "FAIL host_clean: mounts left on the host: $left" >&2
    rc=1
  fi
  [ "$rc" -eq 0 ] || die "smoke test failed ($((SECONDS - t0)) s)"
  say "smoke test passed ($((SECONDS - t0)) s)"
}

smoke_host_cleanup() {
  local rc=$? m
  set +e
  for m in $(awk -v w="$SMOKE_DIR/" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo | sort -r); do
    umount -l "$m"
  done
  umount -l "$SMOKE_DIR"
  rm -rf --one-file-system "$SMOKE_DIR"
  exit "$rc"
}

smoke_ns() {
  W=$1 HOSTPID=$2
  cover_cgroup2
  eval "$(scripts/dev-cluster.sh env)"
  BIN=$ROOT/target/release/ferroceph
  # Globals: the EXIT trap uses them after this function has returned.
  CTRL=ferroceph-smoke-ctrl-$HOSTPID NODE=ferroceph-smoke-node-$HOSTPID
  FS=ferroceph-smoke-fs-$HOSTPID
  VID="" STAGED="" PUBLISHED="" FVID="" FSTAGED="" FPUBLISHED=""
  ST=$W/kubelet/plugins/kubernetes.io/csi/rbd.ferroceph.io/smoke/globalmount
  TP=$W/kubelet/pods/smoke-pod/volumes/kubernetes.io~csi/pvc-smoke/mount
  FST=$W/kubelet/plugins/kubernetes.io/csi/cephfs.ferroceph.io/smoke/globalmount
  FTP=$W/kubelet/pods/smoke-pod/volumes/kubernetes.io~csi/pvc-smoke-fs/mount
  pass() { echo "ok   $1"; }
  fail() { echo "FAIL $1" >&2; exit 1; }
  csi() { local sock=$1; shift; "$BIN" client --endpoint "unix://$sock" "$@"; }
  host_mounted() { awk -v p="$1" '$5 == p {f = 1} END {exit !f}' "/proc/$HOSTPID/mountinfo"; }
  logs() {
    local c
    for c in "$CTRL" "$NODE" "$FS"; do
      podman container exists "$c" || continue
      echo "--- $c" >&2
      podman logs "$c" 2>&1 | tail -n 40 >&2
    done
  }
  cleanup() {
    local rc=$?
    set +eu
    [ "$rc" -eq 0 ] || logs
    [ -n "$PUBLISHED" ] && csi "$W/node/csi.sock" NodeUnpublishVolume --volume-id "$VID" --target-path "$TP" >/dev/null 2>&1
    [ -n "$STAGED" ] && csi "$W/node/csi.sock" NodeUnstageVolume --volume-id "$VID" --staging-path "$ST" >/dev/null 2>&1
    [ -n "$VID" ] && csi "$W/ctrl/csi.sock" DeleteVolume --volume-id "$VID" --secrets-file "$W/secrets" >/dev/null 2>&1
    [ -n "$FPUBLISHED" ] && csi "$W/fs/csi.sock" NodeUnpublishVolume --volume-id "$FVID" --target-path "$FTP" >/dev/null 2>&1
    [ -n "$FSTAGED" ] && csi "$W/fs/csi.sock" NodeUnstageVolume --volume-id "$FVID" --staging-path "$FST" >/dev/null 2>&1
    [ -n "$FVID" ] && csi "$W/fs/csi.sock" DeleteVolume --volume-id "$FVID" --secrets-file "$W/fs-secrets" >/dev/null 2>&1
    podman rm -f -t 5 "$CTRL" "$NODE" "$FS" >/dev/null 2>&1
    local l
    for l in $(losetup -n -O NAME,BACK-FILE 2>/dev/null | awk -v w="$W/" 'index($2, w) == 1 {print $1}'); do losetup -d "$l"; done
    exit "$rc"
  }
  trap cleanup EXIT

  # Secrets only in 0600 files: the client reads them, the containers never see them in argv/env.
  install -m 0600 /dev/null "$W/secrets"
  printf 'userID=%s\nuserKey=%s\n' "$FERRO_RBD_USER" "$FERRO_RBD_KEY" >"$W/secrets"
  install -m 0600 /dev/null "$W/fs-secrets"
  printf 'adminID=%s\nadminKey=%s\nuserID=%s\nuserKey=%s\n' "$FERRO_CEPHFS_USER" "$FERRO_CEPHFS_KEY" \
    "$FERRO_CEPHFS_USER" "$FERRO_CEPHFS_KEY" >"$W/fs-secrets"
  mkdir -p "$W/ctrl" "$W/node" "$W/fs" "$ST" "$TP" "$FST" "$FTP"
  printf '[{"clusterID": "%s", "monitors": ["%s"], "cephFS": {"subvolumeGroup": "csi"}}]\n' \
    "$FERRO_FSID" "$FERRO_MONITORS" >"$W/config.json"

  # --version names the commit the image was built from (its revision label), one of this
  # repository's (not "unknown"; others may have committed since the build).
  local want got
  want=$(podman image inspect --format '{{index .Labels "org.opencontainers.image.revision"}}' "$IMAGE")
  git cat-file -e "$want^{commit}" 2>/dev/null || fail "image_version: revision label '$want' is no commit here"
  got=$(podman run --rm "${RUN_OPTS[@]}" --network none "$IMAGE" --version)
  [[ "$got" == *"commit ${want:0:12}"* ]] || fail "image_version: '$got' does not name commit ${want:0:12}"
  pass "image_version: $got"

  # Every tool the node plugin runs is there and starts (its libraries all resolve).
  podman run --rm "${RUN_OPTS[@]}" --network none --entrypoint /bin/sh "$IMAGE" -ec '
    for t in mount umount blkid losetup mkfs.ext4 resize2fs fusermount modprobe rbd-nbd; do
      command -v "$t" >/dev/null || { echo "missing $t"; exit 1; }; done
    mkfs.xfs -V >/dev/null; xfs_growfs -V >/dev/null; ceph-fuse --version >/dev/null
    rbd --version >/dev/null; mount.ceph 2>&1 | grep -q usage
    for b in /usr/bin/ceph-fuse /usr/bin/rbd /usr/sbin/mount.ceph /usr/sbin/mkfs.xfs /usr/sbin/xfs_growfs /usr/bin/rbd-nbd; do
      if ldd "$b" | grep "not found"; then echo "$b: missing libraries"; exit 1; fi; done' \
    || fail "image_tools: a tool is missing or does not start"
  pass "image_tools: mkfs.xfs, xfs_growfs, ceph-fuse, rbd, mount.ceph, rbd-nbd and the rest start"

  # The controller as the Deployment runs it: read-only root, no capabilities, host network.
  podman run -d --name "$CTRL" "${RUN_OPTS[@]}" --network host --read-only --cap-drop all \
    --security-opt no-new-privileges --tmpfs /tmp/csi/keys:rw,mode=0700 \
    -v "$W/ctrl:/csi" -v "$W/config.json:/etc/ceph-csi-config/config.json:ro" \
    "$IMAGE" --type=rbd --controllerserver=true --nodeid=smoke-controller \
    --endpoint=unix:///csi/csi.sock --metricsport=0 >/dev/null
  # The node plugin as the DaemonSet runs it: privileged, host /dev, the kubelet directory
  # (here the scratch dir) at the same path with rshared propagation.
  podman run -d --name "$NODE" "${RUN_OPTS[@]}" --network host --privileged \
    --tmpfs /tmp/csi/keys:rw,mode=0700 -v /dev:/dev -v "$W/kubelet:$W/kubelet:rshared" \
    -v "$W/node:/csi" -v "$W/config.json:/etc/ceph-csi-config/config.json:ro" \
    "$IMAGE" --type=rbd --nodeserver=true --nodeid=smoke-node \
    --endpoint=unix:///csi/csi.sock --metricsport=0 >/dev/null
  # The CephFS driver, controller and node in one privileged container, for ceph-fuse.
  podman run -d --name "$FS" "${RUN_OPTS[@]}" --network host --privileged \
    --tmpfs /tmp/csi/keys:rw,mode=0700 -v /dev:/dev -v "$W/kubelet:$W/kubelet:rshared" \
    -v "$W/fs:/csi" -v "$W/config.json:/etc/ceph-csi-config/config.json:ro" \
    "$IMAGE" --type=cephfs --controllerserver=true --nodeserver=true --nodeid=smoke-node \
    --endpoint=unix:///csi/csi.sock --metricsport=0 >/dev/null
  local s
  for s in ctrl node fs; do
    for _ in $(seq 100); do [ -S "$W/$s/csi.sock" ] && break; sleep 0.1; done
    [ -S "$W/$s/csi.sock" ] || fail "socket_$s: no socket after 10 s"
  done

  csi "$W/ctrl/csi.sock" Probe | jq -e '.ready != false' >/dev/null || fail "controller_probe"
  pass "controller_probe"
  got=$(csi "$W/ctrl/csi.sock" GetPluginInfo | jq -r '"\(.name) \(.vendorVersion)"')
  [[ "$got" == "rbd.ferroceph.io "* ]] || fail "controller_plugin_info: $got"
  pass "controller_plugin_info: $got"
  podman exec "$CTRL" sh -c 'touch /usr/local/bin/x' 2>/dev/null && fail "controller_read_only: root is writable"
  [ "$(podman exec "$CTRL" awk '/^CapEff/ {print $2}' /proc/1/status)" = 0000000000000000 ] \
    || fail "controller_no_capabilities: $(podman exec "$CTRL" grep Cap /proc/1/status)"
  pass "controller_read_only_no_capabilities"

  csi "$W/ctrl/csi.sock" CreateVolume --name "pvc-image-smoke-$HOSTPID" --size 1Gi --access-mode RWO \
    --param "clusterID=$FERRO_FSID" --param "pool=$FERRO_RBD_POOL" --param mounter=fuse \
    --param csi.storage.k8s.io/fstype=xfs --secrets-file "$W/secrets" >"$W/vol.json" \
    || fail "controller_create_volume"
  VID=$(jq -r .volume.volumeId "$W/vol.json")
  local img
  img=$(jq -r .volume.volumeContext.imageName "$W/vol.json")
  rbd -c "$FERRO_CEPH_CONF" info "$FERRO_RBD_POOL/$img" >/dev/null 2>&1 || fail "controller_create_volume: no image $img"
  pass "controller_create_volume: $img"

  node_json() {
    jq -c --arg st "$ST" --arg tp "${1:-}" '{volumeId: .volume.volumeId, volumeContext: .volume.volumeContext,
      stagingTargetPath: $st} + (if $tp == "" then {} else {targetPath: $tp} end)' "$W/vol.json"
  }
  STAGED=1
  csi "$W/node/csi.sock" NodeStageVolume --json "$(node_json)" --fs-type xfs --access-mode RWO \
    --secrets-file "$W/secrets" >/dev/null || fail "node_stage_fuse"
  host_mounted "$ST" || fail "node_stage_fuse: the staging mount did not reach the host"
  losetup -n -O NAME,BACK-FILE | awk -v w="$W/" 'index($2, w) == 1 {f = 1} END {exit !f}' \
    || fail "node_stage_fuse: no loop device on the FUSE exporter's file"
  pass "node_stage_fuse: attached through the FUSE exporter, mkfs.xfs, mounted, seen on the host"
  PUBLISHED=1
  csi "$W/node/csi.sock" NodePublishVolume --json "$(node_json "$TP")" --fs-type xfs --access-mode RWO \
    --secrets-file "$W/secrets" >/dev/null || fail "node_publish"
  host_mounted "$TP" || fail "node_publish: the pod's mount did not reach the host"
  # A pod on the host writes; the plugin container sees it in the staged filesystem.
  nsenter --mount="/proc/$HOSTPID/ns/mnt" sh -c "echo 'hello from the host' > '$TP/hello' && sync '$TP/hello'"
  [ "$(podman exec "$NODE" cat "$ST/hello")" = "hello from the host" ] || fail "node_publish: data"
  pass "node_publish: bind mount on the host, a file written there read back in the plugin"

  csi "$W/ctrl/csi.sock" ControllerExpandVolume --volume-id "$VID" --size 2Gi --secrets-file "$W/secrets" >/dev/null \
    || fail "controller_expand"
  csi "$W/node/csi.sock" NodeExpandVolume --volume-id "$VID" --target-path "$TP" --staging-path "$ST" \
    --size 2Gi --fs-type xfs --access-mode RWO --secrets-file "$W/secrets" >/dev/null || fail "node_expand_xfs"
  local size
  size=$(nsenter --mount="/proc/$HOSTPID/ns/mnt" df -B1 --output=size "$TP" | tail -n 1)
  [ "$size" -gt 1500000000 ] || fail "node_expand_xfs: $TP is $size bytes"
  pass "node_expand_xfs: xfs_growfs grew the mounted filesystem to $size bytes"

  csi "$W/node/csi.sock" NodeUnpublishVolume --volume-id "$VID" --target-path "$TP" >/dev/null || fail "node_unpublish"
  PUBLISHED=""
  csi "$W/node/csi.sock" NodeUnstageVolume --volume-id "$VID" --staging-path "$ST" >/dev/null || fail "node_unstage"
  STAGED=""
  local left
  left=$(awk -v w="$W/" 'index($5, w) == 1 {print $5}' "/proc/$HOSTPID/mountinfo")
  [ -z "$left" ] || fail "node_unstage: mounts left on the host: $left"
  left=$(losetup -n -O NAME,BACK-FILE | awk -v w="$W/" 'index($2, w) == 1')
  [ -z "$left" ] || fail "node_unstage: loop devices left: $left"
  local p
  for p in /proc/[0-9]*; do
    tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -q "fuse-export.*$W/" && fail "node_unstage: FUSE exporter ${p#/proc/} still runs"
  done
  pass "node_unstage: no mount, loop device or exporter left"

  csi "$W/ctrl/csi.sock" DeleteVolume --volume-id "$VID" --secrets-file "$W/secrets" >/dev/null || fail "controller_delete_volume"
  VID=""
  ! rbd -c "$FERRO_CEPH_CONF" info "$FERRO_RBD_POOL/$img" >/dev/null 2>&1 || fail "controller_delete_volume: $img is still there"
  pass "controller_delete_volume"

  csi "$W/fs/csi.sock" CreateVolume --name "pvc-image-smoke-fs-$HOSTPID" --size 1Gi --access-mode RWX \
    --param "clusterID=$FERRO_FSID" --param "fsName=$FERRO_FS_NAME" --param mounter=fuse \
    --secrets-file "$W/fs-secrets" >"$W/fsvol.json" || fail "cephfs_create_volume"
  FVID=$(jq -r .volume.volumeId "$W/fsvol.json")
  fs_json() {
    jq -c --arg st "$FST" --arg tp "${1:-}" '{volumeId: .volume.volumeId, volumeContext: .volume.volumeContext,
      stagingTargetPath: $st} + (if $tp == "" then {} else {targetPath: $tp} end)' "$W/fsvol.json"
  }
  FSTAGED=1
  csi "$W/fs/csi.sock" NodeStageVolume --json "$(fs_json)" --access-mode RWX \
    --secrets-file "$W/fs-secrets" >/dev/null || fail "cephfs_stage_ceph_fuse"
  host_mounted "$FST" || fail "cephfs_stage_ceph_fuse: the ceph-fuse mount did not reach the host"
  FPUBLISHED=1
  csi "$W/fs/csi.sock" NodePublishVolume --json "$(fs_json "$FTP")" --access-mode RWX \
    --secrets-file "$W/fs-secrets" >/dev/null || fail "cephfs_publish"
  host_mounted "$FTP" || fail "cephfs_publish: the pod's mount did not reach the host"
  nsenter --mount="/proc/$HOSTPID/ns/mnt" sh -c "echo 'hello cephfs' > '$FTP/hello' && sync '$FTP/hello'"
  [ "$(podman exec "$FS" cat "$FST/hello")" = "hello cephfs" ] || fail "cephfs_publish: data"
  pass "cephfs_stage_publish_ceph_fuse: the copied ceph-fuse mounted the subvolume, seen and written on the host"
  csi "$W/fs/csi.sock" NodeUnpublishVolume --volume-id "$FVID" --target-path "$FTP" >/dev/null || fail "cephfs_unpublish"
  FPUBLISHED=""
  csi "$W/fs/csi.sock" NodeUnstageVolume --volume-id "$FVID" --staging-path "$FST" >/dev/null || fail "cephfs_unstage"
  FSTAGED=""
  left=$(awk -v w="$W/" 'index($5, w) == 1 {print $5}' "/proc/$HOSTPID/mountinfo")
  [ -z "$left" ] || fail "cephfs_unstage: mounts left on the host: $left"
  for p in /proc/[0-9]*; do
    tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -q "ceph-fuse.*$W/" && fail "cephfs_unstage: ceph-fuse ${p#/proc/} still runs"
  done
  csi "$W/fs/csi.sock" DeleteVolume --volume-id "$FVID" --secrets-file "$W/fs-secrets" >/dev/null || fail "cephfs_delete_volume"
  FVID=""
  pass "cephfs_unstage_delete: no mount or ceph-fuse left, subvolume deleted"
  check_size
}

case "${1:-}" in
  base) install_tools; make_base ;;
  build) build_image ;;
  size) podman image exists "$IMAGE" || die "no image $IMAGE: run $0 build"; check_size ;;
  smoke) smoke ;;
  smoke-ns) shift; smoke_ns "$@" ;;
  *) die "usage: $0 build|smoke|size|base" ;;
esac
