"""Dead letters: the model every broker's dead-letter queues are read into (no broker client).

A ``DeadLetter`` is a message in a dead-letter queue with its ``Failure`` (from the ``failure_*``
headers its consumer wrote). Anything may sit in a dead-letter queue: a body that is not JSON,
nested past any recursion limit, several megabytes, binary; headers of the wrong type or forged.
Such a message is *undecodable* (``DeadLetter.problem`` says why), never an error: it is listed
with its size and a printable preview. A message's id is its AMQP ``message_id`` when it has a
printable one, else the ``fingerprint`` of its body. A ``Selection`` picks letters for an
operation (``eventyard.dead_letter_reports`` says what it did); ``requeued_headers`` are a requeued
copy's headers. The RabbitMQ operations are in ``eventyard.rabbitmq.dead_letters``; values are
shown through ``eventyard.display``.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from eventyard import codec, naming, retry
from eventyard.display import cut, header_int, header_text, jsonable, printable
from eventyard.errors import ConfigurationError, MessageDecodeError
from eventyard.messages import Message, valid_id
from eventyard.topology import Route, Topology, route_of

REQUEUE_COUNT = "requeue_count"
REQUEUED_AT = "requeued_at"
REQUEUED_FROM = "requeued_from"
PREVIOUS_FAILURE = "previous_failure"
FINGERPRINT_PREFIX = "sha256:"
_KEPT_FAILURE_HEADERS = frozenset({retry.FAILURE_ROUTING_KEY})
_PREVIOUS_FAILURE_FIELDS = {
    "type": retry.FAILURE_TYPE, "message": retry.FAILURE_MESSAGE,
    "attempts": retry.FAILURE_ATTEMPTS, "queue": retry.FAILURE_QUEUE,
    "first_at": retry.FAILURE_FIRST_AT, "last_at": retry.FAILURE_LAST_AT,
    "host": retry.FAILURE_HOST,
}
NOTE_LIMIT = 1_000  # a value carried into ``previous_failure``
_COUNT_LIMIT = 1_000_000  # a forged requeue_count is clamped, so the copy's count stays encodable
_NO_CLASSES = codec.MessageRegistry()  # decode as generic messages: the CLI has no classes


def fingerprint(body: bytes) -> str:
    """``sha256:`` and the first 16 hex digits of the body's SHA-256: the same body, the same id."""
    return FINGERPRINT_PREFIX + hashlib.sha256(body).hexdigest()[:16]



@dataclass(frozen=True, slots=True)
class Failure:
    """Why a message was dead-lettered, from its ``failure_*`` headers (None where absent)."""

    type: str | None = None
    message: str | None = None
    stack: str | None = None
    attempts: int | None = None
    queue: str | None = None
    routing_key: str | None = None
    first_at: str | None = None
    last_at: str | None = None
    host: str | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, Any]) -> Failure:
        """Read the failure headers a consumer wrote (any type accepted, text bounded)."""
        return cls(
            type=header_text(headers.get(retry.FAILURE_TYPE), 500),
            message=header_text(headers.get(retry.FAILURE_MESSAGE)),
            stack=header_text(headers.get(retry.FAILURE_STACK)),
            attempts=header_int(headers.get(retry.FAILURE_ATTEMPTS)),
            queue=header_text(headers.get(retry.FAILURE_QUEUE), 500),
            routing_key=header_text(headers.get(retry.FAILURE_ROUTING_KEY), 500),
            first_at=header_text(headers.get(retry.FAILURE_FIRST_AT), 100),
            last_at=header_text(headers.get(retry.FAILURE_LAST_AT), 100),
            host=header_text(headers.get(retry.FAILURE_HOST), 500),
        )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message in a dead-letter queue, with the reason it is there.

    ``problem`` is None when the body decodes as an eventyard/petisco message, else why not
    (the message is then *undecodable*).
    """

    queue: str
    body: bytes
    headers: Mapping[str, Any]
    message_id: str | None
    type: str | None
    routing_key: str
    timestamp: int | None
    redelivered: bool
    failure: Failure
    fingerprint: str = ""
    problem: str | None = None
    correlation_id: str | None = None  # the AMQP property, else the meta's (observability)
    causation_id: str | None = None  # the meta's: the message whose handler published it

    @property
    def id(self) -> str:
        """The AMQP ``message_id`` when it is printable, else the body's fingerprint."""
        if self.message_id and self.message_id.isprintable():
            return self.message_id
        return self.fingerprint

    @property
    def size(self) -> int:
        """The body's size in bytes."""
        return len(self.body)

    @property
    def undecodable(self) -> bool:
        """True when the body is not a message eventyard can decode."""
        return self.problem is not None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: properties, headers, failure and the body (text or base64)."""
        document: dict[str, Any] = {
            "queue": self.queue, "id": self.id, "message_id": self.message_id,
            "fingerprint": self.fingerprint, "type": self.type,
            "routing_key": self.routing_key, "timestamp": self.timestamp,
            "redelivered": self.redelivered, "size": self.size,
            "undecodable": self.undecodable, "problem": self.problem,
            "correlation_id": self.correlation_id, "causation_id": self.causation_id,
            "failure": {name: getattr(self.failure, name) for name in self.failure.__slots__},
            "headers": jsonable(dict(self.headers)),
        }
        try:
            document["body"] = self.body.decode()
        except UnicodeDecodeError:
            document["body_base64"] = base64.b64encode(self.body).decode()
        return document



def _decode_problem(error: Exception) -> str:
    if isinstance(error, RecursionError):
        return "nested too deeply to decode"
    text = str(error) or type(error).__name__
    if not isinstance(error, MessageDecodeError):
        text = f"{type(error).__name__}: {text}"
    return printable(cut(text, 200))


def _examine(body: bytes) -> tuple[str | None, str | None, Message | None]:
    """(type named by the body, problem, the message): decoded as a generic message, whatever
    it holds."""
    try:
        message = codec.decode(body, registry=_NO_CLASSES, allow_unknown=True)
        return message.get_message_name(), None, message
    except Exception as error:  # anything a hostile body makes the decoder raise is "undecodable"
        return None, _decode_problem(error), None



def letter_of(queue: str, body: bytes, headers: dict[str, Any], *, message_id: Any,
              message_type: Any, correlation_id: Any, routing_key: str, timestamp: int | None,
              redelivered: bool) -> DeadLetter:
    """A dead letter from what a broker holds (property and header values of any type)."""
    body_type, problem, decoded = _examine(body)
    correlation = valid_id(correlation_id) or (
        decoded.get_correlation_id() if decoded is not None else None)
    declared = str(message_type or "") or body_type
    return DeadLetter(
        queue=queue, body=body, headers=headers,
        message_id=str(message_id) if message_id is not None else None,
        type=cut(printable(declared), 200) if declared else None,
        routing_key=routing_key, timestamp=timestamp, redelivered=redelivered,
        failure=Failure.from_headers(headers), fingerprint=fingerprint(body), problem=problem,
        correlation_id=correlation,
        causation_id=decoded.get_causation_id() if decoded is not None else None,
    )


@dataclass(frozen=True, slots=True)
class Selection:
    """Which dead letters an operation takes: all, or those matching every filter given.

    ``message_ids`` match a letter's id, its AMQP ``message_id`` or its fingerprint.
    """

    message_ids: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()
    undecodable: bool = False

    @classmethod
    def of(cls, message_ids: Iterable[str] = (), types: Iterable[str] = (),
           undecodable: bool = False) -> Selection:
        """A selection from lists (empty lists select everything)."""
        return cls(frozenset(message_ids), frozenset(types), undecodable)

    def ids_of(self, letter: DeadLetter) -> set[str]:
        """The asked-for ids that name ``letter``."""
        names = {letter.id, letter.fingerprint} | ({letter.message_id} if letter.message_id else set())
        return set(self.message_ids & names)

    def matches(self, letter: DeadLetter) -> bool:
        """True when ``letter`` is selected."""
        if self.message_ids and not self.ids_of(letter):
            return False
        if self.undecodable and not letter.undecodable:
            return False
        return not self.types or letter.type in self.types

    def keep(self, letter: DeadLetter, kept: list[DeadLetter], *, limit: int | None = None,
             seen: set[str] | None = None) -> bool:
        """Add ``letter`` to ``kept`` when selected, and the asked-for ids it has to ``seen``
        (to tell which were not found); True once ``kept`` holds ``limit`` letters."""
        if seen is not None:
            seen |= self.ids_of(letter)
        if self.matches(letter):
            kept.append(letter)
        return limit is not None and len(kept) >= limit


ALL = Selection()


def dead_letter_queues(topology: Topology) -> list[str]:
    """The dead-letter queues ``topology`` declares, in declaration order."""
    return [q.name for q in topology.queues if naming.is_dead_letter_queue(q.name)]


def route_for(org: str, svc: str, dead_letter_queue: str,
              store_queue: str = naming.STORE_QUEUE) -> Route:
    """Where requeued messages of ``dead_letter_queue`` go; ``ConfigurationError`` for a foreign
    queue."""
    queue = naming.subscriber_queue_of(dead_letter_queue)
    # A subscriber queue names the service that publishes its message, which may be another
    # service of the organisation (a subscriber with publisher=): its retry exchange is that one.
    is_store = queue == store_queue or queue.startswith(f"{store_queue}.")
    if not is_store and not (queue.startswith(f"{org}.") and len(queue.split(".")) >= 6):
        raise ConfigurationError(
            f"{dead_letter_queue!r} belongs neither to a service of {org} nor to the store queue "
            f"{store_queue!r}: check --organization/--service/--store-queue")
    return route_of(org, svc, queue, store_queue)



def requeued_headers(letter: DeadLetter, now: datetime | None = None) -> dict[str, Any]:
    """The headers of a requeued copy: retry count reset, last failure kept as a note.

    What this adds is bounded (the note's values are cut to 1,000 characters, counts clamped),
    so a forged failure header cannot make the copy larger than its dead letter by much.
    """
    headers = {k: v for k, v in letter.headers.items()
               if k not in retry.FAILURE_HEADERS or k in _KEPT_FAILURE_HEADERS}
    previous: dict[str, Any] = {}
    for name, header in _PREVIOUS_FAILURE_FIELDS.items():
        value = letter.headers.get(header)
        if value is not None:
            number = header_int(value) if name == "attempts" else None
            previous[name] = (number if number is not None and -(2**63) <= number < 2**63
                              else header_text(value, NOTE_LIMIT))
    if previous:
        headers[PREVIOUS_FAILURE] = previous
    headers[retry.REDELIVERY_COUNT] = 0
    count = header_int(letter.headers.get(REQUEUE_COUNT)) or 0
    headers[REQUEUE_COUNT] = min(max(count, 0), _COUNT_LIMIT) + 1
    headers[REQUEUED_AT] = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    headers[REQUEUED_FROM] = letter.queue
    return headers
