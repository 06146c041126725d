#!/usr/bin/env bash
# Installs what the test suite drives from outside Python: FlexPrice's npm SDK (when node is present).
set -euo pipefail
cd "$(dirname "$0")/.."

sdk_dir=tests/sdk
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "test-setup: node/npm not found; the FlexPrice SDK compatibility test will be skipped"
    exit 0
fi
# Reinstall when node_modules is missing or older than package.json (a changed pin).
if [ ! -d "$sdk_dir/node_modules/@flexprice/sdk" ] || [ "$sdk_dir/package.json" -nt "$sdk_dir/node_modules" ]; then
    echo "test-setup: installing the FlexPrice SDK into $sdk_dir (npm install)"
    (cd "$sdk_dir" && npm install --no-audit --no-fund --silent)
    touch "$sdk_dir/node_modules"
fi
