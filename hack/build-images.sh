#!/usr/bin/env bash
# Builds the images the chart runs, one Dockerfile target each, tagged like the chart expects:
#   hack/build-images.sh [TAG] [REGISTRY]      (defaults: the chart's appVersion, ghcr.io/sovereign-cloud)
# Needs docker (or podman via DOCKER=podman) with BuildKit. Push with PUSH=1.
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${1:-$(awk '/^appVersion:/ {gsub(/"/, "", $2); print $2}' charts/sovereign/Chart.yaml)}
REGISTRY=${2:-ghcr.io/sovereign-cloud}
DOCKER=${DOCKER:-docker}
# target → image name (the chart's values.yaml image.operator / image.agent / image.node).
for pair in operator:sovereign-operator agent:sovereign-agent node:sovereign-node \
            kubectl-sovereign:kubectl-sovereign; do
  target=${pair%%:*}
  image="$REGISTRY/${pair#*:}:$TAG"
  echo "== $image (target $target)"
  DOCKER_BUILDKIT=1 "$DOCKER" build --target "$target" -t "$image" .
  if [ "${PUSH:-0}" = 1 ]; then "$DOCKER" push "$image"; fi
done
