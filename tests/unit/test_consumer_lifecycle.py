"""The async consumer's run loop ends gracefully on SIGTERM (in-memory broker)."""

from __future__ import annotations

import asyncio
import os
import signal

from eventyard import DomainEvent, MessageSubscriber
from eventyard.consuming import AsyncMessageConsumer
from eventyard.memory import MemoryBroker


class Pinged(DomainEvent):
    sequence: int


def on_ping(event: Pinged) -> None:
    return None


class TerminatedOnceStarted(AsyncMessageConsumer):
    """Sends itself SIGTERM as soon as consuming has begun."""

    async def start(self) -> None:
        await super().start()
        # Runs on the next loop turn: after run_until_signal has installed its handlers.
        asyncio.get_running_loop().call_soon(os.kill, os.getpid(), signal.SIGTERM)


async def test_run_until_signal_stops_on_sigterm() -> None:
    broker = MemoryBroker()
    consumer = TerminatedOnceStarted(broker.consumer_transport, "tlife", "svc")
    consumer.add_subscribers([MessageSubscriber.from_message(Pinged, [on_ping])])

    await asyncio.wait_for(consumer.run_until_signal(), 10)

    assert not consumer.is_running
    assert broker.queue_names()  # the consumer declared its missing queues
