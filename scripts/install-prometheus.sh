#!/usr/bin/env bash
# Installs Prometheus (prometheus and promtool) from Debian's packages for tests/monitoring.rs:
# `promtool check/test rules` and a real Prometheus scraping `kmsroute run`. Idempotent.
set -euo pipefail
if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
  exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# The package's service is not needed (and not started without an init system).
$sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
promtool --version | head -1
