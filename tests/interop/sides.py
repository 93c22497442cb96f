"""petisco 2.2.3 and eventyard side by side on one broker: one service of each, same names.

petisco's ``RabbitMqConnector`` is a process-wide singleton that reads ``RABBITMQ_HOST``,
``RABBITMQ_PORT``, ``RABBITMQ_USER`` and ``RABBITMQ_PASSWORD`` once, when petisco is imported
(its classes take a connector as a default argument), and always connects to the vhost ``/``.
The tests build connectors of their own (``petisco_connector``) with those variables set only
while one is built, so nothing leaks into the environment of other tests.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from unittest import mock
from urllib.parse import unquote, urlsplit, urlunsplit

from meiga import isFailure, isSuccess
from petisco import Command as PetiscoCommand
from petisco import CommandSubscriber, DomainEventSubscriber
from petisco import Message as PetiscoMessage
from petisco.extra.rabbitmq import QueueConfig
from petisco.extra.rabbitmq import RabbitMqConnector as PetiscoConnector
from petisco.extra.rabbitmq import RabbitMqDomainEventBus as PetiscoEventBus
from petisco.extra.rabbitmq import RabbitMqMessageConfigurer as PetiscoConfigurer
from petisco.extra.rabbitmq import RabbitMqMessageConsumer as PetiscoConsumer
from pika import BlockingConnection, ConnectionParameters, PlainCredentials

from eventyard.consuming import ConsumerEvent
from eventyard.messages import Command, DomainEvent, Message
from eventyard.rabbitmq import (
    RabbitMqCommandBus,
    RabbitMqConnector,
    RabbitMqDomainEventBus,
    RabbitMqMessageConfigurer,
    RabbitMqMessageConsumer,
)
from eventyard.subscribers import MessageSubscriber
from eventyard.topology import TopologyOptions
from support.broker import Inspector


def url_of_vhost(url: str, vhost: str) -> str:
    """``url`` with its vhost replaced (``/`` is the default vhost)."""
    path = "/" if vhost == "/" else "/" + vhost
    return urlunsplit(urlsplit(url)._replace(path=path))


class _PetiscoOnVhost(PetiscoConnector):
    """petisco's connector, opening its connections on another vhost than ``/``.

    Only the vhost of the connection changes; everything petisco declares, publishes and
    consumes is its own code. Used for the test of the store, whose name petisco fixes.
    """

    vhost = "/"

    def _create_blocking_connection(self, connection_name: str) -> BlockingConnection:
        return BlockingConnection(ConnectionParameters(
            heartbeat=self.heartbeat, host=self.host, port=int(self.port),
            virtual_host=self.vhost,
            credentials=PlainCredentials(username=self.user, password=self.password),
            client_properties={"connection_name": connection_name}))


def petisco_connector(url: str, vhost: str = "/") -> PetiscoConnector:
    """A petisco connector of its own for the broker of ``url``, configured as petisco is:
    through the ``RABBITMQ_*`` variables."""
    parts = urlsplit(url)
    variables = {
        "RABBITMQ_HOST": parts.hostname or "localhost",
        "RABBITMQ_PORT": str(parts.port or 5672),
        "RABBITMQ_USER": unquote(parts.username or "guest"),
        "RABBITMQ_PASSWORD": unquote(parts.password or "guest"),
    }
    cls = PetiscoConnector if vhost == "/" else _PetiscoOnVhost
    with mock.patch.dict(os.environ, variables):
        # type.__call__ skips petisco's Singleton metaclass: a new connector, not the one
        # petisco built at import time from whatever the environment held then.
        connector: PetiscoConnector = type.__call__(cls)
    if isinstance(connector, _PetiscoOnVhost):
        connector.vhost = vhost
    return connector


class Runs:
    """Handler runs, from any thread: (side, handler, message id) and what the handler saw."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self.seen: dict[tuple[str, str], Any] = {}

    def add(self, side: str, handler: str, message_id: str, message: Any) -> None:
        with self._lock:
            self.counts[(side, handler, message_id)] += 1
            self.seen[(handler, message_id)] = message

    def of(self, handler: str, side: str | None = None) -> Counter[str]:
        """Runs per message id of ``handler`` (on ``side`` only, if given)."""
        with self._lock:
            return Counter({mid: n for (s, h, mid), n in self.counts.items()
                            if h == handler and side in (None, s)})

    def total(self, handler: str) -> int:
        return sum(self.of(handler).values())


class Events:
    """What eventyard consumers did (their observer), from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items: list[ConsumerEvent] = []

    def __call__(self, event: ConsumerEvent) -> None:
        with self._lock:
            self.items.append(event)

    def of(self, kind: str, queue: str | None = None) -> list[ConsumerEvent]:
        with self._lock:
            return [e for e in self.items if e.kind == kind and queue in (None, e.queue)]


def _camel(snake: str) -> str:
    return "".join(word.capitalize() for word in snake.split("_"))


def petisco_subscriber(handler: str, message: type[PetiscoMessage], runs: Runs,
                       fail: Callable[[Any], bool] = lambda _: False) -> type:
    """A petisco subscriber class whose queue ends in ``.<handler>`` (petisco names it after the
    class), recording each run in ``runs``; it fails when ``fail(message)``."""
    is_command = issubclass(message, PetiscoCommand)
    base = CommandSubscriber if is_command else DomainEventSubscriber

    def subscribed_to(self: Any) -> Any:
        return message if is_command else [message]  # a command subscriber names one class

    def handle(self: Any, received: Any) -> Any:
        runs.add("petisco", handler, received.get_message_id().value, received)
        return isFailure if fail(received) else isSuccess

    # petisco's subscriber metaclass wraps ``handle``; it must be in the class body.
    return type(base)(_camel(handler), (base,), {"subscribed_to": subscribed_to, "handle": handle})


def yard_handler(handler: str, runs: Runs,
                 fail: Callable[[Any], bool] = lambda _: False) -> Callable[[Message], bool]:
    """An eventyard handler function called ``handler`` that records its runs in ``runs``."""

    def run(message: Message) -> bool:
        runs.add("eventyard", handler, message.get_message_id(), message)
        return not fail(message)

    run.__name__ = run.__qualname__ = handler
    return run


class PetiscoService:
    """One petisco 2.2.3 service: configurer, event bus and consumers on its own connector."""

    def __init__(self, url: str, organization: str, service: str, vhost: str = "/") -> None:
        self.organization = organization
        self.service = service
        self.connector = petisco_connector(url, vhost)
        self._consumers: list[PetiscoConsumer] = []

    def configure(self, subscribers: Sequence[type], *, store: bool = False,
                  retry_ttl_ms: int = 5000) -> None:
        """petisco's configurer with its default queue config (a 5 s TTL on main queues)."""
        PetiscoConfigurer(self.organization, self.service, self.connector,
                          QueueConfig.default(default_retry_ttl=retry_ttl_ms),
                          use_store_queues=store).configure_subscribers(list(subscribers))

    def publish(self, events: Iterable[Any]) -> None:
        PetiscoEventBus(self.organization, self.service, self.connector).publish(list(events))

    def consume(self, subscribers: Sequence[type], max_retries: int,
                name: str = "consumer") -> PetiscoConsumer:
        """Start a petisco consumer (on a pika thread) with a connection of its own."""
        consumer = PetiscoConsumer(self.organization, self.service, max_retries, self.connector,
                                   rabbitmq_key_prefix=name)
        consumer.add_subscribers(list(subscribers))
        self._consumers.append(consumer)
        consumer.start()
        return consumer

    def stop(self, consumer: PetiscoConsumer) -> None:
        """Stop the consumer as petisco's ``stop()`` does, then close its connection as the
        process of a stopped service would: what it had prefetched goes back to the queue.

        petisco stops consuming on the consumer's own thread and waits for that thread; but it
        asks with ``call_later``, which pika runs at the connection's next I/O (seconds later),
        and it sleeps 2 s first. The same steps, asked with pika's thread-safe callback, take
        milliseconds. (``_channel`` and ``_thread`` are petisco 2.2.3's, the version pinned.)
        """
        if consumer not in self._consumers:
            return
        self._consumers.remove(consumer)
        thread: threading.Thread | None = consumer._thread
        if thread is not None and thread.is_alive():
            channel = consumer._channel

            def stop_consuming() -> None:
                with contextlib.suppress(ValueError):
                    channel.stop_consuming()
                    channel.cancel()

            self.connector.get_connection(consumer.rabbitmq_key).add_callback_threadsafe(
                stop_consuming)
            thread.join(10)
            assert not thread.is_alive(), "petisco's consumer did not stop within 10 s"
        if consumer.rabbitmq_key in self.connector.open_connections:
            self.connector.close(consumer.rabbitmq_key)

    def close(self) -> None:
        for consumer in list(self._consumers):
            self.stop(consumer)
        self.connector.close_all()


class YardService:
    """One eventyard service with the petisco preset (unless told otherwise)."""

    def __init__(self, url: str, organization: str, service: str,
                 options: TopologyOptions) -> None:
        self.organization = organization
        self.service = service
        self.options = options
        self.connector = RabbitMqConnector(url)
        self._consumers: list[RabbitMqMessageConsumer] = []

    def configure(self, subscribers: Sequence[MessageSubscriber]) -> None:
        RabbitMqMessageConfigurer(self.connector, self.organization, self.service,
                                  options=self.options).configure_subscribers(subscribers)

    def publish(self, events: Sequence[DomainEvent]) -> None:
        """Publish ``events`` (several at once: pipelined)."""
        RabbitMqDomainEventBus(self.connector, self.organization, self.service).publish(events)

    def dispatch(self, command: Command) -> None:
        RabbitMqCommandBus(self.connector, self.organization, self.service).dispatch(command)

    def consume(self, subscribers: Sequence[MessageSubscriber], max_retries: int,
                events: Events) -> RabbitMqMessageConsumer:
        consumer = RabbitMqMessageConsumer(self.connector, self.organization, self.service,
                                           max_retries, options=self.options, observers=[events])
        consumer.add_subscribers(subscribers)
        consumer.start()
        self._consumers.append(consumer)
        return consumer

    def stop(self, consumer: RabbitMqMessageConsumer) -> None:
        if consumer in self._consumers:
            self._consumers.remove(consumer)
            consumer.stop()

    def close(self) -> None:
        for consumer in list(self._consumers):
            self.stop(consumer)
        self.connector.close()


Snapshot = tuple[dict[str, dict[str, Any]], set[tuple[str, str, str]], dict[str, dict[str, Any]]]


def snapshot(inspector: Inspector, names: str) -> Snapshot:
    """Queues (with arguments), bindings and exchanges whose names contain ``names``, as the
    broker holds them (the inspector's three listings, at once)."""
    with ThreadPoolExecutor(3) as pool:
        queues = pool.submit(inspector.queues, names)
        bindings = pool.submit(inspector.bindings, names)
        exchanges = pool.submit(inspector.exchanges, names)
        return queues.result(), bindings.result(), exchanges.result()
