"""Consuming one queue on a channel of its own, in order, resumed after the channel dies.

The transport owns the connection and replays every consumption after a reconnect; a
``Consumption`` handles what happens to its own channel (the broker closing it or cancelling
the consumer) and runs the callback for each delivery, one after the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any, Protocol

import aiormq.exceptions as amqp_errors
from aiormq.abc import AbstractChannel, AbstractConnection, DeliveredMessage

from eventyard.errors import QueueNotFoundError
from eventyard.ports import DeliveryCallback
from eventyard.rabbitmq import fastpaths
from eventyard.rabbitmq.delivery import RabbitMqDelivery, Settlements

# The transport's logger: operators configure one name for the connection and its consumers.
logger = logging.getLogger("eventyard.rabbitmq.transport")

MAX_BACKOFF_SECONDS = 5.0
"""The longest wait between two attempts to connect or to consume again."""


class ConsumptionHost(Protocol):
    """What a consumption needs of the transport that owns its connection."""

    @property
    def closed(self) -> bool:
        """True once the transport is closed for good."""

    async def ready_connection(self) -> AbstractConnection:
        """The open connection, once there is one; ``BrokerConnectionError`` if there is none."""

    def track(self, settlements: Settlements) -> None:
        """Remember a channel's settlements, to send their acks before the connection closes."""

    def forget(self, consumption: Consumption) -> None:
        """Stop resuming ``consumption`` after reconnects."""


class Consumption:
    """One queue consumed on a channel of its own; its pump runs the callback in order.

    Deliveries go into a deque (from aiormq's consumer callback, or straight from the channel's
    frame reader with the fast paths on) and the pump hands them to the callback one after the
    other; acks are coalesced by the channel's ``Settlements``.
    """

    def __init__(self, host: ConsumptionHost, queue: str, callback: DeliveryCallback,
                 prefetch: int) -> None:
        self.host = host
        self.queue = queue
        self.callback = callback
        self.prefetch = prefetch
        self.channel: AbstractChannel | None = None
        self.settlements: Settlements | None = None
        self.consumer_tag = ""
        self.cancelled = False
        self._buffer: deque[RabbitMqDelivery | None] = deque()
        self._wakeup: asyncio.Future[None] | None = None
        self._pump: asyncio.Task[None] | None = None
        self._reattaching: asyncio.Task[None] | None = None

    async def attach(self, connection: AbstractConnection) -> None:
        """Open a channel and start consuming on ``connection``."""
        channel = await connection.channel(publisher_confirms=False)
        await channel.basic_qos(prefetch_count=self.prefetch)
        settlements = Settlements(channel, self.prefetch // 4)
        self.host.track(settlements)
        if fastpaths.active():
            fastpaths.deliver_directly(channel, lambda message: self._push(message, settlements))
        try:
            ok = await channel.basic_consume(
                self.queue, lambda message: self._on_message(message, settlements))
        except amqp_errors.ChannelNotFoundEntity:
            raise QueueNotFoundError(
                f"queue {self.queue!r} does not exist on the broker: configure the subscribers "
                "(RabbitMqMessageConfigurer.configure_subscribers) before consuming") from None
        self.channel, self.settlements, self.consumer_tag = channel, settlements, str(ok.consumer_tag)
        channel.closing.add_done_callback(lambda closing: self._on_channel_closed(channel, closing))
        channel.on_consumer_cancel_callbacks.add(lambda frame: self._on_broker_cancel(channel))
        if self._pump is None or self._pump.done():
            self._pump = asyncio.get_running_loop().create_task(self._run_pump())

    def _on_channel_closed(self, channel: AbstractChannel, closing: asyncio.Future[Any]) -> None:
        if not closing.cancelled():
            closing.exception()  # retrieved: the reason is logged by the reattach below
        if self.cancelled or self.host.closed or channel is not self.channel:
            return
        if self._reattaching is None or self._reattaching.done():
            self._reattaching = asyncio.get_running_loop().create_task(self._reattach(channel))

    def _on_broker_cancel(self, channel: AbstractChannel) -> None:
        """RabbitMQ cancelled this consumer (its queue was deleted, say): close the channel, so
        the reattach loop consumes again once the queue is back."""
        if self.cancelled or channel is not self.channel:
            return
        logger.warning("RabbitMQ cancelled the consumer of %s; consuming again when it can",
                       self.queue)
        task = asyncio.get_running_loop().create_task(channel.close())
        task.add_done_callback(lambda done: done.cancelled() or done.exception())

    async def _reattach(self, dead: AbstractChannel) -> None:
        """The broker closed this consumption's channel alone (the connection lives on): consume
        again on a new channel. A lost connection is the transport's reconnect loop's job."""
        delay = 0.1
        while not (self.cancelled or self.host.closed) and self.channel is dead:
            await asyncio.sleep(delay)  # backoff, and lets a lost connection be noticed first
            delay = min(delay * 2, MAX_BACKOFF_SECONDS)
            try:
                connection = await self.host.ready_connection()
                if self.channel is not dead or self.cancelled:
                    return  # the reconnect loop resumed this consumption already
                await self.attach(connection)
            except Exception as error:
                logger.warning("cannot consume %s again yet (%s); next try in %.1fs",
                               self.queue, error, delay)
            else:
                logger.warning("RabbitMQ closed the channel consuming %s; consuming again",
                               self.queue)

    async def _on_message(self, message: DeliveredMessage, settlements: Settlements) -> None:
        # aiormq's public path: a task per message, each pushing in the order they arrived.
        self._push(message, settlements)

    def _push(self, message: DeliveredMessage, settlements: Settlements) -> None:
        self._buffer.append(RabbitMqDelivery(message, self.queue, settlements))
        self._wake()

    def _wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    async def _run_pump(self) -> None:
        buffer = self._buffer
        loop = asyncio.get_running_loop()
        while True:
            if not buffer:
                self._wakeup = loop.create_future()
                await self._wakeup
                continue
            delivery = buffer.popleft()
            if delivery is None:
                return
            if delivery.is_stale:  # its channel died: the broker hands the message out again
                continue
            try:
                await self.callback(delivery)
            except Exception:
                logger.exception("delivery callback failed for %s", self.queue)

    async def cancel(self) -> None:
        """Stop consuming; buffered deliveries go back to the queue; held ones may be acked."""
        self.cancelled = True
        self.host.forget(self)
        channel = self.channel
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(Exception):
                await channel.basic_cancel(self.consumer_tag)
        while self._buffer:
            delivery = self._buffer.popleft()
            if delivery is not None and not delivery.is_stale:
                with contextlib.suppress(Exception):
                    await delivery.reject(requeue=True)
        self.stop_pump()

    def stop_pump(self) -> None:
        """Let the pump end after the delivery it is running; send the acks settled so far."""
        if self.settlements is not None:
            self.settlements.flush()
        if self._reattaching is not None:
            self._reattaching.cancel()
        self._buffer.append(None)
        self._wake()
