"""The chaos soak's view of RabbitMQ: queue depths and message ids, read without consuming."""

from __future__ import annotations

import contextlib

from aiormq.abc import AbstractConnection

from eventyard.errors import ConfigurationError
from eventyard.ports import Transport
from eventyard.rabbitmq.connecting import open_connection
from eventyard.rabbitmq.settings import ConnectionSettings
from eventyard.rabbitmq.transport import RabbitMqTransport


class RabbitMqSoakProbe:
    """A ``SoakProbe`` on a connection of its own (see ``eventyard.soak``)."""

    def __init__(self, settings: ConnectionSettings) -> None:
        self.settings = settings
        self._connection: AbstractConnection | None = None

    async def connect(self) -> None:
        """Open the probe's connection (first host that answers)."""
        self._connection = await open_connection(self.settings, "eventyard-soak-probe")

    async def _connected(self) -> AbstractConnection:
        if self._connection is None or self._connection.is_closed:
            await self.connect()
        assert self._connection is not None
        return self._connection

    async def ready_count(self, queue: str) -> int:
        """Ready messages in ``queue`` (a passive declare; delayed retries included)."""
        return (await self._declare_passive(queue))[0]

    async def consumer_count(self, queue: str) -> int:
        """Consumers RabbitMQ counts on ``queue``."""
        return (await self._declare_passive(queue))[1]

    async def _declare_passive(self, queue: str) -> tuple[int, int]:
        channel = await (await self._connected()).channel()
        try:
            ok = await channel.queue_declare(queue, passive=True)
            return int(ok.message_count or 0), int(ok.consumer_count or 0)
        finally:
            if not channel.is_closed:
                await channel.close()

    async def message_ids(self, queue: str) -> list[str]:
        """Ids of the ready messages in ``queue``: taken unacked, then handed back."""
        channel = await (await self._connected()).channel()
        ids: list[str] = []
        try:
            while True:
                message = await channel.basic_get(queue, no_ack=False)
                if message.delivery_tag is None or not hasattr(message.delivery, "routing_key"):
                    return ids  # Basic.GetEmpty
                message_id = message.header.properties.message_id
                if message_id is not None:
                    ids.append(str(message_id))
        finally:
            if not channel.is_closed:
                await channel.close()  # the unacked messages go back to the queue

    async def drop(self, transport: Transport) -> None:
        """Cut a RabbitMQ transport's connection; it reconnects and resumes by itself."""
        if not isinstance(transport, RabbitMqTransport):
            raise ConfigurationError(f"the RabbitMQ probe cannot drop the connection of {transport!r}")
        await transport.drop_connection()

    async def close(self) -> None:
        """Close the probe's connection."""
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
            self._connection = None
