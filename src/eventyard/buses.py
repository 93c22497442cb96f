"""The seed's synchronous API over the async engine, and the broker picked by the environment.

A *broker* is ``RabbitMqConnector`` (the seed's name for the RabbitMQ one, hence the
``connector`` parameters), ``MemoryBroker`` or ``NotImplementedBroker``. It owns the
background event loop of the sync API and hands out transports. The sync classes here
(``DomainEventBus``, ``CommandBus``, ``MessageConfigurer``, ``MessageConsumer``) run the async
engine on that loop; the RabbitMQ and memory classes are these with their own broker.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from eventyard.chaos import EventChaos
from eventyard.consuming import AsyncMessageConsumer, ConsumerSettings, Observer
from eventyard.engine import LoopThread, script_hold
from eventyard.errors import ConfigurationError
from eventyard.messages import Command, DomainEvent
from eventyard.ports import Consumption, DeliveryCallback, OutgoingMessage, Transport
from eventyard.publishing import AsyncCommandBus, AsyncDomainEventBus
from eventyard.subscribers import MessageSubscriber, subscriptions_of
from eventyard.topology import Topology, TopologyOptions, build_topology

BROKER_ENV = "EVENTYARD_MESSAGE_BROKER"
PETISCO_BROKER_ENV = "PETISCO_EVENT_MESSAGE_BROKER"  # the seed's spelling of the trick
BROKER_KINDS = ("rabbitmq", "memory", "notimplemented")


class Broker(Protocol):
    """A broker as the sync API needs it (a connector)."""

    @property
    def loop_thread(self) -> LoopThread:
        """The event loop the sync API runs on."""

    async def publisher_transport(self) -> Transport:
        """The transport publishers on the running loop share."""

    async def consumer_transport(self) -> Transport:
        """A transport of its own for one consumer."""


class DomainEventBus:
    """Publishes domain events; returns once the broker confirmed them. Thread-safe."""

    def __init__(self, connector: Broker, organization: str, service: str) -> None:
        self.connector = connector
        self._bus = AsyncDomainEventBus(connector.publisher_transport, organization, service)

    def publish(self, events: DomainEvent | Sequence[DomainEvent]) -> None:
        """Publish one event or a list of them (pipelined)."""
        self.connector.loop_thread.run(self._bus.publish(events))


class CommandBus:
    """Dispatches commands; raises ``UnroutableError`` for one no queue receives. Thread-safe."""

    def __init__(self, connector: Broker, organization: str, service: str) -> None:
        self.connector = connector
        self._bus = AsyncCommandBus(connector.publisher_transport, organization, service)

    def dispatch(self, commands: Command | Sequence[Command]) -> None:
        """Dispatch one command or a list of them (pipelined)."""
        self.connector.loop_thread.run(self._bus.dispatch(commands))


class MessageConfigurer:
    """Declares the topology of a service's subscribers (DESIGN §4), idempotently."""

    def __init__(self, connector: Broker, organization: str, service: str, *,
                 options: TopologyOptions | None = None, retry_ttl_ms: int | None = None,
                 queue_type: str | None = None) -> None:
        self.connector = connector
        self.organization = organization
        self.service = service
        overrides: dict[str, Any] = {}
        if retry_ttl_ms is not None:
            overrides["retry_ttl_ms"] = retry_ttl_ms
        if queue_type is not None:
            overrides["queue_type"] = queue_type
        base = options or TopologyOptions()
        self.options = dataclasses.replace(base, **overrides)  # validated again

    def topology(self, subscribers: Sequence[MessageSubscriber] = ()) -> Topology:
        """What ``configure_subscribers(subscribers)`` declares."""
        return build_topology(self.organization, self.service, subscriptions_of(subscribers),
                              self.options)

    def configure(self) -> None:
        """Declare the service's exchanges and the store."""
        self.configure_subscribers([])

    def configure_subscribers(self, subscribers: Sequence[MessageSubscriber]) -> None:
        """Declare exchanges, the store and every subscriber's queues and bindings."""
        topology = self.topology(subscribers)
        self.connector.loop_thread.run(self._declare(topology))

    def clear_subscribers(self, subscribers: Sequence[MessageSubscriber]) -> None:
        """Delete what ``configure_subscribers(subscribers)`` declared (messages included)."""
        topology = self.topology(subscribers).for_deletion()
        self.connector.loop_thread.run(self._delete(topology))

    def clear(self) -> None:
        """Delete the service's exchanges and the store (messages included)."""
        self.clear_subscribers([])

    async def _declare(self, topology: Topology) -> None:
        await (await self.connector.publisher_transport()).declare(topology)

    async def _delete(self, topology: Topology) -> None:
        await (await self.connector.publisher_transport()).delete(topology)


class MessageConsumer:
    """Consumes the service's subscriber queues in the background (``start``/``stop``)."""

    def __init__(self, connector: Broker, organization: str, service: str,
                 max_retries: int = 5, *, chaos: EventChaos | None = None,
                 settings: ConsumerSettings | None = None, prefetch: int | None = None,
                 concurrency: int | None = None, observers: Sequence[Observer] = (),
                 options: TopologyOptions | None = None) -> None:
        self.connector = connector
        settings = settings or ConsumerSettings()
        if prefetch is not None or concurrency is not None:
            settings = dataclasses.replace(settings, prefetch=prefetch or settings.prefetch,
                                           concurrency=concurrency or settings.concurrency)
        self.engine = AsyncMessageConsumer(connector.consumer_transport, organization, service,
                                           max_retries, settings=settings, chaos=chaos,
                                           observers=observers, options=options)

    def add_subscribers(self, subscribers: Sequence[MessageSubscriber]) -> None:
        """Add subscribers (checked now)."""
        self.engine.add_subscribers(subscribers)

    def add_observer(self, observer: Observer) -> None:
        """Be told what the consumer does with each delivery (on the engine's thread)."""
        self.engine.add_observer(observer)

    @property
    def is_running(self) -> bool:
        """True between ``start()`` and ``stop()``."""
        return self.engine.is_running

    def start(self) -> None:
        """Start consuming in the background; return once consuming has begun.

        Started on the main thread, the consumer keeps the process alive after the script's
        last line, like petisco's, until SIGINT/SIGTERM or ``stop()`` from any thread, which
        drain gracefully; then the script exits with its status. Not on other threads, after an
        uncaught exception, nor under pytest (details: ``eventyard.engine.ScriptHold``).
        """
        self.connector.loop_thread.run(self.engine.start())
        script_hold.hold(self)

    def stop(self, timeout: float | None = None) -> None:
        """Stop taking messages and let running handlers finish (bounded by ``timeout``)."""
        try:
            self.connector.loop_thread.run(self.engine.stop(timeout))
        finally:
            script_hold.release(self)

    def run(self) -> None:
        """Consume until SIGINT/SIGTERM, then stop gracefully (for scripts and the CLI)."""
        import asyncio

        try:
            asyncio.run(self._run_in_foreground())
        finally:
            script_hold.release(self)

    async def _run_in_foreground(self) -> None:
        # Signals can only be caught on the main thread's loop: wait here, consume there.
        import asyncio
        import signal

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await asyncio.wrap_future(self.connector.loop_thread.submit(self.engine.start()))
        try:
            await stop.wait()
        finally:
            await asyncio.wrap_future(self.connector.loop_thread.submit(self.engine.stop()))


class _NullConsumption:
    async def cancel(self) -> None:
        return None


class NullTransport:
    """A transport that declares, publishes and consumes nothing (``notimplemented``)."""

    async def declare(self, topology: Topology) -> None:
        return None

    async def delete(self, topology: Topology) -> None:
        return None

    async def publish(self, messages: Sequence[OutgoingMessage]) -> list[int]:
        return []

    async def consume(self, queue: str, callback: DeliveryCallback, *,
                      prefetch: int) -> Consumption:
        return _NullConsumption()

    async def close(self) -> None:
        return None


class NotImplementedBroker:
    """A broker that publishes nowhere and never connects (``notimplemented``)."""

    def __init__(self) -> None:
        self._loop_thread = LoopThread("eventyard-null")
        self._transport = NullTransport()

    @property
    def loop_thread(self) -> LoopThread:
        """The loop the sync API runs on."""
        return self._loop_thread

    async def publisher_transport(self) -> Transport:
        """A transport that drops everything."""
        return self._transport

    async def consumer_transport(self) -> Transport:
        """A transport that delivers nothing."""
        return self._transport

    def close(self) -> None:
        """Stop the sync API's loop thread, if it was started (``with`` calls it)."""
        self._loop_thread.stop()

    async def aclose(self) -> None:
        """``close()`` for async applications (``async with`` calls it)."""
        import asyncio

        if self._loop_thread.is_started and not self._loop_thread.in_loop_thread():
            await asyncio.to_thread(self._loop_thread.stop)

    def __enter__(self) -> NotImplementedBroker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> NotImplementedBroker:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def broker_kind(environ: Mapping[str, str] | None = None) -> str:
    """The broker named by ``EVENTYARD_MESSAGE_BROKER`` (default ``rabbitmq``), validated.

    The seed's ``PETISCO_EVENT_MESSAGE_BROKER`` is read when the first is unset or empty.
    """
    env = os.environ if environ is None else environ
    for variable in (BROKER_ENV, PETISCO_BROKER_ENV):
        kind = env.get(variable, "").strip().lower()
        if kind:
            break
    else:
        return "rabbitmq"
    if kind not in BROKER_KINDS:
        raise ConfigurationError(
            f"{variable}={kind!r} is not a broker: use one of {', '.join(BROKER_KINDS)}"
        )
    return kind


def broker_from_env(environ: Mapping[str, str] | None = None) -> Broker:
    """A new broker of the kind ``EVENTYARD_MESSAGE_BROKER`` names.

    ``rabbitmq`` gives a ``RabbitMqConnector`` configured from the ``RABBITMQ_*`` variables,
    ``memory`` a new ``MemoryBroker``, ``notimplemented`` a ``NotImplementedBroker``.
    """
    kind = broker_kind(environ)
    if kind == "notimplemented":
        return NotImplementedBroker()
    if kind == "memory":
        from eventyard.memory import MemoryBroker

        return MemoryBroker()
    from eventyard.rabbitmq import RabbitMqConnector

    return RabbitMqConnector(environ=environ)
