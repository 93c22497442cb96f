"""A virtual host of a test's own on the test broker, for code whose names a test cannot choose.

The seed's snippets hardcode ``acme``/``alice`` and the ``store`` queue; run in a vhost of their
own they meet no other test, and deleting the vhost removes everything they declared.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Iterator
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import aiormq

from support import names
from support.admin import Admin
from support.broker import RabbitBroker

# What a child process must not inherit from the test run: its broker is chosen by the test.
_ENV_PREFIXES = ("RABBITMQ_", "EVENTYARD_", "PETISCO_")


def clean_env(**variables: str) -> dict[str, str]:
    """This process's environment without broker settings, plus ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_ENV_PREFIXES)}
    env.update(variables)
    return env


class PrivateVhost:
    """``create()`` a vhost on ``broker``, use its ``url``/``env()``, then ``delete()`` it."""

    def __init__(self, broker: RabbitBroker) -> None:
        self.name = names.unique()
        parts = urlsplit(broker.url)
        self.user = unquote(parts.username or "guest")
        self.url = urlunsplit(parts._replace(path="/" + quote(self.name, safe="")))
        self._admin = Admin(broker.inspector)
        self.inspector = broker.inspector.at(self.url)

    def create(self) -> PrivateVhost:
        self._admin.add_vhost(self.name)
        self._admin.set_permissions(self.name, self.user)
        return self

    def delete(self) -> None:
        self._admin.delete_vhost(self.name)

    def env(self) -> dict[str, str]:
        """This process's environment with RabbitMQ at this vhost."""
        return clean_env(RABBITMQ_URL=self.url)

    def queue_state(self, queue: str) -> tuple[int, int] | None:
        """(ready messages, consumers) of ``queue`` by a passive declare; None if it is missing."""
        return asyncio.run(self._queue_state(queue))

    async def _queue_state(self, queue: str) -> tuple[int, int] | None:
        connection = await aiormq.connect(self.url)
        try:
            channel = await connection.channel()
            try:
                ok = await channel.queue_declare(queue, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                return None
            return int(ok.message_count or 0), int(ok.consumer_count or 0)
        finally:
            await connection.close()

    def observe(self, exchange: str, routing_key: str) -> str:
        """Bind a queue of the test's own to ``exchange``; return its name."""
        name = f"observer.{uuid.uuid4().hex[:8]}"
        asyncio.run(self._observe(name, exchange, routing_key))
        return name

    async def _observe(self, name: str, exchange: str, routing_key: str) -> None:
        connection = await aiormq.connect(self.url)
        try:
            channel = await connection.channel()
            await channel.queue_declare(name)
            await channel.queue_bind(name, exchange, routing_key=routing_key)
        finally:
            await connection.close()


@contextlib.contextmanager
def own_vhost(broker: RabbitBroker) -> Iterator[RabbitBroker]:
    """A vhost of the test's own, as a ``RabbitBroker`` (deleted afterwards, with all it holds)."""
    vhost = PrivateVhost(broker).create()
    try:
        yield RabbitBroker(vhost.url, vhost.inspector, broker.throwaway)
    finally:
        vhost.delete()
