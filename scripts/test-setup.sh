#!/usr/bin/env bash
# Installs what the test suite drives from outside Python: the system Chromium for the dashboard's browser
# tests and Prometheus' promtool for the alert rules' tests (Debian packages, when root with apt-get), FlexPrice's
# Python SDK (PyPI, into an environment of its own) and FlexPrice's npm SDK (when node is present).
set -euo pipefail
cd "$(dirname "$0")/.."

# Playwright drives the system Chromium; `playwright install` (a browser download) is never used.
if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "test-setup: installing Chromium for the dashboard tests (apt-get install chromium chromium-driver)"
        # A failed install (no network, no mirror) only skips the dashboard tests; it does not stop the suite.
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }; then
            echo "test-setup: installing Chromium failed; dashboard tests will be skipped"
        fi
    else
        echo "test-setup: /usr/bin/chromium not found (needs root and apt-get to install); dashboard tests will be skipped"
    fi
fi

# promtool checks the shipped alert rules (deploy/prometheus/); it comes with Debian's prometheus package.
if ! command -v promtool >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "test-setup: installing promtool for the alert rules' tests (apt-get install prometheus)"
        # A failed install only skips the alert rules' tests; it does not stop the suite.
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }; then
            echo "test-setup: installing prometheus failed; the alert rules' tests will be skipped"
        fi
    else
        echo "test-setup: promtool not found (needs root and apt-get to install); the alert rules' tests will be skipped"
    fi
fi

# FlexPrice's Python SDK gets its own environment, so that its pins never meet the project's. Reinstalled when
# the pin changes; a failed install (no network) only skips its test.
py_sdk_dir=tests/sdk-python
if [ ! -f "$py_sdk_dir/.venv/.installed" ] || [ "$py_sdk_dir/requirements.txt" -nt "$py_sdk_dir/.venv/.installed" ]; then
    echo "test-setup: installing FlexPrice's Python SDK into $py_sdk_dir/.venv ($(cat "$py_sdk_dir/requirements.txt"))"
    if "${PYTHON:-python3}" -m venv "$py_sdk_dir/.venv" &&
        "$py_sdk_dir/.venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$py_sdk_dir/requirements.txt"; then
        touch "$py_sdk_dir/.venv/.installed"
    else
        echo "test-setup: installing FlexPrice's Python SDK failed; its compatibility test will be skipped"
    fi
fi

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
