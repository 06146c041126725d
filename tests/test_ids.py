"""Identifiers: ULIDs after a prefix, in the standard encoding, time-ordered and unique."""

from __future__ import annotations

import time

from flexsync.ids import new_id, ulid_text

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def decode(text: str) -> int:
    value = 0
    for char in text:
        value = value * 32 + CROCKFORD.index(char)
    return value


def test_encoding_matches_the_ulid_specification_example() -> None:
    # The example in the ULID specification: 01ARZ3NDEK is the time 1469922850259 ms, TSV4RRFFQ69G5FAV the
    # randomness.
    randomness = decode("TSV4RRFFQ69G5FAV")
    assert ulid_text(1469922850259, randomness) == "01ARZ3NDEKTSV4RRFFQ69G5FAV"
    assert ulid_text(0, 0) == "0" * 26
    assert ulid_text(2**48 - 1, 2**80 - 1) == "7" + "Z" * 25


def test_new_ids_carry_the_time_sort_by_it_and_do_not_repeat() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_id("cust") for _ in range(5000)]
    after = time.time_ns() // 1_000_000
    assert all(i.startswith("cust_") and len(i) == 31 for i in ids)
    ulids = [i.removeprefix("cust_") for i in ids]
    assert all(set(u) <= set(CROCKFORD) for u in ulids)
    times = [decode(u) >> 80 for u in ulids]
    assert before <= times[0] and times[-1] <= after
    assert times == sorted(times)
    assert len(set(ids)) == len(ids)
    # 80 random bits: no two ids made in the same millisecond share their random part.
    assert len({decode(u) & (2**80 - 1) for u in ulids}) == len(ulids)
