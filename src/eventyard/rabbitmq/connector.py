"""``RabbitMqConnector``: connection settings plus the connections the buses and consumers use.

Publishers on one event loop share one connection; each consumer gets its own, so a slow
publisher never holds up a consumer's acks. The sync API runs on the connector's own loop
thread; async applications use the connector from their loop and get connections there.
``with`` (sync) or ``async with`` (async) closes them all at the end.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager

from eventyard.buses import NullTransport, broker_kind
from eventyard.dead_letter_box import DeadLetterBox
from eventyard.engine import LoopThread
from eventyard.errors import ConfigurationError
from eventyard.ports import Transport
from eventyard.rabbitmq.blocking import BlockingPublisher
from eventyard.rabbitmq.dead_letter_box import open_dead_letter_box
from eventyard.rabbitmq.settings import ConnectionSettings, settings_from
from eventyard.rabbitmq.transport import RabbitMqTransport

logger = logging.getLogger(__name__)

_CLOSE_SECONDS = 30.0  # closing the sync API's connections, then its loop thread stops anyway


class RabbitMqConnector:
    """Where RabbitMQ is: an ``amqp://``/``amqps://`` URL, arguments, or ``RABBITMQ_*`` variables.

    TLS files and verification come from the URL's query or ``RABBITMQ_SSL_*``; every publish
    waits at most ``publish_timeout`` seconds for its confirm (docs/connection.md). Use it as
    ``with RabbitMqConnector(...) as connector:`` in sync code and ``async with`` in async code,
    or call ``close()`` / ``await aclose()`` at the end.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        user: str | None = None,
        password: str | None = None,
        vhost: str | None = None,
        heartbeat: int | None = None,
        prefetch_count: int | None = None,
        connect_timeout: float | None = None,
        publish_timeout: float | None = None,
        settings: ConnectionSettings | None = None,
        environ: Mapping[str, str] | None = None,
        name: str = "eventyard",
    ) -> None:
        self.settings = settings or settings_from(
            url, host=host, port=port, user=user, password=password, vhost=vhost,
            heartbeat=heartbeat, prefetch_count=prefetch_count, connect_timeout=connect_timeout,
            publish_timeout=publish_timeout, environ=environ)
        self.name = name
        self._loop_thread = LoopThread("eventyard-rabbitmq")
        self._publishers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, RabbitMqTransport] = (
            weakref.WeakKeyDictionary())
        self._creating: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary())
        # Each consumer's connection and the loop it runs on, which alone may close it.
        self._consumers: weakref.WeakKeyDictionary[RabbitMqTransport, asyncio.AbstractEventLoop] = (
            weakref.WeakKeyDictionary())
        self._lock = threading.Lock()
        self.blocking_publisher = BlockingPublisher(self.settings, f"{name}-blocking")
        # The seed's trick (EVENTYARD_MESSAGE_BROKER or PETISCO_EVENT_MESSAGE_BROKER set to
        # notimplemented): every bus, configurer and consumer on this connector does nothing.
        self.publishes_nowhere = broker_kind(environ) == "notimplemented"
        self._nowhere: Transport = NullTransport()
        if self.publishes_nowhere:
            logger.warning("the message broker is notimplemented: %s publishes nowhere and never "
                           "connects", self)

    @property
    def loop_thread(self) -> LoopThread:
        """The event loop the sync API runs on."""
        return self._loop_thread

    async def publisher_transport(self) -> Transport:
        """The connection publishers on the running loop share (connected on first use)."""
        if self.publishes_nowhere:
            return self._nowhere
        loop = asyncio.get_running_loop()
        transport = self._publishers.get(loop)
        if transport is not None:
            return transport
        with self._lock:
            lock = self._creating.setdefault(loop, asyncio.Lock())
        async with lock:
            transport = self._publishers.get(loop)
            if transport is None:
                transport = RabbitMqTransport(self.settings, name=f"{self.name}-publisher")
                await transport.connect()
                self._publishers[loop] = transport
        return transport

    async def consumer_transport(self) -> Transport:
        """A new connection for one consumer."""
        if self.publishes_nowhere:
            return self._nowhere
        transport = RabbitMqTransport(self.settings, name=f"{self.name}-consumer")
        await transport.connect()
        self._consumers[transport] = asyncio.get_running_loop()
        return transport

    def dead_letter_box(self) -> AbstractAsyncContextManager[DeadLetterBox]:
        """The dead-letter operations (``eventyard.dead_letter_box``) on a connection of their
        own, for the length of an ``async with`` block."""
        return open_dead_letter_box(self.settings, name=f"{self.name}-dead-letters")

    async def _close_connections(self) -> None:
        """Close the connections opened on the running loop."""
        loop = asyncio.get_running_loop()
        transport = self._publishers.pop(loop, None)
        if transport is not None:
            await transport.close()
        for consumer, its_loop in list(self._consumers.items()):
            if its_loop is loop:
                self._consumers.pop(consumer, None)
                await consumer.close()

    async def aclose(self) -> None:
        """Close every connection, for async applications (``async with`` calls it).

        First those opened on the running loop, then the sync API's (its loop thread and its
        blocking publisher, if used) on a worker thread, so the loop is never blocked. Without
        it, connections still open when the loop ends are torn down as lost ones: warnings
        about a lost connection and tasks destroyed while pending.
        """
        await self._close_connections()
        if not self._loop_thread.in_loop_thread():
            await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Close the sync API's connections and stop its loop thread (``with`` calls it).

        Connections opened on another running loop (the async API's) are that loop's to close:
        ``await aclose()``.
        """
        if self._loop_thread.in_loop_thread():
            raise ConfigurationError("close() cannot be called from an eventyard handler: close "
                                     "the connector where the application ends")
        try:
            if self._loop_thread.is_started:
                self._loop_thread.run(self._close_connections(), timeout=_CLOSE_SECONDS)
        finally:
            self._loop_thread.stop()
            self.blocking_publisher.close()

    def __enter__(self) -> RabbitMqConnector:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> RabbitMqConnector:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"RabbitMqConnector({self.settings.describe()!r})"
