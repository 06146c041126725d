"""Migrations and models agree, on SQLite and PostgreSQL, and every migration can be undone and redone."""

from __future__ import annotations

import asyncio
import warnings
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from flexsync.db import alembic_config, create_engine, migrate
from flexsync.models import Base
from tests.support import DatabaseUnderTest

# SQLite's reflection cannot read an index on an expression; `expression_indexes` checks those instead.
EXPRESSION_INDEXES = {"ix_customers_env_email_lower": ("customers", "lower(", "email")}


def schema_differences(url: str, metadata: sa.MetaData = Base.metadata) -> list[Any]:
    """What `alembic revision --autogenerate` would put in a new migration: empty when nothing drifted."""

    def on_this_backend(obj: Any, dialect: str) -> bool:
        """Autogenerate ignores `ddl_if`: an index made for one backend only is not missing on the other."""
        condition = getattr(obj, "_ddl_if", None)
        return condition is None or condition.dialect in (None, dialect)

    def differences(sync_conn: sa.Connection) -> list[Any]:
        dialect = sync_conn.dialect.name
        opts = {"compare_type": True, "include_object": lambda obj, *_: on_this_backend(obj, dialect)}
        return compare_metadata(MigrationContext.configure(sync_conn, opts=opts), metadata)

    async def compare() -> list[Any]:
        engine = create_engine(url, null_pool=True)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(differences)
        finally:
            await engine.dispose()

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based index")
        warnings.filterwarnings("ignore", "autogenerate skipping metadata-specified expression-based index")
        return asyncio.run(compare())


def expression_indexes(url: str) -> dict[str, str]:
    """The expression indexes the database has, by name: the SQL that defines each."""

    async def read() -> dict[str, str]:
        engine = create_engine(url, null_pool=True)
        try:
            async with engine.connect() as conn:
                if url.startswith("sqlite"):
                    rows = await conn.execute(sa.text("SELECT name, sql FROM sqlite_master WHERE type = 'index'"))
                else:
                    rows = await conn.execute(sa.text("SELECT indexname, indexdef FROM pg_indexes"))
                return {name: sql for name, sql in rows if name in EXPRESSION_INDEXES}
        finally:
            await engine.dispose()

    return asyncio.run(read())


def table_names(url: str) -> set[str]:
    async def names() -> set[str]:
        engine = create_engine(url, null_pool=True)
        try:
            async with engine.connect() as conn:
                return set(await conn.run_sync(lambda sync_conn: sa.inspect(sync_conn).get_table_names()))
        finally:
            await engine.dispose()

    return asyncio.run(names())


def test_migrated_schema_matches_the_models(database: DatabaseUnderTest) -> None:
    assert schema_differences(database.url) == []
    found = expression_indexes(database.url)
    assert set(found) == set(EXPRESSION_INDEXES)
    for name, words in EXPRESSION_INDEXES.items():
        assert all(word in found[name].lower() for word in words), found[name]


def test_the_comparison_sees_drift(database: DatabaseUnderTest) -> None:
    # Guards the test above against passing vacuously: a changed model must show up as a difference.
    drifted = sa.MetaData()
    for table in Base.metadata.sorted_tables:
        copy = table.to_metadata(drifted)
        # The copy leaves out which backends an index is made on.
        conditions = {index.name: getattr(index, "_ddl_if", None) for index in table.indexes}
        for index in copy.indexes:
            index._ddl_if = conditions[index.name]
    customers = drifted.tables["customers"]
    customers.append_column(sa.Column("nickname", sa.String(40), nullable=True))
    customers.c.name.type = sa.String(300)

    found = schema_differences(database.url, drifted)
    kinds = {(d[0] if isinstance(d, tuple) else d[0][0]) for d in found}
    assert kinds == {"add_column", "modify_type"}, found


def test_downgrade_to_base_and_upgrade_again(fresh_db: DatabaseUnderTest) -> None:
    url = fresh_db.url
    model_tables = set(Base.metadata.tables)
    assert model_tables <= table_names(url)

    command.downgrade(alembic_config(url), "base")
    assert table_names(url) & model_tables == set()

    migrate(url)
    assert model_tables <= table_names(url)
    assert schema_differences(url) == []
    assert set(expression_indexes(url)) == set(EXPRESSION_INDEXES)


def scalar(url: str, sql: str) -> Any:
    """One value read from the database."""

    async def read() -> Any:
        engine = create_engine(url, null_pool=True)
        try:
            async with engine.connect() as conn:
                return await conn.scalar(sa.text(sql))
        finally:
            await engine.dispose()

    return asyncio.run(read())


def payload_compression(url: str) -> str:
    """PostgreSQL: how webhook payloads too large to keep inline are compressed ('' is the server's default)."""
    method = scalar(
        url,
        "SELECT CAST(attcompression AS text) FROM pg_attribute "
        "WHERE attrelid = CAST('webhook_events' AS regclass) AND attname = 'payload'",
    )
    return {"l": "lz4", "p": "pglz"}.get(method, "")


def lz4_available(url: str) -> bool:
    sql = "SELECT count(*) FROM pg_settings WHERE name = 'default_toast_compression' AND 'lz4' = ANY(enumvals)"
    return bool(scalar(url, sql))


def test_webhook_payloads_are_compressed_with_lz4_on_postgresql(fresh_db: DatabaseUnderTest) -> None:
    url = fresh_db.url
    if fresh_db.backend == "sqlite":
        pytest.skip("PostgreSQL's column compression")
    if not lz4_available(url):
        pytest.skip("this PostgreSQL was built without lz4")
    assert payload_compression(url) == "lz4"
    command.downgrade(alembic_config(url), "0004")
    assert payload_compression(url) == ""
    migrate(url)
    assert payload_compression(url) == "lz4"
