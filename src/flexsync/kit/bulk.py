"""Inserting many rows, into one or several tables, in as few statements as each backend allows.

PostgreSQL: one statement for everything, `WITH a AS (INSERT ... SELECT * FROM unnest($1::type[], ...)), ...
INSERT ...`: one array per column, so the statement text is the same whatever the number of rows (prepared
once, planned cheaply), asyncpg encodes each array in C, and the server runs one statement (one round trip)
instead of one per row. Tables are written in the order given, so a later table may reference rows of an
earlier one (foreign keys are checked at the end of the statement). SQLite, in-process and cheap per
statement: one executemany per table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import JSON, Table, TextClause, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

_POSTGRESQL = postgresql.dialect()  # type: ignore[no-untyped-call]


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


def _insert_sql(shape: _Shape, prefix: str) -> str:
    table = shape.table
    arrays = ", ".join(
        f"CAST(:{prefix}{name} AS {table.c[name].type.compile(dialect=_POSTGRESQL)}[])" for name in shape.columns
    )
    # Identifiers come from the Table itself (table.c[name] refuses any other name); values are all bound.
    sql = f"INSERT INTO {table.name} ({', '.join(shape.columns)}) SELECT * FROM unnest({arrays})"  # noqa: S608
    if shape.skip_conflicts_on:
        sql += f" ON CONFLICT ({', '.join(shape.skip_conflicts_on)}) DO NOTHING"
    if shape.returning:
        sql += f" RETURNING {shape.returning}"
    return sql


@lru_cache(maxsize=64)
def _statement(shapes: tuple[_Shape, ...]) -> TextClause:
    *first, last = [_insert_sql(shape, f"p{i}_") for i, shape in enumerate(shapes)]
    ctes = ", ".join(f"w{i} AS ({sql})" for i, sql in enumerate(first))
    return text(f"WITH {ctes} {last}" if ctes else last)


def _column_values(table: Table, name: str, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
    if isinstance(table.c[name].type, JSON):
        return [None if row[name] is None else orjson.dumps(row[name]).decode() for row in rows]
    return [row[name] for row in rows]


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
            params = {
                f"p{i}_{name}": _column_values(part.shape.table, name, part.rows)
                for i, part in enumerate(parts)
                for name in part.shape.columns
            }
            result = await session.execute(_statement(tuple(part.shape for part in parts)), params)
            return list(result.scalars()) if parts[-1].shape.returning else []
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
