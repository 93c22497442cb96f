"""Dead letters on RabbitMQ: look at them, requeue them to their subscriber, discard, dump.

Looking never consumes: messages are fetched with ``basic.get`` on a channel of their own and
that channel is closed without acks, so RabbitMQ puts them back (their order may change and
they are marked redelivered). Each run handles at most the messages a queue held when it
started, so a message that fails again and returns to its dead-letter queue is not taken twice.

Requeue publishes each dead letter to its subscriber's retry exchange (``retry.Q`` key, see
``topology.route_of``) with ``mandatory`` and publisher confirms, and acks the dead letter only
after the broker confirmed the copy: a nack or an unroutable copy leaves it where it was. A
cancelled run finishes the message in hand first. Only a process killed between the confirm
and the ack can leave a message in both places (at-least-once, never lost).

The copy starts afresh: ``redelivery_count`` is 0 and the ``failure_*`` headers are removed,
except ``failure_routing_key`` (where the message was first published). The last failure is
kept as a ``previous_failure`` table, with ``requeue_count``, ``requeued_at`` and
``requeued_from``.

Anything may sit in a dead-letter queue: a body that is not JSON, nested past any recursion
limit, several megabytes, binary; headers of the wrong type or forged. Such a message is
*undecodable* (``DeadLetter.problem`` says why), never an error: it is listed with its size and
a printable preview, and it can be requeued (with a warning) or discarded by its id. A message's
id is its AMQP ``message_id`` when it has a printable one, else the ``fingerprint`` of its body.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import math
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

import aiormq.exceptions as amqp_errors
from aiormq.abc import AbstractChannel, AbstractConnection, DeliveredMessage
from pamqp import commands as spec
from pamqp import encode as amqp_encode
from pamqp import frame as amqp_frame
from pamqp import header as amqp_header

from eventyard import codec, naming, retry
from eventyard.errors import (
    BrokerConnectionError,
    ConfigurationError,
    MessageDecodeError,
    QueueNotFoundError,
)
from eventyard.messages import Message, valid_id
from eventyard.rabbitmq.inspection import queue_state, reply_text, throwaway_channel
from eventyard.topology import Route, Topology, route_of

logger = logging.getLogger(__name__)

REQUEUE_COUNT = "requeue_count"
REQUEUED_AT = "requeued_at"
REQUEUED_FROM = "requeued_from"
PREVIOUS_FAILURE = "previous_failure"
FINGERPRINT_PREFIX = "sha256:"
PREVIEW_CHARS = 60
_KEPT_FAILURE_HEADERS = frozenset({retry.FAILURE_ROUTING_KEY})
_PREVIOUS_FAILURE_FIELDS = {
    "type": retry.FAILURE_TYPE, "message": retry.FAILURE_MESSAGE,
    "attempts": retry.FAILURE_ATTEMPTS, "queue": retry.FAILURE_QUEUE,
    "first_at": retry.FAILURE_FIRST_AT, "last_at": retry.FAILURE_LAST_AT,
    "host": retry.FAILURE_HOST,
}
_TEXT_LIMIT = 8_000  # a failure header read for display (the consumer writes at most 4,000)
_NOTE_LIMIT = 1_000  # a value carried into ``previous_failure``
_DEPTH_LIMIT = 16  # nested header tables shown deeper than this are summarised
_COUNT_LIMIT = 1_000_000  # a forged requeue_count is clamped, so the copy's count stays encodable
_FRAME_MAX = 131_072  # RabbitMQ's default, when the connection does not say
_NO_CLASSES = codec.MessageRegistry()  # decode as generic messages: the CLI has no classes


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit:,} more characters)"


def printable(text: str, keep: str = "") -> str:
    """``text`` safe for a terminal: control, format and invisible characters escaped (``\\x1b``)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in keep else _escape(c) for c in text)


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _summary(value: Any) -> str:
    try:
        return json.dumps(jsonable(value), ensure_ascii=False, default=str)
    except (ValueError, TypeError, RecursionError):
        return f"({type(value).__name__})"


def _text(value: Any, limit: int = _TEXT_LIMIT) -> str | None:
    """A header value as bounded text, whatever its type (None when absent)."""
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        text = bytes(value[:limit * 4]).decode(errors="replace")
    elif isinstance(value, str):
        text = value
    elif isinstance(value, Mapping | list | tuple):
        text = _summary(value)
    else:
        text = str(value)
    return _cut(text, limit)


def _int(value: Any) -> int | None:
    """A header value as an integer; None when it is not one (``"abc"``, a table, a float)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    text = _text(value, 40)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def fingerprint(body: bytes) -> str:
    """``sha256:`` and the first 16 hex digits of the body's SHA-256: the same body, the same id."""
    return FINGERPRINT_PREFIX + hashlib.sha256(body).hexdigest()[:16]


def preview(body: bytes, limit: int = PREVIEW_CHARS) -> str:
    """The start of ``body`` as printable text (bytes that are not UTF-8 shown as ``\\xNN``)."""
    chunk = body[:limit * 4]  # a character is at most 4 bytes: enough for ``limit`` of them
    text = chunk.decode(errors="backslashreplace")
    cut = len(text) > limit or len(body) > len(chunk)
    return printable(text[:limit]) + ("…" if cut else "")


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
            type=_text(headers.get(retry.FAILURE_TYPE), 500),
            message=_text(headers.get(retry.FAILURE_MESSAGE)),
            stack=_text(headers.get(retry.FAILURE_STACK)),
            attempts=_int(headers.get(retry.FAILURE_ATTEMPTS)),
            queue=_text(headers.get(retry.FAILURE_QUEUE), 500),
            routing_key=_text(headers.get(retry.FAILURE_ROUTING_KEY), 500),
            first_at=_text(headers.get(retry.FAILURE_FIRST_AT), 100),
            last_at=_text(headers.get(retry.FAILURE_LAST_AT), 100),
            host=_text(headers.get(retry.FAILURE_HOST), 500),
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


def jsonable(value: Any, depth: int = 0) -> Any:
    """``value`` (AMQP header values: bytes, datetimes, tables) as plain JSON types.

    Tables nested deeper than 16 levels become ``"(nested deeper than 16 levels)"``, and
    non-finite floats strings, so the result always serialises.
    """
    if isinstance(value, Mapping | list | tuple) and depth >= _DEPTH_LIMIT:
        return f"(nested deeper than {_DEPTH_LIMIT} levels)"
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v, depth + 1) for v in value]
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode(errors="replace")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _decode_problem(error: Exception) -> str:
    if isinstance(error, RecursionError):
        return "nested too deeply to decode"
    text = str(error) or type(error).__name__
    if not isinstance(error, MessageDecodeError):
        text = f"{type(error).__name__}: {text}"
    return printable(_cut(text, 200))


def _examine(body: bytes) -> tuple[str | None, str | None, Message | None]:
    """(type named by the body, problem, the message): decoded as a generic message, whatever
    it holds."""
    try:
        message = codec.decode(body, registry=_NO_CLASSES, allow_unknown=True)
        return message.get_message_name(), None, message
    except Exception as error:  # anything a hostile body makes the decoder raise is "undecodable"
        return None, _decode_problem(error), None


def _letter(queue: str, message: DeliveredMessage) -> DeadLetter:
    properties = message.header.properties
    headers = dict(properties.headers or {})
    body = bytes(message.body)
    body_type, problem, decoded = _examine(body)
    correlation_id = valid_id(properties.correlation_id) or (
        decoded.get_correlation_id() if decoded is not None else None)
    declared = str(properties.message_type or "") or body_type
    try:
        stamp = int(properties.timestamp.timestamp()) if properties.timestamp is not None else None
    except (ValueError, OverflowError, OSError, AttributeError):
        stamp = None
    return DeadLetter(
        queue=queue, body=body, headers=headers,
        message_id=str(properties.message_id) if properties.message_id is not None else None,
        type=_cut(printable(declared), 200) if declared else None,
        routing_key=str(message.routing_key or ""), timestamp=stamp,
        redelivered=bool(getattr(message.delivery, "redelivered", False)),
        failure=Failure.from_headers(headers), fingerprint=fingerprint(body), problem=problem,
        correlation_id=correlation_id,
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


# A lost connection surfaces as any of these, depending on what was in flight.
_BROKER_FAILURES = (amqp_errors.AMQPError, amqp_errors.ChannelInvalidStateError, ConnectionError,
                    OSError)


def _lost(error: BaseException, what: str, queue: str) -> BrokerConnectionError:
    # aiormq names a channel by its repr once the connection under it is gone: say that instead.
    reason = ("the connection was lost" if isinstance(error, amqp_errors.ChannelInvalidStateError)
              else reply_text(error) or type(error).__name__)
    return BrokerConnectionError(
        f"the connection to RabbitMQ failed during {what} of {queue} ({reason})")


def _lost_after(error: BrokerConnectionError, report: Report, outcome: StepOutcome) -> BrokerConnectionError:
    """``error`` saying how far the run went: what was done stays done, the rest stayed put."""
    done = report.count(outcome)
    in_flight = (" (the one in flight may have reached its retry queue as well)"
                 if outcome == "requeued" else " (unless the last ack was lost with the connection)")
    return BrokerConnectionError(
        f"{error}: {done} message{'' if done == 1 else 's'} {outcome} before that; every other "
        f"one is still in its dead-letter queue{in_flight}")


async def _fetch(channel: AbstractChannel, queue: str) -> DeliveredMessage | None:
    message = await channel.basic_get(queue, no_ack=False)
    return None if isinstance(message.delivery, spec.Basic.GetEmpty) else message


async def _held(connection: AbstractConnection, queue: str,
                limit: int | None) -> AsyncGenerator[tuple[AbstractChannel, DeliveredMessage], None]:
    """Fetch up to the queue's current count (and ``limit``), holding each message unacked."""
    state = await queue_state(connection, queue)
    if not state.exists:
        raise QueueNotFoundError(f"queue {queue!r} does not exist")
    budget = state.messages if limit is None else min(limit, state.messages)
    # Closing this channel at the end hands every unacked message back to its queue.
    async with throwaway_channel(connection) as channel:
        for _ in range(budget):
            message = await _fetch(channel, queue)
            if message is None:
                return
            yield channel, message


async def _letters(connection: AbstractConnection, queue: str, what: str,
                   limit: int | None = None) -> AsyncGenerator[tuple[AbstractChannel,
                                                                        DeliveredMessage,
                                                                        DeadLetter], None]:
    """``_held`` with each message read as a ``DeadLetter``; a broker failure named."""
    try:
        async with contextlib.aclosing(_held(connection, queue, limit)) as held:
            async for channel, message in held:
                yield channel, message, _letter(queue, message)
    except _BROKER_FAILURES as error:
        raise _lost(error, what, queue) from error


async def peek(connection: AbstractConnection, queue: str, *, limit: int | None = None,
               select: Selection = ALL, seen: set[str] | None = None) -> list[DeadLetter]:
    """The dead letters of ``queue`` (up to ``limit``), left in the queue.

    The asked-for ids met on the way are added to ``seen`` (to tell which were not found).
    """
    letters: list[DeadLetter] = []
    async with contextlib.aclosing(_letters(connection, queue, "a look")) as held:
        async for _, _, letter in held:
            if seen is not None:
                seen |= select.ids_of(letter)
            if select.matches(letter):
                letters.append(letter)
                if limit is not None and len(letters) >= limit:
                    break
    return letters


@dataclass(frozen=True, slots=True)
class Group:
    """Dead letters of one queue with the same message type, error and decodability."""

    type: str
    error: str
    undecodable: bool
    count: int
    bytes: int


@dataclass(frozen=True, slots=True)
class QueueSummary:
    """A dead-letter queue: its count and how many of each (message type, failure type)."""

    queue: str
    exists: bool
    count: int
    groups: tuple[Group, ...] = ()
    inspected: int = 0

    @property
    def undecodable(self) -> int:
        """How many inspected messages are undecodable."""
        return sum(g.count for g in self.groups if g.undecodable)


async def summarize(connection: AbstractConnection, queues: Sequence[str], *,
                    limit: int = 10_000) -> list[QueueSummary]:
    """Count each queue's dead letters, grouped by message type and failure type."""
    summaries = []
    for queue in queues:
        state = await queue_state(connection, queue)
        if not state.exists:
            summaries.append(QueueSummary(queue, False, 0))
            continue
        counts: Counter[tuple[str, str, bool]] = Counter()
        sizes: Counter[tuple[str, str, bool]] = Counter()
        inspected = 0
        async with contextlib.aclosing(_letters(connection, queue, "a look", limit)) as held:
            async for _, _, letter in held:
                key = (letter.type or "?", printable(letter.failure.type or "?"), letter.undecodable)
                counts[key] += 1
                sizes[key] += letter.size
                inspected += 1
        groups = tuple(Group(t, e, u, n, sizes[(t, e, u)]) for (t, e, u), n in counts.most_common())
        summaries.append(QueueSummary(queue, True, state.messages, groups, inspected))
    return summaries


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
            number = _int(value) if name == "attempts" else None
            previous[name] = (number if number is not None and -(2**63) <= number < 2**63
                              else _text(value, _NOTE_LIMIT))
    if previous:
        headers[PREVIOUS_FAILURE] = previous
    headers[retry.REDELIVERY_COUNT] = 0
    count = _int(letter.headers.get(REQUEUE_COUNT)) or 0
    headers[REQUEUE_COUNT] = min(max(count, 0), _COUNT_LIMIT) + 1
    headers[REQUEUED_AT] = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    headers[REQUEUED_FROM] = letter.queue
    return headers


def _encodable(value: Any, depth: int = 0) -> Any:
    """``value`` in types pamqp can encode again: what it decoded may not be (bytes, a double
    too large for the single-precision float pamqp writes, an integer out of range)."""
    if isinstance(value, Mapping) and depth < _DEPTH_LIMIT:
        return {str(k): _encodable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple) and depth < _DEPTH_LIMIT:
        return [_encodable(v, depth + 1) for v in value]
    if isinstance(value, bytes):
        return bytearray(value)
    try:
        amqp_encode.encode_table_value(value)
    except Exception:  # anything pamqp cannot write goes as text, rather than sink the copy
        return _text(value, _NOTE_LIMIT)
    return value


StepOutcome = Literal["requeued", "would_requeue", "skipped", "failed", "discarded"]


@dataclass(frozen=True, slots=True)
class Step:
    """What happened to one dead letter."""

    queue: str
    message_id: str | None
    type: str | None
    outcome: StepOutcome
    detail: str = ""
    id: str = ""
    size: int = 0
    problem: str | None = None

    @property
    def undecodable(self) -> bool:
        """True when the message's body is undecodable (``problem`` says why)."""
        return self.problem is not None

    @classmethod
    def of(cls, letter: DeadLetter, outcome: StepOutcome, detail: str = "") -> Step:
        """The step ``outcome`` for ``letter``."""
        return cls(letter.queue, letter.message_id, letter.type, outcome, detail, letter.id,
                   letter.size, letter.problem)


@dataclass(slots=True)
class Report:
    """Every step of a requeue or discard run, in order, and the asked-for ids not found."""

    dry_run: bool = False
    steps: list[Step] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)

    def count(self, outcome: StepOutcome) -> int:
        """How many steps ended with ``outcome``."""
        return sum(1 for s in self.steps if s.outcome == outcome)

    @property
    def failed(self) -> list[Step]:
        """The dead letters that could not be moved (they stayed in their queue)."""
        return [s for s in self.steps if s.outcome == "failed"]

    @property
    def undecodable(self) -> list[Step]:
        """Undecodable messages requeued, or that would be (their subscriber will fail again)."""
        return [s for s in self.steps if s.undecodable and s.outcome in ("requeued", "would_requeue")]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {"dry_run": self.dry_run,
                "counts": {o: self.count(o) for o in ("requeued", "would_requeue", "skipped",
                                                      "failed", "discarded")},
                "not_found": list(self.not_found),
                "steps": [{"queue": s.queue, "id": s.id, "message_id": s.message_id, "type": s.type,
                           "outcome": s.outcome, "detail": s.detail, "size": s.size,
                           "undecodable": s.undecodable, "problem": s.problem}
                          for s in self.steps]}


StepCallback = Callable[[Step], None]


class CopyProblem(Exception):
    """This one dead letter cannot be copied (the run goes on with the next)."""


def _frame_max(connection: AbstractConnection) -> int:
    tune = getattr(connection, "connection_tune", None)
    return int(getattr(tune, "frame_max", 0) or _FRAME_MAX)


def copy_properties(old: spec.Basic.Properties, letter: DeadLetter, *, delay_ms: int | None = None,
                    frame_max: int = _FRAME_MAX) -> spec.Basic.Properties:
    """The properties of ``letter``'s requeued copy (``old``: the dead letter's own).

    A header that cannot be encoded again goes as text; a dead letter without ``message_id``
    gets its fingerprint as one (aiormq would give the copy a random one). Raise
    ``CopyProblem`` when no frame of ``frame_max`` bytes can carry the result.
    """
    headers = requeued_headers(letter)

    def build(table: dict[str, Any]) -> tuple[spec.Basic.Properties, int]:
        properties = spec.Basic.Properties(
            content_type=old.content_type or "application/json",
            content_encoding=old.content_encoding, delivery_mode=2,
            message_id=old.message_id or letter.fingerprint,
            message_type=old.message_type, timestamp=old.timestamp,
            correlation_id=old.correlation_id, app_id=old.app_id, headers=table,
            expiration=str(delay_ms) if delay_ms is not None else None,
        )
        frame = amqp_header.ContentHeader(0, letter.size, properties)
        return properties, len(amqp_frame.marshal(frame, 1))

    try:
        properties, size = build(headers)
    except Exception:  # a header pamqp decoded but cannot write back: retry with it as text
        try:
            properties, size = build(_encodable(headers))
        except Exception as error:
            raise CopyProblem(f"its properties cannot be encoded again ({error})") from None
    if size > frame_max:
        raise CopyProblem(
            f"its headers make a {size:,}-byte header frame, over this connection's frame_max of "
            f"{frame_max:,} bytes (RabbitMQ would close the connection): left in place; "
            "`eventyard dlq dump` keeps a copy, `eventyard dlq discard --id` removes it")
    return properties


async def _republish(channel: AbstractChannel, properties: spec.Basic.Properties,
                     letter: DeadLetter, route: Route) -> str | None:
    """Publish the copy and wait for its confirm; None on success, else why it failed."""
    try:
        result = await channel.basic_publish(letter.body, exchange=route.retry_exchange,
                                             routing_key=route.retry_key, properties=properties,
                                             mandatory=True)
    except amqp_errors.DeliveryError:
        return "RabbitMQ refused (nacked) the copy"
    except amqp_errors.ChannelClosed as error:
        return f"cannot publish to {route.retry_exchange!r}: {reply_text(error)}"
    if isinstance(result, DeliveredMessage):
        return (f"{route.retry_exchange!r} routed {route.retry_key!r} to no queue: the retry queue "
                "or its binding is missing (run `eventyard configure`)")
    return None


async def _move(getter: AbstractChannel, publisher: AbstractChannel, message: DeliveredMessage,
                properties: spec.Basic.Properties, letter: DeadLetter,
                route: Route) -> str | None:
    problem = await _republish(publisher, properties, letter, route)
    tag = int(getattr(message.delivery, "delivery_tag", 0))
    if problem is None:
        await getter.basic_ack(tag)
    else:
        await getter.basic_reject(tag, requeue=True)
    return problem


async def _uninterrupted(step: asyncio.Future[str | None]) -> str | None:
    # A cancelled run still finishes the message in hand: confirmed copies are always acked.
    try:
        return await asyncio.shield(step)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await step
        raise


async def requeue(
    connection: AbstractConnection,
    org: str,
    svc: str,
    queues: Sequence[str],
    *,
    select: Selection = ALL,
    dry_run: bool = False,
    wait_seconds: float = 0.0,
    delay_ms: int | None = None,
    store_queue: str = naming.STORE_QUEUE,
    on_step: StepCallback | None = None,
) -> Report:
    """Send the selected dead letters of ``queues`` back to their subscribers via retry queues.

    ``delay_ms`` sets a per-message TTL in the retry queue (the queue's own TTL still caps it);
    ``wait_seconds`` paces the run. A queue stops at its first failure of the broker (a nack,
    an unroutable copy: the rest stays); a message that cannot be copied (headers too large for
    a frame) stays and is reported failed, and the run goes on. Undecodable messages are moved
    like any other (``Report.undecodable`` lists them).
    """
    routes = {queue: route_for(org, svc, queue, store_queue) for queue in queues}
    report = Report(dry_run=dry_run)
    frame_max = _frame_max(connection)
    seen: set[str] = set()

    def record(step: Step) -> None:
        report.steps.append(step)
        if on_step is not None:
            on_step(step)

    try:
        for queue, route in routes.items():
            await _requeue_queue(connection, queue, route, report, record, select, seen,
                                 frame_max=frame_max, delay_ms=delay_ms, wait_seconds=wait_seconds)
    except BrokerConnectionError as error:
        if dry_run:
            raise BrokerConnectionError(f"{error}; nothing was moved (dry run)") from error
        raise _lost_after(error, report, "requeued") from error
    report.not_found = sorted(select.message_ids - seen)
    return report


async def _requeue_queue(connection: AbstractConnection, queue: str, route: Route, report: Report,
                         record: StepCallback, select: Selection, seen: set[str], *,
                         frame_max: int, delay_ms: int | None, wait_seconds: float) -> None:
    """Requeue the selected dead letters of one queue (see ``requeue``)."""
    dry_run = report.dry_run
    try:
        publisher = None if dry_run else await connection.channel(publisher_confirms=True,
                                                                  on_return_raises=False)
    except _BROKER_FAILURES as error:
        raise _lost(error, "a requeue", queue) from error
    where = f"{route.retry_exchange} {route.retry_key}"
    try:
        async with contextlib.aclosing(_letters(connection, queue, "a requeue")) as held:
            async for getter, message, letter in held:
                seen |= select.ids_of(letter)
                if not select.matches(letter):
                    record(Step.of(letter, "skipped"))
                    continue
                try:
                    properties = copy_properties(message.header.properties, letter,
                                                 delay_ms=delay_ms, frame_max=frame_max)
                except CopyProblem as problem:
                    logger.error("requeue of %s from %s failed: %s", letter.id, queue, problem)
                    record(Step.of(letter, "failed", str(problem)))
                    continue  # left unacked: it goes back when the run ends
                if publisher is None:
                    record(Step.of(letter, "would_requeue", where))
                    continue
                try:
                    failure = await _uninterrupted(asyncio.ensure_future(
                        _move(getter, publisher, message, properties, letter, route)))
                except _BROKER_FAILURES as error:
                    raise _lost(error, "a requeue", queue) from error
                if failure is not None:
                    logger.error("requeue of %s from %s failed: %s", letter.id, queue, failure)
                    record(Step.of(letter, "failed", failure))
                    break
                record(Step.of(letter, "requeued", where))
                if wait_seconds > 0:
                    await asyncio.sleep(wait_seconds)  # pacing asked for by the operator
    finally:
        if publisher is not None and not publisher.is_closed:
            with contextlib.suppress(Exception):
                await publisher.close()


async def discard(connection: AbstractConnection, queues: Sequence[str], *,
                  select: Selection = ALL, on_step: StepCallback | None = None) -> Report:
    """Delete the selected dead letters of ``queues`` for good."""
    report = Report()
    seen: set[str] = set()
    try:
        for queue in queues:
            async with contextlib.aclosing(_letters(connection, queue, "a discard")) as held:
                async for getter, message, letter in held:
                    seen |= select.ids_of(letter)
                    outcome: StepOutcome = "discarded" if select.matches(letter) else "skipped"
                    if outcome == "discarded":
                        try:
                            await getter.basic_ack(int(getattr(message.delivery, "delivery_tag", 0)))
                        except _BROKER_FAILURES as error:
                            raise _lost(error, "a discard", queue) from error
                    step = Step.of(letter, outcome)
                    report.steps.append(step)
                    if on_step is not None:
                        on_step(step)
    except BrokerConnectionError as error:
        raise _lost_after(error, report, "discarded") from error
    report.not_found = sorted(select.message_ids - seen)
    return report


async def dump(connection: AbstractConnection, queues: Sequence[str], write: Callable[[str], Any],
               *, select: Selection = ALL, limit: int | None = None,
               seen: set[str] | None = None) -> int:
    """Write each selected dead letter as one JSON line (left in its queue); return the count.

    Each line is written as its message is read, so a queue of large messages is never held
    in memory at once.
    """
    written = 0
    for queue in queues:
        async with contextlib.aclosing(_letters(connection, queue, "a dump")) as held:
            async for _, _, letter in held:
                if seen is not None:
                    seen |= select.ids_of(letter)
                if not select.matches(letter):
                    continue
                write(json.dumps(letter.to_json(), ensure_ascii=False) + "\n")
                written += 1
                if limit is not None and written >= limit:
                    return written
    return written
