"""webhook_events.payload compressed with lz4 on PostgreSQL

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 16:00:00

A stored Stripe event near 2 kB is compressed when its row is written; lz4 does that for a fraction of the CPU
of PostgreSQL's default (pglz). Rows already stored keep their compression until rewritten. Only where the
server was built with lz4 (PostgreSQL 14 and later, the default on most distributions' builds); elsewhere, and
on SQLite, nothing changes.
"""

from collections.abc import Sequence

from alembic import op
from sqlalchemy import text

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _lz4_available() -> bool:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return False
    found = bind.execute(
        text("SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression' AND 'lz4' = ANY(enumvals)")
    )
    return found.first() is not None


def upgrade() -> None:
    if _lz4_available():
        op.execute("ALTER TABLE webhook_events ALTER COLUMN payload SET COMPRESSION lz4")


def downgrade() -> None:
    if _lz4_available():
        op.execute("ALTER TABLE webhook_events ALTER COLUMN payload SET COMPRESSION DEFAULT")
