"""The outbox and inbox contract, run against both stores: PostgreSQL (SQLAlchemy sessions,
LISTEN/NOTIFY) and SQLite (stdlib sqlite3, no extra). Stored in the business transaction,
relayed after commit in order, never for a rollback; a handler's effects once per message."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from meiga import Failure, Success

from eventyard import AsyncDomainEventBus, ConfigurationError, MessageSubscriber, TopologyOptions
from eventyard.consuming import AsyncMessageConsumer, ConsumerSettings
from eventyard.memory import MemoryBroker, MemoryMessageConfigurer
from eventyard.outbox import Outbox, RelaySettings, SqliteOutboxStore, current_session, idempotent

from .conftest import OrderPlaced, eventually
from .stores import PostgresStore, SqliteStore

OUTBOX = Outbox("acme", "shop")


@pytest.fixture(params=["postgresql", "sqlite"])
def store(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "postgresql":
        yield PostgresStore(request.getfixturevalue("engine"),
                            request.getfixturevalue("sync_engine"))
        return
    with SqliteOutboxStore() as sqlite:
        yield SqliteStore(sqlite)


@pytest.fixture
async def effects_table(store: Any) -> None:
    async with store.transaction() as session:
        await store.execute(session, "CREATE TABLE effects (order_id text)")


def stored_orders(broker: MemoryBroker) -> list[tuple[int, int]]:
    """(batch, order) of each message in the store queue, head first."""
    bodies = [json.loads(m.body) for m in broker.messages("store")]
    return [(b["data"]["attributes"]["batch"], b["data"]["attributes"]["order"]) for b in bodies]


async def effects(store: Any) -> list[str]:
    return [row[0] for row in await store.query("SELECT order_id FROM effects ORDER BY 1")]


async def inbox_rows(store: Any) -> int:
    return int((await store.query("SELECT count(*) FROM eventyard_inbox"))[0][0])


async def test_a_committed_event_is_published_after_commit_and_marked_sent(
        store: Any, broker: MemoryBroker) -> None:
    async with store.transaction() as session:
        await store.execute(session, "CREATE TABLE orders (id int primary key)")
        await store.execute(session, "INSERT INTO orders VALUES (1)")
        OUTBOX.publish(session, OrderPlaced(order=1))
    assert broker.message_count("store") == 0  # stored, not published yet
    assert await store.pending() == 1
    relay = store.relay(broker.publisher_transport)
    assert await relay.relay_once() == 1
    assert stored_orders(broker) == [(0, 1)]
    assert await store.pending() == 0
    assert await relay.relay_once() == 0
    assert broker.message_count("store") == 1
    assert relay.published == 1


async def test_a_rolled_back_transaction_publishes_nothing(store: Any,
                                                           broker: MemoryBroker) -> None:
    with pytest.raises(RuntimeError, match="business rule"):
        async with store.transaction() as session:
            OUTBOX.publish(session, OrderPlaced(order=2))
            OUTBOX.publish(session, [OrderPlaced(order=3)])
            raise RuntimeError("business rule broken")
    assert await store.pending() == 0
    assert await store.relay(broker.publisher_transport).relay_once() == 0
    assert broker.message_count("store") == 0


async def test_the_messages_of_a_transaction_keep_their_order(store: Any,
                                                              broker: MemoryBroker) -> None:
    async with store.transaction() as session:
        for order in range(30):
            OUTBOX.publish(session, OrderPlaced(order=order))
        OUTBOX.publish(session, [OrderPlaced(order=order) for order in range(30, 60)])
    relay = store.relay(broker.publisher_transport, RelaySettings(batch_size=7))
    while await relay.relay_once():
        pass
    assert stored_orders(broker) == [(0, order) for order in range(60)]


async def test_a_commit_wakes_the_relay_long_before_its_poll(store: Any,
                                                            broker: MemoryBroker) -> None:
    relay = store.relay(broker.publisher_transport, RelaySettings(poll_interval=60))
    relay.start()
    try:
        for order in (1, 2):  # the poll would take 60 s
            async with store.transaction() as session:
                OUTBOX.publish(session, OrderPlaced(order=order))
            await eventually(lambda o=order: broker.message_count("store") == o, 5, f"event {order}")
    finally:
        await asyncio.wait_for(relay.stop(), 10)  # a stop never waits for the 60 s poll
    assert stored_orders(broker) == [(0, 1), (0, 2)]


async def test_sent_rows_go_after_the_retention_period_and_pending_ones_stay(
        store: Any, broker: MemoryBroker) -> None:
    async with store.transaction() as session:
        OUTBOX.publish(session, [OrderPlaced(order=o) for o in range(3)])
    relay = store.relay(broker.publisher_transport, RelaySettings(retention=3600))
    assert await relay.relay_once() == 3
    async with store.transaction() as session:
        OUTBOX.publish(session, OrderPlaced(order=3))  # pending: never deleted
    await store.backdate("eventyard_outbox", "sent_at", "id <= 2", 7200)
    assert await relay.cleanup() == 2
    left = await store.query("SELECT id, sent_at IS NULL FROM eventyard_outbox ORDER BY id")
    assert [(i, bool(p)) for i, p in left] == [(3, False), (4, True)]


async def test_a_sync_handler_runs_once_per_message_and_commits_with_its_record(
        store: Any, effects_table: None) -> None:
    runs: list[int] = []

    @idempotent(store.sync_sessions, name="shipping.reserve_stock")
    def reserve_stock(event: OrderPlaced) -> None:
        runs.append(event.order)
        store.execute_sync(current_session(), "INSERT INTO effects VALUES (:o)",
                           {"o": str(event.order)})

    first, second = OrderPlaced(order=1), OrderPlaced(order=2)
    for message in (first, first, second, first):
        assert await asyncio.to_thread(reserve_stock, message) is None
    assert runs == [1, 2]
    assert await effects(store) == ["1", "2"]
    assert await inbox_rows(store) == 2


async def test_an_async_handler_runs_once_and_a_failed_run_records_nothing(
        store: Any, effects_table: None) -> None:
    outcomes: list[Any] = [RuntimeError("database said no"), False, Failure(ValueError("no")),
                           Success(True)]
    runs = 0

    class Reserve:
        @idempotent(store.async_sessions)
        async def handle(self, event: OrderPlaced) -> Any:
            nonlocal runs
            runs += 1
            await store.execute(current_session(), "INSERT INTO effects VALUES (:o)",
                                {"o": str(event.order)})
            outcome = outcomes.pop(0)
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome

    handler, message = Reserve(), OrderPlaced(order=5)
    with pytest.raises(RuntimeError, match="database said no"):
        await handler.handle(message)
    assert await handler.handle(message) is False
    assert (await handler.handle(message)).is_failure
    assert (await effects(store), await inbox_rows(store)) == ([], 0)  # three failures: nothing
    assert (await handler.handle(message)).is_success
    assert await handler.handle(message) is None  # a redelivery: acked, not run
    assert runs == 4
    assert await effects(store) == ["5"]
    names = [row[0] for row in await store.query("SELECT handler FROM eventyard_inbox")]
    assert names == [f"{__name__}.test_an_async_handler_runs_once_and_a_failed_run_records_nothing"
                     ".<locals>.Reserve.handle"]


async def test_concurrent_copies_of_one_message_run_the_handler_once(
        store: Any, effects_table: None) -> None:
    runs = 0

    @idempotent(store.async_sessions, name="count")
    async def count(event: OrderPlaced) -> None:
        nonlocal runs
        runs += 1
        await store.execute(current_session(), "INSERT INTO effects VALUES ('x')")
        await asyncio.sleep(0.05)  # hold the row's lock while the other copies arrive

    message = OrderPlaced(order=1)
    await asyncio.gather(*(count(message) for _ in range(5)))
    assert runs == 1
    assert await effects(store) == ["x"]


async def test_on_a_consumer_a_retried_and_a_duplicated_message_take_effect_once(
        store: Any, effects_table: None) -> None:
    runs = 0

    @idempotent(store.async_sessions)
    async def record_order(event: OrderPlaced) -> None:
        nonlocal runs
        runs += 1
        await store.execute(current_session(), "INSERT INTO effects VALUES (:o)",
                            {"o": str(event.order)})
        if runs == 1:
            raise RuntimeError("first run fails after its write")

    options = TopologyOptions(retry_ttl_ms=20, store=False)
    subscribers = [MessageSubscriber.from_message(OrderPlaced, [record_order])]
    async with MemoryBroker() as broker:
        await asyncio.to_thread(MemoryMessageConfigurer(broker, "acme", "shop", options=options)
                                .configure_subscribers, subscribers)
        consumer = AsyncMessageConsumer(broker.consumer_transport, "acme", "shop",
                                        settings=ConsumerSettings(prefetch=5), options=options)
        consumer.add_subscribers(subscribers)
        await consumer.start()
        try:
            message = OrderPlaced(order=9)
            bus = AsyncDomainEventBus(broker.publisher_transport, "acme", "shop")
            await bus.publish(message)
            await broker.wait_until_idle_async()
            await bus.publish(message)  # the same message id again (an outbox copy, say)
            await broker.wait_until_idle_async()
        finally:
            await consumer.stop()
        assert broker.dead_letters() == []
        assert sum(broker.message_counts().values()) == 0
    assert runs == 2  # the failed run and its retry; the duplicate did not run
    assert await effects(store) == ["9"]


async def _two_inbox_rows_one_old(store: Any) -> None:
    @idempotent(store.async_sessions, name="h")
    async def handle(event: OrderPlaced) -> None:
        pass

    old = OrderPlaced(order=1)
    await handle(old)
    await handle(OrderPlaced(order=2))
    await store.backdate("eventyard_inbox", "handled_at",
                         f"message_id = '{old.get_message_id()}'", 2 * 24 * 3600)


async def test_inbox_rows_expire_after_the_window(store: Any) -> None:
    await _two_inbox_rows_one_old(store)
    assert await store.purge_inbox(24 * 3600) == 1
    assert await inbox_rows(store) == 1
    for bad in (0, -1, True, float("nan")):
        with pytest.raises(ConfigurationError, match="window"):
            await store.purge_inbox(bad)


async def test_a_running_relay_expires_inbox_rows(store: Any, broker: MemoryBroker) -> None:
    await _two_inbox_rows_one_old(store)
    relay = store.relay(broker.publisher_transport, RelaySettings(inbox_window=3600))
    relay.start()
    try:
        await eventually(lambda: _rows_are(store, 1), 5, "the expired row's deletion")
    finally:
        await relay.stop()


async def _rows_are(store: Any, count: int) -> bool:
    return await inbox_rows(store) == count
