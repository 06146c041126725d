"""webhook_events: index only the events still due for an attempt

The retry sweep looks for `queued`/`failed` events by `next_attempt_at`. The (status, next_attempt_at) index
held an entry for every event ever received, nearly all of them `applied` or `ignored` for good; the partial
index holds the few that are pending, and a webhook's insert writes one index entry fewer.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 07:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING = sa.text("status IN ('queued', 'failed')")


def upgrade() -> None:
    op.drop_index("ix_webhook_events_status_next", table_name="webhook_events")
    op.create_index(
        "ix_webhook_events_due",
        "webhook_events",
        ["next_attempt_at"],
        postgresql_where=PENDING,
        sqlite_where=PENDING,
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_events_due", table_name="webhook_events", postgresql_where=PENDING, sqlite_where=PENDING)
    op.create_index("ix_webhook_events_status_next", "webhook_events", ["status", "next_attempt_at"])
