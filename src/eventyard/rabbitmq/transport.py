"""The RabbitMQ transport: the ``Transport`` port over one aiormq connection.

Robustness is *record, then replay*: the transport remembers the topology it declared and the
queues it consumes, and after a lost connection one reconnect loop (with backoff) opens a new
connection, declares the topology again and resumes every consumption. The first connect fails
fast with an error naming the broker (never the password).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import aiormq.exceptions as amqp_errors
from aiormq.abc import AbstractChannel, AbstractConnection, DeliveredMessage

from eventyard import naming
from eventyard.errors import (
    BrokerConnectionError,
    ConfigurationError,
    PublishNackedError,
    QueueNotFoundError,
    TopologyMismatchError,
)
from eventyard.headers import DEFAULT_FRAME_MAX
from eventyard.ports import DeliveryCallback, OutgoingMessage
from eventyard.rabbitmq import fastpaths
from eventyard.rabbitmq.blocking import timeout_error
from eventyard.rabbitmq.connecting import open_connection, scrub
from eventyard.rabbitmq.delivery import RabbitMqDelivery, Settlements
from eventyard.rabbitmq.framing import BrokerAlarm
from eventyard.rabbitmq.inspection import reply_text
from eventyard.rabbitmq.pipelining import publish_confirmed
from eventyard.rabbitmq.settings import ConnectionSettings
from eventyard.topology import Topology

logger = logging.getLogger(__name__)

# How the client reports a lost connection: its own types and the socket's. Anything else (a
# RuntimeError, a TypeError from a value it cannot encode) is a bug and propagates as one.
_CONNECTION_ERRORS = (amqp_errors.AMQPConnectionError, amqp_errors.ChannelInvalidStateError,
                      ConnectionError, OSError, asyncio.TimeoutError)
_MAX_BACKOFF_SECONDS = 5.0


class RabbitMqTransport:
    """One RabbitMQ connection: a confirming publish channel and one channel per consumption."""

    def __init__(self, settings: ConnectionSettings, *, name: str = "eventyard",
                 publish_window: int = 2048) -> None:
        self.settings = settings
        self.name = name
        self.publish_window = publish_window
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._ready = asyncio.Event()
        self._closed = False
        self._topologies: list[Topology] = []
        self._consumptions: list[_Consumption] = []
        self._settlements: list[Settlements] = []
        self._reconnecting: asyncio.Task[None] | None = None
        self._channel_lock = asyncio.Lock()
        self.reconnections = 0
        self._alarm = self._next_alarm = BrokerAlarm()  # what the broker said of blocking

    # -- connecting ---------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect for the first time; raise ``BrokerConnectionError`` at once on failure."""
        await self._setup(await self._open_connection())

    async def _open_connection(self) -> AbstractConnection:
        self._next_alarm = BrokerAlarm()
        return await open_connection(self.settings, self.name, self._next_alarm)

    async def _setup(self, connection: AbstractConnection) -> None:
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=False)
            for topology in self._topologies:
                await self._declare_on(connection, topology)
            for consumption in self._consumptions:
                await consumption.attach(connection)
        except BaseException:
            with contextlib.suppress(Exception):
                await connection.close()
            raise
        self._connection, self._channel = connection, channel
        self._alarm = self._next_alarm
        connection.closing.add_done_callback(self._on_connection_closed)
        self._ready.set()

    def _on_connection_closed(self, closing: asyncio.Future[Any]) -> None:
        reason = None if closing.cancelled() else closing.exception()  # retrieved: logged below
        if self._closed or (self._reconnecting and not self._reconnecting.done()):
            return
        self._ready.clear()
        why = "closed" if reason is None else (
            getattr(reason, "strerror", None) or str(reason) or type(reason).__name__)
        logger.warning("connection to RabbitMQ at %s lost (%s); reconnecting",
                       self.settings.describe(), scrub(str(why), self.settings))
        self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        delay = 0.1
        while not self._closed:
            try:
                connection = await self._open_connection()
                await self._setup(connection)
            except Exception as error:
                logger.warning("reconnect to RabbitMQ failed (%s); next try in %.1fs", error, delay)
                await asyncio.sleep(delay)  # backoff between attempts, not synchronisation
                delay = min(delay * 2, _MAX_BACKOFF_SECONDS)
            else:
                self.reconnections += 1
                logger.warning("reconnected to RabbitMQ at %s; resumed %d consumption(s)",
                               self.settings.describe(), len(self._consumptions))
                return

    async def _ready_connection(self) -> AbstractConnection:
        if self._closed:
            raise BrokerConnectionError("the RabbitMQ transport is closed")
        if not self._ready.is_set():
            try:
                await asyncio.wait_for(self._ready.wait(), self.settings.connect_timeout)
            except TimeoutError:
                raise BrokerConnectionError(
                    f"RabbitMQ at {self.settings.describe()} has been unreachable for "
                    f"{self.settings.connect_timeout:.0f}s") from None
        assert self._connection is not None
        return self._connection

    async def _publish_channel(self) -> AbstractChannel:
        connection = await self._ready_connection()
        channel = self._channel
        if channel is None or channel.is_closed:
            async with self._channel_lock:
                if self._channel is None or self._channel.is_closed:
                    if connection.is_closed:  # aiormq would say so with a bare RuntimeError
                        raise BrokerConnectionError("connection to RabbitMQ lost; nothing was sent")
                    self._channel = await connection.channel(publisher_confirms=True,
                                                             on_return_raises=False)
                channel = self._channel
        return channel

    # -- topology -----------------------------------------------------------------------------

    async def declare(self, topology: Topology) -> None:
        """Declare ``topology`` and remember it for reconnects; ``ConfigurationError`` before
        declaring anything if a name is one the AMQP client would refuse."""
        naming.check_names(exchanges=(e.name for e in topology.exchanges),
                           queues=(q.name for q in topology.queues),
                           routing_keys=(b.routing_key for b in topology.bindings))
        await self._declare_on(await self._ready_connection(), topology)
        if topology not in self._topologies:
            self._topologies.append(topology)

    async def _declare_on(self, connection: AbstractConnection, topology: Topology) -> None:
        channel = await connection.channel(publisher_confirms=False)
        what = hint = ""
        try:
            for exchange in topology.exchanges:
                what = f"exchange {exchange.name!r}"
                await channel.exchange_declare(exchange.name, exchange_type=exchange.type,
                                               durable=exchange.durable)
            for queue in topology.queues:
                what, hint = f"queue {queue.name!r}", topology.mismatch_hint(queue.name)
                await channel.queue_declare(queue.name, durable=queue.durable,
                                            arguments=dict(queue.arguments))
            for binding in topology.bindings:
                what = f"binding of {binding.queue!r} to {binding.exchange!r}"
                await channel.queue_bind(binding.queue, binding.exchange,
                                         routing_key=binding.routing_key)
        except amqp_errors.ChannelPreconditionFailed as error:
            raise TopologyMismatchError(
                f"{what} already exists with other settings: {reply_text(error)}. eventyard never "
                "deletes it for you: declare it with the same options (retry TTL, queue type, "
                "TTL), or move its messages away and delete it, then configure again." + hint
            ) from None
        except amqp_errors.ChannelAccessRefused as error:
            raise ConfigurationError(f"not allowed to declare {what}: {reply_text(error)}") from None
        finally:
            if not channel.is_closed:
                await channel.close()

    async def delete(self, topology: Topology) -> None:
        """Delete the queues and exchanges of ``topology``."""
        connection = await self._ready_connection()
        channel = await connection.channel(publisher_confirms=False)
        try:
            for queue in topology.queues:
                await channel.queue_delete(queue.name)
            for exchange in topology.exchanges:
                await channel.exchange_delete(exchange.name)
        finally:
            if not channel.is_closed:
                await channel.close()
        with contextlib.suppress(ValueError):
            self._topologies.remove(topology)

    # -- publishing ---------------------------------------------------------------------------

    @property
    def blocked(self) -> str | None:
        """The reason the broker gave for blocking the connection (an alarm), if it does."""
        return self._alarm.reason

    async def publish(self, messages: Sequence[OutgoingMessage]) -> list[int]:
        """Publish all of ``messages`` with confirms, many in flight; return unroutable indexes.

        ``PublishTimeoutError`` when they are not all confirmed within ``publish_timeout``
        (naming the broker's alarm when it blocked the connection).
        """
        deadline = asyncio.timeout(self.settings.publish_timeout)
        try:
            async with deadline:
                return await self._publish(messages)
        except TimeoutError:
            if not deadline.expired():
                raise
            what = (f"message {messages[0].message_id} to {messages[0].exchange!r}"
                    if len(messages) == 1 else f"{len(messages)} messages")
            raise timeout_error(what, self.settings.publish_timeout, self.blocked) from None

    async def _publish(self, messages: Sequence[OutgoingMessage]) -> list[int]:
        channel = await self._publish_channel()
        results = await publish_confirmed(channel, messages, self.publish_window)
        unroutable = []
        for index, (message, result) in enumerate(zip(messages, results, strict=True)):
            if isinstance(result, BaseException):
                with _publish_errors(message):
                    if isinstance(result, asyncio.CancelledError):  # its channel went away
                        raise ConnectionError("publish channel closed") from result
                    raise result
            if isinstance(result, DeliveredMessage):
                unroutable.append(index)
        return unroutable

    # -- consuming ----------------------------------------------------------------------------

    async def consume(self, queue: str, callback: DeliveryCallback, *, prefetch: int) -> _Consumption:
        """Deliver ``queue``'s messages to ``callback`` in order; resumes after reconnects."""
        connection = await self._ready_connection()
        consumption = _Consumption(self, queue, callback, prefetch)
        await consumption.attach(connection)
        self._consumptions.append(consumption)
        return consumption

    async def close(self) -> None:
        """Close the connection; unacked deliveries return to their queues."""
        self._closed = True
        self._ready.clear()
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            # Let it unwind (it may be half-way through a connect) before the loop goes away.
            await asyncio.wait((self._reconnecting,), timeout=self.settings.connect_timeout)
        for consumption in self._consumptions:
            consumption.stop_pump()
        self._consumptions.clear()
        for settlements in self._settlements:  # acks of handled messages go out before the close
            with contextlib.suppress(Exception):
                await asyncio.wait_for(settlements.drain(), self.settings.connect_timeout)
        self._settlements.clear()
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()

    async def drop_connection(self) -> None:
        """Close the connection abruptly, as a network failure would (for chaos and tests)."""
        if self._connection is not None:
            await self._connection.close(ConnectionResetError("dropped by eventyard chaos"))

    @property
    def is_connected(self) -> bool:
        """True while a connection is open."""
        return self._ready.is_set()

    @property
    def frame_max(self) -> int:
        """The largest frame the broker takes on this connection, as negotiated (0: no limit).

        A message's content header (its headers table included) must fit in one frame, or
        RabbitMQ closes the connection; consumers bound the headers of their copies by it.
        """
        tune = getattr(self._connection, "connection_tune", None)  # aiormq's public attribute
        value = getattr(tune, "frame_max", None)
        return value if isinstance(value, int) and value >= 0 else DEFAULT_FRAME_MAX


@contextlib.contextmanager
def _publish_errors(message: OutgoingMessage) -> Iterator[None]:
    """Turn the client's publish errors into eventyard's."""
    try:
        yield
    except amqp_errors.DeliveryError as error:
        raise PublishNackedError(
            f"RabbitMQ refused message {message.message_id} to {message.exchange!r} "
            f"({message.routing_key}); it was not stored") from error
    except amqp_errors.ChannelNotFoundEntity as error:
        raise ConfigurationError(
            f"cannot publish to {message.exchange!r}: {reply_text(error)}; declare the "
            "topology first (RabbitMqMessageConfigurer.configure_subscribers)") from None
    except _CONNECTION_ERRORS as error:
        raise BrokerConnectionError(
            f"connection to RabbitMQ lost before message {message.message_id} was "
            f"confirmed ({type(error).__name__}); it may or may not be stored") from error


class _Consumption:
    """One queue consumed on a channel of its own; its pump runs the callback in order.

    Deliveries go into a deque (from aiormq's consumer callback, or straight from the channel's
    frame reader with the fast paths on) and the pump hands them to the callback one after the
    other; acks are coalesced by the channel's ``Settlements``.
    """

    def __init__(self, transport: RabbitMqTransport, queue: str, callback: DeliveryCallback,
                 prefetch: int) -> None:
        self.transport = transport
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
        self.transport._settlements = [s for s in self.transport._settlements if not s.is_closed]
        self.transport._settlements.append(settlements)
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
        if self.cancelled or self.transport._closed or channel is not self.channel:
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
        while not (self.cancelled or self.transport._closed) and self.channel is dead:
            await asyncio.sleep(delay)  # backoff, and lets a lost connection be noticed first
            delay = min(delay * 2, _MAX_BACKOFF_SECONDS)
            try:
                connection = await self.transport._ready_connection()
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
        with contextlib.suppress(ValueError):
            self.transport._consumptions.remove(self)
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
