"""webhook_events: find a customer's events by its id

The dashboard's customer page shows the customer's latest webhook events. Without an index on `customer_id`
PostgreSQL read every stored event for it (2 million events: about 0.7 s per page view, growing with the
table); with one, the page reads the customer's few. Only events that reached a customer are indexed.
On PostgreSQL building the index holds off new events for the time it takes (about a second per million
stored events on a small machine): webhook deliveries wait meanwhile.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28 03:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HAS_CUSTOMER = sa.text("customer_id IS NOT NULL")


def upgrade() -> None:
    op.create_index(
        "ix_webhook_events_customer",
        "webhook_events",
        ["customer_id", "received_at"],
        postgresql_where=HAS_CUSTOMER,
        sqlite_where=HAS_CUSTOMER,
    )


def downgrade() -> None:
    op.drop_index(
        "ix_webhook_events_customer",
        table_name="webhook_events",
        postgresql_where=HAS_CUSTOMER,
        sqlite_where=HAS_CUSTOMER,
    )
