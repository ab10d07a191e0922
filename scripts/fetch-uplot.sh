#!/usr/bin/env bash
# Writes the uPlot chart library that `statexec report` embeds, from the
# pinned npm package, into internal/report/assets/ (run by `make generate`).
# The tarball must match the pinned integrity hash (the one the npm registry
# publishes for this version), so the committed files are exactly the
# package's: `make check-generate` reruns this and diffs.
set -euo pipefail

VERSION=1.6.32
INTEGRITY='sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw=='

cd "$(dirname "$0")/.."
dest=internal/report/assets
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

(cd "$tmp" && npm pack --silent "uplot@$VERSION" >/dev/null)
tgz="$tmp/uplot-$VERSION.tgz"
got="sha512-$(openssl dgst -sha512 -binary "$tgz" | base64 -w0)"
if [ "$got" != "$INTEGRITY" ]; then
	echo "fetch-uplot: uplot@$VERSION tarball has integrity $got, want $INTEGRITY" >&2
	exit 1
fi
tar -xzf "$tgz" -C "$tmp" package/LICENSE package/dist/uPlot.iife.min.js package/dist/uPlot.min.css
mkdir -p "$dest"
cp "$tmp/package/dist/uPlot.iife.min.js" "$tmp/package/dist/uPlot.min.css" "$dest/"
cp "$tmp/package/LICENSE" "$dest/uPlot.LICENSE"
echo "uplot@$VERSION $INTEGRITY" >"$dest/uPlot.VERSION"
