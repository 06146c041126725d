"""Inserting many rows, into one or several tables, in as few statements as each backend allows.

PostgreSQL: one statement for everything, `WITH a AS (INSERT ... SELECT ... FROM json_populate_recordset(...)),
... INSERT ...`: each table's rows travel as one JSON array (serialised by orjson, a few microseconds per row,
where binding one array per column cost asyncpg's encoder about five times as much), PostgreSQL turns it
back into rows of the table's own type, the statement text is the same whatever the number of rows
(prepared once, planned cheaply), and the server runs one statement (one round trip) instead of one per row.
Tables are written in the order given, so a later table may reference rows of an earlier one (foreign keys
are checked at the end of the statement). SQLite, in-process and cheap per statement: one executemany per
table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import Table, TextClause, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.db import fetch_rows


@dataclass(frozen=True, slots=True)
class _Shape:
    """What the statement text depends on: the table, the columns, the conflict target, what is returned."""

    table: Table
    columns: tuple[str, ...]
    skip_conflicts_on: tuple[str, ...]
    returning: str | None


@dataclass(slots=True)
class _Part:
    shape: _Shape
    rows: list[Mapping[str, Any]]


def _insert_sql(shape: _Shape, param: str) -> str:
    table = shape.table
    # Identifiers come from the Table itself (table.c[name] refuses any other name); the rows are one bound value.
    columns = ", ".join(table.c[name].name for name in shape.columns)
    sql = (
        f"INSERT INTO {table.name} ({columns}) SELECT {columns} "  # noqa: S608
        f"FROM json_populate_recordset(CAST(NULL AS {table.name}), CAST(:{param} AS json))"
    )
    if shape.skip_conflicts_on:
        sql += f" ON CONFLICT ({', '.join(shape.skip_conflicts_on)}) DO NOTHING"
    if shape.returning:
        sql += f" RETURNING {shape.returning}"
    return sql


@lru_cache(maxsize=64)
def _statement(shapes: tuple[_Shape, ...]) -> TextClause:
    *first, last = [_insert_sql(shape, f"p{i}") for i, shape in enumerate(shapes)]
    ctes = ", ".join(f"w{i} AS ({sql})" for i, sql in enumerate(first))
    return text(f"WITH {ctes} {last}" if ctes else last)


def _rows_json(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as a JSON array; datetimes in RFC 3339 (naive ones taken as UTC), JSON columns nested."""
    return orjson.dumps(rows, option=orjson.OPT_NAIVE_UTC).decode()


class Inserts:
    """Rows for one or more tables, written together by `write`. Only the last table added may return values."""

    def __init__(self) -> None:
        self._parts: list[_Part] = []

    def add(
        self,
        table: Table,
        rows: Sequence[Mapping[str, Any]],
        *,
        skip_conflicts_on: Sequence[str] = (),
        returning: str | None = None,
    ) -> None:
        """`rows`: dicts with the same keys. `skip_conflicts_on`: the unique columns on which a row that
        conflicts is left out (ON CONFLICT DO NOTHING). `returning`: a column whose values `write` returns."""
        if any(part.shape.returning for part in self._parts):
            raise ValueError("only the last table added may return values")
        if rows:
            shape = _Shape(table, tuple(rows[0]), tuple(skip_conflicts_on), returning)
            self._parts.append(_Part(shape, list(rows)))

    async def write(self, session: AsyncSession) -> list[Any]:
        """Insert everything added, then forget it; returns the `returning` values of the rows inserted."""
        parts, self._parts = self._parts, []
        if not parts:
            return []
        if session.get_bind().dialect.name == "postgresql":
            params = {f"p{i}": _rows_json(part.rows) for i, part in enumerate(parts)}
            rows = await fetch_rows(session, _statement(tuple(part.shape for part in parts)), params)
            return [row[0] for row in rows] if parts[-1].shape.returning else []
        returned: list[Any] = []
        for part in parts:
            shape = part.shape
            insert = sqlite.insert(shape.table)
            if shape.skip_conflicts_on:
                insert = insert.on_conflict_do_nothing(index_elements=list(shape.skip_conflicts_on))
            if shape.returning:
                returned = list(
                    (await session.execute(insert.returning(shape.table.c[shape.returning]), part.rows)).scalars()
                )
            else:
                await session.execute(insert, part.rows)
        return returned


async def insert_rows(
    session: AsyncSession,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    skip_conflicts_on: Sequence[str] = (),
    returning: str | None = None,
) -> list[Any]:
    """Insert rows into one table in one statement (see Inserts.add)."""
    inserts = Inserts()
    inserts.add(table, rows, skip_conflicts_on=skip_conflicts_on, returning=returning)
    return await inserts.write(session)
