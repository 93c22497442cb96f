"""Finding the test broker and looking at what it holds.

The broker is ``EVENTYARD_TEST_AMQP_URL``, else ``amqp://guest:guest@localhost:5672/``; if none
answers and rabbitmq-server is installed, a throwaway node is started for the run. Inspection
uses AMQP (passive declares, basic.get) and, for names, arguments and bindings, the management
HTTP API when the broker has it, else rabbitmqctl against the same node.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import unquote, urlsplit

import aiormq

from support.management import Management

DEFAULT_URL = "amqp://guest:guest@localhost:5672/"
URL_ENV = "EVENTYARD_TEST_AMQP_URL"


def configured_url() -> str:
    """The broker the tests are told to use."""
    return os.environ.get(URL_ENV) or DEFAULT_URL


async def _probe(url: str) -> str | None:
    try:
        connection = await asyncio.wait_for(aiormq.connect(url), 5)
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    await connection.close()
    return None


def probe(url: str) -> str | None:
    """None when an AMQP connection to ``url`` opens, else why not."""
    return asyncio.run(_probe(url))


def inspector_for(url: str) -> Inspector:
    """An inspector of the broker of ``url``: its management API when it answers, else
    rabbitmqctl (as this user where it may run it, else with this process's environment)."""
    ctl_ok = shutil.which("rabbitmqctl") is not None
    management = Management.for_amqp_url(url)
    return Inspector(url, ctl_env=None if ctl_ok else dict(os.environ),
                     management=management if management.answers() else None)


@dataclass
class Inspector:
    """Reads queues, arguments, bindings and messages off one broker."""

    url: str
    ctl_env: dict[str, str] | None = None
    nodename: str | None = None
    management: Management | None = None  # the same node's API, if it has one
    vhost: str = field(init=False)

    def __post_init__(self) -> None:
        path = urlsplit(self.url).path
        self.vhost = unquote(path[1:]) if len(path) > 1 else "/"

    def at(self, url: str) -> Inspector:
        """An inspector of the same node for ``url`` (another vhost, another user)."""
        return replace(self, url=url)

    def _ctl(self, *args: str) -> Any:
        command = ["rabbitmqctl", "-q"]
        if self.nodename:
            command += ["-n", self.nodename]
        command += [*args, "-p", self.vhost, "--formatter", "json"]
        result = subprocess.run(command, env=self.ctl_env, check=True, capture_output=True,
                                text=True, timeout=60)
        return json.loads(result.stdout or "[]")

    def queues(self, prefix: str = "") -> dict[str, dict[str, Any]]:
        """Queue name -> its arguments (``durable`` included), for names containing ``prefix``."""
        return {name: {**row["arguments"], "durable": row["durable"]}
                for name, row in self.described(prefix).items()}

    def described(self, prefix: str = "") -> dict[str, dict[str, Any]]:
        """Queue name -> ``type`` (``classic``, ``quorum``...), ``arguments`` and ``durable``,
        for names containing ``prefix``."""
        if self.management is not None:
            rows = self.management.queues(self.vhost)
        else:
            rows = self._ctl("list_queues", "name", "type", "arguments", "durable")
        return {r["name"]: {"type": r["type"], "arguments": _args(r["arguments"]),
                            "durable": r["durable"]} for r in rows if prefix in r["name"]}

    def exchanges(self, prefix: str = "") -> dict[str, dict[str, Any]]:
        """Exchange name -> type and durability."""
        if self.management is not None:
            rows = self.management.exchanges(self.vhost)
        else:
            rows = self._ctl("list_exchanges", "name", "type", "durable")
        return {r["name"]: {"type": r["type"], "durable": r["durable"]} for r in rows
                if r["name"] and prefix in r["name"]}

    def bindings(self, prefix: str = "") -> set[tuple[str, str, str]]:
        """(exchange, queue, routing key) of every binding whose queue contains ``prefix``."""
        if self.management is not None:
            rows = [{"source_name": r["source"], "destination_name": r["destination"],
                     "routing_key": r["routing_key"]} for r in self.management.bindings(self.vhost)]
        else:
            rows = self._ctl("list_bindings", "source_name", "destination_name", "routing_key")
        return {(r["source_name"], r["destination_name"], r["routing_key"]) for r in rows
                if r["source_name"] and prefix in r["destination_name"]}

    def count(self, queue: str) -> int:
        """Ready messages in ``queue`` (passive declare)."""
        return asyncio.run(self._count(queue))

    async def _count(self, queue: str) -> int:
        connection = await aiormq.connect(self.url)
        try:
            channel = await connection.channel()
            ok = await channel.queue_declare(queue, passive=True)
            return int(ok.message_count or 0)
        finally:
            await connection.close()

    def take(self, queue: str, limit: int = 1000) -> list[tuple[bytes, dict[str, Any], str]]:
        """Remove and return (body, headers, routing key) of up to ``limit`` messages."""
        return asyncio.run(self._take(queue, limit))

    async def _take(self, queue: str, limit: int) -> list[tuple[bytes, dict[str, Any], str]]:
        connection = await aiormq.connect(self.url)
        taken: list[tuple[bytes, dict[str, Any], str]] = []
        try:
            channel = await connection.channel()
            while len(taken) < limit:
                message = await channel.basic_get(queue, no_ack=True)
                if message.delivery_tag is None or not hasattr(message.delivery, "routing_key"):
                    break
                taken.append((bytes(message.body), dict(message.header.properties.headers or {}),
                              str(message.delivery.routing_key)))
            return taken
        finally:
            await connection.close()

    def delete_matching(self, prefix: str) -> None:
        """Delete every queue and exchange whose name contains ``prefix``."""
        asyncio.run(self._delete_matching(prefix))

    async def _delete_matching(self, prefix: str) -> None:
        queues = list(self.queues(prefix))
        exchanges = list(self.exchanges(prefix))
        connection = await aiormq.connect(self.url)
        try:
            channel = await connection.channel()
            for queue in queues:
                await channel.queue_delete(queue)
            for exchange in exchanges:
                await channel.exchange_delete(exchange)
        finally:
            await connection.close()


def _args(arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return dict(arguments)
    # rabbitmqctl prints [[key, amqp_type, value], ...]
    return {item[0]: item[-1] for item in arguments or []}


@dataclass
class RabbitBroker:
    """The broker for this test run: its URL and an inspector for what it holds."""

    url: str
    inspector: Inspector
    throwaway: Any = None  # the ThrowawayNode started for the run, if any

