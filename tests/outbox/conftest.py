"""Fixtures of the outbox tests: a PostgreSQL database of each test's own, dropped after it.

The server is ``EVENTYARD_TEST_POSTGRES`` (default postgresql://postgres@127.0.0.1:5432); a
test fails, never skips, when none answers.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, create_engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from eventyard import DomainEvent
from eventyard.memory import MemoryBroker, MemoryMessageConfigurer
from eventyard.outbox import apply_schema_async

POSTGRES_ENV = "EVENTYARD_TEST_POSTGRES"
SERVER = os.environ.get(POSTGRES_ENV, "postgresql://postgres@127.0.0.1:5432").rstrip("/")


class OrderPlaced(DomainEvent):
    """The test's business event."""

    order: int
    batch: int = 0


@dataclass(frozen=True)
class Database:
    """A database of the test's own."""

    name: str

    @property
    def sync_url(self) -> str:
        return f"{SERVER.replace('postgresql://', 'postgresql+psycopg://', 1)}/{self.name}"

    @property
    def async_url(self) -> str:
        return f"{SERVER.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{self.name}"

    @property
    def plain_url(self) -> str:
        return f"{SERVER}/{self.name}"


def _admin(sql: str) -> None:
    try:
        with psycopg.connect(f"{SERVER}/postgres", autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql)  # type: ignore[arg-type]
    except psycopg.OperationalError as error:
        pytest.fail(f"the outbox tests need PostgreSQL at {SERVER.split('@')[-1]} ({error}); "
                    f"start one or point {POSTGRES_ENV} at one", pytrace=False)


@pytest.fixture
def database() -> Iterator[Database]:
    name = f"eventyard_test_{uuid.uuid4().hex[:12]}"
    _admin(f'CREATE DATABASE "{name}"')
    try:
        yield Database(name)
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def engine(database: Database) -> AsyncIterator[AsyncEngine]:
    created = create_async_engine(database.async_url, pool_pre_ping=True)
    await apply_schema_async(created)
    try:
        yield created
    finally:
        await created.dispose()


@pytest.fixture
def sync_engine(database: Database, engine: AsyncEngine) -> Iterator[Engine]:
    created = create_engine(database.sync_url)
    try:
        yield created
    finally:
        created.dispose()


@pytest.fixture
async def broker() -> AsyncIterator[MemoryBroker]:
    """A memory broker with acme.shop's exchanges and the store queue (every message)."""
    async with MemoryBroker() as memory:
        await asyncio.to_thread(MemoryMessageConfigurer(memory, "acme", "shop").configure)
        yield memory


async def eventually(check: Callable[[], Any], timeout: float, what: str) -> None:
    """Wait until ``check()`` (or the awaitable it returns) is true; fail after ``timeout`` s."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)
