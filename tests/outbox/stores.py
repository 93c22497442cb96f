"""The two outbox stores behind one small interface, so one contract runs against both."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import sessionmaker

from eventyard.outbox import (
    OutboxRelay,
    RelaySettings,
    SqliteOutboxRelay,
    SqliteOutboxStore,
    pending_count,
    purge_inbox,
)
from eventyard.ports import TransportSource


class PostgresStore:
    """The outbox in the test's PostgreSQL database (SQLAlchemy sessions)."""

    name = "postgresql"

    def __init__(self, engine: AsyncEngine, sync_engine: Engine) -> None:
        self.engine = engine
        self.async_sessions = async_sessionmaker(engine)
        self.sync_sessions = sessionmaker(sync_engine)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        async with self.async_sessions() as session, session.begin():
            yield session

    async def execute(self, session: Any, sql: str, params: dict[str, Any] | None = None) -> None:
        await session.execute(text(sql), params or {})

    def execute_sync(self, session: Any, sql: str, params: dict[str, Any] | None = None) -> None:
        session.execute(text(sql), params or {})

    async def query(self, sql: str) -> list[tuple[Any, ...]]:
        async with self.engine.connect() as connection:
            return [tuple(row) for row in (await connection.execute(text(sql))).all()]

    async def backdate(self, table: str, column: str, where: str, seconds: float) -> None:
        async with self.engine.begin() as connection:
            await connection.execute(text(
                f"UPDATE {table} SET {column} = now() - make_interval(secs => {seconds}) "
                f"WHERE {where}"))

    def relay(self, transports: TransportSource, settings: RelaySettings | None = None) -> Any:
        return OutboxRelay(self.engine, transports, settings)

    async def pending(self) -> int:
        return await pending_count(self.engine)

    async def purge_inbox(self, window: Any) -> int:
        return await purge_inbox(self.engine, window)


class SqliteStore:
    """The outbox in a temporary SQLite database (stdlib sqlite3 connections)."""

    name = "sqlite"

    def __init__(self, store: SqliteOutboxStore) -> None:
        self.store = store
        self.async_sessions = store
        self.sync_sessions = store

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        with self.store.transaction() as connection:
            yield connection

    async def execute(self, session: Any, sql: str, params: dict[str, Any] | None = None) -> None:
        session.execute(sql, params or {})

    def execute_sync(self, session: Any, sql: str, params: dict[str, Any] | None = None) -> None:
        session.execute(sql, params or {})

    async def query(self, sql: str) -> list[tuple[Any, ...]]:
        with contextlib.closing(self.store.connect()) as connection:
            return [tuple(row) for row in connection.execute(sql).fetchall()]

    async def backdate(self, table: str, column: str, where: str, seconds: float) -> None:
        with contextlib.closing(self.store.connect()) as connection, connection:
            connection.execute(f"UPDATE {table} SET {column} = ? WHERE {where}",
                               (time.time() - seconds,))

    def relay(self, transports: TransportSource, settings: RelaySettings | None = None) -> Any:
        return SqliteOutboxRelay(self.store, transports, settings)

    async def pending(self) -> int:
        return await asyncio.to_thread(self.store.pending_count)

    async def purge_inbox(self, window: Any) -> int:
        return self.store.purge_inbox(window)
