"""The broker topology an application needs, as plain data (no I/O).

``build_topology`` turns subscriptions into the exchanges, queues (with their arguments) and
bindings of DESIGN §4. The RabbitMQ configurer declares it, the in-memory broker routes by it,
and the CLI shows and verifies it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from eventyard import naming
from eventyard.errors import ConfigurationError
from eventyard.subscribers import Subscription

QueueType = Literal["classic", "quorum"]
DEFAULT_RETRY_TTL_MS = 5000
DEFAULT_MAX_RETRIES = 5


@dataclass(frozen=True, slots=True)
class ExchangeSpec:
    """A durable topic exchange."""

    name: str
    type: str = "topic"
    durable: bool = True


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """A durable queue and its ``x-`` arguments."""

    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    durable: bool = True


@dataclass(frozen=True, slots=True)
class BindingSpec:
    """``queue`` receives what ``exchange`` routes with ``routing_key``."""

    exchange: str
    queue: str
    routing_key: str


@dataclass(frozen=True, slots=True)
class Topology:
    """Exchanges, queues and bindings, in declaration order."""

    exchanges: tuple[ExchangeSpec, ...]
    queues: tuple[QueueSpec, ...]
    bindings: tuple[BindingSpec, ...]

    def queue(self, name: str) -> QueueSpec:
        """The queue called ``name``; ``KeyError`` if there is none."""
        for spec in self.queues:
            if spec.name == name:
                return spec
        raise KeyError(name)


@dataclass(frozen=True, slots=True, kw_only=True)
class TopologyOptions:
    """How queues are declared. Every field has the documented default."""

    retry_ttl_ms: int = DEFAULT_RETRY_TTL_MS
    queue_type: QueueType = "classic"
    main_queue_ttl_ms: int | None = None
    delivery_limit: int | None = None
    max_retries: int = DEFAULT_MAX_RETRIES
    store: bool = True
    store_queue: str = naming.STORE_QUEUE

    def __post_init__(self) -> None:
        if isinstance(self.retry_ttl_ms, bool) or not isinstance(self.retry_ttl_ms, int) or (
            self.retry_ttl_ms < 0
        ):
            raise ConfigurationError(
                f"retry_ttl_ms must be an integer >= 0, not {self.retry_ttl_ms!r}")
        if self.queue_type not in ("classic", "quorum"):
            raise ConfigurationError(
                f"queue_type must be 'classic' or 'quorum', not {self.queue_type!r}")
        if self.main_queue_ttl_ms is not None and self.main_queue_ttl_ms < 1:
            raise ConfigurationError("main_queue_ttl_ms must be >= 1 ms, or None for no TTL")
        if self.max_retries < 0:
            raise ConfigurationError(f"max_retries must be >= 0, not {self.max_retries}")
        if self.delivery_limit is not None and self.delivery_limit <= self.max_retries:
            raise ConfigurationError("delivery_limit must be above max_retries")
        naming.check_word(self.store_queue.replace(".", "_"), "store queue name")

    def quorum_delivery_limit(self) -> int:
        """Redeliveries a quorum queue allows before dead-lettering (crash loops, not retries)."""
        return self.delivery_limit or 2 * (self.max_retries + 1) + 10


def subscription_queue(org: str, svc: str, subscription: Subscription, store_queue: str) -> str:
    """The main queue ``Q`` of a subscription."""
    cls = subscription.message_class
    if cls is None:
        return store_queue
    return naming.queue(org, svc, cls.message_version, cls.message_kind, cls.message_name,
                        subscription.handler_name)


def _queue_arguments(options: TopologyOptions, **arguments: Any) -> dict[str, Any]:
    if options.queue_type == "quorum":
        arguments["x-queue-type"] = "quorum"
    return arguments


def build_topology(
    org: str,
    svc: str,
    subscriptions: Iterable[Subscription],
    options: TopologyOptions | None = None,
) -> Topology:
    """Everything ``org``/``svc`` needs on the broker for ``subscriptions``."""
    options = options or TopologyOptions()
    naming.check_word(org, "organization")
    naming.check_word(svc, "service")
    main, retry, dead = (naming.exchange(org, svc), naming.retry_exchange(org, svc),
                         naming.dead_letter_exchange(org, svc))
    exchanges = [ExchangeSpec(main), ExchangeSpec(retry), ExchangeSpec(dead)]
    queues: list[QueueSpec] = []
    bindings: list[BindingSpec] = []

    def add_set(q: str, keys: Iterable[str], retry_exchange: str, dead_exchange: str,
                main_ttl: int | None) -> None:
        retry_q, dead_q = naming.retry_queue(q), naming.dead_letter_queue(q)
        main_args: dict[str, Any] = {"x-dead-letter-exchange": dead_exchange,
                                     "x-dead-letter-routing-key": naming.dead_letter_key(q)}
        if main_ttl is not None:
            main_args["x-message-ttl"] = main_ttl
        if options.queue_type == "quorum":
            main_args["x-delivery-limit"] = options.quorum_delivery_limit()
        queues.append(QueueSpec(q, _queue_arguments(options, **main_args)))
        queues.append(QueueSpec(retry_q, _queue_arguments(options, **{
            "x-message-ttl": options.retry_ttl_ms,
            "x-dead-letter-exchange": main,
            "x-dead-letter-routing-key": naming.retry_key(q),
        })))
        queues.append(QueueSpec(dead_q, _queue_arguments(options)))
        bindings.extend(BindingSpec(main, q, key) for key in keys)
        bindings.append(BindingSpec(main, q, naming.retry_key(q)))
        bindings.append(BindingSpec(retry_exchange, retry_q, naming.retry_key(q)))
        bindings.append(BindingSpec(dead_exchange, dead_q, naming.dead_letter_key(q)))

    for sub in subscriptions:
        cls = sub.message_class
        if cls is None:
            continue
        q = subscription_queue(org, svc, sub, options.store_queue)
        key = naming.routing_key(org, svc, cls.message_version, cls.message_kind, cls.message_name)
        add_set(q, [key], retry, dead, options.main_queue_ttl_ms)

    if options.store:
        store_retry = naming.store_retry_exchange(org)
        store_dead = naming.store_dead_letter_exchange(org)
        exchanges += [ExchangeSpec(store_retry), ExchangeSpec(store_dead)]
        add_set(options.store_queue, naming.STORE_BINDING_KEYS, store_retry, store_dead,
                options.main_queue_ttl_ms)
    return Topology(tuple(exchanges), tuple(queues), tuple(bindings))


@dataclass(frozen=True, slots=True)
class Route:
    """Where a consumer sends a failed message of queue ``Q``: its retry and dead-letter hops."""

    queue: str
    retry_exchange: str
    retry_key: str
    dead_letter_exchange: str
    dead_letter_key: str


def route_of(org: str, svc: str, queue: str, store_queue: str = naming.STORE_QUEUE) -> Route:
    """The retry and dead-letter hops of ``queue`` (a subscriber queue or the store)."""
    if queue == store_queue:
        return Route(queue, naming.store_retry_exchange(org), naming.retry_key(queue),
                     naming.store_dead_letter_exchange(org), naming.dead_letter_key(queue))
    return Route(queue, naming.retry_exchange(org, svc), naming.retry_key(queue),
                 naming.dead_letter_exchange(org, svc), naming.dead_letter_key(queue))
