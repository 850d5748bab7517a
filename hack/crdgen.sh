#!/usr/bin/env bash
# Regenerates the CRD YAML under crds/ and charts/sovereign/templates/crds.yaml from the Rust types (`--check` fails on drift instead).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run -q -p sovereign-crds --bin crdgen -- "$@"
