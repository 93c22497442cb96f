"""Soak probes: what a chaos soak reads from a broker beyond the ``Transport`` port.

Each broker has its own probe (``eventyard.memory.soak``, ``eventyard.rabbitmq.soak``);
``probe_for`` picks it by the broker's type.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Protocol

from eventyard.buses import Broker
from eventyard.errors import ConfigurationError
from eventyard.memory import MemoryBroker
from eventyard.memory.soak import MemorySoakProbe
from eventyard.ports import Transport

logger = logging.getLogger("eventyard.soak")  # the soak's logs keep one logger name

POLL_SECONDS = 0.2


class SoakProbe(Protocol):
    """What a soak needs from a broker beyond the ``Transport`` port."""

    async def ready_count(self, queue: str) -> int:
        """Messages waiting in ``queue`` (delayed retries included)."""

    async def message_ids(self, queue: str) -> list[str]:
        """The ``message_id`` of every message in ``queue``, left in place."""

    async def consumer_count(self, queue: str) -> int:
        """Consumers the broker still counts on ``queue``."""

    async def drop(self, transport: Transport) -> None:
        """Cut ``transport``'s connection as a network failure would; it reconnects by itself."""

    async def close(self) -> None:
        """Release what the probe opened."""


async def probe_for(broker: Broker) -> SoakProbe:
    """The soak probe for a RabbitMQ connector or an in-memory broker, by its type."""
    if isinstance(broker, MemoryBroker):
        return MemorySoakProbe(broker)
    try:  # the RabbitMQ adapter is an optional extra (aiormq)
        from eventyard.rabbitmq.connector import RabbitMqConnector
        from eventyard.rabbitmq.soak import RabbitMqSoakProbe
    except ImportError:
        RabbitMqConnector = None  # type: ignore[assignment,misc]
    if RabbitMqConnector is not None and isinstance(broker, RabbitMqConnector):
        probe = RabbitMqSoakProbe(broker.settings)
        await probe.connect()
        return probe
    raise ConfigurationError(f"no soak probe for {broker!r}: pass probe= to run_soak")


async def wait_until_released(probe: SoakProbe, queues: Iterable[str],
                               timeout: float = 10.0) -> None:
    """Wait until the broker has let go of our consumers: their unacked messages are back."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = [await probe.consumer_count(queue) for queue in queues]
        if not any(counts):
            return
        await asyncio.sleep(POLL_SECONDS / 4)  # polling interval of a deadline-bounded wait
    logger.warning("the broker still counts consumers on the soak's queues after %.0f s", timeout)

