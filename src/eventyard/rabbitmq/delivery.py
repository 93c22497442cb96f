"""A message delivered by RabbitMQ, as the ``Delivery`` port describes it."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import aiormq.exceptions as amqp_errors
from aiormq.abc import DeliveredMessage

logger = logging.getLogger(__name__)
_EMPTY: Mapping[str, Any] = {}


class RabbitMqDelivery:
    """One delivery; ``ack``/``reject`` on a dead channel are no-ops (RabbitMQ redelivers)."""

    __slots__ = ("_frame", "_message", "queue")

    def __init__(self, message: DeliveredMessage, queue: str) -> None:
        self._message = message
        self._frame: Any = message.delivery  # a Basic.Deliver for consumed messages
        self.queue = queue

    @property
    def body(self) -> bytes:
        """The raw body."""
        return bytes(self._message.body)

    @property
    def exchange(self) -> str:
        """The exchange it was published to."""
        return str(self._frame.exchange or "")

    @property
    def routing_key(self) -> str:
        """The routing key it was published (or dead-lettered) with."""
        return str(self._frame.routing_key or "")

    @property
    def headers(self) -> Mapping[str, Any]:
        """Its headers."""
        headers = self._message.header.properties.headers
        return headers if headers is not None else _EMPTY

    @property
    def redelivered(self) -> bool:
        """True when RabbitMQ delivered it before."""
        return bool(getattr(self._frame, "redelivered", False))

    @property
    def message_id(self) -> str | None:
        """The ``message_id`` property."""
        value = self._message.header.properties.message_id
        return str(value) if value is not None else None

    @property
    def type(self) -> str | None:
        """The ``type`` property."""
        value = self._message.header.properties.message_type
        return str(value) if value is not None else None

    @property
    def timestamp(self) -> int | None:
        """The ``timestamp`` property in seconds."""
        value = self._message.header.properties.timestamp
        return int(value.timestamp()) if value is not None else None

    @property
    def is_stale(self) -> bool:
        """True when its channel is closed: it can no longer be acked."""
        channel = self._message.channel
        return channel is None or channel.is_closed

    async def ack(self) -> None:
        """Ack it (without waiting for the socket write)."""
        try:
            await self._message.channel.basic_ack(int(self._frame.delivery_tag), wait=False)
        except (amqp_errors.ChannelInvalidStateError, amqp_errors.AMQPError, RuntimeError) as error:
            logger.debug("ack of %s lost with its channel (%s); RabbitMQ will redeliver it",
                         self.message_id, error)

    async def reject(self, *, requeue: bool) -> None:
        """Give it back (``requeue``) or drop it to the queue's dead-letter exchange."""
        try:
            await self._message.channel.basic_reject(int(self._frame.delivery_tag),
                                                     requeue=requeue, wait=False)
        except (amqp_errors.ChannelInvalidStateError, amqp_errors.AMQPError, RuntimeError) as error:
            logger.debug("reject of %s lost with its channel (%s)", self.message_id, error)
