"""Linking a customer to a Stripe customer when another linker got there between the check and the insert, on
SQLite and PostgreSQL.

`links.link` is handed an empty `held` (what its caller's look-up found before someone else linked), so its
insert meets the other linker's row: it must answer as if it had looked again, and leave the transaction
usable (on PostgreSQL a failed INSERT would abort it).
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.models import CustomerLink
from flexsync.sync import links
from tests.support import DatabaseUnderTest, customer_row, new_tenant
from tests.webhook_support import add_stripe_connection


def test_a_link_made_meanwhile_is_reported_not_duplicated(fresh_db: DatabaseUnderTest) -> None:
    tenant = new_tenant(fresh_db, base_url="")
    connection_id = add_stripe_connection(fresh_db, tenant)

    async def work(session: AsyncSession) -> dict[str, Any]:
        ada, grace = customer_row(tenant, "Ada"), customer_row(tenant, "Grace")
        session.add_all([ada, grace])
        await session.flush()
        first = await links.link(session, connection_id, ada, "cus_first")

        # The very link: returned as it is.
        again = await links.link(session, connection_id, ada, "cus_first", held=[])
        # Either side taken by someone else: a conflict that names the link that holds it.
        with pytest.raises(links.LinkConflict) as stripe_side:
            await links.link(session, connection_id, grace, "cus_first", held=[])
        with pytest.raises(links.LinkConflict) as customer_side:
            await links.link(session, connection_id, ada, "cus_other", held=[])
        # A new link carries the caller's columns from its insert.
        snapshot = {"name": "Grace"}
        made = await links.link(
            session, connection_id, grace, "cus_grace", held=[], values={"pushed_snapshot": snapshot}
        )
        rows = await session.scalar(select(func.count()).select_from(CustomerLink))
        return {
            "same": again is first,
            "conflicts": (stripe_side.value.existing.customer_id, customer_side.value.existing.stripe_customer_id),
            "ada": (first.id, ada.id),
            "made": (made.customer_id == grace.id, made.stripe_customer_id, made.pushed_snapshot, made.status),
            "mirrored": (ada.metadata_.get("stripe_customer_id"), grace.metadata_.get("stripe_customer_id")),
            "rows": rows,
        }

    found = fresh_db.run(work)
    assert found["same"]
    assert found["conflicts"] == (found["ada"][1], "cus_first")
    assert found["made"] == (True, "cus_grace", {"name": "Grace"}, "linked")
    assert found["mirrored"] == ("cus_first", "cus_grace")
    assert found["rows"] == 2
