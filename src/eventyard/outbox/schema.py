"""The outbox and inbox tables: ``schema.sql`` shipped in the package, and functions that apply it."""

from __future__ import annotations

from importlib import resources

from sqlalchemy import Connection, Engine, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine


def schema_sql() -> str:
    """The SQL that creates the outbox and inbox tables (idempotent; for migrations)."""
    return resources.files("eventyard.outbox").joinpath("schema.sql").read_text(encoding="utf-8")


def apply_schema(bind: Engine | Connection) -> None:
    """Create the tables, index and trigger if missing (sync, e.g. with psycopg).

    With a connection, the caller commits; with an engine, this commits.
    """
    sql = schema_sql()
    if isinstance(bind, Engine):
        with bind.begin() as connection:
            connection.exec_driver_sql(sql)
    else:
        bind.exec_driver_sql(sql)


async def apply_schema_async(bind: AsyncEngine | AsyncConnection) -> None:
    """Create the tables, index and trigger if missing (asyncpg).

    With a connection, the caller commits; with an engine, this commits.
    """
    sql = schema_sql()
    if isinstance(bind, AsyncEngine):
        async with bind.begin() as connection:
            await _run_script(connection, sql)
    else:
        await _run_script(bind, sql)


async def _run_script(connection: AsyncConnection, sql: str) -> None:
    # Several statements (and $$-quoted bodies) go through the driver's simple query protocol;
    # SQLAlchemy's asyncpg dialect prepares statements, which takes only one at a time.
    await connection.execute(text("SELECT 1"))  # the transaction begins now, so the script is in it
    raw = await connection.get_raw_connection()
    await raw.driver_connection.execute(sql)  # type: ignore[union-attr]
