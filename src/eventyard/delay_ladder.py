"""The delay ladder: how a retry waits a delay of its own (pure, no I/O).

A policy with delays of its own sends a failed message's copy through the service's delay
ladder: ``DELAY_LEVELS_MS`` queues with fixed TTLs, the same for every delay, so the queue
count never grows with the number of distinct delays. A delay is cut into levels (its binary
digits in units of ``DELAY_UNIT_MS``); the copy carries what is still to wait in
``DELAY_LEFT``, and the consumer sends it on to the next level when it comes back early.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from eventyard.failure_headers import DELAY_LEFT, parse_count

DELAY_UNIT_MS = 100
DELAY_LEVELS_MS = tuple(DELAY_UNIT_MS * 2**k for k in range(21))  # 100 ms ... about 29 hours
MAX_DELAY_MS = 30 * 24 * 3600 * 1000  # 30 days: any longer is a mistake


def delay_hop(left_ms: int) -> tuple[int, int] | None:
    """The ladder level to wait next for a delay of ``left_ms``, and what is left after it;
    None when nothing is left to wait. A delay is rounded up to ``DELAY_UNIT_MS``."""
    units = -(-min(max(left_ms, 0), MAX_DELAY_MS) // DELAY_UNIT_MS)
    if units <= 0:
        return None
    level = 1 << (min(units.bit_length(), len(DELAY_LEVELS_MS)) - 1)
    return level * DELAY_UNIT_MS, (units - level) * DELAY_UNIT_MS


def delay_left(headers: Mapping[str, Any]) -> int:
    """What a delayed copy must still wait, from its headers (0 when absent or not a count),
    at most ``MAX_DELAY_MS``: a forged value never holds a message for long."""
    value = headers.get(DELAY_LEFT)
    if type(value) is int:  # ours
        return min(max(value, 0), MAX_DELAY_MS)
    if value is None:
        return 0
    return min(parse_count(value), MAX_DELAY_MS)
