"""Pruning old webhook events: `flexsync events prune` and the workers' hourly pass, on SQLite and PostgreSQL.

What goes: events received before the retention window whose work is done (applied or ignored). What stays:
newer events, queued, failed and dead ones (still to be applied or looked at), and `customer.deleted` events
(they keep a deleted Stripe customer from coming back).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.config import Settings
from flexsync.ids import ulid_text
from flexsync.kit.bulk import Inserts
from flexsync.webhooks import repository
from tests.cli_support import Completed, run_flexsync
from tests.support import DatabaseUnderTest, new_tenant, server_env, wait_for
from tests.sync_support import start_worker
from tests.webhook_support import add_stripe_connection

NOW = datetime.now(UTC)


def _event(connection_id: str, tenant: Any, name: str, age_days: float, status: str, kind: str) -> dict[str, Any]:
    received = NOW - timedelta(days=age_days)
    # Ids are made when a delivery arrives, so they carry its time, as the receiver's do.
    event_id = f"whevt_{ulid_text(int(received.timestamp() * 1000), int.from_bytes(os.urandom(10), 'big'))}"
    return {
        "id": event_id,
        "tenant_id": tenant.tenant_id,
        "environment_id": tenant.environment_id,
        "connection_id": connection_id,
        "stripe_event_id": f"evt_{name}",
        "type": kind,
        "stripe_object_id": f"cus_{name}",
        "stripe_created": int(received.timestamp()),
        "livemode": False,
        "payload": json.dumps({"id": f"evt_{name}", "type": kind}),
        "status": status,
        "attempts": 1,
        "last_error": None,
        "note": None,
        "customer_id": None,
        "next_attempt_at": None,
        "received_at": received,
        "processed_at": received,
    }


# name -> (age in days, status, type, pruned with a 30-day retention)
EVENTS = {
    "old_applied": (40, "applied", "customer.created", True),
    "old_ignored": (31, "ignored", "charge.succeeded", True),
    "old_queued": (45, "queued", "customer.updated", False),
    "old_failed": (45, "failed", "customer.updated", False),
    "old_dead": (60, "dead", "customer.updated", False),
    "old_deleted": (90, "applied", "customer.deleted", False),
    "recent_applied": (29, "applied", "customer.updated", False),
    "new_applied": (0, "applied", "customer.created", False),
}


def store_events(db: DatabaseUnderTest) -> None:
    tenant = new_tenant(db, base_url="")
    connection_id = add_stripe_connection(db, tenant)
    rows = [_event(connection_id, tenant, name, age, status, kind) for name, (age, status, kind, _) in EVENTS.items()]

    async def work(session: AsyncSession) -> None:
        inserts = Inserts()
        repository.add_events(inserts, rows)
        assert len(await inserts.write(session)) == len(rows)

    db.run(work)


def stored_names(db: DatabaseUnderTest) -> set[str]:
    async def work(session: AsyncSession) -> set[str]:
        ids = (await session.execute(select(repository.EVENTS.c.stripe_event_id))).scalars()
        return {stripe_event_id.removeprefix("evt_") for stripe_event_id in ids}

    return db.run(work)


def kept_after_pruning() -> set[str]:
    return {name for name, (*_, pruned) in EVENTS.items() if not pruned}


def prune(db: DatabaseUnderTest, tmp_path: Path, *args: str, **env: str) -> Completed:
    return run_flexsync(["events", "prune", *args], env=server_env(db, **env), cwd=tmp_path)


def test_prune_deletes_old_events_whose_work_is_done(fresh_db: DatabaseUnderTest, tmp_path: Path) -> None:
    store_events(fresh_db)

    done = prune(fresh_db, tmp_path, "--older-than-days", "30", "--json")

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["deleted"] == 2
    assert datetime.fromisoformat(report["received_before"]) < NOW - timedelta(days=29)
    assert stored_names(fresh_db) == kept_after_pruning()
    # Nothing more to do the second time.
    again = prune(fresh_db, tmp_path, "--older-than-days", "30")
    assert again.returncode == 0 and "deleted 0 webhook events" in again.stdout, again.stdout + again.stderr


def test_prune_takes_the_configured_retention_and_refuses_a_short_one(
    fresh_db: DatabaseUnderTest, tmp_path: Path
) -> None:
    store_events(fresh_db)

    too_short = prune(fresh_db, tmp_path, "--older-than-days", "3")
    assert too_short.returncode == 1 and "at least 7" in too_short.stderr, too_short.stderr
    keep_all = prune(fresh_db, tmp_path, FLEXSYNC_WEBHOOK_EVENT_RETENTION_DAYS="0")
    assert keep_all.returncode == 1 and "--older-than-days" in keep_all.stderr, keep_all.stderr
    assert stored_names(fresh_db) == set(EVENTS)

    configured = prune(fresh_db, tmp_path, FLEXSYNC_WEBHOOK_EVENT_RETENTION_DAYS="35")
    assert configured.returncode == 0 and "deleted 1 webhook events" in configured.stdout, configured.stderr
    assert stored_names(fresh_db) == set(EVENTS) - {"old_applied"}


def test_a_worker_prunes_with_the_configured_retention(fresh_db: DatabaseUnderTest, tmp_path: Path) -> None:
    store_events(fresh_db)

    worker = start_worker(fresh_db, tmp_path, FLEXSYNC_WEBHOOK_EVENT_RETENTION_DAYS="30")
    try:
        wait_for(lambda: stored_names(fresh_db) == kept_after_pruning(), 30, "the worker to prune")
        wait_for(lambda: "pruned old webhook events" in worker.log(), 10, "the worker to log it")
    finally:
        worker.stop()


def test_a_retention_shorter_than_stripes_redelivery_is_refused(fresh_db: DatabaseUnderTest, tmp_path: Path) -> None:
    assert Settings(webhook_event_retention_days=0).webhook_event_retention_days == 0
    assert Settings(webhook_event_retention_days=7).webhook_event_retention_days == 7
    with pytest.raises(ValueError, match="at least 7 days"):
        Settings(webhook_event_retention_days=3)
    # Every command says which setting is wrong, without a traceback.
    started = run_flexsync(
        ["worker"], env=server_env(fresh_db, FLEXSYNC_WEBHOOK_EVENT_RETENTION_DAYS="2"), cwd=tmp_path
    )
    assert started.returncode == 1
    assert "FLEXSYNC_WEBHOOK_EVENT_RETENTION_DAYS" in started.stderr and "Traceback" not in started.stderr
