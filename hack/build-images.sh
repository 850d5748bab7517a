#!/usr/bin/env bash
# Builds the images the chart runs as OCI archives, pulling nothing: each is the binary cargo
# built on this machine over a base made of its own shared libraries and the CA roots
# (hack/oci-image.py), non-root, no shell.
#
#   hack/build-images.sh [TAG] [REGISTRY]   (defaults: the chart's appVersion, ghcr.io/sovereign-cloud)
#
#   PROFILE=release (default) or debug      which cargo build goes in
#   SOVEREIGN_IMAGES_NO_BUILD=1             use the binaries already in target/ (CI: the test build)
#   OUT=DIR                                 where the archives go (default target/images)
#
# Then: ../shared/k8s/controlplane.sh load target/images/*.tar, or
# kind load image-archive FILE, or docker load -i FILE.
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${1:-$(awk '/^appVersion:/ {gsub(/"/, "", $2); print $2}' charts/sovereign/Chart.yaml)}
REGISTRY=${2:-ghcr.io/sovereign-cloud}
PROFILE=${PROFILE:-release}
OUT=${OUT:-target/images}
if [ -z "${SOVEREIGN_IMAGES_NO_BUILD:-}" ]; then
  flag=()
  [ "$PROFILE" = release ] && flag=(--release)
  cargo build -q --locked "${flag[@]}" -p sovereign-operator --bin sovereign-operator --bin kubectl-sovereign \
    -p sovereign-agent --bin sovereign-agent -p sovereign-node-agent --bin sovereign-node
fi
mkdir -p "$OUT"
# binary → image name (the chart's values.yaml image.operator / image.agent / image.node).
for pair in sovereign-operator:sovereign-operator sovereign-agent:sovereign-agent \
            sovereign-node:sovereign-node kubectl-sovereign:kubectl-sovereign; do
  bin=target/$PROFILE/${pair%%:*}
  image=${pair#*:}
  [ -x "$bin" ] || { echo "build-images: $bin missing (build it, or unset SOVEREIGN_IMAGES_NO_BUILD)" >&2; exit 1; }
  python3 hack/oci-image.py --ref "$REGISTRY/$image:$TAG" --binary "$bin" --out "$OUT/$image.tar"
done
