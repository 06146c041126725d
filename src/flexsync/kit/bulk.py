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
    # A text column whose values travel as their own array, beside the rows' JSON (see Inserts.add).
    separate: str | None


@dataclass(slots=True)
class _Part:
    shape: _Shape
    rows: list[Mapping[str, Any]]


def _insert_sql(shape: _Shape, param: str) -> str:
    table = shape.table
    # Identifiers come from the Table itself (table.c[name] refuses any other name); the rows are one bound value.
    columns = ", ".join(table.c[name].name for name in shape.columns)
    rows = f"json_populate_recordset(CAST(NULL AS {table.name}), CAST(:{param} AS json))"
    if shape.separate is None:
        sql = f"INSERT INTO {table.name} ({columns}) SELECT {columns} FROM {rows}"  # noqa: S608
    else:
        # ROWS FROM zips the rows with the array's values, in order; the array's column is named `unnest`.
        separate = table.c[shape.separate].name
        sql = (
            f"INSERT INTO {table.name} ({columns}, {separate}) SELECT {columns}, unnest "  # noqa: S608
            f"FROM ROWS FROM ({rows}, unnest(CAST(:{param}_{separate} AS text[])))"
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
        separate: str | None = None,
    ) -> None:
        """`rows`: dicts with the same keys. `skip_conflicts_on`: the unique columns on which a row that
        conflicts is left out (ON CONFLICT DO NOTHING). `returning`: a column whose values `write` returns.
        `separate`: a text column of long values (PostgreSQL: they travel as a text array of their own, which
        the server takes as it is, instead of inside the rows' JSON, which it would parse character by
        character)."""
        if any(part.shape.returning for part in self._parts):
            raise ValueError("only the last table added may return values")
        if rows:
            columns = tuple(name for name in rows[0] if name != separate)
            shape = _Shape(table, columns, tuple(skip_conflicts_on), returning, separate)
            self._parts.append(_Part(shape, list(rows)))

    async def write(self, session: AsyncSession) -> list[Any]:
        """Insert everything added, then forget it; returns the `returning` values of the rows inserted."""
        parts, self._parts = self._parts, []
        if not parts:
            return []
        if session.get_bind().dialect.name == "postgresql":
            params: dict[str, Any] = {}
            for i, part in enumerate(parts):
                separate = part.shape.separate
                if separate is None:
                    params[f"p{i}"] = _rows_json(part.rows)
                else:
                    params[f"p{i}_{separate}"] = [row[separate] for row in part.rows]
                    params[f"p{i}"] = _rows_json([{k: v for k, v in row.items() if k != separate} for row in part.rows])
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
