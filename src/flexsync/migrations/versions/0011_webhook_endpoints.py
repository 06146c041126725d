"""webhook_endpoints: the Stripe webhook endpoint flexsync manages for a connection

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 23:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "webhook_endpoints",
        sa.Column(
            "connection_id", sa.String(64), sa.ForeignKey("connections.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("stripe_endpoint_id", sa.String(64), nullable=True),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("status", sa.String(16), nullable=True),
        sa.Column("enabled_events", JSON, nullable=False),
        sa.Column("managed", sa.Boolean(), nullable=False),
        sa.Column("retiring_endpoint_ids", JSON, nullable=False),
        sa.Column("old_secrets_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("lease_holder", sa.String(64), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("webhook_endpoints")
