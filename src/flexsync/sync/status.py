"""A customer's sync status: its Stripe link and outbound jobs, as the API and the dashboard show it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.connections.repository import get_live_connection
from flexsync.jobs import repository as jobs
from flexsync.jobs.service import job_to_dict
from flexsync.models import Customer
from flexsync.sync import links
from flexsync.sync.outbound import LINKING_KINDS


async def sync_status(session: AsyncSession, customer: Customer) -> dict[str, Any]:
    """The customer's link and outbound sync state, for `GET /v1/customers/{id}/sync`."""
    return (await sync_statuses(session, [customer]))[customer.id]


async def sync_statuses(session: AsyncSession, customers: Sequence[Customer]) -> dict[str, dict[str, Any]]:
    """`sync_status` of many customers of one environment (a page of a list) in four queries, by customer id.

    `last_error` is the error of the customer's latest job outcome (a failure, or a retry under way) unless a
    later job has succeeded since; else the link's own last error.
    """
    if not customers:
        return {}
    environments = {(customer.tenant_id, customer.environment_id) for customer in customers}
    if len(environments) > 1:
        raise ValueError("sync_statuses takes the customers of one environment")
    ((tenant_id, environment_id),) = environments
    ids = [customer.id for customer in customers]
    connection = await get_live_connection(session, tenant_id, environment_id)
    linked = await links.by_customers(session, connection.id, ids) if connection is not None else {}
    unfinished = await jobs.unfinished_for_customers(session, ids)
    outcomes = await jobs.latest_outcomes(session, ids)
    statuses = {}
    for customer_id in ids:
        link, waiting, outcome = linked.get(customer_id), unfinished.get(customer_id, []), outcomes.get(customer_id)
        if link is not None:
            link_status = "linked" if link.status == "linked" else "deleted_in_stripe"
        elif any(job.kind in LINKING_KINDS for job in waiting):
            link_status = "pending"
        else:
            link_status = "not_linked"
        job_error = outcome.last_error if outcome is not None and outcome.status != "succeeded" else None
        statuses[customer_id] = {
            "customer_id": customer_id,
            "connection_id": connection.id if connection is not None else None,
            "stripe_customer_id": link.stripe_customer_id if link is not None else None,
            "link_status": link_status,
            "last_synced_at": link.last_synced_at if link is not None else None,
            "last_error": job_error or (link.last_error if link is not None else None),
            "pending_jobs": [job_to_dict(job) for job in waiting],
        }
    return statuses
