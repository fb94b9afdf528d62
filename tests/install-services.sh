#!/usr/bin/env bash
# What the tests start: Debian's Prometheus (with promtool) and Pushgateway, on loopback, for the metrics tests;
# Debian's headless Chromium for the report.html tests (driven through Playwright, no browser download).
set -euo pipefail
if command -v prometheus >/dev/null && command -v promtool >/dev/null && command -v prometheus-pushgateway >/dev/null \
    && command -v chromium >/dev/null; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends prometheus prometheus-pushgateway chromium >/dev/null
