#!/usr/bin/env bash
# Writes example/report.png, the README's picture of `statexec report`:
# the report of example/statexec_metrics.txt in headless Chromium, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
go build -o bin/statexec .
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bin/statexec report -o "$tmp/report.html" example/statexec_metrics.txt >/dev/null
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run --disable-dev-shm-usage \
	--disable-background-networking --user-data-dir="$tmp/profile" \
	--proxy-server=127.0.0.1:9 --host-resolver-rules='MAP * ~NOTFOUND' \
	--virtual-time-budget=5000 --window-size=1100,1500 \
	--screenshot="$PWD/example/report.png" "file://$tmp/report.html" 2>/dev/null
ls -l example/report.png
