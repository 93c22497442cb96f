"""How an application's queues are declared: the options and the queue arguments they give."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from eventyard import naming
from eventyard.errors import ConfigurationError

QueueType = Literal["classic", "quorum"]
DEFAULT_RETRY_TTL_MS = 5000
DEFAULT_MAX_RETRIES = 5
# Replicas of each quorum queue: three survive the loss of one node (RabbitMQ caps it at the
# cluster's size, so one node still works).
DEFAULT_QUORUM_GROUP_SIZE = 3

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


def queue_arguments(options: TopologyOptions, **arguments: Any) -> dict[str, Any]:
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
