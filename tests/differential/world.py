"""One scenario's world on one broker: the application's classes and what a test may look at.

A scenario is application code written once: it asks its ``World`` for the configurer, buses
and consumer of the seed (``RabbitMq*`` on RabbitMQ, ``Memory*`` on the in-memory broker), acts
through them, and reports what it saw through the world's read-outs (queue contents taken off
the broker, counts, whether something exists, which error a call raised). Both worlds use the
same organisation name, so nothing needs renaming to compare them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import aiormq
import aiormq.exceptions

from differential.foreign import publish_foreign
from eventyard import ConfigurationError, MessageSubscriber, TopologyOptions, naming
from eventyard.buses import CommandBus, DomainEventBus, MessageConfigurer, MessageConsumer
from eventyard.memory import (
    MemoryBroker,
    MemoryCommandBus,
    MemoryDomainEventBus,
    MemoryMessageConfigurer,
    MemoryMessageConsumer,
)
from eventyard.ports import OutgoingMessage
from eventyard.rabbitmq import (
    RabbitMqCommandBus,
    RabbitMqConnector,
    RabbitMqDomainEventBus,
    RabbitMqMessageConfigurer,
    RabbitMqMessageConsumer,
)
from eventyard.testing import MessageRecorder
from eventyard.topology import Topology
from support.broker import RabbitBroker
from support.waiting import wait_until

SERVICE = "registration"
RETRY_TTL_MS = 40  # RabbitMQ waits it out for real; the memory broker's clock skips it


class Backend(Protocol):
    """What a world does that depends on its broker."""

    name: str
    backend: Any

    organization: str

    def configurer(self, organization: str, service: str,
                   options: TopologyOptions) -> MessageConfigurer: ...
    def consumer(self, backend: Any, organization: str, service: str, max_retries: int,
                 options: TopologyOptions, **settings: Any) -> MessageConsumer: ...
    def event_bus(self, backend: Any, organization: str, service: str) -> DomainEventBus: ...
    def command_bus(self, backend: Any, organization: str, service: str) -> CommandBus: ...
    def take(self, queue: str) -> list[dict[str, Any]] | None: ...
    def count(self, queue: str) -> int | None: ...
    def exchange_exists(self, name: str) -> bool: ...
    def publish_foreign(self, exchange: str, routing_key: str, body: bytes, table: bytes,
                        message_id: str | None) -> None: ...
    def settle(self, timeout: float) -> None: ...
    def close(self) -> None: ...


class World:
    """The application's classes on one broker, and read-outs of what the broker holds."""

    def __init__(self, side: Backend) -> None:
        self.side = side
        self.name = side.name
        self.organization = side.organization
        self.service = SERVICE
        self.recorder = MessageRecorder()
        self.backend = self.recorder.watch(side.backend)
        self._declared: list[tuple[MessageConfigurer, list[MessageSubscriber]]] = []
        self._configurers: list[MessageConfigurer] = []
        self._raw: list[Topology] = []
        self._consumers: list[MessageConsumer] = []

    # -- the application's classes ---------------------------------------------------------
    def options(self, **overrides: Any) -> TopologyOptions:
        """This world's topology options: a short retry TTL and a store of its own."""
        values: dict[str, Any] = {"retry_ttl_ms": RETRY_TTL_MS,
                                  "store_queue": f"store_{self.organization}"}
        return TopologyOptions(**{**values, **overrides})

    def configurer(self, *, service: str | None = None, organization: str | None = None,
                   **options: Any) -> MessageConfigurer:
        """The seed's configurer (what it declares is deleted when the scenario ends)."""
        configurer = self.side.configurer(organization or self.organization,
                                          service or self.service, self.options(**options))
        self._configurers.append(configurer)
        return configurer

    def configure(self, subscribers: Sequence[MessageSubscriber], *, service: str | None = None,
                  **options: Any) -> MessageConfigurer:
        """Declare the topology of ``subscribers``."""
        configurer = self.configurer(service=service, **options)
        self._declared.append((configurer, list(subscribers)))
        configurer.configure_subscribers(subscribers)
        return configurer

    def consumer(self, subscribers: Sequence[MessageSubscriber], max_retries: int = 2, *,
                 service: str | None = None, start: bool = True,
                 options: dict[str, Any] | None = None, **settings: Any) -> MessageConsumer:
        """The seed's consumer of ``subscribers``, watched by ``recorder`` (stopped at the end)."""
        topology = self.options(**(options or {}))
        consumer = self.side.consumer(self.backend, self.organization, service or self.service,
                                      max_retries, topology, **settings)
        self._consumers.append(consumer)
        consumer.add_subscribers(subscribers)
        self.recorder.watch(consumer)
        # What it may declare by itself is deleted at the end too.
        self._declared.append((self.side.configurer(self.organization, service or self.service,
                                                    topology), list(subscribers)))
        if start:
            consumer.start()
        return consumer

    def event_bus(self, service: str | None = None, organization: str | None = None) -> DomainEventBus:
        """The seed's domain-event bus."""
        return self.side.event_bus(self.backend, organization or self.organization,
                                   service or self.service)

    def command_bus(self, service: str | None = None) -> CommandBus:
        """The seed's command bus."""
        return self.side.command_bus(self.backend, self.organization, service or self.service)

    # -- acting past the buses ---------------------------------------------------------------
    def publish_raw(self, routing_key: str, body: bytes, *, headers: dict[str, Any] | None = None,
                    message_id: str | None = None, service: str | None = None) -> None:
        """Publish bytes to a service's exchange through eventyard's transport (poison, say)."""
        message = OutgoingMessage(naming.exchange(self.organization, service or self.service),
                                  routing_key, body, dict(headers or {}), message_id=message_id)

        async def publish() -> None:
            await (await self.backend.publisher_transport()).publish([message])

        self.backend.loop_thread.run(publish())

    def declare_raw(self, topology: Topology) -> None:
        """Declare ``topology`` through the transport (deleted when the scenario ends)."""
        self._on_loop(lambda transport: transport.declare(topology))
        self._raw.append(topology)

    def publish_raw_to(self, exchange: str, routing_keys: Sequence[str]) -> list[int]:
        """Publish one empty message per routing key to ``exchange``; return the unroutable."""
        messages = [OutgoingMessage(exchange, key, b"{}") for key in routing_keys]
        result: list[int] = self._on_loop(lambda transport: transport.publish(messages))
        return result

    def _on_loop(self, work: Callable[[Any], Any]) -> Any:
        async def run() -> Any:
            return await work(await self.backend.publisher_transport())

        return self.backend.loop_thread.run(run())

    def publish_raw_list(self, routing_key: str, headers: list[dict[str, Any]]) -> None:
        """Publish one message per headers table, as one list (pipelined on RabbitMQ)."""
        exchange = naming.exchange(self.organization, self.service)
        messages = [OutgoingMessage(exchange, routing_key, b"{}", table) for table in headers]

        async def publish() -> None:
            await (await self.backend.publisher_transport()).publish(messages)

        self.backend.loop_thread.run(publish())

    def publish_foreign(self, routing_key: str, body: bytes, table: bytes, *,
                        message_id: str | None = None) -> None:
        """Publish as a client in another language: the headers an encoded field table."""
        self.side.publish_foreign(naming.exchange(self.organization, self.service), routing_key,
                                  body, table, message_id)

    # -- read-outs -----------------------------------------------------------------------------
    def take(self, queue: str) -> list[dict[str, Any]] | None:
        """Remove and return the messages ready in ``queue`` (None: no such queue)."""
        return self.side.take(queue)

    def count(self, queue: str) -> int | None:
        """Messages ready in ``queue`` (None: no such queue)."""
        return self.side.count(queue)

    def exchange_exists(self, name: str) -> bool:
        """True if the broker has exchange ``name``."""
        return self.side.exchange_exists(name)

    def wait(self, condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
        """Wait until ``condition`` holds (``AssertionError`` naming this broker after ``timeout``)."""
        wait_until(condition, timeout, f"{what} on {self.name}; events "
                                        f"{[(e.kind, e.queue) for e in self.recorder.events()]}")

    def wait_for_events(self, kind: str, count: int, timeout: float = 10.0) -> None:
        """Wait until the consumers reported ``count`` events of ``kind``."""
        self.wait(lambda: len(self.recorder.events(kind)) >= count,  # type: ignore[arg-type]
                  f"{count} {kind} event(s)", timeout)

    @staticmethod
    def attempt(action: Callable[[], Any]) -> str:
        """``"ok"``, or the type of the error ``action`` raised."""
        try:
            action()
        except Exception as error:
            return type(error).__name__
        return "ok"

    def events(self) -> list[tuple[str, str, int]]:
        """(kind, queue, redelivery count) of every consumer event, in order."""
        return [(e.kind, e.queue, e.redelivery_count) for e in self.recorder.events()]

    # -- the end -------------------------------------------------------------------------------
    def stop_consumers(self) -> None:
        """Stop every consumer (gracefully): nothing more happens after this."""
        for consumer in self._consumers:
            consumer.stop(timeout=5)

    def close(self) -> None:
        """Stop consumers, delete everything the scenario declared, release the broker."""
        try:
            self.stop_consumers()
            for configurer, subscribers in reversed(self._declared):
                with contextlib.suppress(ConfigurationError):  # a name no broker took
                    configurer.clear_subscribers(subscribers)
            for configurer in self._configurers:
                with contextlib.suppress(ConfigurationError):
                    configurer.clear()
            for topology in self._raw:
                self._on_loop(lambda transport, topology=topology: transport.delete(topology))
        finally:
            self.side.close()


# -- the brokers ---------------------------------------------------------------------------------
def _observed(body: bytes, headers: dict[str, Any] | None, *, exchange: str, routing_key: str,
              message_id: str | None, type: str | None, redelivered: bool) -> dict[str, Any]:
    try:
        data = json.loads(body)["data"]
        shown: Any = {"type": data["type"], "attributes": data["attributes"], "meta": data["meta"]}
    except Exception:
        shown = body
    return {"exchange": exchange, "routing_key": routing_key, "message_id": message_id,
            "type": type, "redelivered": redelivered, "headers": dict(headers or {}),
            "body": shown}


class MemorySide:
    """The in-memory broker on a virtual clock, with the ``Memory*`` classes."""

    name = "memory"

    def __init__(self, organization: str) -> None:
        self.organization = organization
        self.broker = MemoryBroker.virtual(name="eventyard-differential")
        self.backend: Any = self.broker

    def configurer(self, organization: str, service: str,
                   options: TopologyOptions) -> MessageConfigurer:
        return MemoryMessageConfigurer(self.broker, organization, service, options=options)

    def consumer(self, backend: Any, organization: str, service: str, max_retries: int,
                 options: TopologyOptions, **settings: Any) -> MessageConsumer:
        return MemoryMessageConsumer(backend, organization, service, max_retries,
                                     options=options, **settings)

    def event_bus(self, backend: Any, organization: str, service: str) -> DomainEventBus:
        return MemoryDomainEventBus(backend, organization, service)

    def command_bus(self, backend: Any, organization: str, service: str) -> CommandBus:
        return MemoryCommandBus(backend, organization, service)

    def take(self, queue: str) -> list[dict[str, Any]] | None:
        if queue not in self.broker.queue_names():
            return None
        taken = [_observed(m.body, dict(m.headers), exchange=m.exchange, routing_key=m.routing_key,
                           message_id=m.message_id, type=m.type, redelivered=m.redelivered)
                 for m in self.broker.messages(queue)]
        self.broker.purge(queue)
        return taken

    def count(self, queue: str) -> int | None:
        return self.broker.message_counts().get(queue)

    def exchange_exists(self, name: str) -> bool:
        return name in self.broker.exchange_names()

    def publish_foreign(self, exchange: str, routing_key: str, body: bytes, table: bytes,
                        message_id: str | None) -> None:
        async def publish() -> None:
            await self.broker.transport("foreign").publish_foreign(
                exchange, routing_key, body, headers_table=table, message_id=message_id)

        self.broker.loop_thread.run(publish())

    def settle(self, timeout: float) -> None:
        self.broker.wait_until_idle(timeout)

    def close(self) -> None:
        self.broker.close()


class RabbitSide:
    """The test broker, with the ``RabbitMq*`` classes; read over AMQP (no rabbitmqctl)."""

    name = "rabbitmq"

    def __init__(self, rabbit: RabbitBroker, organization: str) -> None:
        self.organization = organization
        self.url = rabbit.url
        # A publish that is never confirmed fails in seconds, not in the default 30.
        self.connector = RabbitMqConnector(f"{rabbit.url}?publish_timeout=5",
                                           name="eventyard-differential")
        self.backend: Any = self.connector
        self._connection: aiormq.abc.AbstractConnection | None = None

    def configurer(self, organization: str, service: str,
                   options: TopologyOptions) -> MessageConfigurer:
        return RabbitMqMessageConfigurer(self.connector, organization, service, options=options)

    def consumer(self, backend: Any, organization: str, service: str, max_retries: int,
                 options: TopologyOptions, **settings: Any) -> MessageConsumer:
        return RabbitMqMessageConsumer(backend, organization, service, max_retries,
                                       options=options, **settings)

    def event_bus(self, backend: Any, organization: str, service: str) -> DomainEventBus:
        return RabbitMqDomainEventBus(backend, organization, service)

    def command_bus(self, backend: Any, organization: str, service: str) -> CommandBus:
        return RabbitMqCommandBus(backend, organization, service)

    def _run(self, work: Callable[[aiormq.abc.AbstractChannel], Any]) -> Any:
        async def run() -> Any:
            if self._connection is None or self._connection.is_closed:
                self._connection = await aiormq.connect(self.url)
            channel = await self._connection.channel()
            try:
                return await work(channel)
            except aiormq.exceptions.ChannelNotFoundEntity:
                return None
            finally:
                if not channel.is_closed:
                    await channel.close()

        return self.connector.loop_thread.run(run())

    def take(self, queue: str) -> list[dict[str, Any]] | None:
        async def take(channel: aiormq.abc.AbstractChannel) -> list[dict[str, Any]]:
            taken = []
            while True:
                got = await channel.basic_get(queue, no_ack=True)
                if got.delivery_tag is None or not hasattr(got.delivery, "routing_key"):
                    return taken
                properties = got.header.properties
                taken.append(_observed(
                    bytes(got.body), properties.headers, exchange=got.delivery.exchange,
                    routing_key=got.delivery.routing_key, message_id=properties.message_id,
                    type=properties.message_type, redelivered=bool(got.delivery.redelivered)))

        result: list[dict[str, Any]] | None = self._run(take)
        return result

    def count(self, queue: str) -> int | None:
        async def count(channel: aiormq.abc.AbstractChannel) -> int:
            ok = await channel.queue_declare(queue, passive=True)
            return int(ok.message_count or 0)

        result: int | None = self._run(count)
        return result

    def exchange_exists(self, name: str) -> bool:
        async def exists(channel: aiormq.abc.AbstractChannel) -> bool:
            await channel.exchange_declare(name, passive=True)
            return True

        return bool(self._run(exists))

    def publish_foreign(self, exchange: str, routing_key: str, body: bytes, table: bytes,
                        message_id: str | None) -> None:
        asyncio.run(publish_foreign(self.url, exchange, routing_key, body, table, message_id))

    def settle(self, timeout: float) -> None:
        return None  # scenarios wait on the consumers' events instead

    def close(self) -> None:
        async def close() -> None:
            if self._connection is not None:
                await self._connection.close()

        try:
            self.connector.loop_thread.run(close())
        finally:
            self.connector.close()

