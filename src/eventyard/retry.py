"""Retry policy and the decision after each handler run (pure, no I/O).

``max_retries = N`` means N retries after the first attempt: N + 1 runs in all. The count of
retries already made travels in the ``redelivery_count`` header, read and written with the
other headers of a failed message's copy in ``failure_headers`` (its names are re-exported
here).

The default policy waits the retry queue's TTL (``retry.Q``) before each retry. A policy with
delays of its own (a list, or exponential backoff) sends the copy through the service's delay
ladder instead (``delay_ladder``).
"""

from __future__ import annotations

import dataclasses
import enum
import random
from collections.abc import Iterable, Sequence
from typing import Any

from eventyard.delay_ladder import DELAY_LEVELS_MS, DELAY_UNIT_MS, MAX_DELAY_MS, delay_hop, delay_left
from eventyard.errors import ConfigurationError, Unrecoverable
from eventyard.failure_headers import (
    DELAY_LEFT,
    FAILURE_ATTEMPTS,
    FAILURE_DELAYS,
    FAILURE_FIRST_AT,
    FAILURE_HEADERS,
    FAILURE_HEADERS_DROPPED,
    FAILURE_HOST,
    FAILURE_LAST_AT,
    FAILURE_MESSAGE,
    FAILURE_QUEUE,
    FAILURE_ROUTING_KEY,
    FAILURE_STACK,
    FAILURE_TYPE,
    MAX_REDELIVERY_COUNT,
    REDELIVERY_COUNT,
    X_DEATH,
    deaths_are_valid,
    delays_text,
    failure_headers,
    redelivery_count,
)
from eventyard.outcomes import Outcome

__all__ = [
    "DELAY_LEFT", "DELAY_LEVELS_MS", "DELAY_UNIT_MS", "FAILURE_ATTEMPTS", "FAILURE_DELAYS",
    "FAILURE_FIRST_AT", "FAILURE_HEADERS", "FAILURE_HEADERS_DROPPED", "FAILURE_HOST",
    "FAILURE_LAST_AT", "FAILURE_MESSAGE", "FAILURE_QUEUE", "FAILURE_ROUTING_KEY", "FAILURE_STACK",
    "FAILURE_TYPE", "MAX_DELAY_MS", "MAX_REDELIVERY_COUNT", "REDELIVERY_COUNT", "X_DEATH",
    "Decision", "RetryPolicy", "deaths_are_valid", "delay_hop", "delay_left", "delays_text",
    "failure_headers", "redelivery_count",
]

class Decision(enum.Enum):
    """What to do with a message after a handler run."""

    ACK = "ack"
    RETRY = "retry"
    DEAD_LETTER = "dead_letter"


_DEFAULT_MAX_RETRIES = 5


class RetryPolicy:
    """How many times, and after how long, a failed message is tried again.

    ``RetryPolicy(max_retries)`` is the seed's fixed delay: each retry waits the retry queue's
    TTL. ``RetryPolicy(delays_ms=[1000, 10_000, 60_000])`` waits each delay in turn (the last
    one again if ``max_retries`` asks for more; ``max_retries`` defaults to the list's length);
    ``RetryPolicy.exponential(...)`` backs off. ``unrecoverable`` lists exception types that go
    straight to the dead-letter queue (``Unrecoverable`` always does). Immutable.
    """

    __slots__ = ("_skip", "delays_ms", "factor", "first_ms", "jitter", "max_ms", "max_retries",
                 "unrecoverable")

    max_retries: int
    delays_ms: tuple[int, ...] | None
    first_ms: int | None
    factor: float
    max_ms: int
    jitter: float
    unrecoverable: tuple[type[BaseException], ...]
    _skip: tuple[type[BaseException], ...]

    def __init__(self, max_retries: int | None = None, *, delays_ms: Sequence[int] | None = None,
                 unrecoverable: Iterable[type[BaseException]] = ()) -> None:
        delays: tuple[int, ...] | None = None
        if delays_ms is not None:
            if isinstance(delays_ms, str | bytes) or not isinstance(delays_ms, Sequence):
                raise ConfigurationError(f"delays_ms must be a list of integers, not {delays_ms!r}")
            delays = tuple(_delay(value, "each of delays_ms") for value in delays_ms)
            if not delays:
                raise ConfigurationError("delays_ms needs at least one delay")
        if max_retries is None:
            max_retries = len(delays) if delays is not None else _DEFAULT_MAX_RETRIES
        self._init(max_retries, delays, None, 1.0, 0, 0.0, unrecoverable)

    def _init(self, max_retries: int, delays: tuple[int, ...] | None, first_ms: int | None,
              factor: float, max_ms: int, jitter: float,
              unrecoverable: Iterable[type[BaseException]]) -> None:
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigurationError(f"max_retries must be an integer >= 0, not {max_retries!r}")
        # One class alone is taken as a list of one.
        kinds: tuple[Any, ...] = ((unrecoverable,) if isinstance(unrecoverable, type)
                                  else tuple(unrecoverable))
        for kind in kinds:
            if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                raise ConfigurationError(f"unrecoverable takes exception classes, not {kind!r}")
        set_ = object.__setattr__
        set_(self, "max_retries", max_retries)
        set_(self, "delays_ms", delays)
        set_(self, "first_ms", first_ms)
        set_(self, "factor", factor)
        set_(self, "max_ms", max_ms)
        set_(self, "jitter", jitter)
        set_(self, "unrecoverable", kinds)
        set_(self, "_skip", (Unrecoverable, *kinds))

    @classmethod
    def exponential(cls, first_ms: int = 1000, factor: float = 2.0, max_ms: int = 600_000,
                    max_retries: int = 10, jitter: float = 0.1, *,
                    unrecoverable: Iterable[type[BaseException]] = ()) -> RetryPolicy:
        """Retry ``n`` (from 0) waits ``min(first_ms * factor**n, max_ms)``, times a random
        factor in ``[1 - jitter, 1 + jitter]``, and never more than ``max_ms``."""
        first = _delay(first_ms, "first_ms")
        top = _delay(max_ms, "max_ms")
        if top < first:
            raise ConfigurationError(f"max_ms ({max_ms}) must be >= first_ms ({first_ms})")
        if isinstance(factor, bool) or not isinstance(factor, int | float) or not (
                1.0 <= factor <= 1000.0):
            raise ConfigurationError(f"factor must be a number from 1 to 1000, not {factor!r}")
        if isinstance(jitter, bool) or not isinstance(jitter, int | float) or not (
                0.0 <= jitter <= 1.0):
            raise ConfigurationError(f"jitter must be a number from 0 to 1, not {jitter!r}")
        policy = object.__new__(cls)
        policy._init(max_retries, None, first, float(factor), top, float(jitter), unrecoverable)
        return policy

    @property
    def is_default(self) -> bool:
        """True for the seed's fixed delay (the retry queue's TTL): no delay ladder."""
        return self.delays_ms is None and self.first_ms is None

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"RetryPolicy is immutable: {name} cannot be set")

    def _key(self) -> tuple[Any, ...]:
        return (self.max_retries, self.delays_ms, self.first_ms, self.factor, self.max_ms,
                self.jitter, self.unrecoverable)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RetryPolicy) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        skip = (f", unrecoverable=({', '.join(k.__name__ for k in self.unrecoverable)})"
                if self.unrecoverable else "")
        if self.first_ms is not None:
            return (f"RetryPolicy.exponential(first_ms={self.first_ms}, factor={self.factor}, "
                    f"max_ms={self.max_ms}, max_retries={self.max_retries}, "
                    f"jitter={self.jitter}{skip})")
        delays = f", delays_ms={list(self.delays_ms)}" if self.delays_ms is not None else ""
        return f"RetryPolicy({self.max_retries}{delays}{skip})"

    def is_unrecoverable(self, outcome: Outcome) -> bool:
        """True if ``outcome``'s error is one that retrying cannot help."""
        error = outcome.exception
        return error is not None and isinstance(error, self._skip)

    def decide(self, outcome: Outcome, redelivery_count: int) -> Decision:
        """ACK on success; DEAD_LETTER for an unrecoverable error or with no retries left;
        RETRY otherwise."""
        if outcome.success:
            return Decision.ACK
        if outcome.exception is not None and isinstance(outcome.exception, self._skip):
            return Decision.DEAD_LETTER
        return Decision.RETRY if redelivery_count < self.max_retries else Decision.DEAD_LETTER

    def delay_ms(self, redelivery_count: int, rng: random.Random | None = None) -> int | None:
        """How long the next retry waits, after ``redelivery_count`` retries; None for the
        default policy (the retry queue's TTL)."""
        count = max(0, redelivery_count)
        if self.delays_ms is not None:
            return self.delays_ms[min(count, len(self.delays_ms) - 1)]
        if self.first_ms is None:
            return None
        exponent = min(count, 4096)
        try:
            base = min(float(self.max_ms), self.first_ms * self.factor**exponent)
        except OverflowError:
            base = float(self.max_ms)
        if self.jitter:
            base *= 1.0 + (rng or random).uniform(-self.jitter, self.jitter)
        return max(0, min(self.max_ms, round(base)))


def _delay(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_DELAY_MS:
        raise ConfigurationError(
            f"{what} must be an integer number of milliseconds from 0 to {MAX_DELAY_MS} "
            f"(30 days), not {value!r}")
    return value
