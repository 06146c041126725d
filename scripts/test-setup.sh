#!/usr/bin/env bash
# Installs what the test suite drives from outside Python: FlexPrice's npm SDK (when node is present).
set -euo pipefail
cd "$(dirname "$0")/.."
