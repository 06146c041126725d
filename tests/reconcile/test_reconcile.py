"""Reconciliation end to end, on SQLite and PostgreSQL: a Stripe account (localstripe, filled with the official
SDK) and a flexsync environment (filled through the API) in mixed states, reconciled by `flexsync reconcile`
and through `POST /v1/connections/{id}/reconcile`, with a real `flexsync serve` whose embedded worker carries
out the pushes and API-started runs.

localstripe never fails, so the runs that must be interrupted go through the fault-injecting stand-in of
tests/stripe_standin.py (a proxy in front of localstripe). localstripe keeps one store whatever the API key, so
every test starts by wiping it and ends with its sync jobs settled.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import stripe
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.models import SyncJob, utcnow
from tests.cli_support import Completed, run_flexsync
from tests.support import (
    DatabaseUnderTest,
    LocalStripe,
    Server,
    TenantContext,
    assert_error,
    new_tenant,
    server_env,
    start_server,
    wait_for,
)
from tests.sync_support import (
    StandIn,
    SyncTenant,
    add_connection,
    stripe_sdk,
    sync_tenant,
)

SETTINGS = {"outbound_enabled": False, "push_updates": False, "email_matching": True}
LIST = {"method": "GET", "path": "/v1/customers"}


@pytest.fixture(scope="module")
def recon_server(
    module_db: DatabaseUnderTest, module_localstripe: LocalStripe, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """`flexsync serve` with its embedded worker, pushing to localstripe."""
    running = start_server(
        module_db,
        tmp_path_factory.mktemp("reconcile-logs"),
        FLEXSYNC_STRIPE_API_BASE=module_localstripe.base_url,
        FLEXSYNC_JOB_POLL_INTERVAL="0.2",
        # Reconciliation alone: the worker's catch-up would import the tests' Stripe customers from their events.
        FLEXSYNC_STRIPE_CATCHUP_INTERVAL_SECONDS="0",
    )
    yield running
    running.stop()


@pytest.fixture
def sdk(module_localstripe: LocalStripe, standin: StandIn) -> stripe.StripeClient:
    module_localstripe.wipe()
    standin.reset()
    return stripe_sdk(module_localstripe.base_url)


@pytest.fixture
def env(module_db: DatabaseUnderTest, recon_server: Server, sdk: stripe.StripeClient) -> Iterator[SyncTenant]:
    with sync_tenant(module_db, recon_server.base_url, SETTINGS) as tenant:
        yield tenant
        wait_settled(tenant)


# --- helpers ------------------------------------------------------------------------------------------------


def wait_settled(env: SyncTenant, timeout: float = 60.0) -> None:
    """Until the tenant's worker jobs (pushes and API-started runs) have all finished."""
    wait_for(lambda: not env.jobs(status="pending") and not env.jobs(status="running"), timeout, "sync jobs to finish")


def create_in_stripe(sdk: stripe.StripeClient, params: list[dict[str, Any]]) -> list[str]:
    """Create Stripe customers concurrently (localstripe is slow one by one); returns their ids in the order of
    `params` (Stripe may list them in another)."""
    with ThreadPoolExecutor(8) as pool:
        return [customer.id for customer in pool.map(sdk.v1.customers.create, params)]  # type: ignore[arg-type]


def reconcile_cli(db: DatabaseUnderTest, stripe_base: str, connection_id: str, *args: str, **env: str) -> Completed:
    return run_flexsync(
        ["reconcile", "--connection", connection_id, *args],
        env=server_env(db, FLEXSYNC_STRIPE_API_BASE=stripe_base, **env),
    )


def reconcile_json(db: DatabaseUnderTest, stripe_base: str, connection_id: str, *args: str) -> dict[str, Any]:
    done = reconcile_cli(db, stripe_base, connection_id, "--json", *args)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def conflicts_of(report: dict[str, Any]) -> set[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    for conflict in report["conflicts"]:
        assert conflict["message"], conflict
    return {(c["kind"], tuple(c["stripe_customer_ids"]), tuple(c["customer_ids"])) for c in report["conflicts"]}


def push_jobs(env: SyncTenant) -> list[dict[str, Any]]:
    """The tenant's sync jobs that push customers (a run's own `reconcile` job is its record, not a push)."""
    return [job for job in env.jobs() if job["kind"] != "reconcile"]


def all_customers(api: httpx.Client) -> list[dict[str, Any]]:
    body = api.get("/v1/customers", params={"status": "all", "limit": 1000}).json()
    assert body["pagination"]["total"] < 1000
    items: list[dict[str, Any]] = body["items"]
    return items


def stripe_customers(sdk: stripe.StripeClient) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 100}
    while True:
        page = sdk.v1.customers.list(params)  # type: ignore[arg-type]
        found += [customer.to_dict() for customer in page.data]
        if not page.has_more:
            return found
        params["starting_after"] = page.data[-1].id


def counts(**given: int) -> dict[str, int]:
    return {key: given.get(key, 0) for key in ("linked", "imported", "updated", "pushed", "unchanged", "conflicts")}


# --- the mixed account --------------------------------------------------------------------------------------


@dataclass
class Mixed:
    """A Stripe account and a flexsync environment in every state reconciliation meets, and what it should do."""

    same: list[str]  # linked, equal on both sides
    stripe_newer: dict[str, str]  # linked customer -> the name changed in Stripe
    flexsync_newer: dict[str, str]  # linked customer -> the name changed in flexsync
    archived: list[str]  # linked, then archived in flexsync
    stripe_of: dict[str, str]  # every linked customer -> its Stripe customer
    named: dict[str, str]  # unlinked customer -> the Stripe customer naming it (by id or external_id)
    renamed_in_stripe: dict[str, str]  # of `named` and `by_email`: customer -> Stripe's other name
    by_email: dict[str, str]  # unlinked customer -> the Stripe customer with its email
    stripe_only: list[str]
    flexsync_only: list[str]
    claimed: str  # unlinked customer that two Stripe customers name
    first_claim: str
    second_claim: str
    also_claims_linked: str  # a Stripe customer naming an already linked customer
    twins: list[str]  # two unlinked customers with one email
    twin_email_stripe: str
    expected_conflicts: set[tuple[str, tuple[str, ...], tuple[str, ...]]]


def build_mixed(env: SyncTenant, sdk: stripe.StripeClient) -> Mixed:
    api = env.api
    # The first Stripe customer listed names `claimed`; the last one listed names it too (another page).
    claimed = env.create(external_id="claimed", name="Claimed Twice")["id"]
    (first_claim,) = create_in_stripe(sdk, [{"name": "Claimed Twice", "metadata": {"flexprice_customer_id": claimed}}])

    linked = [
        env.create(external_id=f"linked-{i}", name=f"Linked {i}", email=f"linked{i}@example.com") for i in range(30)
    ]
    for customer in linked:
        assert api.post(f"/v1/customers/{customer['id']}/sync-to-stripe").status_code == 202
    stripe_of = {customer["id"]: env.wait_linked(customer["id"]) for customer in linked}
    wait_settled(env)
    ids = [customer["id"] for customer in linked]
    same, stripe_newer_ids, flexsync_newer_ids, archived = ids[:20], ids[20:24], ids[24:28], ids[28:]
    stripe_newer = {cid: f"Renamed in Stripe {i}" for i, cid in enumerate(stripe_newer_ids)}
    for cid, name in stripe_newer.items():
        sdk.v1.customers.update(stripe_of[cid], {"name": name})
    flexsync_newer = {cid: f"Renamed in flexsync {i}" for i, cid in enumerate(flexsync_newer_ids)}
    for cid, name in flexsync_newer.items():
        assert api.put(f"/v1/customers/{cid}", json={"name": name}).status_code == 200
    for cid in archived:
        assert api.delete(f"/v1/customers/{cid}").status_code == 204

    named_customers = [env.create(external_id=f"named-{i}", name=f"Named {i}") for i in range(35)]
    by_email_customers = [
        env.create(external_id=f"mail-{i}", name=f"Mail {i}", email=f"mail{i}@example.com") for i in range(15)
    ]
    flexsync_only = [
        env.create(external_id=f"flex-{i}", name=f"Flex {i}", email=f"flex{i}@example.com")["id"] for i in range(30)
    ]
    twins = sorted(
        env.create(external_id=f"twin-{i}", name=f"Twin {i}", email="twin@example.com")["id"] for i in range(2)
    )

    renamed_in_stripe: dict[str, str] = {}
    params: list[dict[str, Any]] = []
    for i, customer in enumerate(named_customers):
        # Most are named by id, some by external_id; some carry another name in Stripe.
        name = f"Stripe Named {i}" if i % 7 == 0 else customer["name"]
        if name != customer["name"]:
            renamed_in_stripe[customer["id"]] = name
        reference = customer["external_id"] if i >= 25 else customer["id"]
        params.append({"name": name, "metadata": {"flexprice_customer_id": reference}})
    for i, customer in enumerate(by_email_customers):
        name = f"Stripe Mail {i}" if i % 5 == 0 else customer["name"]
        if name != customer["name"]:
            renamed_in_stripe[customer["id"]] = name
        params.append({"name": name, "email": customer["email"]})
    params += [{"name": f"Stripe Only {i}", "email": f"stripe{i}@example.com"} for i in range(100)]
    params.append({"name": "Copycat", "metadata": {"flexprice_customer_id": same[0]}})
    params.append({"name": "Twin in Stripe", "email": "twin@example.com"})
    created = create_in_stripe(sdk, params)
    named = dict(zip([c["id"] for c in named_customers], created[:35], strict=True))
    by_email = dict(zip([c["id"] for c in by_email_customers], created[35:50], strict=True))
    stripe_only, also_claims_linked, twin_email_stripe = created[50:150], created[150], created[151]
    (second_claim,) = create_in_stripe(sdk, [{"name": "Claimed Again", "metadata": {"flexprice_customer_id": claimed}}])

    expected_conflicts = {
        ("already_linked", (second_claim, first_claim), (claimed,)),
        ("already_linked", (also_claims_linked, stripe_of[same[0]]), (same[0],)),
        ("ambiguous_email", (twin_email_stripe,), tuple(twins)),
        *(("archived_customer", (stripe_of[cid],), (cid,)) for cid in archived),
    }
    return Mixed(
        same=same,
        stripe_newer=stripe_newer,
        flexsync_newer=flexsync_newer,
        archived=archived,
        stripe_of=stripe_of,
        named=named,
        renamed_in_stripe=renamed_in_stripe,
        by_email=by_email,
        stripe_only=stripe_only,
        flexsync_only=flexsync_only,
        claimed=claimed,
        first_claim=first_claim,
        second_claim=second_claim,
        also_claims_linked=also_claims_linked,
        twins=twins,
        twin_email_stripe=twin_email_stripe,
        expected_conflicts=expected_conflicts,
    )


# 184 Stripe customers: 30 linked, 35 named, 15 by email, 100 only in Stripe, 2 claiming one customer, a copycat
# of a linked one, one sharing the twins' email; then 32 unlinked customers: 30 only in flexsync and the twins.
EXPECTED = counts(linked=35 + 15 + 1, imported=100, updated=4, pushed=4 + 30, unchanged=20 + 2, conflicts=5)
PROCESSED = 184 + 32


def test_dry_run_then_real_run_then_nothing_left_to_do(
    env: SyncTenant, sdk: stripe.StripeClient, module_db: DatabaseUnderTest, module_localstripe: LocalStripe
) -> None:
    mixed = build_mixed(env, sdk)
    before = all_customers(env.api)
    jobs_before = push_jobs(env)

    dry = reconcile_json(module_db, module_localstripe.base_url, env.connection_id, "--dry-run")
    assert (dry["status"], dry["dry_run"], dry["direction"]) == ("succeeded", True, "both")
    assert dry["counts"] == EXPECTED
    assert conflicts_of(dry) == mixed.expected_conflicts
    assert dry["progress"] == {"phase": "done", "cursor": None, "processed": PROCESSED}
    assert all_customers(env.api) == before
    assert push_jobs(env) == jobs_before
    assert len(stripe_customers(sdk)) == 184

    real = reconcile_json(module_db, module_localstripe.base_url, env.connection_id)
    assert (real["status"], real["dry_run"]) == ("succeeded", False)
    assert real["counts"] == EXPECTED
    assert conflicts_of(real) == mixed.expected_conflicts
    assert real["progress"]["processed"] == PROCESSED
    assert env.api.get(f"/v1/reconciliations/{real['id']}").json() == real

    wait_settled(env)
    customers = {c["id"]: c for c in all_customers(env.api)}
    assert len(customers) == len(before) + 100
    linked_to = {cid: c["metadata"].get("stripe_customer_id") for cid, c in customers.items()}
    # Linked by metadata.flexprice_customer_id and by email, taking Stripe's data; the first claimant wins.
    for cid, stripe_id in {**mixed.named, **mixed.by_email, mixed.claimed: mixed.first_claim}.items():
        assert linked_to[cid] == stripe_id
        assert customers[cid]["name"] == mixed.renamed_in_stripe.get(cid, customers[cid]["name"])
    assert {customers[cid]["name"] for cid in mixed.renamed_in_stripe} == set(mixed.renamed_in_stripe.values())
    # Imported: one customer per Stripe-only customer, external_id = the Stripe id.
    imported = {c["metadata"]["stripe_customer_id"]: c for c in customers.values() if c["created_by"] == "stripe"}
    assert set(imported) == set(mixed.stripe_only)
    for stripe_id, customer in imported.items():
        assert customer["external_id"] == stripe_id and customer["name"].startswith("Stripe Only ")
    # Stripe's newer data copied; flexsync's newer data pushed by the worker.
    for cid, name in mixed.stripe_newer.items():
        assert customers[cid]["name"] == name
    for cid, name in mixed.flexsync_newer.items():
        assert sdk.v1.customers.retrieve(mixed.stripe_of[cid]).name == name
    # Nothing is guessed: the contested and the twins stay as they were.
    for cid in mixed.twins:
        assert linked_to[cid] is None
    # Exactly one Stripe customer per pushed customer, created by the worker from the queued jobs.
    jobs = [job for job in push_jobs(env) if job not in jobs_before]
    assert Counter((job["kind"], job["status"]) for job in jobs) == {
        ("create", "succeeded"): 30,
        ("update", "succeeded"): 4,
    }
    assert {job["customer_id"] for job in jobs} == set(mixed.flexsync_only) | set(mixed.flexsync_newer)
    in_stripe = stripe_customers(sdk)
    assert len(in_stripe) == 184 + 30
    named_by = Counter(c["metadata"].get("flexprice_customer_id") for c in in_stripe)
    for cid in mixed.flexsync_only:
        assert named_by[cid] == 1
        assert linked_to[cid] is not None

    settled = all_customers(env.api)
    again = reconcile_json(module_db, module_localstripe.base_url, env.connection_id)
    assert again["id"] != real["id"]
    assert again["counts"] == counts(unchanged=PROCESSED - 5, conflicts=5)
    assert conflicts_of(again) == mixed.expected_conflicts
    assert all_customers(env.api) == settled
    assert len(push_jobs(env)) == len(jobs_before) + len(jobs)


def test_a_run_stopped_by_stripe_failures_resumes_from_its_cursor(
    env: SyncTenant, sdk: stripe.StripeClient, module_db: DatabaseUnderTest, standin: StandIn
) -> None:
    claimed = env.create(external_id="claimed", name="Claimed")["id"]
    (first,) = create_in_stripe(sdk, [{"name": "First", "metadata": {"flexprice_customer_id": claimed}}])
    stripe_only = create_in_stripe(sdk, [{"name": f"Only {i}"} for i in range(150)])
    (second,) = create_in_stripe(sdk, [{"name": "Second", "metadata": {"flexprice_customer_id": claimed}}])
    flexsync_only = [env.create(external_id=f"flex-{i}")["id"] for i in range(10)]
    # The first page passes; the second fails with an error Stripe says not to retry.
    standin.faults(
        {"action": "delay", **LIST, "seconds": 0, "count": 1},
        {"action": "status", **LIST, "status": 500, "headers": {"Stripe-Should-Retry": "false"}, "count": 1},
    )

    stopped = reconcile_cli(module_db, standin.base_url, env.connection_id, "--json")
    assert stopped.returncode == 1
    report = json.loads(stopped.stdout)
    assert report["status"] == "failed" and "500" in report["error"]
    page_one_ends_at = stripe_customers(sdk)[99]["id"]
    assert report["progress"] == {"phase": "stripe", "cursor": page_one_ends_at, "processed": 100}
    assert f"Reconciliation {report['id']} stopped" in stopped.stderr and "again to resume" in stopped.stderr

    resumed = reconcile_json(module_db, standin.base_url, env.connection_id)
    assert resumed["id"] == report["id"] and resumed["status"] == "succeeded"
    assert resumed["counts"] == counts(linked=1, imported=150, pushed=10, conflicts=1)
    assert resumed["progress"]["processed"] == 152 + 10
    assert conflicts_of(resumed) == {("already_linked", (second, first), (claimed,))}
    # Two lists before the failure, and the resumed run listed only the page after the cursor.
    assert standin.stats()["requests"]["GET /v1/customers"] == 3
    customers = all_customers(env.api)
    assert len(customers) == 1 + 150 + 10
    assert Counter(c["metadata"].get("stripe_customer_id") for c in customers if c["created_by"] == "stripe") == {
        stripe_id: 1 for stripe_id in stripe_only
    }
    wait_settled(env)
    assert {job["customer_id"] for job in push_jobs(env)} == set(flexsync_only)


def test_a_killed_run_is_resumed_by_the_next_command(
    database: DatabaseUnderTest, server: Server, sdk: stripe.StripeClient, standin: StandIn
) -> None:
    """Against the no-worker server's database: nobody but the command itself carries the run out."""
    tenant = new_tenant(database, server.base_url)
    connection_id = add_connection(database, tenant, SETTINGS)
    stripe_only = create_in_stripe(sdk, [{"name": f"Only {i}"} for i in range(130)])
    standin.faults({"action": "delay", **LIST, "seconds": 0, "count": 1}, {"action": "delay", **LIST, "seconds": 10})
    command = [sys.executable, "-m", "flexsync", "reconcile", "--connection", connection_id, "--json"]
    env = server_env(database, FLEXSYNC_STRIPE_API_BASE=standin.base_url, FLEXSYNC_JOB_LEASE_SECONDS="1")
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with tenant.client() as api:
        try:
            run = wait_for(lambda: one_run_with(api, processed=100), 60, "the first page to be written")
        finally:
            process.send_signal(signal.SIGKILL)
            process.communicate(timeout=10)
        assert run["status"] == "running" and run["progress"]["cursor"] == stripe_customers(sdk)[99]["id"]
        standin.reset()
        wait_for(lambda: lease_expired(database, run["job_id"]), 10, "the killed command's lease to run out")

        resumed = reconcile_json(database, standin.base_url, connection_id)
        assert resumed["id"] == run["id"]
        assert resumed["counts"] == counts(imported=130)
        imported = [c["metadata"]["stripe_customer_id"] for c in all_customers(api)]
        assert sorted(imported) == sorted(stripe_only)


def test_a_killed_run_is_taken_over_by_a_worker(
    env: SyncTenant, sdk: stripe.StripeClient, module_db: DatabaseUnderTest, standin: StandIn
) -> None:
    """The run's job outlives the command: once its lease runs out, the server's worker finishes the run."""
    stripe_only = create_in_stripe(sdk, [{"name": f"Only {i}"} for i in range(130)])
    standin.faults({"action": "delay", **LIST, "seconds": 0, "count": 1}, {"action": "delay", **LIST, "seconds": 10})
    command = [sys.executable, "-m", "flexsync", "reconcile", "--connection", env.connection_id]
    process = subprocess.Popen(
        command,
        env=server_env(module_db, FLEXSYNC_STRIPE_API_BASE=standin.base_url, FLEXSYNC_JOB_LEASE_SECONDS="1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        run = wait_for(lambda: one_run_with(env.api, processed=100), 60, "the first page to be written")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    done = wait_for(lambda: finished(env.api, run["id"]), 60, "the worker to finish the run")
    assert done["status"] == "succeeded" and done["counts"] == counts(imported=130)
    imported = [c["metadata"]["stripe_customer_id"] for c in all_customers(env.api)]
    assert sorted(imported) == sorted(stripe_only)


def test_rate_limited_pages_are_retried(
    env: SyncTenant, sdk: stripe.StripeClient, module_db: DatabaseUnderTest, standin: StandIn
) -> None:
    """Stripe's 429 (which localstripe never sends) on listing: the page is asked for again after a backoff."""
    create_in_stripe(sdk, [{"name": f"Only {i}"} for i in range(120)])
    standin.faults(
        {"action": "delay", **LIST, "seconds": 0, "count": 1},
        {"action": "status", **LIST, "status": 429, "error_type": "rate_limit_error", "count": 2},
    )
    report = reconcile_json(module_db, standin.base_url, env.connection_id)
    assert report["status"] == "succeeded" and report["counts"] == counts(imported=120)
    stats = standin.stats()
    assert stats["injected"] == 2 and stats["requests"]["GET /v1/customers"] == 2 + 2


def lease_expired(db: DatabaseUnderTest, job_id: str) -> bool:
    async def work(session: AsyncSession) -> bool:
        job = await session.get(SyncJob, job_id)
        return job is not None and job.locked_until is not None and job.locked_until < utcnow()

    return db.run(work)


def one_run_with(api: httpx.Client, processed: int) -> dict[str, Any] | None:
    runs = api.get("/v1/reconciliations").json()["items"]
    return runs[0] if runs and runs[0]["progress"]["processed"] >= processed else None


def test_directions(
    env: SyncTenant, sdk: stripe.StripeClient, module_db: DatabaseUnderTest, module_localstripe: LocalStripe
) -> None:
    named = env.create(external_id="named", name="Named")["id"]
    flexsync_only = [env.create(external_id=f"flex-{i}")["id"] for i in range(2)]
    stripe_only = create_in_stripe(sdk, [{"name": f"Only {i}"} for i in range(3)])
    (naming,) = create_in_stripe(sdk, [{"name": "Named in Stripe", "metadata": {"flexprice_customer_id": named}}])

    to_stripe = reconcile_json(module_db, module_localstripe.base_url, env.connection_id, "--direction", "to-stripe")
    # Linking is part of both directions: it is what keeps a push from duplicating a Stripe customer.
    assert to_stripe["counts"] == counts(linked=1, pushed=2, unchanged=3)
    customers = {c["id"]: c for c in all_customers(env.api)}
    assert len(customers) == 3 and customers[named]["metadata"]["stripe_customer_id"] == naming
    assert customers[named]["name"] == "Named"
    wait_settled(env)
    assert {job["customer_id"]: job["kind"] for job in push_jobs(env)} == {
        flexsync_only[0]: "create",
        flexsync_only[1]: "create",
        named: "update",
    }
    assert sdk.v1.customers.retrieve(naming).name == "Named"

    from_stripe = reconcile_json(
        module_db, module_localstripe.base_url, env.connection_id, "--direction", "from-stripe"
    )
    assert from_stripe["counts"] == counts(imported=3, unchanged=3)
    assert from_stripe["progress"]["processed"] == 6
    imported = {c["metadata"]["stripe_customer_id"] for c in all_customers(env.api) if c["created_by"] == "stripe"}
    assert imported == set(stripe_only)


def test_http_api_runs_in_the_background(
    env: SyncTenant, sdk: stripe.StripeClient, module_db: DatabaseUnderTest, recon_server: Server
) -> None:
    stripe_only = create_in_stripe(sdk, [{"name": f"Only {i}", "email": f"only{i}@example.com"} for i in range(5)])
    env.create(external_id="flex-0")
    api = env.api
    url = f"/v1/connections/{env.connection_id}/reconcile"

    dry = api.post(url, json={"dry_run": True, "direction": "from-stripe"})
    assert dry.status_code == 202, dry.text
    assert dry.json()["status"] == "pending" and dry.json()["dry_run"] is True
    done = wait_for(lambda: finished(api, dry.json()["id"]), 30, "the dry run to finish")
    assert (done["status"], done["direction"]) == ("succeeded", "from-stripe")
    assert done["counts"] == counts(imported=5)
    assert len(all_customers(api)) == 1

    started = api.post(url)
    assert started.status_code == 202, started.text
    body = started.json()
    assert body["id"] != dry.json()["id"] and (body["direction"], body["dry_run"]) == ("both", False)
    done = wait_for(lambda: finished(api, body["id"]), 30, "the run to finish")
    assert done["status"] == "succeeded" and done["error"] is None
    assert done["counts"] == counts(imported=5, pushed=1)
    assert done["progress"] == {"phase": "done", "cursor": None, "processed": 6}
    assert {c["metadata"].get("stripe_customer_id") for c in all_customers(api)} >= set(stripe_only)

    listed = api.get("/v1/reconciliations").json()
    assert listed["pagination"]["total"] == 2
    assert [run["id"] for run in listed["items"]] == [body["id"], dry.json()["id"]]
    assert api.get("/v1/reconciliations", params={"status": "failed"}).json()["items"] == []

    assert_error(api.post(url, json={"dry_run": True, "speed": "fast"}), 400, "validation_error")
    assert_error(api.post(url, json={"direction": "sideways"}), 400, "validation_error")
    assert_error(api.post(url, json={"dry_run": "yes"}), 400, "validation_error")
    assert_error(api.post("/v1/connections/conn_unknown/reconcile", json={}), 404, "not_found")
    assert_error(api.get("/v1/reconciliations/recon_unknown"), 404, "not_found")

    other = new_tenant(module_db, recon_server.base_url)
    with other.client() as stranger:
        assert_error(stranger.get(f"/v1/reconciliations/{body['id']}"), 404, "not_found")
        assert_error(stranger.post(url, json={}), 404, "not_found")
        assert stranger.get("/v1/reconciliations").json()["items"] == []


def finished(api: httpx.Client, run_id: str) -> dict[str, Any] | None:
    run: dict[str, Any] = api.get(f"/v1/reconciliations/{run_id}").json()
    return run if run["status"] in ("succeeded", "failed") else None


def test_one_run_at_a_time_per_connection(database: DatabaseUnderTest, tenant: TenantContext) -> None:
    """On the no-worker server a started run stays queued, so the second request meets it."""
    connection_id = add_connection(database, tenant, SETTINGS)
    url = f"/v1/connections/{connection_id}/reconcile"
    with tenant.client() as api:
        first = api.post(url, json={})
        assert first.status_code == 202, first.text
        assert first.json()["status"] == "pending"
        body = assert_error(api.post(url, json={"dry_run": True}), 409, "already_exists")
        assert body["details"]["reconciliation_id"] == first.json()["id"]
        assert_error(api.post(url, json={"restart": True}), 409, "already_exists")
        assert api.get("/v1/reconciliations").json()["pagination"]["total"] == 1


def test_a_value_in_stripe_that_does_not_fit_does_not_make_stripe_look_newer(
    env: SyncTenant, sdk: stripe.StripeClient, module_db: DatabaseUnderTest, module_localstripe: LocalStripe
) -> None:
    # Pushed to Stripe, then renamed in flexsync (this connection does not push updates); meanwhile someone
    # typed a 3-letter country into Stripe. Stripe otherwise still shows what flexsync pushed: flexsync is the
    # newer side, and its name must not be overwritten by the one Stripe kept from the push.
    customer = env.create(external_id="kept", name="Pushed Name", address_line1="1 Main St", address_country="US")
    assert env.api.post(f"/v1/customers/{customer['id']}/sync-to-stripe").status_code == 202
    stripe_id = env.wait_linked(customer["id"])
    wait_settled(env)
    assert env.api.put(f"/v1/customers/{customer['id']}", json={"name": "Renamed Here"}).status_code == 200
    sdk.v1.customers.update(stripe_id, {"address": {"line1": "1 Main St", "country": "USA"}})

    report = reconcile_json(module_db, module_localstripe.base_url, env.connection_id)

    assert report["counts"] == counts(pushed=1)
    assert env.api.get(f"/v1/customers/{customer['id']}").json()["name"] == "Renamed Here"
    wait_settled(env)
    pushed = sdk.v1.customers.retrieve(stripe_id)
    assert pushed.name == "Renamed Here" and pushed.address is not None and pushed.address.country == "US"
