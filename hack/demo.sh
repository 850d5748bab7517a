#!/usr/bin/env bash
# Sovereign in a few minutes, on this machine: a cluster, a simulated site of real vendor BMC
# trees (a DGX H100, a server with its chassis opened, one with a worn drive, Dell, HPE, DMTF),
# the collector and node agents streaming to the operator, a tenant with a volume and an
# instance placed — then what to look at.
#
#   hack/demo.sh          bring it up (a second run, or --down, stops everything it started)
#   hack/demo.sh --down
#
# The cluster: kind when Docker and kind are available; otherwise a local control plane from
# binaries, started by the script SOVEREIGN_CONTROLPLANE names (default ../shared/k8s/
# controlplane.sh: etcd, kube-apiserver, controller-manager, scheduler; any script answering
# `up`, `env` and `down` the same way works, e.g. one wrapping envtest's binaries). No kubelets
# there: Nodes are created as objects and Pods bound to them count as materialised.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STATE=${SOVEREIGN_DEMO_DIR:-/tmp/sovereign-demo}
CONTROLPLANE=${SOVEREIGN_CONTROLPLANE:-$ROOT/../shared/k8s/controlplane.sh}
# The demo's own control plane (state and ports), apart from a developer's or CI's.
export K8S_BASE=$STATE/k8s API_PORT=${DEMO_API_PORT:-36443} ETCD_PORT=32379 ETCD_PEER_PORT=32380 \
  KCM_PORT=40257 SCHED_PORT=40259

say() { printf '\033[1m== %s\033[0m\n' "$*"; }

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
    bash "$CONTROLPLANE" down >/dev/null 2>&1 || true
    rm -f "$STATE/controlplane"
  fi
}

if [ "${1:-}" = "--down" ] || [ -f "$STATE/pids" ]; then
  say "stopping the demo"
  down
  exit 0
fi
mkdir -p "$STATE"
: >"$STATE/pids"
trap 'echo "demo failed; stopping what it started"; down' ERR

start() { # name, command... : runs in the background, logs to $STATE/NAME.log, records the PID
  local name=$1
  shift
  "$@" >"$STATE/$name.log" 2>&1 &
  echo "$! $name" >>"$STATE/pids"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# SOVEREIGN_DEMO_NO_BUILD=1 uses the binaries `cargo test --workspace` just built (CI does).
if [ -z "${SOVEREIGN_DEMO_NO_BUILD:-}" ]; then
  say "building (debug)"
  cargo build -q -p sovereign-operator -p sovereign-agent -p sovereign-node-agent --bins
  cargo build -q -p sovereign-agent --example mock-bmc
fi
BIN=$ROOT/target/debug

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 && command -v kind >/dev/null 2>&1; then
  say "cluster: kind"
  kind create cluster --name sovereign-demo --kubeconfig "$STATE/kubeconfig"
  export KUBECONFIG=$STATE/kubeconfig
  touch "$STATE/kind"
else
  say "cluster: local control plane ($CONTROLPLANE)"
  # A fresh one each time (its own state directory, never a developer's cluster).
  bash "$CONTROLPLANE" clean >/dev/null 2>&1 || true
  bash "$CONTROLPLANE" up >/dev/null
  touch "$STATE/controlplane"
  eval "$(bash "$CONTROLPLANE" env)"
  export PATH="${K8S_BIN_CACHE:-/tmp/sovereign-k8s/bin}:$PATH"
fi
kubectl get --raw /readyz >/dev/null

say "operator (installs the CRDs and admission policies, then runs the controllers)"
kubectl create namespace sovereign-system --dry-run=client -o yaml | kubectl apply -f - >/dev/null
for sa in sovereign-collector sovereign-agent; do
  kubectl -n sovereign-system create serviceaccount "$sa" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
done
TPORT=$(free_port)
ADMIN=$(free_port)
start operator env RUST_LOG=info "$BIN/sovereign-operator" run --plaintext-telemetry \
  --telemetry-addr "127.0.0.1:$TPORT" --metrics-addr "127.0.0.1:$(free_port)" \
  --admin-addr "127.0.0.1:$ADMIN" --stale-after-seconds 60 \
  --collector=system:serviceaccount:sovereign-system:sovereign-collector \
  --node-agent=system:serviceaccount:sovereign-system:sovereign-agent
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$ADMIN/readyz" >/dev/null && break
  sleep 1
done
kubectl wait --for=condition=Established crd/servers.sovereign.io --timeout=60s >/dev/null

say "a site: 2 racks, 6 servers on mock BMCs serving real vendor trees"
MOCKUPS=$ROOT/../shared/redfish-mockups
TREES=(vendor/nvidia-viking variants/dell-intrusion variants/localstorage-wearout vendor/dell vendor/hpe dmtf/public-rackmount1)
NAMES=(dgx-h100 dell-opened storage-worn dell-r750 hpe-dl385 dmtf-1u)
echo -n "sovereign-ro-password" >"$STATE/bmc-password"
: >"$STATE/targets.yaml"
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
for i in "${!TREES[@]}"; do
  name=hn1-${NAMES[$i]}
  rack=hn1-r0$((i % 2 + 1))
  start "bmc-$name" "$BIN/examples/mock-bmc" "$MOCKUPS/${TREES[$i]}" 20
  url=""
  for _ in $(seq 1 50); do
    url=$(grep -o 'http://127.0.0.1:[0-9]*' "$STATE/bmc-$name.log" | head -1 || true)
    [ -n "$url" ] && break
    sleep 0.2
  done
  cat >>"$STATE/inventory.yaml" <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: node-$i
  labels: {topology.kubernetes.io/zone: $rack}
status:
  capacity: {cpu: "128", memory: 1Ti, pods: "110"}
  allocatable: {cpu: "128", memory: 1Ti, pods: "110"}
  conditions: [{type: Ready, status: "True", reason: KubeletReady, message: demo}]
---
apiVersion: sovereign.io/v1alpha1
kind: Server
metadata: {name: $name}
spec:
  rack: $rack
  nodeName: node-$i
  bmc:
    # The registered address; the collector here reads the mock BMC on loopback from its
    # targets file instead (plain HTTP, as only a test BMC may).
    address: https://bmc-$name.mgmt.example
    credentialsSecretRef: {name: bmc-$name, namespace: sovereign-system}
    insecureSkipVerify: true
  capacity: {cpu: "64", memory: 512Gi, storage: {nvme: 7Ti, ssd: 7Ti}}
EOF
  [ "$i" = 0 ] && DGX_URL=$url
  cat >>"$STATE/targets.yaml" <<EOF
- {server: $name, address: '$url', username: sovereign-ro, passwordFile: '$STATE/bmc-password'}
EOF
done
kubectl apply -f "$STATE/inventory.yaml" >/dev/null
# Nodes' status is a subresource: mark them Ready as a kubelet would.
for i in "${!TREES[@]}"; do
  kubectl patch node "node-$i" --subresource=status --type=merge -p \
    '{"status":{"capacity":{"cpu":"128","memory":"1Ti","pods":"110"},"allocatable":{"cpu":"128","memory":"1Ti","pods":"110"},"conditions":[{"type":"Ready","status":"True","reason":"KubeletReady","message":"demo"}]}}' >/dev/null
done

say "collector (polls the BMCs) and node agents (one per node), streaming to the operator"
kubectl -n sovereign-system create token sovereign-collector --audience sovereign-telemetry --duration 24h >"$STATE/collector.token"
start collector "$BIN/sovereign-agent" bmc --operator "http://127.0.0.1:$TPORT" \
  --token-file "$STATE/collector.token" --targets "$STATE/targets.yaml" --interval-seconds 15
for i in "${!TREES[@]}"; do
  # A token bound to the node, as the DaemonSet's projected token is: the operator accepts
  # OS samples from it for that node only.
  if kubectl -n sovereign-system create token sovereign-agent --audience sovereign-telemetry \
    --bound-object-kind Node --bound-object-name "node-$i" --duration 24h >"$STATE/node-$i.token" 2>/dev/null; then
    start "node-agent-$i" "$BIN/sovereign-node" --operator "http://127.0.0.1:$TPORT" \
      --token-file "$STATE/node-$i.token" --server "node-$i" --interval-seconds 15
  fi
done

say "a tenant with a replicated volume and instance"
cat >"$STATE/tenant.yaml" <<EOF
apiVersion: sovereign.io/v1alpha1
kind: Tenant
metadata: {name: moh}
spec:
  classification: Internal
  residency: {jurisdictions: [VN]}
  namespaces: [moh-prod]
  quota: {cpu: "64", memory: 256Gi, storage: {nvme: 2Ti}}
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
# Encryption at rest needs self-encrypting drives; only one healthy demo server has them, so
# this volume opts out (kubectl sovereign why shows the refusal counts when it does not).
spec: {size: 100Gi, tier: nvme, replicas: 2, encrypted: false}
---
apiVersion: sovereign.io/v1alpha1
kind: ComputeInstance
metadata: {name: records-api, namespace: moh-prod}
spec: {cpu: "4", memory: 16Gi, image: registry.example/moh/records-api:1.4, replicas: 2}
EOF
kubectl apply -f "$STATE/workloads.yaml" >/dev/null
say "waiting for the BMCs to report and the workloads to be placed (up to 3 minutes)"
kubectl -n moh-prod wait --for=condition=Placed storagevolume/records-db computeinstance/records-api --timeout=180s

say "up. What to look at:"
cat <<EOF
  export KUBECONFIG=$KUBECONFIG
  kubectl get sovereign -A                      # every Sovereign object
  kubectl get srv                               # watts, inlet, health, Ready per server
  $BIN/kubectl-sovereign top servers --sort power    # (or kubectl sovereign … with it on PATH)
  $BIN/kubectl-sovereign capacity
  $BIN/kubectl-sovereign why sv/records-db -n moh-prod
  kubectl describe srv hn1-dell-opened          # chassis intrusion: Secure=False, Node tainted NoExecute
  kubectl get node node-1 -o jsonpath='{.spec.taints}'; echo
  kubectl describe srv hn1-storage-worn         # a drive predicting its failure
  $BIN/sovereign-agent collect --once --bmc $DGX_URL --user sovereign-ro --password-file $STATE/bmc-password   # the DGX, read by meaning
  logs: $STATE/*.log
Stop everything: hack/demo.sh --down
EOF
trap - ERR
