"""``MemoryTransport``: the Transport port over the in-memory broker's state.

What a message goes through between the application and RabbitMQ is emulated here: its headers
are written and read as the AMQP client does (``wire``), it gets a ``message_id`` when it has
none (the client gives it one), and a content header larger than the frame the connection
negotiated closes the connection, as RabbitMQ does.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence

from eventyard.declarations import Topology
from eventyard.errors import BrokerConnectionError, ConfigurationError
from eventyard.headers import DEFAULT_FRAME_MAX
from eventyard.memory import declaring, wire
from eventyard.memory.consumption import MemoryConsumption, MemoryDelivery, wake_on
from eventyard.memory.routing import Stored
from eventyard.memory.state import BrokerState
from eventyard.ports import UNREADABLE_PROPERTIES, Consumption, DeliveryCallback, OutgoingMessage

__all__ = ["MemoryConsumption", "MemoryDelivery", "MemoryTransport", "wake_on"]

logger = logging.getLogger(__name__)


class MemoryTransport:
    """One "connection" to a ``MemoryBroker``: the Transport port, emulating AMQP routing."""

    def __init__(self, state: BrokerState, name: str = "memory", *,
                 frame_max: int = DEFAULT_FRAME_MAX) -> None:
        self._state = state
        self.name = name
        self.closed = False
        self.consumptions: list[MemoryConsumption] = []
        self.frame_max = frame_max  # as negotiated with RabbitMQ: its default

    def _check_open(self) -> None:
        if self.closed:
            raise BrokerConnectionError(f"{self.name}: the transport is closed")

    async def declare(self, topology: Topology) -> None:
        """Create the topology; ``TopologyMismatchError`` if a queue exists with other arguments."""
        self._check_open()
        declaring.declare(self._state, topology)

    async def delete(self, topology: Topology) -> None:
        """Delete the topology's queues (and their messages) and exchanges."""
        self._check_open()
        declaring.delete(self._state, topology)

    async def publish(self, messages: Sequence[OutgoingMessage]) -> list[int]:
        """Route every message; return the indexes of those that reached no queue.

        A header the AMQP client cannot write raises what the client raises (``TypeError``, or
        ``UnicodeEncodeError`` for a lone surrogate) and nothing is published; a message whose
        content header outgrows the frame closes the connection (``BrokerConnectionError``),
        the messages before it published, as on RabbitMQ.
        """
        self._check_open()
        sent = [as_sent(message) for message in messages]
        limit = self.frame_max - wire.FRAME_OVERHEAD if self.frame_max > 0 else None
        for index, (stored, size) in enumerate(sent):
            if limit is not None and size > limit:
                if index:
                    self._state.publish([s for s, _ in sent[:index]])
                self.drop_now()
                raise BrokerConnectionError(
                    f"{self.name}: the broker closed the connection: message {stored.message_id} "
                    f"has a {size}-byte content header, over the frame limit ({self.frame_max}); "
                    "it was not stored")
        return self._state.publish([stored for stored, _ in sent])

    async def publish_foreign(self, exchange: str, routing_key: str, body: bytes, *,
                              headers_table: bytes, message_id: str | None = None,
                              type: str | None = None) -> bool:
        """Publish as a client in another language might: the headers as an encoded AMQP field
        table, which need not be one eventyard's client could write. Return True if routed.

        A consumer receives the headers as the AMQP client reads them; a table it cannot read
        reaches it as ``UNREADABLE_PROPERTIES`` (saying why), as on RabbitMQ.
        """
        self._check_open()
        headers, problem = wire.readable(headers_table)
        if problem is not None:
            headers = {UNREADABLE_PROPERTIES: problem}
        stored = Stored(exchange, routing_key, body, headers, message_id, type, None,
                        "application/json")
        return not self._state.publish([stored])

    async def consume(self, queue: str, callback: DeliveryCallback, *, prefetch: int) -> Consumption:
        """Deliver ``queue`` to ``callback``, at most ``prefetch`` unacked."""
        self._check_open()
        if prefetch < 1:
            raise ConfigurationError(f"prefetch must be >= 1, not {prefetch}")
        consumption = MemoryConsumption(self._state, self, queue, callback, prefetch)
        self._state.add_consumption(consumption)  # raises when the queue does not exist
        consumption.task = asyncio.create_task(consumption.pump(), name=f"eventyard-memory:{queue}")
        self.consumptions.append(consumption)
        return consumption

    async def close(self) -> None:
        """Close: consumptions stop and every unacked delivery goes back to its queue."""
        if self.closed:
            return
        self.closed = True
        for consumption in self.consumptions:
            consumption.cancelled = True
            self._state.remove_consumption(consumption, release_all=True)
            consumption.wake()
        self.consumptions.clear()

    async def drop(self) -> None:
        """Simulate a dropped connection that reconnects at once (chaos).

        Unacked deliveries go back to their queues (acking one now does nothing, as on RabbitMQ);
        consumptions then resume, as the RabbitMQ adapter's do.
        """
        self.drop_now()

    def drop_now(self) -> None:
        """``drop()`` for callers on any thread."""
        for consumption in list(self.consumptions):
            if not consumption.cancelled:
                self._state.release(consumption, seen_too=True)
        logger.info("%s: connection dropped and resumed", self.name)


def as_sent(message: OutgoingMessage) -> tuple[Stored, int]:
    """``message`` as the broker receives it from the AMQP client, and its content header's size
    (headers encoded and read back as the client does: ``TypeError`` or ``UnicodeEncodeError``
    for what it cannot write)."""
    table, headers = wire.as_delivered(message.headers)
    message_id = message.message_id or uuid.uuid4().hex  # the client always sets one
    size = wire.content_header_size(table, content_type=message.content_type,
                                    message_id=message_id, type=message.type,
                                    timestamp=message.timestamp,
                                    correlation_id=message.correlation_id)
    return Stored(message.exchange, message.routing_key, message.body, headers, message_id,
                  message.type, message.timestamp, message.content_type,
                  message.correlation_id), size
