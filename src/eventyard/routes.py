"""Where a consumer sends a failed message: the retry and dead-letter hops of a queue."""

from __future__ import annotations

from dataclasses import dataclass

from eventyard import naming


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
