"""What only the SQLite store has: it works without the outbox extra, on plain sqlite3
connections, and its relays take turns (the shared contract is in test_contract.py)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys

import pytest

from eventyard import ConfigurationError
from eventyard.memory import MemoryBroker
from eventyard.outbox import Outbox, RelaySettings, SqliteOutboxRelay, SqliteOutboxStore

from .conftest import OrderPlaced, eventually

OUTBOX = Outbox("acme", "shop")

NO_EXTRA = """
import asyncio, sys
sys.modules['sqlalchemy'] = None  # as if the outbox extra were not installed
from eventyard import DomainEvent
from eventyard.memory import MemoryBroker, MemoryMessageConfigurer
from eventyard.outbox import Outbox, SqliteOutboxRelay, SqliteOutboxStore, idempotent

class Placed(DomainEvent):
    order: int

async def main():
    with SqliteOutboxStore() as store:
        with store.transaction() as connection:
            Outbox("acme", "shop").publish(connection, Placed(order=1))
        async with MemoryBroker() as broker:
            await asyncio.to_thread(MemoryMessageConfigurer(broker, "acme", "shop").configure)
            published = await SqliteOutboxRelay(store, broker.publisher_transport).relay_once()
            runs = []
            handle = idempotent(store, name="h")(lambda event: runs.append(event.order))
            event = Placed(order=1)
            for _ in range(2):  # a redelivery: not run again
                handle(event)
            print(published, broker.message_count("store"), runs, "sqlalchemy" in sys.modules
                  and sys.modules["sqlalchemy"] is not None)

asyncio.run(main())
"""


def test_the_sqlite_store_needs_no_extra() -> None:
    done = subprocess.run([sys.executable, "-c", NO_EXTRA], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "1 1 [1] False"


async def test_plain_sqlite3_connections_store_in_their_transaction(broker: MemoryBroker) -> None:
    with SqliteOutboxStore() as store:
        connection = store.connect()  # Python's default: the first write begins a transaction
        with contextlib.closing(connection):
            OUTBOX.publish(connection, OrderPlaced(order=1))
            connection.rollback()
            OUTBOX.dispatch(connection, [])  # nothing to store
            connection.execute("CREATE TABLE orders (id int)")
            connection.execute("INSERT INTO orders VALUES (2)")
            OUTBOX.publish(connection, OrderPlaced(order=2))
            assert store.pending_count() == 0  # not committed yet: other connections see nothing
            connection.commit()
        assert store.pending_count() == 1
        autocommit = sqlite3.connect(store.path, isolation_level=None)
        with contextlib.closing(autocommit), pytest.raises(ConfigurationError, match="BEGIN"):
            OUTBOX.publish(autocommit, OrderPlaced(order=3))
        assert await SqliteOutboxRelay(store, broker.publisher_transport).relay_once() == 1
        [message] = broker.messages("store")
        assert json.loads(message.body)["data"]["attributes"]["order"] == 2
        assert store.pending_count() == 0


async def test_relays_of_one_store_take_turns_each_message_once_in_order(
        broker: MemoryBroker) -> None:
    with SqliteOutboxStore() as store:
        for batch in range(10):
            with store.transaction() as connection:
                OUTBOX.publish(connection, [OrderPlaced(order=o, batch=batch) for o in range(30)])
        settings = RelaySettings(batch_size=13, poll_interval=0.2)
        relays = [SqliteOutboxRelay(store, broker.publisher_transport, settings) for _ in range(3)]
        for relay in relays:
            relay.start()
        try:
            await eventually(lambda: store.pending_count() == 0, 20, "every row sent")
        finally:
            for relay in relays:
                await relay.stop()
        bodies = [json.loads(m.body)["data"]["attributes"] for m in broker.messages("store")]
        assert [(b["batch"], b["order"]) for b in bodies] == [
            (b, o) for b in range(10) for o in range(30)]  # each once, in commit order
        assert sum(relay.published for relay in relays) == 300


def test_a_relay_needs_a_store() -> None:
    with pytest.raises(ConfigurationError, match="SqliteOutboxStore"):
        SqliteOutboxRelay(object(), None)  # type: ignore[arg-type]
