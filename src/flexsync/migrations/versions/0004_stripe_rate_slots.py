"""stripe_rate_slots: one Stripe request schedule per connection, shared by every process

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 07:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "stripe_rate_slots",
        sa.Column("connection_id", sa.String(length=64), nullable=False),
        sa.Column("next_slot_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["connection_id"], ["connections.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("connection_id"),
    )


def downgrade() -> None:
    op.drop_table("stripe_rate_slots")
