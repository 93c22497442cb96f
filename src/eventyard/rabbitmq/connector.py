"""``RabbitMqConnector``: connection settings plus the connections the buses and consumers use.

Publishers on one event loop share one connection; each consumer gets its own, so a slow
publisher never holds up a consumer's acks. The sync API runs on the connector's own loop
thread; async applications use the connector from their loop and get connections there.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import Mapping

from eventyard.buses import NullTransport, broker_kind
from eventyard.engine import LoopThread
from eventyard.ports import Transport
from eventyard.rabbitmq.blocking import BlockingPublisher
from eventyard.rabbitmq.settings import ConnectionSettings, settings_from
from eventyard.rabbitmq.transport import RabbitMqTransport

logger = logging.getLogger(__name__)


class RabbitMqConnector:
    """Where RabbitMQ is: an ``amqp://``/``amqps://`` URL, arguments, or ``RABBITMQ_*`` variables.

    TLS files and verification come from the URL's query or ``RABBITMQ_SSL_*``; every publish
    waits at most ``publish_timeout`` seconds for its confirm (docs/connection.md).
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
        self._consumers: weakref.WeakSet[RabbitMqTransport] = weakref.WeakSet()
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
        self._consumers.add(transport)
        return transport

    async def aclose(self) -> None:
        """Close the connections opened on the running loop."""
        loop = asyncio.get_running_loop()
        transport = self._publishers.pop(loop, None)
        if transport is not None:
            await transport.close()
        for consumer in list(self._consumers):
            await consumer.close()

    def close(self) -> None:
        """Close the sync API's connections and stop its loop thread."""
        if self._loop_thread.in_loop_thread():
            raise RuntimeError("close() cannot be called from an eventyard handler")
        self._loop_thread.run(self.aclose(), timeout=30)
        self._loop_thread.stop()
        self.blocking_publisher.close()

    def __enter__(self) -> RabbitMqConnector:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RabbitMqConnector({self.settings.describe()!r})"
