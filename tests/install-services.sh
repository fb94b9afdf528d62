#!/usr/bin/env bash
# The servers the metrics tests start on loopback: Debian's Prometheus (with promtool) and Pushgateway.
set -euo pipefail
if command -v prometheus >/dev/null && command -v promtool >/dev/null && command -v prometheus-pushgateway >/dev/null; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends prometheus prometheus-pushgateway >/dev/null
