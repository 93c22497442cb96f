"""RabbitMQ's record of a dead-lettering, as the in-memory broker writes it (``x-death``)."""

from __future__ import annotations

import datetime
import time
from typing import Any

from eventyard.memory.routing import Stored


def is_expired(stored: Stored, now: float) -> bool:
    """True when ``stored``'s TTL in its queue has passed at ``now``."""
    return stored.expires_at is not None and stored.expires_at <= now


def with_death(stored: Stored, queue: str, reason: str) -> dict[str, Any]:
    """``stored``'s headers with RabbitMQ's ``x-death`` record of this dead-lettering.

    The time is a UTC datetime in whole seconds: what the AMQP client reads on RabbitMQ.
    """
    headers = dict(stored.headers)
    now = datetime.datetime.fromtimestamp(int(time.time()), datetime.UTC)
    deaths = [dict(d) for d in headers.get("x-death") or [] if isinstance(d, dict)]
    for death in deaths:
        if death.get("queue") == queue and death.get("reason") == reason:
            count = death.get("count", 0)
            death["count"] = (count if isinstance(count, int) else 0) + 1
            death["time"] = now
            deaths.remove(death)
            deaths.insert(0, death)
            break
    else:
        deaths.insert(0, {"count": 1, "reason": reason, "queue": queue, "time": now,
                          "exchange": stored.exchange, "routing-keys": [stored.routing_key]})
    headers["x-death"] = deaths
    headers.setdefault("x-first-death-exchange", stored.exchange)
    headers.setdefault("x-first-death-queue", queue)
    headers.setdefault("x-first-death-reason", reason)
    return headers
