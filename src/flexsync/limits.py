"""Limits the command line declares its options with: here, not in config.py, so that `flexsync --help` need
not load the settings' machinery (pydantic, SQLAlchemy, cryptography)."""

from __future__ import annotations

# Stripe redelivers an event for up to three days; a stored event kept at least this long is never pruned
# while a copy of it may still arrive (and be applied again).
MIN_WEBHOOK_EVENT_RETENTION_DAYS = 7
RETENTION_REASON = (
    "Stripe redelivers an event for up to three days, and a pruned event would be stored and applied again"
)
MAX_WORKER_CONCURRENCY = 256
