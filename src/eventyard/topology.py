"""The broker topology an application needs, as plain data (no I/O).

``build_topology`` turns subscriptions into the exchanges, queues (with their arguments) and
bindings of DESIGN §4. The RabbitMQ configurer declares it, the in-memory broker routes by it,
and the CLI shows and verifies it. The data types are in ``declarations``, the options in
``topology_options``, a queue's retry and dead-letter hops in ``routes``; all are importable
from here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from eventyard import naming
from eventyard.declarations import BindingSpec, ExchangeSpec, QueueSpec, Topology
from eventyard.errors import ConfigurationError
from eventyard.retry import DELAY_LEVELS_MS
from eventyard.routes import Route, route_of
from eventyard.subscribers import Subscription
from eventyard.topology_options import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_QUORUM_GROUP_SIZE,
    DEFAULT_RETRY_TTL_MS,
    PETISCO_MAIN_QUEUE_TTL_MS,
    Layout,
    QueueType,
    TopologyOptions,
    queue_arguments,
)

__all__ = [
    "DEFAULT_MAX_RETRIES", "DEFAULT_QUORUM_GROUP_SIZE", "DEFAULT_RETRY_TTL_MS",
    "PETISCO_MAIN_QUEUE_TTL_MS", "BindingSpec", "ExchangeSpec", "Layout", "QueueSpec",
    "QueueType", "Route", "Topology", "TopologyOptions", "build_topology", "delay_topology",
    "route_of", "subscription_queue",
]


def subscription_queue(org: str, svc: str, subscription: Subscription, store_queue: str) -> str:
    """The main queue ``Q`` of a subscription (under its publisher's service, if it names one).

    ``ConfigurationError`` if ``Q`` or its dead-letter queue (the longest name of its set) is a
    name RabbitMQ or the AMQP client would refuse.
    """
    cls = subscription.message_class
    if cls is None:
        suffix = subscription.store_suffix
        q = f"{store_queue}.{suffix}" if suffix else store_queue
    else:
        q = naming.queue(org, subscription.publisher or svc, cls.message_version,
                         cls.message_kind, cls.message_name, subscription.handler_name)
    naming.check_name(naming.dead_letter_queue(q), "queue")
    return q


def build_topology(
    org: str,
    svc: str,
    subscriptions: Iterable[Subscription],
    options: TopologyOptions | None = None,
) -> Topology:
    """Everything ``org``/``svc`` needs on the broker for ``subscriptions``.

    A subscription that names another service as its publisher gets that service's exchanges
    and queue names. The store is bound to every event of the services involved, and to each
    command only through the command's subscriber, so that a command nobody handles stays
    unroutable (``UnroutableError``); the petisco layout binds every command, as petisco does.
    """
    options = options or TopologyOptions()
    naming.check_word(org, "organization")
    naming.check_word(svc, "service")
    subs = list(subscriptions)
    services = list(dict.fromkeys([svc, *(s.publisher for s in subs if s.publisher)]))
    exchanges: list[ExchangeSpec] = []
    for name in services:
        exchanges += [ExchangeSpec(naming.exchange(org, name)),
                      ExchangeSpec(naming.retry_exchange(org, name)),
                      ExchangeSpec(naming.dead_letter_exchange(org, name))]
    queues: list[QueueSpec] = []
    bindings: list[BindingSpec] = []

    def add_set(q: str, dead_exchange: str, retry_exchange: str, retry_target: str,
                retry_target_key: str) -> None:
        main_args: dict[str, Any] = {"x-dead-letter-exchange": dead_exchange,
                                     "x-dead-letter-routing-key": naming.dead_letter_key(q)}
        if options.main_queue_ttl_ms is not None:
            main_args["x-message-ttl"] = options.main_queue_ttl_ms
        if options.queue_type == "quorum":
            main_args["x-delivery-limit"] = options.quorum_delivery_limit()
        retry_q, dead_q = naming.retry_queue(q), naming.dead_letter_queue(q)
        queues.append(QueueSpec(q, queue_arguments(options, **main_args)))
        queues.append(QueueSpec(retry_q, queue_arguments(options, **{
            "x-message-ttl": options.retry_ttl_ms,
            "x-dead-letter-exchange": retry_target,
            "x-dead-letter-routing-key": retry_target_key,
        })))
        queues.append(QueueSpec(dead_q, queue_arguments(options)))
        bindings.append(BindingSpec(retry_target, q, retry_target_key))
        bindings.append(BindingSpec(retry_exchange, retry_q, naming.retry_key(q)))
        bindings.append(BindingSpec(dead_exchange, dead_q, naming.dead_letter_key(q)))

    commands: list[tuple[str, str]] = []
    claimed: dict[str, Subscription] = {}
    delayed: dict[str, list[str]] = {}  # owner service -> queues with a policy of their own
    for sub in subs:
        cls = sub.message_class
        if cls is None:
            continue
        owner = sub.publisher or svc
        q = subscription_queue(org, svc, sub, options.store_queue)
        other = claimed.setdefault(q, sub)
        if other is not sub:  # publisher= naming this very service, beside one that does not
            raise ConfigurationError(
                f"{sub.handler_name} of {cls.__name__} is subscribed twice to queue {q!r} (once "
                f"with publisher={other.publisher!r}, once with publisher={sub.publisher!r}): "
                "keep one")
        main = naming.exchange(org, owner)
        key = naming.routing_key(org, owner, cls.message_version, cls.message_kind, cls.message_name)
        bindings.append(BindingSpec(main, q, key))
        add_set(q, naming.dead_letter_exchange(org, owner), naming.retry_exchange(org, owner),
                main, naming.retry_key(q))
        if cls.message_kind == "command":
            commands.append((main, key))
        if sub.retry is not None and not sub.retry.is_default:
            delayed.setdefault(owner, []).append(q)

    store_queues: tuple[str, ...] = ()
    if options.store:
        store_retry = naming.store_retry_exchange(org)
        store_dead = naming.store_dead_letter_exchange(org)
        exchanges += [ExchangeSpec(store_retry), ExchangeSpec(store_dead)]
        store_queues = (options.store_queue, *(
            subscription_queue(org, svc, s, options.store_queue) for s in subs
            if s.is_store and s.store_suffix))
        petisco = options.layout == "petisco"
        for s in store_queues:
            for name in services:
                keys = naming.STORE_BINDING_KEYS if petisco else naming.STORE_BINDING_KEYS[:1]
                bindings += [BindingSpec(naming.exchange(org, name), s, k) for k in keys]
            bindings += [BindingSpec(main, s, key) for main, key in commands if not petisco]
            add_set(s, store_dead, store_retry, store_retry, s)
            if petisco and s == options.store_queue:
                bindings += _petisco_store_bindings(org, services, s)
    foreign = tuple(e.name for e in exchanges[3:3 * len(services)])
    foreign_queues: tuple[str, ...] = ()
    for owner, owned in delayed.items():
        ladder = delay_topology(org, owner, owned, options)
        exchanges += ladder.exchanges
        queues += ladder.queues
        bindings += ladder.bindings
        if owner != svc:
            foreign += tuple(e.name for e in ladder.exchanges)
            foreign_queues += tuple(q.name for q in ladder.queues)
    # Every name is checked before anything is declared, on every broker alike.
    naming.check_names(exchanges=(e.name for e in exchanges), queues=(q.name for q in queues),
                       routing_keys=(b.routing_key for b in bindings))
    return Topology(tuple(exchanges), tuple(queues), tuple(dict.fromkeys(bindings)), org,
                    store_queues, foreign, foreign_queues)


def delay_topology(org: str, svc: str, subscriber_queues: Iterable[str],
                   options: TopologyOptions | None = None) -> Topology:
    """The delay ladder of ``org``/``svc`` and the bindings that bring copies back to each of
    ``subscriber_queues`` (queues bound to that service's main exchange).

    One exchange ``delay.<org>.<svc>`` and one queue per level of ``DELAY_LEVELS_MS``, whatever
    the delays: each level holds copies for its TTL, then dead-letters them to the main
    exchange with their own routing key (``<level>.retry.Q``: no dead-letter routing key is
    set), which only ``Q``'s ``*.retry.Q`` binding matches.
    """
    options = options or TopologyOptions()
    main, entry = naming.exchange(org, svc), naming.delay_exchange(org, svc)
    queues = tuple(QueueSpec(naming.delay_queue(org, svc, level), queue_arguments(
        options, **{"x-message-ttl": level, "x-dead-letter-exchange": main}))
        for level in DELAY_LEVELS_MS)
    bindings = [BindingSpec(entry, q.name, naming.delay_level_binding(level))
                for q, level in zip(queues, DELAY_LEVELS_MS, strict=True)]
    bindings += [BindingSpec(main, q, naming.delay_return_binding(q)) for q in subscriber_queues]
    naming.check_names(exchanges=(entry,), queues=(q.name for q in queues),
                       routing_keys=(b.routing_key for b in bindings))
    return Topology((ExchangeSpec(entry),), queues, tuple(bindings), org)


def _petisco_store_bindings(org: str, services: Iterable[str], store: str) -> list[BindingSpec]:
    """The further bindings petisco 2.2.3 gives its store (its consumers route by them)."""
    retry = naming.store_retry_exchange(org)
    found = [BindingSpec(retry, store, key) for key in naming.STORE_BINDING_KEYS]
    for name in services:
        main, dead = naming.exchange(org, name), naming.dead_letter_exchange(org, name)
        found += [BindingSpec(main, store, naming.retry_key(store)), BindingSpec(main, store, store)]
        found += [BindingSpec(dead, naming.dead_letter_queue(store), naming.dead_letter_key(key))
                  for key in naming.STORE_BINDING_KEYS]
        found.append(BindingSpec(dead, naming.dead_letter_queue(store),
                                 naming.dead_letter_key(store)))
    return found
