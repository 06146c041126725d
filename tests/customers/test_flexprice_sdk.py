"""FlexPrice's official TypeScript SDK (npm `@flexprice/sdk`) works against flexsync unchanged.

`scripts/test-setup.sh` (run by `make test`) installs the SDK into tests/sdk; tests/sdk/customers.mjs
drives it and prints one JSON object per step, which this test reads as a user would check the results.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support import TenantContext

SDK_DIR = Path(__file__).resolve().parents[1] / "sdk"
SCRIPT = SDK_DIR / "customers.mjs"
INSTALLED_SDK = SDK_DIR / "node_modules" / "@flexprice" / "sdk"


def _missing_prerequisite() -> str | None:
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed: the FlexPrice SDK test needs Node.js and npm"
    if not INSTALLED_SDK.is_dir():
        return "tests/sdk/node_modules/@flexprice/sdk is missing: run `bash scripts/test-setup.sh` (make test does)"
    return None


MISSING = _missing_prerequisite()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


def run_sdk_script(tenant: TenantContext) -> dict[str, dict[str, Any]]:
    env = {
        **os.environ,
        "FLEXSYNC_URL": f"{tenant.base_url}/v1",
        "FLEXSYNC_KEY": tenant.api_key,
    }
    completed = subprocess.run(["node", str(SCRIPT)], cwd=SDK_DIR, env=env, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, f"the SDK script failed:\n{completed.stdout}\n{completed.stderr}"
    return {line["step"]: line for line in map(json.loads, completed.stdout.splitlines())}


def test_customer_lifecycle_through_the_flexprice_sdk(tenant: TenantContext) -> None:
    steps = run_sdk_script(tenant)
    created = steps["create"]["result"]
    customer_id = created["id"]
    assert customer_id.startswith("cust_")
    assert created["externalId"] == "sdk-customer-1"
    assert created["addressCountry"] == "US"
    assert created["addressLine1"] == "1 Compiler Way"
    assert created["metadata"] == {"plan": "pro", "source": "sdk"}
    assert created["status"] == "published"
    assert (created["tenantId"], created["environmentId"]) == (tenant.tenant_id, tenant.environment_id)

    minimal = steps["create_minimal"]["result"]
    assert minimal["name"] == "Minimal" and "email" not in minimal and minimal["metadata"] == {}

    assert steps["get"]["result"] == created
    assert steps["get_by_external_id"]["result"] == created
    by_external_id = steps["query_by_external_id"]["result"]
    assert [c["id"] for c in by_external_id["items"]] == [customer_id]
    assert by_external_id["pagination"] == {"total": 1, "limit": 10, "offset": 0}
    assert [c["id"] for c in steps["query_by_ids"]["result"]["items"]] == [customer_id]

    renamed = steps["update_by_id"]["result"]
    assert renamed["name"] == "Rear Admiral Hopper"
    assert renamed["metadata"] == {"plan": "enterprise"}
    assert renamed["email"] == "grace@example.com"
    by_external = steps["update_by_external_id"]["result"]
    assert by_external["id"] == customer_id
    assert by_external["email"] == "hopper@example.com"
    assert by_external["name"] == "Rear Admiral Hopper"

    duplicate = steps["create_duplicate"]["error"]
    assert duplicate["statusCode"] == 409
    assert "already exists" in duplicate["message"]
    bad_email = steps["create_bad_email"]["error"]
    assert bad_email["name"] == "ErrorsErrorsErrorResponse"
    assert bad_email["statusCode"] == 400
    assert "not a valid email address" in bad_email["message"]

    assert steps["delete"]["result"] is None
    archived = steps["get_archived"]["result"]
    assert archived["id"] == customer_id and archived["status"] == "archived"
