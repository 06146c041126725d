"""customers: index emails as they are looked up, lower-cased

Every email lookup (the API's `email` filter, email matching of Stripe customers, the dashboard's search)
compares `lower(email)`, which the plain (environment_id, email) index cannot serve: each was a scan of the
environment's customers. The expression index replaces it.

For later migrations: SQLite cannot reflect an expression index, so an Alembic batch operation on `customers`
(which copies the table through reflection) would leave it out; recreate it after such a batch.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 07:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_customers_env_email", table_name="customers")
    op.create_index("ix_customers_env_email_lower", "customers", ["environment_id", sa.text("lower(email)")])


def downgrade() -> None:
    op.drop_index("ix_customers_env_email_lower", table_name="customers")
    op.create_index("ix_customers_env_email", "customers", ["environment_id", "email"])
