"""The outbox on PostgreSQL and the memory broker: stored in the business transaction, relayed
after commit in order, never for a rollback; LISTEN/NOTIFY, shared work, clean-up."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from eventyard import Command, ConfigurationError, InvalidMessageError
from eventyard.memory import MemoryBroker
from eventyard.outbox import Outbox, OutboxRelay, RelaySettings, apply_schema_async, pending_count

from .conftest import SERVER, Database, OrderPlaced, eventually

OUTBOX = Outbox("acme", "shop")


class ShipOrder(Command):
    order: int


def stored_orders(broker: MemoryBroker) -> list[tuple[int, int]]:
    """(batch, order) of each message in the store queue, head first."""
    bodies = [json.loads(m.body) for m in broker.messages("store")]
    return [(b["data"]["attributes"]["batch"], b["data"]["attributes"]["order"]) for b in bodies]


async def test_a_flushed_then_rolled_back_row_is_never_published(engine: AsyncEngine,
                                                                  broker: MemoryBroker) -> None:
    async with async_sessionmaker(engine)() as session:
        OUTBOX.publish(session, OrderPlaced(order=1))
        await session.flush()  # the row is written, then the transaction goes
        assert await session.scalar(text("SELECT count(*) FROM eventyard_outbox")) == 1
        await session.rollback()
    assert await pending_count(engine) == 0
    assert await OutboxRelay(engine, broker.publisher_transport).relay_once() == 0
    assert broker.message_count("store") == 0


async def test_a_sync_session_on_psycopg_stores_and_the_relay_publishes(
        engine: AsyncEngine, sync_engine: Engine, broker: MemoryBroker,
        caplog: pytest.LogCaptureFixture) -> None:
    def business() -> None:
        with Session(sync_engine) as session, session.begin():
            OUTBOX.publish(session, OrderPlaced(order=7))
            OUTBOX.dispatch(session, ShipOrder(order=7))
    await asyncio.to_thread(business)
    assert await OutboxRelay(engine, broker.publisher_transport).relay_once() == 2
    assert [m.type for m in broker.messages("store")] == ["order.placed"]
    # No subscriber receives the command here: said at ERROR, and not published for ever.
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        "outbox command ship.order (acme.shop.1.command.ship_order) reached no queue"]
    assert await pending_count(engine) == 0


async def test_three_relays_share_the_work_once_each_and_keep_each_transactions_order(
        engine: AsyncEngine, broker: MemoryBroker) -> None:
    sessions = async_sessionmaker(engine)
    for batch in range(20):
        async with sessions() as session, session.begin():
            OUTBOX.publish(session, [OrderPlaced(order=o, batch=batch) for o in range(50)])
    settings = RelaySettings(batch_size=13, poll_interval=0.2)
    relays = [OutboxRelay(engine, broker.publisher_transport, settings) for _ in range(3)]
    for relay in relays:
        relay.start()
    try:
        await eventually(lambda: _none_pending(engine), 20, "every row sent")
    finally:
        for relay in relays:
            await relay.stop()
    received = stored_orders(broker)
    assert sorted(received) == [(b, o) for b in range(20) for o in range(50)]  # each once
    for batch in range(20):
        assert [o for b, o in received if b == batch] == list(range(50))
    assert sum(relay.published for relay in relays) == 1000
    assert all(relay.published > 0 for relay in relays), [r.published for r in relays]


async def test_one_relay_with_batches_in_flight_keeps_each_transactions_order(
        engine: AsyncEngine, broker: MemoryBroker) -> None:
    sessions = async_sessionmaker(engine)
    for batch in range(10):  # transactions of 30 split across batches of 7
        async with sessions() as session, session.begin():
            OUTBOX.publish(session, [OrderPlaced(order=o, batch=batch) for o in range(30)])
    relay = OutboxRelay(engine, broker.publisher_transport,
                        RelaySettings(batch_size=7, in_flight=3, poll_interval=60))
    relay.start()
    try:
        await eventually(lambda: _none_pending(engine), 20, "every row sent")
    finally:
        await relay.stop()
    received = stored_orders(broker)
    assert sorted(received) == [(b, o) for b in range(10) for o in range(30)]  # each once
    for batch in range(10):
        assert [o for b, o in received if b == batch] == list(range(30))
    assert relay.published == 300


async def _none_pending(engine: AsyncEngine) -> bool:
    return await pending_count(engine) == 0


async def test_applying_the_schema_twice_changes_nothing(engine: AsyncEngine) -> None:
    await asyncio.gather(apply_schema_async(engine), apply_schema_async(engine))
    async with engine.connect() as connection:
        triggers = await connection.scalar(text(
            "SELECT count(*) FROM pg_trigger WHERE tgname = 'eventyard_outbox_notify'"))
    assert triggers == 1


async def test_bad_arguments_are_configuration_errors(engine: AsyncEngine) -> None:
    with pytest.raises(ConfigurationError, match="Session"):
        OUTBOX.publish(object(), OrderPlaced(order=1))  # type: ignore[arg-type]
    async with AsyncSession(engine) as session:
        with pytest.raises(InvalidMessageError, match="DomainEvent"):
            OUTBOX.publish(session, ShipOrder(order=1))  # type: ignore[arg-type]
        with pytest.raises(InvalidMessageError, match="Command"):
            OUTBOX.dispatch(session, OrderPlaced(order=1))  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        Outbox("acme", "bad service")
    for bad in ({"batch_size": 0}, {"batch_size": True}, {"batch_size": 10**6},
                {"poll_interval": -1}, {"retention": float("nan")}, {"inbox_window": 0},
                {"retry_delay": "1"}, {"cleanup_interval": float("inf")}, {"in_flight": 0},
                {"in_flight": 17}):
        with pytest.raises(ConfigurationError):
            RelaySettings(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="AsyncEngine"):
        OutboxRelay(object(), None)  # type: ignore[arg-type]


def test_without_the_extra_the_postgresql_parts_say_how_to_install_it() -> None:
    script = ("import sys; sys.modules['sqlalchemy'] = None\n"
              "from eventyard.errors import ConfigurationError\n"
              "import eventyard.outbox\n"
              "for name in ('OutboxRelay', 'apply_schema_async', 'pending_count', 'purge_inbox'):\n"
              "    try:\n        getattr(eventyard.outbox, name)\n"
              "    except ConfigurationError as e:\n        print(e)\n"
              "try:\n    eventyard.outbox.Outbox('acme', 'shop').publish(object(), [])\n"
              "except ConfigurationError as e:\n    print(e)\n"
              "try:\n    eventyard.outbox.idempotent(object())\n"
              "except ConfigurationError as e:\n    print(e)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 6, done.stdout
    assert all("pip install 'eventyard[outbox]'" in line for line in lines), done.stdout
    assert lines[0].startswith("eventyard.outbox.OutboxRelay (PostgreSQL) needs sqlalchemy")


async def test_the_relay_survives_its_database_connections_being_killed(
        engine: AsyncEngine, database: Database, broker: MemoryBroker) -> None:
    relay = OutboxRelay(engine, broker.publisher_transport,
                        RelaySettings(poll_interval=60, retry_delay=0.05))
    relay.start()
    try:
        async with async_sessionmaker(engine)() as session, session.begin():
            OUTBOX.publish(session, OrderPlaced(order=1))
        await eventually(lambda: broker.message_count("store") == 1, 5, "the first event")
        # Marked sent too (killed between its publish and its commit, it would go again).
        await eventually(lambda: _none_pending(engine), 5, "the first event marked sent")
        killed = await asyncio.to_thread(_terminate_backends, database)
        assert killed >= 1  # the LISTEN connection at least
        await eventually(lambda: relay.failures >= 1, 5, "the relay to notice")
        async with async_sessionmaker(engine)() as session, session.begin():
            OUTBOX.publish(session, OrderPlaced(order=2))
        # Woken by NOTIFY again (the poll is 60 s away): it listens on a new connection.
        await eventually(lambda: broker.message_count("store") == 2, 5, "the second event")
    finally:
        await relay.stop()
    assert stored_orders(broker) == [(0, 1), (0, 2)]


def _terminate_backends(database: Database) -> int:
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as connection:
        rows = connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
            "AND pid <> pg_backend_pid()", (database.name,)).fetchall()
    return len(rows)


async def test_a_relay_publishes_no_row_of_a_transaction_past_one_another_relay_holds(
        engine: AsyncEngine, broker: MemoryBroker) -> None:
    sessions = async_sessionmaker(engine)
    async with sessions() as session, session.begin():
        OUTBOX.publish(session, [OrderPlaced(order=o) for o in range(10)])
    relay = OutboxRelay(engine, broker.publisher_transport)
    async with engine.connect() as other:  # stands for a relay holding orders 3..5
        await other.execute(text(
            "SELECT id FROM eventyard_outbox WHERE id IN (SELECT id FROM eventyard_outbox "
            "ORDER BY id OFFSET 3 LIMIT 3) FOR UPDATE"))  # (rows OFFSET skips would be locked)
        # SKIP LOCKED hands this relay orders 0..2 and 6..9: it publishes 0..2 only.
        assert await relay.relay_once() == 3
        assert await relay.relay_once() == 0
        await other.rollback()  # the other relay went without publishing
    while await relay.relay_once():
        pass
    assert stored_orders(broker) == [(0, order) for order in range(10)]
