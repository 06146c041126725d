"""flexsync -> Stripe, end to end: a real `flexsync serve` with its embedded worker, pushing to localstripe
over HTTP, checked through the API and with the official Stripe SDK, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import stripe

from tests.support import (
    DatabaseUnderTest,
    LocalStripe,
    Server,
    assert_error,
    new_tenant,
    start_server,
    wait_for,
)
from tests.sync_support import SyncTenant, stripe_customers_for, stripe_sdk, sync_tenant

ADDRESS = {
    "address_line1": "12 Analytical Row",
    "address_line2": "Floor 2",
    "address_city": "London",
    "address_state": "Greater London",
    "address_postal_code": "NW1 6XE",
    "address_country": "GB",
}


@pytest.fixture(scope="module")
def sync_server(
    module_db: DatabaseUnderTest, module_localstripe: LocalStripe, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    running = start_server(
        module_db, tmp_path_factory.mktemp("outbound-logs"), FLEXSYNC_STRIPE_API_BASE=module_localstripe.base_url
    )
    yield running
    running.stop()


@pytest.fixture
def stripe_client(module_localstripe: LocalStripe) -> stripe.StripeClient:
    return stripe_sdk(module_localstripe.base_url)


@pytest.fixture
def env(module_db: DatabaseUnderTest, sync_server: Server) -> Iterator[SyncTenant]:
    with sync_tenant(module_db, sync_server.base_url) as tenant:
        yield tenant


def configured(module_db: DatabaseUnderTest, sync_server: Server, **settings: Any) -> Any:
    return sync_tenant(module_db, sync_server.base_url, settings)


def test_new_customer_is_created_in_stripe_with_mapped_fields_and_linked(
    env: SyncTenant, stripe_client: stripe.StripeClient
) -> None:
    customer = env.create(external_id="crm-42", email="ada@example.com", **ADDRESS, metadata={"plan": "pro"})
    stripe_id = env.wait_linked(customer["id"])

    remote = stripe_client.v1.customers.retrieve(stripe_id)
    assert (remote.name, remote.email) == ("Ada Lovelace", "ada@example.com")
    assert remote.address is not None
    assert remote.address.to_dict() == {
        "line1": "12 Analytical Row",
        "line2": "Floor 2",
        "city": "London",
        "state": "Greater London",
        "postal_code": "NW1 6XE",
        "country": "GB",
    }
    assert remote.metadata.to_dict() == {
        "flexprice_customer_id": customer["id"],
        "flexprice_environment": env.tenant.environment_id,
        "external_id": "crm-42",
    }
    assert env.api.get(f"/v1/customers/{customer['id']}").json()["metadata"] == {
        "plan": "pro",
        "stripe_customer_id": stripe_id,
    }
    status = env.wait_settled(customer["id"])
    assert status["stripe_customer_id"] == stripe_id
    assert status["link_status"] == "linked"
    assert status["last_synced_at"] is not None and status["last_error"] is None
    (job,) = env.jobs(customer_id=customer["id"])
    assert (job["kind"], job["status"], job["attempts"]) == ("create", "succeeded", 1)
    assert job["result"] == {"action": "created", "stripe_customer_id": stripe_id}
    assert len(stripe_customers_for(stripe_client, customer["id"])) == 1


def test_changes_to_synced_fields_are_pushed(env: SyncTenant, stripe_client: stripe.StripeClient) -> None:
    customer = env.create(email="old@example.com", **ADDRESS)
    stripe_id = env.wait_linked(customer["id"])
    env.wait_settled(customer["id"])

    changed = {"name": "Ada King", "email": "ada.king@example.com", "address_city": "Oxford", "external_id": "crm-7"}
    assert env.api.put(f"/v1/customers/{customer['id']}", json=changed).status_code == 200
    env.wait_settled(customer["id"])
    remote = stripe_client.v1.customers.retrieve(stripe_id)
    assert (remote.name, remote.email, remote.address["city"]) == ("Ada King", "ada.king@example.com", "Oxford")
    assert remote.metadata["external_id"] == "crm-7"

    # Client metadata is not mirrored in Stripe, so changing it queues nothing.
    before = len(env.jobs(customer_id=customer["id"]))
    assert env.api.put(f"/v1/customers/{customer['id']}", json={"metadata": {"tier": "gold"}}).status_code == 200
    assert len(env.jobs(customer_id=customer["id"])) == before
    kinds = [job["kind"] for job in env.jobs(customer_id=customer["id"], status="succeeded")]
    assert sorted(kinds) == ["create", "update"]
    assert len(stripe_customers_for(stripe_client, customer["id"])) == 1


def test_no_connection_means_no_jobs(module_db: DatabaseUnderTest, sync_server: Server) -> None:
    tenant = new_tenant(module_db, sync_server.base_url)
    with tenant.client() as api:
        customer = api.post("/v1/customers", json={"external_id": "x", "name": "Solo"}).json()
        assert api.put(f"/v1/customers/{customer['id']}", json={"name": "Solo 2"}).status_code == 200
        assert api.get("/v1/sync-jobs").json()["items"] == []
        status = api.get(f"/v1/customers/{customer['id']}/sync").json()
        assert status["connection_id"] is None and status["link_status"] == "not_linked"
        assert_error(api.post(f"/v1/customers/{customer['id']}/sync-to-stripe"), 400, "validation_error")


def test_outbound_disabled_waits_for_sync_to_stripe_which_never_duplicates(
    module_db: DatabaseUnderTest, sync_server: Server, stripe_client: stripe.StripeClient
) -> None:
    with configured(module_db, sync_server, outbound_enabled=False) as env:
        customer = env.create(email="manual@example.com")
        assert env.jobs() == []
        assert env.sync(customer["id"])["link_status"] == "not_linked"

        response = env.api.post(f"/v1/customers/{customer['id']}/sync-to-stripe")
        assert response.status_code == 202, response.text
        body = response.json()
        assert set(body) == {"job_id", "status"} and body["status"] in ("pending", "running", "succeeded")
        stripe_id = env.wait_linked(customer["id"])
        env.wait_settled(customer["id"])

        for _ in range(3):
            assert env.api.post(f"/v1/customers/{customer['id']}/sync-to-stripe").status_code == 202
            env.wait_settled(customer["id"])
        assert [c.id for c in stripe_customers_for(stripe_client, customer["id"])] == [stripe_id]
        kinds = sorted(job["kind"] for job in env.jobs(customer_id=customer["id"]))
        assert kinds == ["create", "update", "update", "update"]

        # With outbound off but push_updates on, changes to a linked customer are still pushed.
        assert env.api.put(f"/v1/customers/{customer['id']}", json={"name": "Renamed"}).status_code == 200
        wait_for(lambda: stripe_client.v1.customers.retrieve(stripe_id).name == "Renamed", what="the rename")


def test_sync_to_stripe_pushes_changes_when_automatic_updates_are_off(
    module_db: DatabaseUnderTest, sync_server: Server, stripe_client: stripe.StripeClient
) -> None:
    with configured(module_db, sync_server, push_updates=False) as env:
        customer = env.create()
        stripe_id = env.wait_linked(customer["id"])
        env.wait_settled(customer["id"])
        assert env.api.put(f"/v1/customers/{customer['id']}", json={"name": "Quiet change"}).status_code == 200
        assert [job["kind"] for job in env.jobs(customer_id=customer["id"])] == ["create"]
        assert stripe_client.v1.customers.retrieve(stripe_id).name == "Ada Lovelace"

        job_id = env.api.post(f"/v1/customers/{customer['id']}/sync-to-stripe").json()["job_id"]
        env.wait_settled(customer["id"])
        assert stripe_client.v1.customers.retrieve(stripe_id).name == "Quiet change"
        job = env.api.get(f"/v1/sync-jobs/{job_id}").json()
        assert (job["kind"], job["status"], job["result"]["action"]) == ("update", "succeeded", "updated")


@pytest.mark.parametrize("policy", ["ignore", "delete_in_stripe"])
def test_archive_follows_on_customer_archive(
    module_db: DatabaseUnderTest, sync_server: Server, stripe_client: stripe.StripeClient, policy: str
) -> None:
    with configured(module_db, sync_server, on_customer_archive=policy) as env:
        customer = env.create()
        stripe_id = env.wait_linked(customer["id"])
        env.wait_settled(customer["id"])
        assert env.api.delete(f"/v1/customers/{customer['id']}").status_code == 204
        status = env.wait_settled(customer["id"])
        kinds = [job["kind"] for job in env.jobs(customer_id=customer["id"])]
        if policy == "ignore":
            assert kinds == ["create"]
            assert not getattr(stripe_client.v1.customers.retrieve(stripe_id), "deleted", False)
            assert status["link_status"] == "linked"
        else:
            assert sorted(kinds) == ["create", "delete"]
            with pytest.raises(stripe.InvalidRequestError):
                stripe_client.v1.customers.retrieve(stripe_id)
            assert status["link_status"] == "not_linked" and status["stripe_customer_id"] is None
            archived = env.api.get(f"/v1/customers/{customer['id']}").json()
            assert archived["status"] == "archived" and "stripe_customer_id" not in archived["metadata"]


def test_integration_entity_mapping_links_an_existing_stripe_customer(
    env: SyncTenant, stripe_client: stripe.StripeClient
) -> None:
    existing = stripe_client.v1.customers.create({"name": "Made in Stripe", "metadata": {"origin": "dashboard"}})
    customer = env.create(
        name="Made in flexsync", integration_entity_mapping=[{"provider": "stripe", "id": existing.id}]
    )
    assert env.wait_linked(customer["id"]) == existing.id
    status = env.wait_settled(customer["id"])
    assert status["link_status"] == "linked" and status["last_error"] is None

    remote = stripe_client.v1.customers.retrieve(existing.id)
    assert remote.metadata["flexprice_customer_id"] == customer["id"]
    assert remote.metadata["origin"] == "dashboard"
    assert remote.name == "Made in Stripe"
    assert [c.id for c in stripe_customers_for(stripe_client, customer["id"])] == [existing.id]
    (job,) = env.jobs(customer_id=customer["id"])
    assert (job["kind"], job["status"]) == ("link", "succeeded")

    # The Stripe customer is taken: a second mapping to it is refused, and nothing is created.
    response = env.api.post(
        "/v1/customers",
        json={
            "external_id": "other",
            "name": "B",
            "integration_entity_mapping": [{"provider": "stripe", "id": existing.id}],
        },
    )
    assert_error(response, 409, "already_exists")
    assert env.api.get("/v1/customers", params={"external_id": "other"}).json()["items"] == []


def test_integration_entity_mapping_to_a_missing_stripe_customer_fails_the_job(env: SyncTenant) -> None:
    customer = env.create(integration_entity_mapping=[{"provider": "stripe", "id": "cus_doesnotexist"}])
    status = env.wait_settled(customer["id"])
    assert status["link_status"] == "not_linked" and status["stripe_customer_id"] is None
    assert "cus_doesnotexist does not exist" in status["last_error"]
    (job,) = env.jobs(status="failed", customer_id=customer["id"])
    assert job["kind"] == "link" and "cus_doesnotexist does not exist" in job["last_error"]
    assert job["attempts"] == 1 and job["finished_at"] is not None


def test_integration_entity_mapping_needs_a_connection(module_db: DatabaseUnderTest, sync_server: Server) -> None:
    tenant = new_tenant(module_db, sync_server.base_url)
    with tenant.client() as api:
        body = {"external_id": "m", "name": "M", "integration_entity_mapping": [{"provider": "stripe", "id": "cus_1"}]}
        error = assert_error(api.post("/v1/customers", json=body), 400, "validation_error")
        assert "integration_entity_mapping" in error["details"]["fields"]
        # The customer and its job commit together or not at all.
        assert api.get("/v1/customers", params={"status": "all"}).json()["pagination"]["total"] == 0


def test_a_rejected_customer_leaves_no_job(env: SyncTenant) -> None:
    env.create(external_id="taken")
    env.wait_settled(env.jobs()[0]["customer_id"])
    assert_error(env.api.post("/v1/customers", json={"external_id": "taken", "name": "Dup"}), 409, "already_exists")
    assert len(env.jobs()) == 1


def test_sync_endpoints_answer_errors_in_the_contract_shape(env: SyncTenant, sync_server: Server) -> None:
    assert_error(env.api.post("/v1/customers/cust_missing/sync-to-stripe"), 404, "not_found")
    assert_error(env.api.get("/v1/customers/cust_missing/sync"), 404, "not_found")
    assert_error(env.api.get("/v1/sync-jobs", params={"status": "bogus"}), 400, "validation_error")
    assert_error(env.api.get("/v1/sync-jobs/job_missing"), 404, "not_found")
    assert_error(env.api.post("/v1/sync-jobs/job_missing/retry"), 404, "not_found")
    customer = env.create()
    env.wait_settled(customer["id"])
    (job,) = env.jobs()
    assert_error(env.api.post(f"/v1/sync-jobs/{job['id']}/retry"), 400, "validation_error")
    assert env.api.delete(f"/v1/customers/{customer['id']}").status_code == 204
    assert_error(env.api.post(f"/v1/customers/{customer['id']}/sync-to-stripe"), 400, "validation_error")
    with httpx.Client(base_url=sync_server.base_url) as anonymous:
        assert_error(anonymous.get("/v1/sync-jobs"), 401, "unauthorized")


def test_another_tenants_jobs_are_invisible(env: SyncTenant, module_db: DatabaseUnderTest, sync_server: Server) -> None:
    customer = env.create()
    env.wait_settled(customer["id"])
    (job,) = env.jobs()
    with configured(module_db, sync_server) as other:
        assert other.jobs() == []
        assert_error(other.api.get(f"/v1/sync-jobs/{job['id']}"), 404, "not_found")
        assert_error(other.api.post(f"/v1/customers/{customer['id']}/sync-to-stripe"), 404, "not_found")


def test_list_shape_and_status_filter(env: SyncTenant) -> None:
    first, second = env.create(), env.create()
    env.wait_settled(first["id"])
    env.wait_settled(second["id"])
    body = env.api.get("/v1/sync-jobs", params={"limit": 1}).json()
    assert body["pagination"] == {"total": 2, "limit": 1, "offset": 0}
    (newest,) = body["items"]
    assert newest["customer_id"] == second["id"]
    assert set(newest) >= {
        "id",
        "kind",
        "status",
        "attempts",
        "customer_id",
        "run_at",
        "last_error",
        "created_at",
        "finished_at",
    }
    assert len(env.jobs(status="succeeded")) == 2 and env.jobs(status="failed") == []


def test_an_update_with_integration_entity_mapping_links_an_unlinked_customer(
    module_db: DatabaseUnderTest, sync_server: Server, stripe_client: stripe.StripeClient
) -> None:
    with configured(module_db, sync_server, outbound_enabled=False) as env:
        existing = stripe_client.v1.customers.create({"name": "Adopted later"})
        customer = env.create()
        mapping = {"integration_entity_mapping": [{"provider": "stripe", "id": existing.id}]}
        assert env.api.put(f"/v1/customers/{customer['id']}", json=mapping).status_code == 200
        assert env.wait_linked(customer["id"]) == existing.id
        # Mapping it again to the same Stripe customer changes nothing; to another one is refused.
        assert env.api.put(f"/v1/customers/{customer['id']}", json=mapping).status_code == 200
        other = {"integration_entity_mapping": [{"provider": "stripe", "id": "cus_other"}]}
        assert_error(env.api.put(f"/v1/customers/{customer['id']}", json=other), 400, "validation_error")
        assert [job["kind"] for job in env.jobs(customer_id=customer["id"])] == ["link"]


def test_metrics_count_jobs_and_stripe_requests(env: SyncTenant, sync_server: Server) -> None:
    customer = env.create()
    env.wait_settled(customer["id"])
    metrics = httpx.get(f"{sync_server.base_url}/metrics").text
    assert 'flexsync_sync_jobs_total{kind="create",outcome="succeeded"}' in metrics
    assert 'flexsync_stripe_requests_total{operation="customers.create",status="ok"}' in metrics
    assert 'flexsync_stripe_request_seconds_count{operation="customers.create"}' in metrics
