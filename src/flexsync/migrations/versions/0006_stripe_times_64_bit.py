"""Stripe event times in 64 bits on PostgreSQL

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 18:30:00

`webhook_events.stripe_created` and `customer_links.last_event_created` hold Stripe's `created` (Unix seconds).
As PostgreSQL `integer` they would overflow on 2038-01-19, and an event stamped later could not be stored at
all; `bigint` holds any time. PostgreSQL rewrites both tables to change the type, holding them locked
meanwhile (webhook deliveries wait, or are answered 500 and redelivered by Stripe). SQLite's INTEGER holds
64 bits already: nothing changes there.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (("webhook_events", "stripe_created"), ("customer_links", "last_event_created"))


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table, column in COLUMNS:
            op.alter_column(table, column, type_=sa.BigInteger(), existing_type=sa.Integer(), existing_nullable=False)


def downgrade() -> None:
    # Fails, changing nothing, if a stored time is past 2038-01-19.
    if op.get_bind().dialect.name == "postgresql":
        for table, column in COLUMNS:
            op.alter_column(table, column, type_=sa.Integer(), existing_type=sa.BigInteger(), existing_nullable=False)
