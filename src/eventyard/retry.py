"""Retry policy and the decision after each handler run (pure, no I/O).

``max_retries = N`` means N retries after the first attempt: N + 1 runs in all. The count of
retries already made travels in the ``redelivery_count`` header. Headers are read here as
untrusted input: a count that is not one, or one beyond any budget, is clamped, and the headers
of a failed message's copy always fit a frame (see ``failure_headers``).

The default policy waits the retry queue's TTL (``retry.Q``) before each retry. A policy with
delays of its own (a list, or exponential backoff) sends the copy through the service's delay
ladder instead: ``DELAY_LEVELS_MS`` queues with fixed TTLs, the same for every delay, so the
queue count never grows with the number of distinct delays. A delay is cut into levels (its
binary digits in units of ``DELAY_UNIT_MS``); the copy carries what is still to wait in
``DELAY_LEFT``, and the consumer sends it on to the next level when it comes back early.
"""

from __future__ import annotations

import dataclasses
import enum
import random
import socket
import traceback
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from eventyard.errors import ConfigurationError, Unrecoverable
from eventyard.headers import DEFAULT_FRAME_MAX, encodable, header_budget, table_size, text
from eventyard.subscribers import Outcome

REDELIVERY_COUNT = "redelivery_count"
FAILURE_TYPE = "failure_type"
FAILURE_MESSAGE = "failure_message"
FAILURE_STACK = "failure_stack"
FAILURE_ATTEMPTS = "failure_attempts"
FAILURE_QUEUE = "failure_queue"
FAILURE_ROUTING_KEY = "failure_routing_key"
FAILURE_FIRST_AT = "failure_first_at"
FAILURE_LAST_AT = "failure_last_at"
FAILURE_HOST = "failure_host"
FAILURE_HEADERS_DROPPED = "failure_headers_dropped"
FAILURE_DELAYS = "failure_delays_ms"  # the delays a policy of its own waited, oldest first
FAILURE_HEADERS = (FAILURE_TYPE, FAILURE_MESSAGE, FAILURE_STACK, FAILURE_ATTEMPTS, FAILURE_QUEUE,
                   FAILURE_ROUTING_KEY, FAILURE_FIRST_AT, FAILURE_LAST_AT, FAILURE_HOST,
                   FAILURE_HEADERS_DROPPED, FAILURE_DELAYS)
DELAY_LEFT = "retry_delay_left_ms"  # what a delayed copy must still wait when it comes back
DELAY_UNIT_MS = 100
DELAY_LEVELS_MS = tuple(DELAY_UNIT_MS * 2**k for k in range(21))  # 100 ms ... about 29 hours
MAX_DELAY_MS = 30 * 24 * 3600 * 1000  # 30 days: any longer is a mistake
_DELAYS_TEXT = 200  # characters of FAILURE_DELAYS kept (the most recent delays)
MAX_REDELIVERY_COUNT = 10**9
X_DEATH = "x-death"  # RabbitMQ's record of a message's dead-letterings
# (message, stack) lengths tried in turn until the copy's headers fit their budget.
_TRIMS = ((4000, 4000), (1000, 1000), (255, 0))
_LINE = 500  # of a stack
_SHORT = 255  # a short string: names, times, the failure type
_SUMMARY = 2000
_KEPT_BYTES = 8192  # old headers kept beside the summary, in all
_KEPT_ONE_BYTES = 512  # ... and each
_HOST = socket.gethostname()


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
    return min(_parse_count(value), MAX_DELAY_MS)


def _delays_of(headers: Mapping[str, Any]) -> str:
    """``FAILURE_DELAYS`` if it is ours (digits and commas, bounded), else ''."""
    old = headers.get(FAILURE_DELAYS)
    if isinstance(old, str) and len(old) <= _DELAYS_TEXT and all(c in "0123456789," for c in old):
        return old
    return ""


def delays_text(headers: Mapping[str, Any], delay_ms: int) -> str:
    """``FAILURE_DELAYS`` of the next copy: the old list (if ours) with ``delay_ms`` added."""
    kept = _delays_of(headers)
    text = f"{kept},{delay_ms}" if kept else str(delay_ms)
    if len(text) > _DELAYS_TEXT:
        text = text[-_DELAYS_TEXT:].partition(",")[2]
    return text


def redelivery_count(headers: Mapping[str, Any]) -> int:
    """The retries already made, from the headers: 0 when absent or not a count, at most
    ``MAX_REDELIVERY_COUNT`` (a forged count never overflows a header of the next copy)."""
    value = headers.get(REDELIVERY_COUNT)
    if value is None:
        return 0
    if type(value) is int:  # the usual case: our own header
        return value if 0 <= value <= MAX_REDELIVERY_COUNT else _clamp(value)
    return _parse_count(value)


def _clamp(value: int) -> int:
    return 0 if value < 0 else min(value, MAX_REDELIVERY_COUNT)


def _parse_count(value: Any) -> int:
    if isinstance(value, bool):
        return 0  # a flag is not a count
    if isinstance(value, int):
        return _clamp(value)
    if isinstance(value, float | Decimal):
        if value != value:  # NaN
            return 0
        return MAX_REDELIVERY_COUNT if value > MAX_REDELIVERY_COUNT else _clamp(int(max(value, 0)))
    if isinstance(value, bytes | bytearray):
        value = bytes(value[:32]).decode("ascii", "replace")
    if isinstance(value, str) and len(value) <= 32:
        try:
            return _clamp(int(value.strip()))
        except ValueError:
            return 0
    return 0


def deaths_are_valid(headers: Mapping[str, Any]) -> bool:
    """True unless ``headers`` hold an ``x-death`` RabbitMQ cannot read.

    RabbitMQ 3.10 updates ``x-death`` whenever it dead-letters a message; one that is not a list
    of tables with an integer ``count`` crashes the queue doing it, over and over. Copies never
    carry such a one, and the consumer never hands such a message to the broker to dead-letter.
    """
    deaths = headers.get(X_DEATH)
    return deaths is None or (isinstance(deaths, list) and all(_death_is_valid(d) for d in deaths))


def _death_is_valid(death: Any) -> bool:
    if not isinstance(death, Mapping):
        return False
    count = death.get("count", 0)
    keys = death.get("routing-keys", [])
    return (type(count) is int and count >= 0
            and all(isinstance(death.get(name, ""), str) for name in ("queue", "reason", "exchange"))
            and isinstance(keys, list) and all(isinstance(key, str) for key in keys))


def _stack(outcome: Outcome) -> str:
    error = outcome.exception
    if error is None or error.__traceback__ is None:
        return ""
    try:
        # Each exception's own line repeats its message (failure_message has it): cut it short
        # so the frames, not a long message, fill the stack's room.
        return "".join(line if len(line) <= _LINE else line[:_LINE] + "...\n"
                       for line in traceback.format_exception(error))
    except Exception as failure:  # an exception whose __str__ raises, say
        return f"(the stack could not be formatted: {type(failure).__name__})"


def _tail(text: str, limit: int) -> str:
    return text if len(text) <= limit else ("..." + text[-limit:] if limit else "")


def _short(value: Any, default: str) -> str:
    """``value`` if it is a short string (a header we set on an earlier copy), else ``default``."""
    return value if isinstance(value, str) and 0 < len(value) <= _SHORT else default


def failure_headers(
    headers: Mapping[str, Any],
    outcome: Outcome,
    *,
    queue: str,
    routing_key: str,
    retries: int,
    now: datetime | None = None,
    limit: int = header_budget(DEFAULT_FRAME_MAX),
    keep_headers: bool = True,
    delay_ms: int | None = None,
) -> dict[str, Any]:
    """Headers for the copy of a failed message: the old ones plus this failure's details.

    ``retries`` is the ``redelivery_count`` the copy carries. Every value can be sent again, an
    ``x-death`` keeps only the records RabbitMQ can read, and the table takes at most ``limit``
    bytes: the stack and message are trimmed first; if the
    old headers alone do not leave room (or ``keep_headers`` is false), only the small ones
    are kept and ``failure_headers_dropped`` names the others (such a copy is dead-lettered).
    ``delay_ms`` (a policy with delays of its own) is added to ``failure_delays_ms``.
    """
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    original = encodable(headers)
    first_at = _short(original.pop(FAILURE_FIRST_AT, None), stamp)
    first_key = _short(original.pop(FAILURE_ROUTING_KEY, None), routing_key[:_SHORT])
    for name in (*FAILURE_HEADERS, REDELIVERY_COUNT):
        original.pop(name, None)
    if X_DEATH in original:
        deaths = original.pop(X_DEATH)
        if isinstance(deaths, list) and (kept_deaths := [d for d in deaths if _death_is_valid(d)]):
            original[X_DEATH] = kept_deaths
    fixed: dict[str, Any] = {
        REDELIVERY_COUNT: _clamp(retries),
        FAILURE_TYPE: (outcome.error_type or "Failure")[:_SHORT],
        FAILURE_ATTEMPTS: redelivery_count(headers) + 1,
        FAILURE_QUEUE: queue[:_SHORT],
        FAILURE_ROUTING_KEY: first_key,
        FAILURE_FIRST_AT: first_at,
        FAILURE_LAST_AT: stamp,
        FAILURE_HOST: _HOST[:_SHORT],
    }
    if delay_ms is not None:
        fixed[FAILURE_DELAYS] = delays_text(headers, delay_ms)
    elif kept_delays := _delays_of(headers):  # a dead letter keeps the record of its delays
        fixed[FAILURE_DELAYS] = kept_delays
    original.pop(DELAY_LEFT, None)
    fixed = encodable(fixed)  # a type or queue name that is not UTF-8
    message = text(outcome.error_message[:_TRIMS[0][0]])
    stack = _stack(outcome)
    for message_limit, stack_limit in _TRIMS if keep_headers else ():
        result = {**original, **fixed, FAILURE_MESSAGE: message[:message_limit],
                  FAILURE_STACK: text(_tail(stack, stack_limit))}
        if table_size(result) <= limit:
            return result
    # The old headers alone leave no room: keep the small ones, name the rest.
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    room = min(limit // 4, _KEPT_BYTES)
    for name, value in original.items():
        cost = table_size({name: value}) - 4
        if cost <= _KEPT_ONE_BYTES and cost <= room:
            kept[name] = value
            room -= cost
        else:
            dropped.append(name)
    summary = (f"{len(dropped)} of {len(original)} headers ({table_size(original)} bytes) left out: "
               f"the copy must fit a frame of the connection; dropped: {', '.join(dropped)}")
    tail = {FAILURE_MESSAGE: message[:_SHORT], FAILURE_STACK: "",
            FAILURE_HEADERS_DROPPED: summary[:_SUMMARY]}
    result = {**kept, **fixed, **tail}
    if table_size(result) > limit:
        result = {**fixed, **tail}
    return result
