"""A relay that stops dead inside a batch: run as a process of its own by the crash tests.

    python relay_script.py ASYNC_DATABASE_URL AMQP_URL BATCH_SIZE PAUSE_AFTER

It relays like ``eventyard outbox relay``, but once the broker has confirmed batch number
PAUSE_AFTER it prints ``paused <published>`` and waits for ever before marking the batch sent:
the test kills it there with SIGKILL.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import create_async_engine

from eventyard.outbox import OutboxRelay, RelaySettings
from eventyard.ports import OutgoingMessage, Transport
from eventyard.rabbitmq import RabbitMqConnector


async def main(database_url: str, amqp_url: str, batch_size: int, pause_after: int) -> None:
    engine = create_async_engine(database_url)
    batches = 0
    async with RabbitMqConnector(amqp_url) as connector:
        real = await connector.publisher_transport()

        class Pausing:
            """The connector's transport, holding after the chosen batch's confirms."""

            def __getattr__(self, name: str) -> object:
                return getattr(real, name)

            async def publish(self, messages: Sequence[OutgoingMessage]) -> list[int]:
                nonlocal batches
                unroutable = await real.publish(messages)
                batches += 1
                if batches == pause_after:
                    print(f"paused {relay.published + len(messages)}", flush=True)
                    await asyncio.Event().wait()
                return unroutable

        async def transports() -> Transport:
            return Pausing()  # type: ignore[return-value]

        relay = OutboxRelay(engine, transports, RelaySettings(batch_size=batch_size))
        await relay.run()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
