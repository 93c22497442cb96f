"""RabbitMQ for eventyard: the seed's configurer, buses, consumer and chaos.

The only package that imports the AMQP client (aiormq).
"""

from __future__ import annotations

from collections.abc import Sequence

from eventyard.buses import CommandBus, DomainEventBus, MessageConfigurer, MessageConsumer
from eventyard.chaos import EventChaos
from eventyard.consuming import AsyncMessageConsumer, ConsumerSettings, Observer
from eventyard.messages import Command, DomainEvent, Message
from eventyard.publishing import (
    AsyncCommandBus,
    AsyncDomainEventBus,
    report_unroutable,
    start_sending,
)
from eventyard.rabbitmq.connector import RabbitMqConnector
from eventyard.rabbitmq.settings import ConnectionSettings
from eventyard.rabbitmq.transport import RabbitMqTransport
from eventyard.topology import TopologyOptions

__all__ = [
    "AsyncRabbitMqCommandBus",
    "AsyncRabbitMqDomainEventBus",
    "AsyncRabbitMqMessageConsumer",
    "ConnectionSettings",
    "RabbitMqCommandBus",
    "RabbitMqConnector",
    "RabbitMqDomainEventBus",
    "RabbitMqEventChaos",
    "RabbitMqMessageConfigurer",
    "RabbitMqMessageConsumer",
    "RabbitMqTransport",
]


class RabbitMqMessageConfigurer(MessageConfigurer):
    """Declares exchanges, queues and bindings for subscribers: ``(connector, org, service)``."""

    def __init__(self, connector: RabbitMqConnector, organization: str, service: str, *,
                 options: TopologyOptions | None = None, retry_ttl_ms: int | None = None,
                 queue_type: str | None = None) -> None:
        super().__init__(connector, organization, service, options=options,
                         retry_ttl_ms=retry_ttl_ms, queue_type=queue_type)


def _sent_blocking(connector: RabbitMqConnector, bus: AsyncDomainEventBus | AsyncCommandBus,
                   messages: Message | Sequence[Message]) -> bool:
    """Send one message through the connector's blocking publisher, if it is free.

    False (nothing sent) for a list of several, from the event loop's own thread, when
    another thread holds the blocking publisher (the event-loop path takes it then), or when
    the connector publishes nowhere.
    """
    if connector.publishes_nowhere or (isinstance(messages, list | tuple) and len(messages) != 1):
        return False
    if connector.loop_thread.in_loop_thread():
        return False
    items, batch = bus.prepare(messages)
    sending = start_sending(batch)
    try:
        routed = connector.blocking_publisher.try_publish(batch[0])
        if routed is None:
            return False  # a span left unended is never exported: the other path has its own
        report_unroutable(items, batch, [] if routed else [0])
    except BaseException as error:
        if sending is not None:
            sending.end(error)
        raise
    if sending is not None:
        sending.end(None)
    return True


class RabbitMqDomainEventBus(DomainEventBus):
    """Publishes domain events to ``<org>.<service>`` with publisher confirms.

    One event goes out on the calling thread (a blocking confirmed publish); a list is
    pipelined on the connector's event loop.
    """

    def __init__(self, connector: RabbitMqConnector, organization: str, service: str) -> None:
        super().__init__(connector, organization, service)
        self._connector = connector

    def publish(self, events: DomainEvent | Sequence[DomainEvent]) -> None:
        """Publish one event or a list of them; return once RabbitMQ confirmed them."""
        if not _sent_blocking(self._connector, self._bus, events):
            super().publish(events)


class RabbitMqCommandBus(CommandBus):
    """Dispatches commands to ``<org>.<service>``; unroutable commands raise."""

    def __init__(self, connector: RabbitMqConnector, organization: str, service: str) -> None:
        super().__init__(connector, organization, service)
        self._connector = connector

    def dispatch(self, commands: Command | Sequence[Command]) -> None:
        """Dispatch one command or a list of them; return once RabbitMQ confirmed them."""
        if not _sent_blocking(self._connector, self._bus, commands):
            super().dispatch(commands)


class RabbitMqEventChaos(EventChaos):
    """Chaos for a RabbitMQ consumer (see ``EventChaos``)."""


class RabbitMqMessageConsumer(MessageConsumer):
    """Consumes subscriber queues: ``(connector, org, service, max_retries)``.

    Prefetch defaults to the connector's ``RABBITMQ_PREFETCH_COUNT`` (10).
    """

    def __init__(self, connector: RabbitMqConnector, organization: str, service: str,
                 max_retries: int = 5, *, chaos: EventChaos | None = None,
                 settings: ConsumerSettings | None = None, prefetch: int | None = None,
                 concurrency: int | None = None, observers: Sequence[Observer] = (),
                 options: TopologyOptions | None = None) -> None:
        if settings is None and prefetch is None:
            prefetch = connector.settings.prefetch_count
        super().__init__(connector, organization, service, max_retries, chaos=chaos,
                         settings=settings, prefetch=prefetch, concurrency=concurrency,
                         observers=observers, options=options)


class AsyncRabbitMqDomainEventBus(AsyncDomainEventBus):
    """``await bus.publish(...)`` on the caller's event loop."""

    def __init__(self, connector: RabbitMqConnector, organization: str, service: str) -> None:
        super().__init__(connector.publisher_transport, organization, service)


class AsyncRabbitMqCommandBus(AsyncCommandBus):
    """``await bus.dispatch(...)`` on the caller's event loop."""

    def __init__(self, connector: RabbitMqConnector, organization: str, service: str) -> None:
        super().__init__(connector.publisher_transport, organization, service)


class AsyncRabbitMqMessageConsumer(AsyncMessageConsumer):
    """The consumer for async applications: ``await start()``, ``await run_until_signal()``."""

    def __init__(self, connector: RabbitMqConnector, organization: str, service: str,
                 max_retries: int = 5, *, chaos: EventChaos | None = None,
                 settings: ConsumerSettings | None = None,
                 observers: Sequence[Observer] = (),
                 options: TopologyOptions | None = None) -> None:
        super().__init__(connector.consumer_transport, organization, service, max_retries,
                         settings=settings or ConsumerSettings(
                             prefetch=connector.settings.prefetch_count),
                         chaos=chaos, observers=observers, options=options)
