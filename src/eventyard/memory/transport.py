"""``MemoryTransport``: the Transport port over the in-memory broker's state.

What a message goes through between the application and RabbitMQ is emulated here: its headers
are written and read as the AMQP client does (``wire``), it gets a ``message_id`` when it has
none (the client gives it one), and a content header larger than the frame the connection
negotiated closes the connection, as RabbitMQ does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from eventyard.errors import BrokerConnectionError, ConfigurationError
from eventyard.headers import DEFAULT_FRAME_MAX
from eventyard.memory import declaring, wire
from eventyard.memory.routing import Stored
from eventyard.memory.state import BrokerState
from eventyard.ports import UNREADABLE_PROPERTIES, Consumption, DeliveryCallback, OutgoingMessage
from eventyard.topology import Topology

logger = logging.getLogger(__name__)


def wake_on(loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
    """Set ``event`` of ``loop`` from any thread."""
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        event.set()
    else:
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting
            loop.call_soon_threadsafe(event.set)


class MemoryDelivery:
    """A message handed to a consumer of the in-memory broker."""

    __slots__ = ("consumption", "queue", "seen", "state", "stored", "tag")

    def __init__(self, consumption: MemoryConsumption, stored: Stored, tag: int) -> None:
        self.consumption = consumption
        self.stored = stored
        self.queue = consumption.queue
        self.tag = tag
        self.seen = False  # handed to the callback (a return then counts as a redelivery)
        self.state: Literal["pending", "settled", "returned"] = "pending"

    @property
    def body(self) -> bytes:
        """The raw body."""
        return self.stored.body

    @property
    def exchange(self) -> str:
        """The exchange it was published (or dead-lettered) to."""
        return self.stored.exchange

    @property
    def routing_key(self) -> str:
        """The routing key it was published (or dead-lettered) with."""
        return self.stored.routing_key

    @property
    def headers(self) -> Mapping[str, Any]:
        """Its headers."""
        return self.stored.headers

    @property
    def redelivered(self) -> bool:
        """True when it was delivered before and not acked."""
        return self.stored.redelivered

    @property
    def message_id(self) -> str | None:
        """The ``message_id`` property."""
        return self.stored.message_id

    @property
    def type(self) -> str | None:
        """The ``type`` property."""
        return self.stored.type

    @property
    def timestamp(self) -> int | None:
        """The ``timestamp`` property."""
        return self.stored.timestamp

    @property
    def correlation_id(self) -> str | None:
        """The ``correlation_id`` property."""
        return self.stored.correlation_id

    async def ack(self) -> None:
        """Done: the broker forgets the message."""
        self.consumption.state.settle(self, ack=True, requeue=False)

    async def reject(self, *, requeue: bool) -> None:
        """Back to the head of the queue (``requeue``), or to the queue's dead-letter exchange."""
        self.consumption.state.settle(self, ack=False, requeue=requeue)

    def __repr__(self) -> str:
        return f"MemoryDelivery({self.queue!r}, tag={self.tag}, {self.state})"


class MemoryConsumption:
    """A callback subscribed to a queue; a pump task awaits it for one delivery at a time."""

    def __init__(self, state: BrokerState, transport: MemoryTransport, queue: str,
                 callback: DeliveryCallback, prefetch: int) -> None:
        self.state = state
        self.transport = transport
        self.queue = queue
        self.callback = callback
        self.prefetch = prefetch
        self.cancelled = False
        self.unacked: dict[int, MemoryDelivery] = {}  # delivered, not yet settled (buffer too)
        self.buffer: deque[MemoryDelivery] = deque()  # delivered, not yet given to the callback
        self.loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def capacity(self) -> int:
        """How many more deliveries prefetch allows."""
        return self.prefetch - len(self.unacked)

    def give(self, stored: Stored, tag: int) -> None:
        """Take one message (called by the broker under its lock)."""
        delivery = MemoryDelivery(self, stored, tag)
        self.unacked[tag] = delivery
        self.buffer.append(delivery)
        self.wake()

    def wake(self) -> None:
        """Make the pump look at its buffer (from any thread)."""
        wake_on(self.loop, self._event)

    def _next(self) -> MemoryDelivery | None:
        with self.state.lock:
            if self.cancelled or not self.buffer:
                return None
            delivery = self.buffer.popleft()
            delivery.seen = True
            return delivery

    async def pump(self) -> None:
        """Hand deliveries to the callback one at a time, in order, until cancelled."""
        try:
            while not self.cancelled:
                self._event.clear()
                delivery = self._next()
                if delivery is None:
                    await self._event.wait()
                    continue
                try:
                    await self.callback(delivery)
                except Exception:
                    logger.exception("consumer callback of %s failed; requeueing the message",
                                     self.queue)
                    if delivery.state == "pending":
                        with contextlib.suppress(Exception):
                            await delivery.reject(requeue=True)
        except asyncio.CancelledError:
            # Killed (say, a shutdown timeout): like a dead process, its messages go back.
            self.cancelled = True
            self.state.remove_consumption(self, release_all=True)
            raise

    async def cancel(self) -> None:
        """Stop delivering; buffered deliveries go back to the queue, those in hand may be acked."""
        if self.cancelled:
            return
        self.cancelled = True
        self.state.remove_consumption(self, release_all=False)
        self.wake()


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
        sent = [self._as_sent(message) for message in messages]
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

    @staticmethod
    def _as_sent(message: OutgoingMessage) -> tuple[Stored, int]:
        """``message`` as the broker receives it from the AMQP client, and its header's size."""
        table, headers = wire.as_delivered(message.headers)
        message_id = message.message_id or uuid.uuid4().hex  # the client always sets one
        size = wire.content_header_size(table, content_type=message.content_type,
                                        message_id=message_id, type=message.type,
                                        timestamp=message.timestamp,
                                        correlation_id=message.correlation_id)
        return Stored(message.exchange, message.routing_key, message.body, headers, message_id,
                      message.type, message.timestamp, message.content_type,
                      message.correlation_id), size

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

    async def drop_connection(self) -> None:
        """``drop()``, named as on ``RabbitMqTransport``."""
        self.drop_now()

    def drop_now(self) -> None:
        """``drop()`` for callers on any thread."""
        for consumption in list(self.consumptions):
            if not consumption.cancelled:
                self._state.release(consumption, seen_too=True)
        logger.info("%s: connection dropped and resumed", self.name)
