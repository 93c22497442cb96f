"""What the in-memory broker shows of a queued message: for tests, demos and users."""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from eventyard import codec
from eventyard.memory.routing import Stored
from eventyard.messages import Message
from eventyard.retry import FAILURE_HEADERS, FAILURE_MESSAGE, FAILURE_TYPE, redelivery_count


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """A copy of a message waiting in a queue (peeked, not consumed)."""

    queue: str
    body: bytes
    headers: Mapping[str, Any]
    exchange: str
    routing_key: str
    message_id: str | None
    type: str | None
    redelivered: bool

    @classmethod
    def of(cls, queue: str, stored: Stored) -> QueuedMessage:
        """A snapshot of ``stored`` (its headers are copied)."""
        return cls(queue, stored.body, dict(stored.headers), stored.exchange, stored.routing_key,
                   stored.message_id, stored.type, stored.redelivered)

    @property
    def redelivery_count(self) -> int:
        """Retries already made (the ``redelivery_count`` header)."""
        return redelivery_count(self.headers)

    @property
    def failure_type(self) -> str | None:
        """The exception type of the last failure, if it failed."""
        value = self.headers.get(FAILURE_TYPE)
        return None if value is None else str(value)

    @property
    def failure_message(self) -> str | None:
        """The message of the last failure, if it failed."""
        value = self.headers.get(FAILURE_MESSAGE)
        return None if value is None else str(value)

    @property
    def failure(self) -> dict[str, Any]:
        """The failure headers it carries (``failure_*`` and ``redelivery_count``)."""
        names = (*FAILURE_HEADERS, "redelivery_count")
        return {name: self.headers[name] for name in names if name in self.headers}

    def decode(self, expected: builtins.type[Message] | None = None) -> Message:
        """The typed message (a generic one for an unknown type); ``MessageDecodeError`` if poison."""
        return codec.decode(self.body, expected=expected, allow_unknown=expected is None)

    def __repr__(self) -> str:
        return (f"QueuedMessage(queue={self.queue!r}, type={self.type!r}, "
                f"routing_key={self.routing_key!r}, redelivery_count={self.redelivery_count})")
