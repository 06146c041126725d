"""All ORM models in one place: the schema a reader should see first. Migrations create these tables."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


# A Stripe `created` (Unix seconds): 64 bits, so that times past January 2038 fit (migration 0006). SQLite's
# INTEGER holds 64 bits already.
UnixSeconds = BigInteger().with_variant(Integer(), "sqlite")
# The largest integer both databases hold (signed 64 bits): in a BigInteger column, or as an OFFSET.
MAX_INT64 = 2**63 - 1


def max_length(column: Any) -> int:
    """How many characters a String column (`Model.attribute`) holds: input checks read it here, so they
    follow the schema."""
    length: int = column.type.length
    return length


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        # A datetime without an offset is taken as UTC (never as the server's local time).
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = JSON().with_variant(JSONB(), "postgresql")
# A JSON column whose None is SQL NULL (JSONType stores None as JSON `null`), for `IS NULL` to find it.
JSONOrNull = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONType, list[Any]: JSONType}


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Environment(Base):
    __tablename__ = "environments"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    environment_id: Mapped[str] = mapped_column(ForeignKey("environments.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    display_prefix: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class DashboardSession(Base):
    """A signed-in dashboard session (tenancy/dashboard_sessions.py). Its id is the SHA-256 of the random id the
    browser's cookie holds: a copy of this table opens no session."""

    __tablename__ = "dashboard_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    client: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column()
    last_seen_at: Mapped[datetime] = mapped_column()
    # created_at + 12 hours: the session ends then, however active.
    expires_at: Mapped[datetime] = mapped_column()


class Customer(Base):
    __tablename__ = "customers"
    __table_args__ = (
        # A published external_id is unique per environment; archived customers free theirs.
        Index(
            "uq_customers_env_external_id_published",
            "environment_id",
            "external_id",
            unique=True,
            postgresql_where=text("status = 'published'"),
            sqlite_where=text("status = 'published'"),
        ),
        Index("ix_customers_env_created", "environment_id", "created_at"),
        # Emails are looked up lower-cased (API filter, email matching, dashboard search).
        Index("ix_customers_env_email_lower", "environment_id", text("lower(email)")),
        # FlexPrice's search sorted by name, its commonest sort, reads the first page instead of sorting them all.
        Index("ix_customers_env_name", "environment_id", "name"),
        # Metadata containment (`@>`, the search's metadata pairs) on PostgreSQL; SQLite has no index for it.
        Index(
            "ix_customers_metadata",
            "metadata",
            postgresql_using="gin",
            postgresql_ops={"metadata": "jsonb_path_ops"},
        ).ddl_if(dialect="postgresql"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    environment_id: Mapped[str] = mapped_column(ForeignKey("environments.id", ondelete="CASCADE"))
    external_id: Mapped[str] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(255))
    email: Mapped[str | None] = mapped_column(String(255))
    address_line1: Mapped[str | None] = mapped_column(String(255))
    address_line2: Mapped[str | None] = mapped_column(String(255))
    address_city: Mapped[str | None] = mapped_column(String(100))
    address_state: Mapped[str | None] = mapped_column(String(100))
    address_postal_code: Mapped[str | None] = mapped_column(String(20))
    address_country: Mapped[str | None] = mapped_column(String(2))
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    status: Mapped[str] = mapped_column(String(16), default="published")
    parent_customer_id: Mapped[str | None] = mapped_column(String(64), default=None)
    # FlexPrice's billing fields (migration 0010). Kept and returned; none of them is mirrored in Stripe. The
    # server defaults fill them in rows written without them (customers created from Stripe, in bulk).
    timezone: Mapped[str] = mapped_column(String(64), default="UTC", server_default="UTC")
    contact: Mapped[str | None] = mapped_column(String(20), default=None)
    contact_persons: Mapped[list[Any]] = mapped_column(default=list, server_default=text("'[]'"))
    billing_currency: Mapped[str | None] = mapped_column(String(3), default=None)
    tax_treatment: Mapped[str | None] = mapped_column(String(16), default=None)
    tax_rate_overrides: Mapped[list[Any]] = mapped_column(default=list, server_default=text("'[]'"))
    onboarding_workflow_name: Mapped[str | None] = mapped_column(String(255), default=None)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(64))
    updated_by: Mapped[str] = mapped_column(String(64))


class StripeConnection(Base):
    __tablename__ = "connections"
    __table_args__ = (
        # At most one live (not deleted) Stripe connection per environment.
        Index(
            "uq_connections_env_provider_live",
            "environment_id",
            "provider",
            unique=True,
            postgresql_where=text("deleted_at IS NULL"),
            sqlite_where=text("deleted_at IS NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    environment_id: Mapped[str] = mapped_column(ForeignKey("environments.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255))
    provider: Mapped[str] = mapped_column(String(32), default="stripe")
    status: Mapped[str] = mapped_column(String(16), default="active")
    mode: Mapped[str] = mapped_column(String(8))
    secret_key_encrypted: Mapped[str] = mapped_column(Text)
    secret_key_last4: Mapped[str] = mapped_column(String(4))
    publishable_key: Mapped[str] = mapped_column(String(255))
    webhook_secrets_encrypted: Mapped[list[Any]] = mapped_column(default=list)
    stripe_account_id: Mapped[str | None] = mapped_column(String(64), default=None)
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)


class WebhookEndpoint(Base):
    """The Stripe webhook endpoint flexsync manages for a connection (connections/managed_endpoint.py): what Stripe
    last said of it, the endpoints still to delete after a move, and the lease that lets one process at a time
    change it. Its signing secret is the connection's newest webhook secret."""

    __tablename__ = "webhook_endpoints"

    connection_id: Mapped[str] = mapped_column(ForeignKey("connections.id", ondelete="CASCADE"), primary_key=True)
    stripe_endpoint_id: Mapped[str | None] = mapped_column(String(64), default=None)
    url: Mapped[str | None] = mapped_column(Text, default=None)
    # Stripe's `enabled` or `disabled`, or `missing` when Stripe no longer knows the endpoint.
    status: Mapped[str | None] = mapped_column(String(16), default=None)
    enabled_events: Mapped[list[Any]] = mapped_column(default=list)
    managed: Mapped[bool] = mapped_column(Boolean, default=True)
    # Replaced endpoints (an older URL's, or one made by hand) to delete in Stripe; the status check retries.
    retiring_endpoint_ids: Mapped[list[Any]] = mapped_column(default=list)
    # After this time only the newest webhook secret is kept: the replaced endpoints' deliveries have ended.
    old_secrets_until: Mapped[datetime | None] = mapped_column(default=None)
    # Counts the endpoints created, so that each creation has an Idempotency-Key of its own.
    generation: Mapped[int] = mapped_column(Integer, default=0)
    lease_holder: Mapped[str | None] = mapped_column(String(64), default=None)
    lease_until: Mapped[datetime | None] = mapped_column(default=None)
    checked_at: Mapped[datetime | None] = mapped_column(default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class CustomerLink(Base):
    """One Stripe customer <-> one flexsync customer, per connection, enforced on both sides."""

    __tablename__ = "customer_links"
    __table_args__ = (
        UniqueConstraint("connection_id", "customer_id", name="uq_customer_links_connection_customer"),
        UniqueConstraint("connection_id", "stripe_customer_id", name="uq_customer_links_connection_stripe"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    connection_id: Mapped[str] = mapped_column(ForeignKey("connections.id", ondelete="CASCADE"))
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"), index=True)
    stripe_customer_id: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default="linked")
    # Ordering guard for inbound events: the Stripe `created` second and event id last applied.
    last_event_created: Mapped[int] = mapped_column(UnixSeconds, default=0)
    last_event_id: Mapped[str | None] = mapped_column(String(255), default=None)
    # The mapped fields as flexsync last wrote them to Stripe: an echoed webhook equal to this changes nothing.
    pushed_snapshot: Mapped[dict[str, Any]] = mapped_column(default=dict)
    last_synced_at: Mapped[datetime | None] = mapped_column(default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    # The FlexPrice integration mapping's own data (`POST /v1/integrations/link`): its metadata, and the API
    # key that linked. Links the sync makes have neither (migration 0010).
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict, server_default=text("'{}'"))
    created_by: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class StripeRateSlot(Base):
    """When the connection's next Stripe request may go: the schedule all processes share (stripe/ratelimit.py)."""

    __tablename__ = "stripe_rate_slots"

    connection_id: Mapped[str] = mapped_column(ForeignKey("connections.id", ondelete="CASCADE"), primary_key=True)
    next_slot_at: Mapped[datetime] = mapped_column()


# Webhook events still to be applied (queued, or failed and to be retried). The condition is written with
# constants, as the partial index's predicate and in the retry sweep's query alike: a bound `IN ($1, $2)`
# cannot be proved to imply the index's predicate, on either backend.
EVENT_PENDING_STATUSES = ("queued", "failed")
EVENT_PENDING = text(f"status IN ({', '.join(repr(status) for status in EVENT_PENDING_STATUSES)})")


class WebhookEvent(Base):
    __tablename__ = "webhook_events"
    __table_args__ = (
        UniqueConstraint("connection_id", "stripe_event_id", name="uq_webhook_events_connection_event"),
        Index("ix_webhook_events_env_received", "environment_id", "received_at"),
        # The retry sweep's lookup; only pending events are in it.
        Index("ix_webhook_events_due", "next_attempt_at", postgresql_where=EVENT_PENDING, sqlite_where=EVENT_PENDING),
        # A customer's latest events (the dashboard's customer page); events that reached no customer stay out.
        Index(
            "ix_webhook_events_customer",
            "customer_id",
            "received_at",
            postgresql_where=text("customer_id IS NOT NULL"),
            sqlite_where=text("customer_id IS NOT NULL"),
        ),
        # A Stripe customer once deleted stays deleted: late events for it are recognised by this lookup.
        Index(
            "ix_webhook_events_deleted_objects",
            "connection_id",
            "stripe_object_id",
            postgresql_where=text("type = 'customer.deleted'"),
            sqlite_where=text("type = 'customer.deleted'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    environment_id: Mapped[str] = mapped_column(String(64))
    connection_id: Mapped[str] = mapped_column(ForeignKey("connections.id", ondelete="CASCADE"))
    stripe_event_id: Mapped[str] = mapped_column(String(255))
    type: Mapped[str] = mapped_column(String(128))
    stripe_object_id: Mapped[str | None] = mapped_column(String(255), default=None)
    stripe_created: Mapped[int] = mapped_column(UnixSeconds, default=0)
    livemode: Mapped[bool] = mapped_column(Boolean, default=False)
    payload: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="received")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    # What applying did besides succeeding or failing: why it was ignored, Stripe data that was not copied.
    note: Mapped[str | None] = mapped_column(Text, default=None)
    customer_id: Mapped[str | None] = mapped_column(String(64), default=None)
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=None)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column(default=None)
    # How it reached flexsync: `webhook` (delivered by Stripe) or `catch_up` (listed from Stripe's Events API).
    source: Mapped[str] = mapped_column(String(16), default="webhook", server_default=text("'webhook'"))


class SyncJob(Base):
    """The outbox: written in the same transaction as the customer change it describes."""

    __tablename__ = "sync_jobs"
    __table_args__ = (
        Index("ix_sync_jobs_status_run_at", "status", "run_at"),
        Index("ix_sync_jobs_customer", "customer_id", "created_at"),
        Index("ix_sync_jobs_env_created", "environment_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    environment_id: Mapped[str] = mapped_column(String(64))
    connection_id: Mapped[str | None] = mapped_column(String(64), default=None)
    customer_id: Mapped[str | None] = mapped_column(String(64), default=None)
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=12)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    idempotency_key: Mapped[str] = mapped_column(String(255))
    run_at: Mapped[datetime] = mapped_column(default=utcnow)
    locked_by: Mapped[str | None] = mapped_column(String(128), default=None)
    locked_until: Mapped[datetime | None] = mapped_column(default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class Reconciliation(Base):
    """A reconciliation run, carried out by its sync job (kind `reconcile`) page by page: `phase` and `cursor`
    say where it stands, so an interrupted run continues from there."""

    __tablename__ = "reconciliations"
    __table_args__ = (Index("ix_reconciliations_env_created", "environment_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    environment_id: Mapped[str] = mapped_column(String(64))
    connection_id: Mapped[str] = mapped_column(ForeignKey("connections.id", ondelete="CASCADE"), index=True)
    direction: Mapped[str] = mapped_column(String(16))
    dry_run: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    job_id: Mapped[str | None] = mapped_column(String(64), default=None)
    phase: Mapped[str] = mapped_column(String(16), default="stripe")
    cursor: Mapped[str | None] = mapped_column(String(255), default=None)
    processed: Mapped[int] = mapped_column(Integer, default=0)
    counts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    conflicts: Mapped[list[Any]] = mapped_column(default=list)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class IdempotencyKey(Base):
    """A write made with an `Idempotency-Key`, and its answer: committed with the write, kept 24 hours
    (flexsync/idempotency), so a retry of the request gets this answer instead of running again."""

    __tablename__ = "idempotency_keys"

    environment_id: Mapped[str] = mapped_column(ForeignKey("environments.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    # SHA-256 (hex) of the request: method, path, query string and body.
    fingerprint: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    headers: Mapped[list[Any]] = mapped_column()
    body: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class CatchUpState(Base):
    """A connection's catch-up from Stripe's Events API (webhooks/catch_up.py): how far it has read, the run in
    progress (where each event type's listing stands, so a stopped run resumes there), and who holds it."""

    __tablename__ = "stripe_catch_ups"

    connection_id: Mapped[str] = mapped_column(ForeignKey("connections.id", ondelete="CASCADE"), primary_key=True)
    # Every customer event created before this second (less the overlap re-read each run) is stored.
    cursor: Mapped[int] = mapped_column(UnixSeconds)
    # The run in progress: the `created` window it lists and, per event type, the last event id listed
    # (null: not started, "done": listed to the end); null when no run is in progress.
    run_since: Mapped[int | None] = mapped_column(UnixSeconds, default=None)
    run_until: Mapped[int | None] = mapped_column(UnixSeconds, default=None)
    run_position: Mapped[dict[str, Any] | None] = mapped_column(JSONOrNull, default=None)
    # listed, stored, duplicates, applied: of the run in progress, else of the last one.
    run_counts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # A catch-up asked for (API, or a gap's reconciliation) that a worker has not started yet.
    requested_at: Mapped[datetime | None] = mapped_column(default=None)
    requested_since: Mapped[int | None] = mapped_column(UnixSeconds, default=None)
    last_run_at: Mapped[datetime | None] = mapped_column(default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    # The cursor was older than what Stripe keeps: events of that stretch may be lost (see webhooks/catch_up.py).
    gap_since: Mapped[int | None] = mapped_column(UnixSeconds, default=None)
    gap_detected_at: Mapped[datetime | None] = mapped_column(default=None)
    leased_by: Mapped[str | None] = mapped_column(String(128), default=None)
    leased_until: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
