"""Retry policy and the decision after each handler run (pure, no I/O).

``max_retries = N`` means N retries after the first attempt: N + 1 runs in all. The count of
retries already made travels in the ``redelivery_count`` header.
"""

from __future__ import annotations

import enum
import socket
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from eventyard.errors import ConfigurationError
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
FAILURE_HEADERS = (FAILURE_TYPE, FAILURE_MESSAGE, FAILURE_STACK, FAILURE_ATTEMPTS, FAILURE_QUEUE,
                   FAILURE_ROUTING_KEY, FAILURE_FIRST_AT, FAILURE_LAST_AT, FAILURE_HOST)
_STACK_LIMIT = 4000
_HOST = socket.gethostname()


class Decision(enum.Enum):
    """What to do with a message after a handler run."""

    ACK = "ack"
    RETRY = "retry"
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many times a failed message is tried again."""

    max_retries: int = 5

    def __post_init__(self) -> None:
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or (
            self.max_retries < 0
        ):
            raise ConfigurationError(f"max_retries must be an integer >= 0, not {self.max_retries!r}")

    def decide(self, outcome: Outcome, redelivery_count: int) -> Decision:
        """ACK on success; RETRY while retries are left; DEAD_LETTER after that."""
        if outcome.success:
            return Decision.ACK
        return Decision.RETRY if redelivery_count < self.max_retries else Decision.DEAD_LETTER


def redelivery_count(headers: Mapping[str, Any]) -> int:
    """The retries already made, from the headers (0 when absent or malformed)."""
    value = headers.get(REDELIVERY_COUNT, 0)
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


def _stack(outcome: Outcome) -> str:
    if outcome.exception is None or outcome.exception.__traceback__ is None:
        return ""
    text = "".join(traceback.format_exception(outcome.exception))
    return text if len(text) <= _STACK_LIMIT else "..." + text[-_STACK_LIMIT:]


def failure_headers(
    headers: Mapping[str, Any],
    outcome: Outcome,
    *,
    queue: str,
    routing_key: str,
    retries: int,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Headers for the copy of a failed message: the old ones plus this failure's details.

    ``retries`` is the ``redelivery_count`` the copy carries.
    """
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    result = dict(headers)
    result[REDELIVERY_COUNT] = retries
    result[FAILURE_TYPE] = outcome.error_type or "Failure"
    result[FAILURE_MESSAGE] = outcome.error_message[:_STACK_LIMIT]
    result[FAILURE_STACK] = _stack(outcome)
    result[FAILURE_ATTEMPTS] = redelivery_count(headers) + 1
    result[FAILURE_QUEUE] = queue
    result.setdefault(FAILURE_ROUTING_KEY, routing_key)
    result.setdefault(FAILURE_FIRST_AT, stamp)
    result[FAILURE_LAST_AT] = stamp
    result[FAILURE_HOST] = _HOST
    return result
