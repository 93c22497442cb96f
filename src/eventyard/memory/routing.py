"""AMQP routing as the in-memory broker emulates it: exchanges, bindings and queued messages."""

from __future__ import annotations

import bisect
import functools
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from eventyard import naming
from eventyard.errors import ConfigurationError

_EXCHANGE_TYPES = ("topic", "direct", "fanout")


@functools.lru_cache(maxsize=4096)
def topic_matches(pattern: str, routing_key: str) -> bool:
    """AMQP topic matching on dot-separated words: ``*`` is one word, ``#`` zero or more."""
    return _match(_words(pattern), _words(routing_key))


def _words(key: str) -> tuple[str, ...]:
    return tuple(key.split(".")) if key else ()  # as in RabbitMQ, "" has no words


def _match(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        # '#' swallows any number of words: try every split point.
        return any(_match(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head == "*" or head == words[0]) and _match(rest, words[1:])


@dataclass(slots=True)
class Exchange:
    """A declared exchange and its bindings (routing key -> queue names)."""

    name: str
    type: str = "topic"
    durable: bool = True
    bindings: set[tuple[str, str]] = field(default_factory=set)  # (routing key, queue)

    def __post_init__(self) -> None:
        if self.type not in _EXCHANGE_TYPES:
            raise ConfigurationError(
                f"exchange type {self.type!r} is not one of {', '.join(_EXCHANGE_TYPES)}")

    def route(self, routing_key: str) -> list[str]:
        """The queues a message with ``routing_key`` reaches (each once, in a stable order)."""
        if self.type == "fanout":
            matched = {queue for _, queue in self.bindings}
        elif self.type == "direct":
            matched = {queue for key, queue in self.bindings if key == routing_key}
        else:
            matched = {queue for key, queue in self.bindings if topic_matches(key, routing_key)}
        return sorted(matched)


@dataclass(slots=True)
class Stored:
    """One copy of a message in one queue."""

    exchange: str
    routing_key: str
    body: bytes
    headers: dict[str, Any]
    message_id: str | None
    type: str | None
    timestamp: int | None
    content_type: str
    correlation_id: str | None = None
    redelivered: bool = False
    expires_at: float | None = None
    delivery_count: int = 0
    position: int = 0  # its place in its queue: a message handed back goes back there

    def copy(self) -> Stored:
        """A copy for another queue (headers are not shared)."""
        return replace(self, headers=dict(self.headers))


@dataclass(slots=True)
class Queue:
    """A declared queue: its arguments, its ready messages and the consumptions on it."""

    name: str
    arguments: Mapping[str, Any]
    durable: bool = True
    ready: deque[Stored] = field(default_factory=deque)
    consumers: list[Any] = field(default_factory=list)  # MemoryConsumption, round-robin order
    next_consumer: int = 0

    @property
    def ttl_seconds(self) -> float | None:
        """``x-message-ttl`` in seconds, or None."""
        ttl = self.arguments.get("x-message-ttl")
        return None if ttl is None else float(ttl) / 1000.0

    @property
    def dead_letter_exchange(self) -> str | None:
        """``x-dead-letter-exchange``, or None."""
        value = self.arguments.get("x-dead-letter-exchange")
        return None if value is None else str(value)

    @property
    def delays(self) -> bool:
        """True for a retry or delay queue: its TTL is a wait that a virtual clock may skip."""
        return naming.is_delay_queue(self.name)

    @property
    def quorum(self) -> bool:
        """True for a quorum queue."""
        return self.arguments.get("x-queue-type") == "quorum"

    @property
    def delivery_limit(self) -> int | None:
        """``x-delivery-limit`` (quorum queues), or None."""
        value = self.arguments.get("x-delivery-limit")
        return None if value is None else int(value)

    def put_back(self, items: list[Stored]) -> None:
        """Put messages handed back in their original places, as RabbitMQ does (the ready
        messages are always in the order they were enqueued)."""
        ready = self.ready
        items.sort(key=lambda s: s.position)
        if not ready or (items and items[-1].position < ready[0].position):
            ready.extendleft(reversed(items))
            return
        for stored in items:
            ready.insert(bisect.bisect([s.position for s in ready], stored.position), stored)


def argument_differences(existing: Mapping[str, Any], declared: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between two queue argument maps."""
    differences = []
    for key in sorted(set(existing) | set(declared)):
        old, new = existing.get(key), declared.get(key)
        if old != new:
            differences.append(f"{key}: exists with {old!r}, declared with {new!r}")
    return differences
