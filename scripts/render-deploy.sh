#!/usr/bin/env bash
# Regenerates deploy/kmsroute.yaml (the plain-manifest install) from the chart with default
# values. tests/deploy.rs fails when the checked-in file differs from this rendering.
set -euo pipefail
cd "$(dirname "$0")/.."
helm="${HELM:-.tools/bin/helm}"
{
  echo "# Plain-manifest install of kmsroute, rendered from charts/kmsroute with default values by"
  echo "# scripts/render-deploy.sh (the CRD included, the helm test pod left out). Namespace:"
  echo "# kmsroute (kubectl create namespace kmsroute first)."
  "$helm" template kmsroute charts/kmsroute --namespace kmsroute --skip-tests
} > deploy/kmsroute.yaml
