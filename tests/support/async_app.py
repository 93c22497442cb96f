"""An async application that ends with ``async with``: run as a process of its own by tests.

    python async_app.py memory
    python async_app.py rabbitmq AMQP_URL ORGANISATION [unstopped]

It configures its subscribers with the sync configurer (the broker's loop thread starts),
consumes with the async consumer, publishes an event with the async bus, waits for its handler
and leaves the ``async with`` block; ``unstopped`` leaves the consumer running for the block's
end to close. It prints ``handled`` and nothing else: tests run it with ``-W error`` and
``PYTHONASYNCIODEBUG=1`` and expect an empty stderr (no lost connection, no pending task).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from eventyard import AsyncDomainEventBus, DomainEvent, MessageSubscriber, TopologyOptions
from eventyard.consuming import AsyncMessageConsumer, ConsumerSettings
from eventyard.memory import MemoryBroker, MemoryMessageConfigurer
from eventyard.rabbitmq import RabbitMqConnector, RabbitMqMessageConfigurer


class PingSent(DomainEvent):
    number: int


async def exercise(connector: Any, configurer: Any, org: str, stop_consumer: bool) -> None:
    """Configure, consume, publish one event and wait for its handler, on ``connector``."""
    handled = asyncio.Event()

    async def note_ping(event: PingSent) -> None:
        handled.set()

    subscribers = [MessageSubscriber.from_message(PingSent, [note_ping])]
    options = TopologyOptions(store=False)
    await asyncio.to_thread(configurer(connector, org, "pinger", options=options).configure_subscribers,
                            subscribers)
    consumer = AsyncMessageConsumer(connector.consumer_transport, org, "pinger",
                                    settings=ConsumerSettings(prefetch=10), options=options)
    consumer.add_subscribers(subscribers)
    await consumer.start()
    await AsyncDomainEventBus(connector.publisher_transport, org, "pinger").publish(PingSent(number=1))
    await asyncio.wait_for(handled.wait(), 10)
    if stop_consumer:
        await consumer.stop()
    print("handled", flush=True)


async def main(argv: list[str]) -> None:
    # Debug mode reports any step over 0.1 s; on a busy machine that is noise, not a finding.
    asyncio.get_running_loop().slow_callback_duration = 10.0
    stop_consumer = "unstopped" not in argv
    if argv[0] == "memory":
        async with MemoryBroker() as broker:
            await exercise(broker, MemoryMessageConfigurer, "acme", stop_consumer)
    else:
        async with RabbitMqConnector(argv[1]) as connector:
            await exercise(connector, RabbitMqMessageConfigurer, argv[2], stop_consumer)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
