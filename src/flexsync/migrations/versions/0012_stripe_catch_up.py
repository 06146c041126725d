"""Catch-up from Stripe's Events API: each stored event's source, and each connection's catch-up state

`webhook_events.source` says how an event reached flexsync: `webhook` (every event stored before this
migration) or `catch_up`. On PostgreSQL adding a column with a constant default changes no row (no rewrite,
a brief lock). `stripe_catch_ups` holds each connection's catch-up cursor, its run in progress and its lease;
a connection without a row starts catching up from its creation.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 23:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNIX_SECONDS = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("source", sa.String(length=16), server_default=sa.text("'webhook'"), nullable=False)
        )
    op.create_table(
        "stripe_catch_ups",
        sa.Column("connection_id", sa.String(length=64), nullable=False),
        sa.Column("cursor", UNIX_SECONDS, nullable=False),
        sa.Column("run_since", UNIX_SECONDS, nullable=True),
        sa.Column("run_until", UNIX_SECONDS, nullable=True),
        sa.Column("run_position", JSON, nullable=True),
        sa.Column("run_counts", JSON, nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("requested_since", UNIX_SECONDS, nullable=True),
        sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("gap_since", UNIX_SECONDS, nullable=True),
        sa.Column("gap_detected_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("leased_by", sa.String(length=128), nullable=True),
        sa.Column("leased_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["connection_id"], ["connections.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("connection_id"),
    )


def downgrade() -> None:
    op.drop_table("stripe_catch_ups")
    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.drop_column("source")
