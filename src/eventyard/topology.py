"""The broker topology an application needs, as plain data (no I/O).

``build_topology`` turns subscriptions into the exchanges, queues (with their arguments) and
bindings of DESIGN §4. The RabbitMQ configurer declares it, the in-memory broker routes by it,
and the CLI shows and verifies it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from eventyard import naming
from eventyard.errors import ConfigurationError
from eventyard.retry import DELAY_LEVELS_MS
from eventyard.subscribers import Subscription

QueueType = Literal["classic", "quorum"]
DEFAULT_RETRY_TTL_MS = 5000
DEFAULT_MAX_RETRIES = 5
# Replicas of each quorum queue: three survive the loss of one node (RabbitMQ caps it at the
# cluster's size, so one node still works).
DEFAULT_QUORUM_GROUP_SIZE = 3


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
    """Exchanges, queues and bindings, in declaration order.

    ``organization`` and ``store_queues`` are kept so that a mismatch on a store queue (shared by
    every service of the organisation) can be explained.
    """

    exchanges: tuple[ExchangeSpec, ...]
    queues: tuple[QueueSpec, ...]
    bindings: tuple[BindingSpec, ...]
    organization: str = ""
    store_queues: tuple[str, ...] = ()
    foreign_exchanges: tuple[str, ...] = ()
    foreign_queues: tuple[str, ...] = ()

    def for_deletion(self) -> Topology:
        """This topology without the exchanges of other services it subscribes to.

        Clearing a service deletes its queues and its own exchanges, never the exchanges that
        the services it listens to publish on, nor their delay ladders.
        """
        return dataclasses.replace(self, exchanges=tuple(
            e for e in self.exchanges if e.name not in self.foreign_exchanges), queues=tuple(
            q for q in self.queues if q.name not in self.foreign_queues))

    def queue(self, name: str) -> QueueSpec:
        """The queue called ``name``; ``KeyError`` if there is none."""
        for spec in self.queues:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def mismatch_hint(self, name: str) -> str:
        """What to do when the broker holds queue ``name`` with other arguments ('' if nothing)."""
        family = {n for s in self.store_queues
                  for n in (s, naming.retry_queue(s), naming.dead_letter_queue(s))}
        if name not in family:
            return ""
        return (
            f" {name!r} belongs to the organisation's store, which every service of "
            f"{self.organization!r} on this vhost shares. If another organisation's store holds "
            "this name, give this one its own: store_queue='<name>' (TopologyOptions) or "
            "--store-queue <name>. If an older eventyard declared it (its retry queue then "
            "dead-lettered to a service's exchange), `eventyard topology verify` prints the steps "
            "to move it."
        )

    def store_migration(self, name: str, reply: str) -> str:
        """Steps to move a store queue declared by an older eventyard layout ('' if not one).

        Before the store was per organisation, ``retry.<store>`` dead-lettered to the exchange
        of the service that declared it; ``reply`` is the broker's account of the difference.
        """
        old = [s for s in self.store_queues if name == naming.retry_queue(s)]
        if not old or f"current is '{self.organization}." not in reply:
            return ""
        store, retry = old[0], name
        return (
            f"{retry!r} was declared by an older eventyard, when the store's retry queue "
            "dead-lettered to a service's exchange. To move it: (1) stop the consumers of "
            f"{store!r} in every service of {self.organization!r}; (2) wait until {retry!r} is "
            "empty (its messages return to the store within the retry TTL); (3) delete "
            f"{retry!r} (e.g. `rabbitmqctl delete_queue {retry} -p <vhost>`); {store!r} and "
            f"its dead-letter queue keep their messages and arguments; (4) configure again and "
            "start the consumers. Then remove the store's old bindings to each service's "
            f"exchange with the keys {naming.retry_key(store)!r} and '*.*.*.command.*' (the "
            "management UI or rabbitmqadmin): while the latter stays, a command nobody handles "
            "is kept by the store instead of raising UnroutableError."
        )


Layout = Literal["eventyard", "petisco"]
PETISCO_MAIN_QUEUE_TTL_MS = 5000


@dataclass(frozen=True, slots=True, kw_only=True)
class TopologyOptions:
    """How queues are declared. Every field has the documented default.

    ``layout="petisco"`` (see ``petisco()``) adds the bindings petisco 2.2.3 declares beside
    eventyard's, so both kinds of service share one vhost.
    """

    retry_ttl_ms: int = DEFAULT_RETRY_TTL_MS
    queue_type: QueueType = "classic"
    main_queue_ttl_ms: int | None = None
    delivery_limit: int | None = None
    quorum_group_size: int = DEFAULT_QUORUM_GROUP_SIZE
    max_retries: int = DEFAULT_MAX_RETRIES
    store: bool = True
    store_queue: str = naming.STORE_QUEUE
    layout: Layout = "eventyard"

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
        if isinstance(self.quorum_group_size, bool) or not isinstance(
                self.quorum_group_size, int) or self.quorum_group_size < 1:
            raise ConfigurationError(
                f"quorum_group_size must be an integer >= 1, not {self.quorum_group_size!r}")
        if self.delivery_limit is not None and self.delivery_limit <= self.max_retries:
            raise ConfigurationError("delivery_limit must be above max_retries")
        if self.layout not in ("eventyard", "petisco"):
            raise ConfigurationError(f"layout must be 'eventyard' or 'petisco', not {self.layout!r}")
        naming.check_word(self.store_queue.replace(".", "_"), "store queue name")

    @classmethod
    def petisco(cls, **overrides: Any) -> TopologyOptions:
        """Exactly what petisco 2.2.3 declares: a 5 s TTL on main queues, petisco's bindings.

        Pass it as ``options=`` to the configurer and the consumer of a service that joins a
        vhost of petisco services, to share or take over their queues. Other fields may be
        overridden (``retry_ttl_ms=...``). Commands that no handler receives are still caught
        by the store here, as in petisco, so ``UnroutableError`` cannot fire.
        """
        values: dict[str, Any] = {"main_queue_ttl_ms": PETISCO_MAIN_QUEUE_TTL_MS,
                                  "layout": "petisco"}
        values.update(overrides)
        return cls(**values)

    def quorum_delivery_limit(self) -> int:
        """Redeliveries a quorum queue allows before dead-lettering (crash loops, not retries)."""
        return self.delivery_limit or 2 * (self.max_retries + 1) + 10


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


def _queue_arguments(options: TopologyOptions, **arguments: Any) -> dict[str, Any]:
    """``arguments`` plus, for quorum, the type, group size and safe dead-lettering.

    Every quorum queue with a dead-letter exchange gets at-least-once dead-lettering: main
    queues dead-letter at the delivery limit, retry and delay queues at each TTL expiry (every
    retry passes there). By default the broker's dead-lettering is at-most-once, and a copy
    lost on a node failure would be a lost message. RabbitMQ requires ``reject-publish``
    overflow with it; without a length limit nothing is ever rejected.
    """
    if options.queue_type == "quorum":
        arguments["x-queue-type"] = "quorum"
        arguments["x-quorum-initial-group-size"] = options.quorum_group_size
        if "x-dead-letter-exchange" in arguments:
            arguments["x-dead-letter-strategy"] = "at-least-once"
            arguments["x-overflow"] = "reject-publish"
    return arguments


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
        queues.append(QueueSpec(q, _queue_arguments(options, **main_args)))
        queues.append(QueueSpec(retry_q, _queue_arguments(options, **{
            "x-message-ttl": options.retry_ttl_ms,
            "x-dead-letter-exchange": retry_target,
            "x-dead-letter-routing-key": retry_target_key,
        })))
        queues.append(QueueSpec(dead_q, _queue_arguments(options)))
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
    queues = tuple(QueueSpec(naming.delay_queue(org, svc, level), _queue_arguments(
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


@dataclass(frozen=True, slots=True)
class Route:
    """Where a consumer sends a failed message of queue ``Q``: its retry and dead-letter hops."""

    queue: str
    retry_exchange: str
    retry_key: str
    dead_letter_exchange: str
    dead_letter_key: str
    main_exchange: str = ""  # where Q is bound: an immediate retry goes there with retry_key
    delay_exchange: str = ""  # the owner's delay ladder ('' for the store: fixed delay only)


def route_of(org: str, svc: str, queue: str, store_queue: str = naming.STORE_QUEUE) -> Route:
    """The retry and dead-letter hops of ``queue`` (a subscriber queue or a store queue).

    A subscriber queue names its service (``<org>.<svc>.<v>.<kind>.<name>.<handler>``); that
    service's exchanges carry its retries, also when another service consumes it.
    """
    words = queue.split(".")
    subscriber = len(words) >= 6 and words[0] == org
    if queue == store_queue or (not subscriber and queue.startswith(f"{store_queue}.")):
        return Route(queue, naming.store_retry_exchange(org), naming.retry_key(queue),
                     naming.store_dead_letter_exchange(org), naming.dead_letter_key(queue))
    owner = words[1] if subscriber else svc
    return Route(queue, naming.retry_exchange(org, owner), naming.retry_key(queue),
                 naming.dead_letter_exchange(org, owner), naming.dead_letter_key(queue),
                 naming.exchange(org, owner), naming.delay_exchange(org, owner))
