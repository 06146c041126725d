"""Prefixed, time-ordered identifiers: `cust_01J...`, `tenant_01J...`.

The part after the prefix is a ULID: 48 bits of Unix time in milliseconds, then 80 random bits from the
operating system's CSPRNG, written as 26 characters of Crockford's base32. Ids sort by creation time to the
millisecond (the listing and pagination order), and nobody can guess one from another. Encoded here with a
table of character pairs: the webhook path makes three ids per event, and this is about three times as fast
as a general-purpose ULID library.
"""

from __future__ import annotations

import os
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Every 10-bit value as its two base32 characters.
_PAIRS = [high + low for high in _CROCKFORD for low in _CROCKFORD]
# A ULID's 128 bits, written as 26 characters (130 bits, the first two always 0), ten bits at a time.
_SHIFTS = range(120, -1, -10)


def ulid_text(milliseconds: int, randomness: int) -> str:
    """The ULID of this time and these 80 random bits, as text."""
    value = milliseconds << 80 | randomness
    return "".join([_PAIRS[(value >> shift) & 0x3FF] for shift in _SHIFTS])


def new_id(prefix: str) -> str:
    ulid = ulid_text(time.time_ns() // 1_000_000, int.from_bytes(os.urandom(10), "big"))
    return f"{prefix}_{ulid}"
