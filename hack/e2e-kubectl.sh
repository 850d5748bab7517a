#!/usr/bin/env bash
# The foundation's acceptance with kubectl alone, against the cluster in KUBECONFIG:
# CRDs accepted, valid samples accepted, each invalid sample refused with its expected field and
# message and nothing created, `kubectl explain` descriptions, `kubectl get sovereign`.
set -uo pipefail
cd "$(dirname "$0")/.."
if ! kubectl version --request-timeout=10s >/dev/null 2>&1; then
  echo "SKIPPED e2e-kubectl: no cluster reachable through KUBECONFIG"; exit 0
fi
fail=0; passed=0
# The CRD files only: `-f crds/` would also take every sample below it (kubectl recurses).
crd_files=()
for f in crds/sovereign.io_*.yaml; do crd_files+=(-f "$f"); done
ok() { passed=$((passed + 1)); }
bad() { echo "FAIL: $*"; fail=$((fail + 1)); }

kubectl apply --server-side --field-manager=sovereign-operator "${crd_files[@]}" >/dev/null || { echo "CRDs refused"; exit 1; }
kubectl wait --for=condition=Established --timeout=60s "${crd_files[@]}" >/dev/null || { echo "CRDs not Established"; exit 1; }
ok

if kubectl apply --server-side --field-manager=sovereign-e2e -f crds/samples/valid/ >/dev/null; then ok; else bad "valid samples refused"; fi

tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
for f in crds/samples/invalid/*.yaml; do
  name=$(basename "$f")
  field=$(sed -n 's/^# expect-field: //p' "$f")
  message=$(sed -n 's/^# expect-message: //p' "$f")
  awk -v dir="$tmp" 'BEGIN{n=1} /^---$/{n++; next} {print > (dir "/doc" n ".yaml")}' "$f"
  target="$tmp/doc1.yaml"; before=""
  if [ -f "$tmp/doc2.yaml" ]; then before="$tmp/doc1.yaml"; target="$tmp/doc2.yaml"; fi
  if [ -n "$before" ]; then
    kubectl apply --server-side --field-manager=sovereign-e2e -f "$before" >/dev/null || bad "$name: stored object refused"
  fi
  if out=$(kubectl apply --server-side --field-manager=sovereign-e2e -f "$target" 2>&1); then
    bad "$name: accepted"
  elif grep -qF -- "$field" <<<"$out" && grep -qF -- "$message" <<<"$out"; then
    ok
  else
    bad "$name: expected '$field' and '$message' in: $out"
  fi
  if [ -n "$before" ]; then
    kubectl delete -f "$before" --wait=false >/dev/null 2>&1
  elif kubectl get -f "$target" >/dev/null 2>&1; then
    bad "$name: refused object exists"
  fi
  rm -f "$tmp"/doc*.yaml
done

for path in server.spec.bmc storagevolume.spec; do
  out=$(kubectl explain "$path" 2>&1)
  if grep -q "DESCRIPTION" <<<"$out" && ! grep -q "<empty>" <<<"$out"; then ok; else bad "kubectl explain $path: $out"; fi
done
out=$(kubectl get sovereign -A 2>&1)
for kind in site rack server tenant storagevolume computeinstance; do
  if grep -qi "^$kind\|$kind.sovereign.io" <<<"$out"; then ok; else bad "kubectl get sovereign lacks $kind"; fi
done
# Leave the cluster as found (namespaces stay: deleting them races the next run's creates).
for f in $(ls -r crds/samples/valid/*.yaml); do
  grep -q '^kind: Namespace' "$f" || kubectl delete -f "$f" --ignore-not-found --wait=false >/dev/null 2>&1
done
echo "$passed passed, $fail failed"
[ "$fail" -eq 0 ]
