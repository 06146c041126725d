"""Text that PostgreSQL can store: its text types hold no NUL character (U+0000), though JSON and SQLite can.

Every input checks for it, so both databases take the same input: the API refuses it (400), and data from
Stripe that carries it is left out with a note, as other data that does not fit.
"""

from __future__ import annotations

from typing import Any

NUL = "\x00"
NUL_PROBLEM = "must not contain the NUL character (\\u0000)"


def contains_nul(value: Any) -> bool:
    """Whether a string, or any string key or value inside lists and dicts, holds a NUL character."""
    if isinstance(value, str):
        return NUL in value
    if isinstance(value, dict):
        return any(contains_nul(key) or contains_nul(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return any(contains_nul(item) for item in value)
    return False
