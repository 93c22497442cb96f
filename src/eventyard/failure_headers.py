"""The headers of a failed message's copy, read and written as untrusted input (pure, no I/O).

The count of retries already made travels in ``redelivery_count``; a count that is not one, or
one beyond any budget, is clamped. ``failure_headers`` writes this failure's details beside
the old headers, and the table always fits a frame of the connection.
"""

from __future__ import annotations

import socket
import traceback
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from eventyard.headers import DEFAULT_FRAME_MAX, encodable, header_budget, table_size, text
from eventyard.outcomes import Outcome

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
    return parse_count(value)


def _clamp(value: int) -> int:
    return 0 if value < 0 else min(value, MAX_REDELIVERY_COUNT)


def parse_count(value: Any) -> int:
    """A count from an untrusted header value: 0 when it is not one, clamped."""
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
