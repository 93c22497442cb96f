"""The port between eventyard's engine and a broker, in eventyard's words.

A ``Transport`` is one live connection to a broker: it declares a topology, publishes messages
(returning only once the broker has taken every one of them), and delivers the messages of a
queue to a callback until cancelled. The RabbitMQ adapter and the in-memory broker implement
it; buses and consumers are written once on top of it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from eventyard.declarations import Topology
from eventyard.headers import DEFAULT_FRAME_MAX

UNREADABLE_PROPERTIES = "eventyard_unreadable_properties"
"""A header a transport puts on a delivery whose properties (headers included) it could not
read, saying why; the consumer dead-letters such a delivery, body intact."""


@dataclass(slots=True)
class OutgoingMessage:
    """A message to publish: where it goes, its body and its properties."""

    exchange: str
    routing_key: str
    body: bytes
    headers: dict[str, Any] = field(default_factory=dict)
    message_id: str | None = None
    type: str | None = None
    timestamp: int | None = None  # seconds since the epoch
    content_type: str = "application/json"
    correlation_id: str | None = None  # the conversation it belongs to (observability)


class Delivery(Protocol):
    """A message handed to a consumer, waiting to be acked or rejected."""

    @property
    def body(self) -> bytes:
        """The raw body."""

    @property
    def exchange(self) -> str:
        """The exchange it was published to."""

    @property
    def routing_key(self) -> str:
        """The routing key it was published with."""

    @property
    def queue(self) -> str:
        """The queue it was consumed from."""

    @property
    def headers(self) -> Mapping[str, Any]:
        """Its headers (empty when it has none)."""

    @property
    def redelivered(self) -> bool:
        """True when the broker delivered it before and it was not acked."""

    @property
    def message_id(self) -> str | None:
        """The ``message_id`` property."""

    @property
    def type(self) -> str | None:
        """The ``type`` property (the message name)."""

    @property
    def timestamp(self) -> int | None:
        """The ``timestamp`` property, seconds since the epoch."""

    @property
    def correlation_id(self) -> str | None:
        """The ``correlation_id`` property."""

    async def ack(self) -> None:
        """The message is done: the broker forgets it."""

    async def reject(self, *, requeue: bool) -> None:
        """Hand the message back (``requeue``) or drop it to the queue's dead-letter exchange."""


DeliveryCallback = Callable[[Delivery], Awaitable[None]]


class Consumption(Protocol):
    """A running subscription of a callback to a queue."""

    async def cancel(self) -> None:
        """Stop receiving new deliveries; deliveries in hand may still be acked."""


class Transport(Protocol):
    """One connection to a broker, as eventyard's engine needs it.

    A transport may also have a ``frame_max`` attribute: the largest frame its connection
    takes (the content header of a message, its headers included, must fit in one). A consumer
    bounds the headers of the copies it publishes by it (``frame_max_of``).
    """

    async def declare(self, topology: Topology) -> None:
        """Create what ``topology`` describes; report a clash with what exists."""

    async def delete(self, topology: Topology) -> None:
        """Remove the queues and exchanges of ``topology`` (messages in them are lost)."""

    async def publish(self, messages: Sequence[OutgoingMessage]) -> list[int]:
        """Publish every message and wait until the broker has confirmed them all.

        Return the indexes of the messages that reached no queue. Raise ``PublishNackedError``
        if the broker refused one, ``BrokerConnectionError`` if the connection was lost first.
        """

    async def consume(self, queue: str, callback: DeliveryCallback, *, prefetch: int) -> Consumption:
        """Call ``callback`` for each message of ``queue``, at most ``prefetch`` unacked at once."""

    async def close(self) -> None:
        """Close the connection; unacked deliveries go back to their queues."""


def frame_max_of(transport: object) -> int:
    """The ``frame_max`` of ``transport``'s connection; ``DEFAULT_FRAME_MAX`` if it says none."""
    value = getattr(transport, "frame_max", DEFAULT_FRAME_MAX)
    return value if isinstance(value, int) and value >= 0 else DEFAULT_FRAME_MAX


TransportSource = Callable[[], Awaitable[Transport]]
"""Gives the transport for the running event loop (connecting on first use)."""
