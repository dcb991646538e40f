#!/usr/bin/env bash
# Installs everything ferroceph needs to build, test and run its demo on Debian bookworm.
# Idempotent: packages already present are not reinstalled, and apt's index is only
# refreshed when something is missing.
set -euo pipefail

PACKAGES=(
  # build
  build-essential pkg-config protobuf-compiler libprotobuf-dev librados-dev librbd-dev
  # the dev cluster and node-side tools
  ceph-mon ceph-osd ceph-mgr ceph-mds ceph-common ceph-fuse rbd-fuse rbd-nbd
  fuse3 e2fsprogs xfsprogs util-linux mount procps iproute2 jq
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${missing[*]}" >&2
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  for c in "$HOME/.cargo/bin/cargo" /usr/local/cargo/bin/cargo; do
    [ -x "$c" ] && export PATH="$(dirname "$c"):$PATH" && break
  done
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: no Rust toolchain found; install Rust >= 1.80 with rustup (https://rustup.rs) and re-run" >&2
  exit 1
fi
echo "setup: ok ($(cargo --version))" >&2
