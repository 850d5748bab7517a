#!/usr/bin/env bash
# Creates a kind cluster for Sovereign and installs the CRDs. Needs docker and kind
# (https://kind.sigs.k8s.io). KIND_NODE_IMAGE picks the Kubernetes version (CEL needs >= 1.25).
set -euo pipefail
cd "$(dirname "$0")/.."
CLUSTER="${SOVEREIGN_KIND_CLUSTER:-sovereign}"
IMAGE="${KIND_NODE_IMAGE:-kindest/node:v1.33.1}"
for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null || { echo "kind-up: $tool is not installed" >&2; exit 1; }
done
docker info >/dev/null 2>&1 || { echo "kind-up: no Docker engine answers (is the daemon running?)" >&2; exit 1; }
if ! kind get clusters | grep -qx "$CLUSTER"; then
  kind create cluster --name "$CLUSTER" --image "$IMAGE" --wait 120s
fi
kubectl config use-context "kind-$CLUSTER"
cargo run -q -p sovereign-operator -- crds install
echo "kind cluster $CLUSTER is up with the Sovereign CRDs; try: kubectl apply --server-side -f crds/samples/valid/"
