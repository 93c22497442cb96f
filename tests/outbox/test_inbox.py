"""The idempotent inbox: a handler's writes and its (handler, message id) row commit together;
a redelivery is acked without running it again; a failed run records nothing; rows expire."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from meiga import Failure, Success
from sqlalchemy import Engine, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import sessionmaker

from eventyard import AsyncDomainEventBus, ConfigurationError, MessageSubscriber, TopologyOptions
from eventyard.consuming import AsyncMessageConsumer, ConsumerSettings
from eventyard.memory import MemoryBroker, MemoryMessageConfigurer
from eventyard.outbox import (
    OutboxRelay,
    RelaySettings,
    current_session,
    idempotent,
    purge_inbox,
)

from .conftest import OrderPlaced, eventually


async def effects(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        return list((await connection.scalars(text("SELECT order_id FROM effects ORDER BY 1"))).all())


async def inbox_rows(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(text("SELECT count(*) FROM eventyard_inbox")) or 0)


@pytest.fixture
async def effects_table(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.execute(text("CREATE TABLE effects (order_id text)"))


async def test_a_sync_handler_runs_once_per_message_and_commits_with_its_record(
        engine: AsyncEngine, sync_engine: Engine, effects_table: None) -> None:
    runs: list[int] = []

    @idempotent(sessionmaker(sync_engine), name="shipping.reserve_stock")
    def reserve_stock(event: OrderPlaced) -> None:
        runs.append(event.order)
        current_session().execute(text("INSERT INTO effects VALUES (:o)"), {"o": str(event.order)})

    first, second = OrderPlaced(order=1), OrderPlaced(order=2)
    for message in (first, first, second, first):
        assert await asyncio.to_thread(reserve_stock, message) is None
    assert runs == [1, 2]
    assert await effects(engine) == ["1", "2"]
    assert await inbox_rows(engine) == 2


async def test_an_async_handler_runs_once_and_a_failed_run_records_nothing(
        engine: AsyncEngine, effects_table: None) -> None:
    outcomes: list[Any] = [RuntimeError("database said no"), False, Failure(ValueError("no")),
                           Success(True)]
    runs = 0

    class Reserve:
        @idempotent(async_sessionmaker(engine))
        async def handle(self, event: OrderPlaced) -> Any:
            nonlocal runs
            runs += 1
            await current_session().execute(text("INSERT INTO effects VALUES (:o)"),
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
    assert (await effects(engine), await inbox_rows(engine)) == ([], 0)  # three failures: nothing
    assert (await handler.handle(message)).is_success
    assert await handler.handle(message) is None  # a redelivery: acked, not run
    assert runs == 4
    assert await effects(engine) == ["5"]
    async with engine.connect() as connection:
        names = (await connection.scalars(text("SELECT handler FROM eventyard_inbox"))).all()
    assert names == [f"{__name__}.test_an_async_handler_runs_once_and_a_failed_run_records_nothing"
                     ".<locals>.Reserve.handle"]


async def test_concurrent_copies_of_one_message_run_the_handler_once(
        engine: AsyncEngine, effects_table: None) -> None:
    runs = 0

    @idempotent(async_sessionmaker(engine), name="count")
    async def count(event: OrderPlaced) -> None:
        nonlocal runs
        runs += 1
        await current_session().execute(text("INSERT INTO effects VALUES ('x')"))
        await asyncio.sleep(0.05)  # hold the row's lock while the other copies arrive

    message = OrderPlaced(order=1)
    await asyncio.gather(*(count(message) for _ in range(5)))
    assert runs == 1
    assert await effects(engine) == ["x"]


async def test_on_a_consumer_a_retried_and_a_duplicated_message_take_effect_once(
        engine: AsyncEngine, effects_table: None) -> None:
    runs = 0

    @idempotent(async_sessionmaker(engine))
    async def record_order(event: OrderPlaced) -> None:
        nonlocal runs
        runs += 1
        await current_session().execute(text("INSERT INTO effects VALUES (:o)"),
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
    assert await effects(engine) == ["9"]


async def test_inbox_rows_expire_after_the_window(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.execute(text(
            "INSERT INTO eventyard_inbox (handler, message_id, handled_at) VALUES "
            "('h', 'old', now() - interval '2 days'), ('h', 'new', now())"))
    assert await purge_inbox(engine, 24 * 3600) == 1
    async with engine.connect() as connection:
        left = (await connection.scalars(text("SELECT message_id FROM eventyard_inbox"))).all()
    assert left == ["new"]
    for bad in (0, -1, True, float("nan")):
        with pytest.raises(ConfigurationError, match="window"):
            await purge_inbox(engine, bad)


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


async def test_a_running_relay_expires_inbox_rows(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.execute(text(
            "INSERT INTO eventyard_inbox (handler, message_id, handled_at) VALUES "
            "('h', 'old', now() - interval '2 hours'), ('h', 'new', now())"))
    async with MemoryBroker() as broker:
        relay = OutboxRelay(engine, broker.publisher_transport, RelaySettings(inbox_window=3600))
        relay.start()
        try:
            await eventually(lambda: _rows_are(engine, 1), 5, "the expired row's deletion")
        finally:
            await relay.stop()


async def _rows_are(engine: AsyncEngine, count: int) -> bool:
    return await inbox_rows(engine) == count
