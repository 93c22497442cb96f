"""What is declared on a broker: exchanges, queues and bindings, as plain data (no I/O).

A ``Topology`` is built by ``topology.build_topology``; the RabbitMQ configurer declares it, the
in-memory broker routes by it, and the CLI shows and verifies it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from eventyard import naming


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
