"""A consumer whose idempotent handler dies after its commit, before its ack: run as a process of
its own by the crash tests.

    python consumer_script.py ASYNC_DATABASE_URL AMQP_URL ORGANISATION KILL_AT

It consumes ``OrderPlaced`` of ORGANISATION.shop with ``record_order``, which inserts one row
into ``effects`` in the inbox's transaction and prints ``ran <order>``. For order KILL_AT (-1:
never) the process kills itself with SIGKILL right after the commit, so the message is never
acked. It prints ``consuming`` once started and runs until SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from eventyard import DomainEvent, MessageSubscriber, TopologyOptions
from eventyard.consuming import AsyncMessageConsumer, ConsumerSettings
from eventyard.outbox import current_session, idempotent
from eventyard.rabbitmq import RabbitMqConnector

OPTIONS = TopologyOptions(store=False)


class OrderPlaced(DomainEvent):
    order: int
    batch: int = 0


def subscribers_of(sessions: async_sessionmaker | None, kill_at: int) -> list[MessageSubscriber]:  # type: ignore[type-arg]
    async def record(event: OrderPlaced) -> None:
        print(f"ran {event.order}", flush=True)
        await current_session().execute(text("INSERT INTO effects VALUES (:o)"), {"o": event.order})

    inner = idempotent(sessions, name="shop.record_order")(record) if sessions else record

    async def record_order(event: OrderPlaced) -> None:
        await inner(event)
        if event.order == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # committed; the ack never goes

    return [MessageSubscriber.from_message(OrderPlaced, [record_order])]


async def main(database_url: str, amqp_url: str, org: str, kill_at: int) -> None:
    engine = create_async_engine(database_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with RabbitMqConnector(amqp_url) as connector:
        consumer = AsyncMessageConsumer(connector.consumer_transport, org, "shop",
                                        settings=ConsumerSettings(prefetch=1), options=OPTIONS)
        consumer.add_subscribers(subscribers_of(async_sessionmaker(engine), kill_at))
        await consumer.start()
        print("consuming", flush=True)
        await stop.wait()
        await consumer.stop()
    await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
