"""The idempotent inbox used wrongly: configuration errors on both stores (what it does is in
test_contract.py, run against PostgreSQL and SQLite)."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker

from eventyard import ConfigurationError
from eventyard.outbox import SqliteOutboxStore, current_session, idempotent

from .conftest import OrderPlaced


def test_a_misused_inbox_is_a_configuration_error(sync_engine: Engine) -> None:
    with pytest.raises(ConfigurationError, match="async_sessionmaker"):
        @idempotent(sessionmaker(sync_engine))
        async def handler(event: OrderPlaced) -> None: ...
    with pytest.raises(ConfigurationError, match="only available inside"):
        current_session()

    @idempotent(sessionmaker(sync_engine))
    def sync_handler(event: OrderPlaced) -> None: ...
    with pytest.raises(ConfigurationError, match="without a message"):
        sync_handler("not a message")


async def test_a_misused_sqlite_inbox_is_a_configuration_error() -> None:
    with SqliteOutboxStore() as store:
        @idempotent(store)
        async def handler(event: OrderPlaced) -> None: ...
        with pytest.raises(ConfigurationError, match="without a message"):
            await handler("not a message")
        with pytest.raises(ConfigurationError, match=r"1\.\.500"):
            idempotent(store, name="x" * 501)(handler)
        with pytest.raises(ConfigurationError, match="window"):
            store.purge_inbox(0)
