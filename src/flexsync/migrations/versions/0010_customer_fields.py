"""customers: FlexPrice's billing fields; customer_links: the integration mapping's metadata and author

FlexPrice's customer has grown a timezone, a contact number, contact persons, a billing currency, a tax
treatment, tax rate overrides and an onboarding workflow name; its SDKs send and read them. Existing customers
get FlexPrice's defaults (UTC, no contact persons, no overrides), as do rows written without them.
A link made through `POST /v1/integrations/link` keeps the mapping's metadata and the API key that made it.
FlexPrice's search by metadata pairs and sorted by name gets an index each (the metadata one on PostgreSQL
only, a GIN index for `@>`); building them holds off customer writes while they are built (a few seconds per
million customers).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 23:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def customer_columns() -> tuple[sa.Column[object], ...]:
    return (
        sa.Column("timezone", sa.String(length=64), server_default="UTC", nullable=False),
        sa.Column("contact", sa.String(length=20), nullable=True),
        sa.Column("contact_persons", JSON, server_default=sa.text("'[]'"), nullable=False),
        sa.Column("billing_currency", sa.String(length=3), nullable=True),
        sa.Column("tax_treatment", sa.String(length=16), nullable=True),
        sa.Column("tax_rate_overrides", JSON, server_default=sa.text("'[]'"), nullable=False),
        sa.Column("onboarding_workflow_name", sa.String(length=255), nullable=True),
    )


def link_columns() -> tuple[sa.Column[object], ...]:
    return (
        sa.Column("metadata", JSON, server_default=sa.text("'{}'"), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=True),
    )


def upgrade() -> None:
    # Plain ALTER TABLE on both backends (SQLite 3.35 and later drop columns too): a batch rebuild of the
    # table would lose the index on lower(email), which SQLite's reflection cannot read.
    for column in customer_columns():
        op.add_column("customers", column)
    for column in link_columns():
        op.add_column("customer_links", column)
    op.create_index("ix_customers_env_name", "customers", ["environment_id", "name"])
    if op.get_context().dialect.name == "postgresql":
        op.create_index(
            "ix_customers_metadata",
            "customers",
            ["metadata"],
            postgresql_using="gin",
            postgresql_ops={"metadata": "jsonb_path_ops"},
        )


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.drop_index("ix_customers_metadata", table_name="customers")
    op.drop_index("ix_customers_env_name", table_name="customers")
    for column in reversed(link_columns()):
        op.drop_column("customer_links", column.name)
    for column in reversed(customer_columns()):
        op.drop_column("customers", column.name)
