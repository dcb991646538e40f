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
  # the manifests and gRPC-client tests: a venv for kubernetes-validate and grpcio (kubectl comes below)
  python3-venv
)
# `kubectl kustomize` for the manifests test; another kubectl already on PATH will do (a
# second package owning /usr/bin/kubectl would conflict).
command -v kubectl >/dev/null 2>&1 || PACKAGES+=(kubernetes-client)

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

# kubernetes-validate (PyPI) for the manifests test, in a venv of its own.
TOOLS_VENV="$(cd "$(dirname "$0")/.." && pwd)/.venv-tools"
KUBERNETES_VALIDATE_VERSION=1.37.0
if [ "$("$TOOLS_VENV/bin/kubernetes-validate" --version 2>/dev/null)" != "$KUBERNETES_VALIDATE_VERSION" ]; then
  echo "setup: installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $TOOLS_VENV" >&2
  python3 -m venv "$TOOLS_VENV"
  "$TOOLS_VENV/bin/pip" install -q --disable-pip-version-check \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" >&2
fi
# grpcio (PyPI), the Python gRPC client the grpc_clients test drives the socket with.
GRPCIO_VERSION=1.85.1
if [ "$("$TOOLS_VENV/bin/python" -c 'import grpc; print(grpc.__version__)' 2>/dev/null)" != "$GRPCIO_VERSION" ]; then
  echo "setup: installing grpcio $GRPCIO_VERSION into $TOOLS_VENV" >&2
  [ -x "$TOOLS_VENV/bin/pip" ] || python3 -m venv "$TOOLS_VENV"
  "$TOOLS_VENV/bin/pip" install -q --disable-pip-version-check "grpcio==$GRPCIO_VERSION" >&2
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
