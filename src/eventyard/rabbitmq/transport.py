"""The RabbitMQ transport: the ``Transport`` port over one aiormq connection.

Robustness is *record, then replay*: the transport remembers the topology it declared and the
queues it consumes, and after a lost connection one reconnect loop (with backoff) opens a new
connection, declares the topology again and resumes every consumption. The first connect fails
fast with an error naming the broker (never the password). Declaring, publishing and each
consumption's own channel are in ``declaring``, ``publishing`` and ``consumption``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from aiormq.abc import AbstractChannel, AbstractConnection

from eventyard.declarations import Topology
from eventyard.errors import BrokerConnectionError, PublishNackedError
from eventyard.headers import DEFAULT_FRAME_MAX
from eventyard.ports import DeliveryCallback, OutgoingMessage
from eventyard.rabbitmq.blocking import timeout_error
from eventyard.rabbitmq.connecting import open_connection, scrub
from eventyard.rabbitmq.consumption import MAX_BACKOFF_SECONDS, Consumption
from eventyard.rabbitmq.declaring import check_names, declare_on, delete_on
from eventyard.rabbitmq.delivery import Settlements
from eventyard.rabbitmq.framing import BrokerAlarm
from eventyard.rabbitmq.publishing import publish_on
from eventyard.rabbitmq.settings import ConnectionSettings

logger = logging.getLogger(__name__)


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
        self._consumptions: list[Consumption] = []
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
                await declare_on(connection, topology)
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
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)
            else:
                self.reconnections += 1
                logger.warning("reconnected to RabbitMQ at %s; resumed %d consumption(s)",
                               self.settings.describe(), len(self._consumptions))
                return

    @property
    def closed(self) -> bool:
        """True once ``close`` was called."""
        return self._closed

    async def ready_connection(self) -> AbstractConnection:
        """The open connection, waiting up to ``connect_timeout`` for a reconnect."""
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
        connection = await self.ready_connection()
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
        check_names(topology)
        await declare_on(await self.ready_connection(), topology)
        if topology not in self._topologies:
            self._topologies.append(topology)

    async def delete(self, topology: Topology) -> None:
        """Delete the queues and exchanges of ``topology``."""
        await delete_on(await self.ready_connection(), topology)
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
                channel = await self._publish_channel()
                return await publish_on(channel, messages, self.publish_window)
        except PublishNackedError:
            # RabbitMQ 3.10 may refuse every later publish on this channel to a quorum queue it
            # first published to while the queue had no leader (docs/cluster.md): a new one.
            if self._channel is channel:
                self._channel = None
                with contextlib.suppress(Exception):
                    await channel.close()
            raise
        except TimeoutError:
            if not deadline.expired():
                raise
            what = (f"message {messages[0].message_id} to {messages[0].exchange!r}"
                    if len(messages) == 1 else f"{len(messages)} messages")
            raise timeout_error(what, self.settings.publish_timeout, self.blocked) from None

    # -- consuming ----------------------------------------------------------------------------

    async def consume(self, queue: str, callback: DeliveryCallback, *, prefetch: int) -> Consumption:
        """Deliver ``queue``'s messages to ``callback`` in order; resumes after reconnects."""
        connection = await self.ready_connection()
        consumption = Consumption(self, queue, callback, prefetch)
        await consumption.attach(connection)
        self._consumptions.append(consumption)
        return consumption

    def track(self, settlements: Settlements) -> None:
        """Remember a consuming channel's settlements (forgetting those of closed channels)."""
        self._settlements = [s for s in self._settlements if not s.is_closed]
        self._settlements.append(settlements)

    def forget(self, consumption: Consumption) -> None:
        """Stop resuming ``consumption`` after reconnects."""
        with contextlib.suppress(ValueError):
            self._consumptions.remove(consumption)

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
    def frame_max(self) -> int:
        """The largest frame the broker takes on this connection, as negotiated (0: no limit).

        A message's content header (its headers table included) must fit in one frame, or
        RabbitMQ closes the connection; consumers bound the headers of their copies by it.
        """
        tune = getattr(self._connection, "connection_tune", None)  # aiormq's public attribute
        value = getattr(tune, "frame_max", None)
        return value if isinstance(value, int) and value >= 0 else DEFAULT_FRAME_MAX
