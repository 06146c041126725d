"""The Prometheus alert rules shipped in deploy/prometheus/ are valid, and fire when they should (their own unit
tests, flexsync-alerts.test.yml), checked by Prometheus' `promtool` (Debian's `prometheus` package, installed by
scripts/test-setup.sh). The metrics they read are the ones flexsync exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from flexsync import metrics

RULES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES = RULES_DIR / "flexsync-alerts.yml"
# Exported by the managed webhook endpoint's status check (issue 19, section 1).
OTHER_METRICS = {"flexsync_stripe_webhook_endpoint_enabled"}


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool not found: install Debian's prometheus package (scripts/test-setup.sh does, as root)")
    return found


def test_the_alert_rules_are_valid(promtool: str) -> None:
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout


def test_the_alert_rules_fire_when_they_should(promtool: str) -> None:
    result = subprocess.run(
        [promtool, "test", "rules", "flexsync-alerts.test.yml"],
        cwd=RULES_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rules_read_metrics_flexsync_exports() -> None:
    exported = {
        name
        for value in vars(metrics).values()
        if hasattr(value, "_name") and hasattr(value, "_type")
        for name in (value._name, f"{value._name}_total")
    }
    used = set(re.findall(r"\b(flexsync_[a-z_]+)", RULES.read_text()))
    assert used - exported - OTHER_METRICS == set()
