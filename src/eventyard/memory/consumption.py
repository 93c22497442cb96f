"""Consuming on the in-memory broker: deliveries and the pump that hands them to a callback."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from eventyard.memory.routing import Stored
from eventyard.memory.state import BrokerState
from eventyard.ports import DeliveryCallback

if TYPE_CHECKING:
    from eventyard.memory.transport import MemoryTransport

# The transport's logger: one name for the in-memory connection and its consumers.
logger = logging.getLogger("eventyard.memory.transport")


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
