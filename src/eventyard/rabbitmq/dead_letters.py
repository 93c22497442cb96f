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
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

import aiormq.exceptions as amqp_errors
from aiormq.abc import AbstractChannel, AbstractConnection, DeliveredMessage
from pamqp import commands as spec

from eventyard import naming, retry
from eventyard.rabbitmq.inspection import queue_state, reply_text, throwaway_channel
from eventyard.topology import Route, Topology, route_of

logger = logging.getLogger(__name__)

REQUEUE_COUNT = "requeue_count"
REQUEUED_AT = "requeued_at"
REQUEUED_FROM = "requeued_from"
PREVIOUS_FAILURE = "previous_failure"
_KEPT_FAILURE_HEADERS = frozenset({retry.FAILURE_ROUTING_KEY})
_PREVIOUS_FAILURE_FIELDS = {
    "type": retry.FAILURE_TYPE, "message": retry.FAILURE_MESSAGE,
    "attempts": retry.FAILURE_ATTEMPTS, "queue": retry.FAILURE_QUEUE,
    "first_at": retry.FAILURE_FIRST_AT, "last_at": retry.FAILURE_LAST_AT,
    "host": retry.FAILURE_HOST,
}


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode(errors="replace")
    return str(value)


def _int(value: Any) -> int | None:
    try:
        return int(_text(value) or "")
    except ValueError:
        return None


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
        """Read the failure headers a consumer wrote."""
        return cls(
            type=_text(headers.get(retry.FAILURE_TYPE)),
            message=_text(headers.get(retry.FAILURE_MESSAGE)),
            stack=_text(headers.get(retry.FAILURE_STACK)),
            attempts=_int(headers.get(retry.FAILURE_ATTEMPTS)),
            queue=_text(headers.get(retry.FAILURE_QUEUE)),
            routing_key=_text(headers.get(retry.FAILURE_ROUTING_KEY)),
            first_at=_text(headers.get(retry.FAILURE_FIRST_AT)),
            last_at=_text(headers.get(retry.FAILURE_LAST_AT)),
            host=_text(headers.get(retry.FAILURE_HOST)),
        )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message in a dead-letter queue, with the reason it is there."""

    queue: str
    body: bytes
    headers: Mapping[str, Any]
    message_id: str | None
    type: str | None
    routing_key: str
    timestamp: int | None
    redelivered: bool
    failure: Failure

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: properties, headers, failure and the body (text or base64)."""
        document: dict[str, Any] = {
            "queue": self.queue, "message_id": self.message_id, "type": self.type,
            "routing_key": self.routing_key, "timestamp": self.timestamp,
            "redelivered": self.redelivered,
            "failure": {name: getattr(self.failure, name) for name in self.failure.__slots__},
            "headers": jsonable(dict(self.headers)),
        }
        try:
            document["body"] = self.body.decode()
        except UnicodeDecodeError:
            document["body_base64"] = base64.b64encode(self.body).decode()
        return document


def jsonable(value: Any) -> Any:
    """``value`` (AMQP header values: bytes, datetimes, tables) as plain JSON types."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return _text(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def _message_type(message: DeliveredMessage) -> str | None:
    declared = message.header.properties.message_type
    if declared:
        return str(declared)
    try:  # a message published by another client may only name its type in the body
        data = json.loads(message.body).get("data", {})
        return str(data["type"]) if isinstance(data, dict) and data.get("type") else None
    except (ValueError, AttributeError):
        return None


def _letter(queue: str, message: DeliveredMessage) -> DeadLetter:
    properties = message.header.properties
    headers = dict(properties.headers or {})
    stamp = properties.timestamp
    return DeadLetter(
        queue=queue, body=bytes(message.body), headers=headers,
        message_id=str(properties.message_id) if properties.message_id is not None else None,
        type=_message_type(message), routing_key=str(message.routing_key or ""),
        timestamp=int(stamp.timestamp()) if stamp is not None else None,
        redelivered=bool(getattr(message.delivery, "redelivered", False)),
        failure=Failure.from_headers(headers),
    )


@dataclass(frozen=True, slots=True)
class Selection:
    """Which dead letters an operation takes: all, or those with one of these ids or types."""

    message_ids: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()

    @classmethod
    def of(cls, message_ids: Iterable[str] = (), types: Iterable[str] = ()) -> Selection:
        """A selection from lists (empty lists select everything)."""
        return cls(frozenset(message_ids), frozenset(types))

    def matches(self, letter: DeadLetter) -> bool:
        """True when ``letter`` is selected."""
        if self.message_ids and letter.message_id not in self.message_ids:
            return False
        return not self.types or letter.type in self.types


ALL = Selection()


def dead_letter_queues(topology: Topology) -> list[str]:
    """The dead-letter queues ``topology`` declares, in declaration order."""
    return [q.name for q in topology.queues if naming.is_dead_letter_queue(q.name)]


def route_for(org: str, svc: str, dead_letter_queue: str,
              store_queue: str = naming.STORE_QUEUE) -> Route:
    """Where requeued messages of ``dead_letter_queue`` go; ``ValueError`` for a foreign queue."""
    queue = naming.subscriber_queue_of(dead_letter_queue)
    if queue != store_queue and not queue.startswith(f"{org}.{svc}."):
        raise ValueError(
            f"{dead_letter_queue!r} belongs neither to {org}.{svc} nor to the store queue "
            f"{store_queue!r}: check --organization/--service/--store-queue")
    return route_of(org, svc, queue, store_queue)


async def _fetch(channel: AbstractChannel, queue: str) -> DeliveredMessage | None:
    message = await channel.basic_get(queue, no_ack=False)
    return None if isinstance(message.delivery, spec.Basic.GetEmpty) else message


async def _held(connection: AbstractConnection, queue: str,
                limit: int | None) -> AsyncGenerator[tuple[AbstractChannel, DeliveredMessage], None]:
    """Fetch up to the queue's current count (and ``limit``), holding each message unacked."""
    state = await queue_state(connection, queue)
    if not state.exists:
        raise LookupError(f"queue {queue!r} does not exist")
    budget = state.messages if limit is None else min(limit, state.messages)
    # Closing this channel at the end hands every unacked message back to its queue.
    async with throwaway_channel(connection) as channel:
        for _ in range(budget):
            message = await _fetch(channel, queue)
            if message is None:
                return
            yield channel, message


async def peek(connection: AbstractConnection, queue: str, *, limit: int | None = None,
               select: Selection = ALL) -> list[DeadLetter]:
    """The dead letters of ``queue`` (up to ``limit``), left in the queue."""
    letters: list[DeadLetter] = []
    async with contextlib.aclosing(_held(connection, queue, None)) as held:
        async for _, message in held:
            letter = _letter(queue, message)
            if select.matches(letter):
                letters.append(letter)
                if limit is not None and len(letters) >= limit:
                    break
    return letters


@dataclass(frozen=True, slots=True)
class QueueSummary:
    """A dead-letter queue: its count and how many of each (message type, failure type)."""

    queue: str
    exists: bool
    count: int
    groups: tuple[tuple[str, str, int], ...] = ()
    inspected: int = 0


async def summarize(connection: AbstractConnection, queues: Sequence[str], *,
                    limit: int = 10_000) -> list[QueueSummary]:
    """Count each queue's dead letters, grouped by message type and failure type."""
    summaries = []
    for queue in queues:
        state = await queue_state(connection, queue)
        if not state.exists:
            summaries.append(QueueSummary(queue, False, 0))
            continue
        groups: Counter[tuple[str, str]] = Counter()
        inspected = 0
        async with contextlib.aclosing(_held(connection, queue, limit)) as held:
            async for _, message in held:
                letter = _letter(queue, message)
                groups[(letter.type or "?", letter.failure.type or "?")] += 1
                inspected += 1
        ordered = tuple((t, e, n) for (t, e), n in groups.most_common())
        summaries.append(QueueSummary(queue, True, state.messages, ordered, inspected))
    return summaries


def requeued_headers(letter: DeadLetter, now: datetime | None = None) -> dict[str, Any]:
    """The headers of a requeued copy: retry count reset, last failure kept as a note."""
    headers = {k: v for k, v in letter.headers.items()
               if k not in retry.FAILURE_HEADERS or k in _KEPT_FAILURE_HEADERS}
    previous = {name: letter.headers[header] for name, header in _PREVIOUS_FAILURE_FIELDS.items()
                if letter.headers.get(header) is not None}
    if previous:
        headers[PREVIOUS_FAILURE] = previous
    headers[retry.REDELIVERY_COUNT] = 0
    headers[REQUEUE_COUNT] = (_int(letter.headers.get(REQUEUE_COUNT)) or 0) + 1
    headers[REQUEUED_AT] = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    headers[REQUEUED_FROM] = letter.queue
    return headers


StepOutcome = Literal["requeued", "would_requeue", "skipped", "failed", "discarded"]


@dataclass(frozen=True, slots=True)
class Step:
    """What happened to one dead letter."""

    queue: str
    message_id: str | None
    type: str | None
    outcome: StepOutcome
    detail: str = ""


@dataclass(slots=True)
class Report:
    """Every step of a requeue or discard run, in order."""

    dry_run: bool = False
    steps: list[Step] = field(default_factory=list)

    def count(self, outcome: StepOutcome) -> int:
        """How many steps ended with ``outcome``."""
        return sum(1 for s in self.steps if s.outcome == outcome)

    @property
    def failed(self) -> list[Step]:
        """The dead letters that could not be moved (they stayed in their queue)."""
        return [s for s in self.steps if s.outcome == "failed"]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {"dry_run": self.dry_run,
                "counts": {o: self.count(o) for o in ("requeued", "would_requeue", "skipped",
                                                      "failed", "discarded")},
                "steps": [{"queue": s.queue, "message_id": s.message_id, "type": s.type,
                           "outcome": s.outcome, "detail": s.detail} for s in self.steps]}


StepCallback = Callable[[Step], None]


async def _republish(channel: AbstractChannel, message: DeliveredMessage, letter: DeadLetter,
                     route: Route, delay_ms: int | None) -> str | None:
    """Publish the copy and wait for its confirm; None on success, else why it failed."""
    old = message.header.properties
    properties = spec.Basic.Properties(
        content_type=old.content_type or "application/json", content_encoding=old.content_encoding,
        delivery_mode=2, message_id=old.message_id, message_type=old.message_type,
        timestamp=old.timestamp, correlation_id=old.correlation_id, app_id=old.app_id,
        headers=requeued_headers(letter),
        expiration=str(delay_ms) if delay_ms is not None else None,
    )
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
                letter: DeadLetter, route: Route, delay_ms: int | None) -> str | None:
    problem = await _republish(publisher, message, letter, route, delay_ms)
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
    ``wait_seconds`` paces the run. A queue stops at its first failure (the rest stays).
    """
    routes = {queue: route_for(org, svc, queue, store_queue) for queue in queues}
    report = Report(dry_run=dry_run)

    def record(step: Step) -> None:
        report.steps.append(step)
        if on_step is not None:
            on_step(step)

    for queue, route in routes.items():
        publisher = None if dry_run else await connection.channel(publisher_confirms=True,
                                                                  on_return_raises=False)
        try:
            async with contextlib.aclosing(_held(connection, queue, None)) as held:
                async for getter, message in held:
                    letter = _letter(queue, message)
                    if not select.matches(letter):
                        record(Step(queue, letter.message_id, letter.type, "skipped"))
                        continue
                    if publisher is None:
                        record(Step(queue, letter.message_id, letter.type, "would_requeue",
                                    f"{route.retry_exchange} {route.retry_key}"))
                        continue
                    problem = await _uninterrupted(asyncio.ensure_future(
                        _move(getter, publisher, message, letter, route, delay_ms)))
                    if problem is not None:
                        logger.error("requeue of %s from %s failed: %s", letter.message_id, queue,
                                     problem)
                        record(Step(queue, letter.message_id, letter.type, "failed", problem))
                        break
                    record(Step(queue, letter.message_id, letter.type, "requeued",
                                f"{route.retry_exchange} {route.retry_key}"))
                    if wait_seconds > 0:
                        await asyncio.sleep(wait_seconds)  # pacing asked for by the operator
        finally:
            if publisher is not None and not publisher.is_closed:
                with contextlib.suppress(Exception):
                    await publisher.close()
    return report


async def discard(connection: AbstractConnection, queues: Sequence[str], *,
                  select: Selection = ALL, on_step: StepCallback | None = None) -> Report:
    """Delete the selected dead letters of ``queues`` for good."""
    report = Report()
    for queue in queues:
        async with contextlib.aclosing(_held(connection, queue, None)) as held:
            async for getter, message in held:
                letter = _letter(queue, message)
                outcome: StepOutcome = "discarded" if select.matches(letter) else "skipped"
                if outcome == "discarded":
                    await getter.basic_ack(int(getattr(message.delivery, "delivery_tag", 0)))
                step = Step(queue, letter.message_id, letter.type, outcome)
                report.steps.append(step)
                if on_step is not None:
                    on_step(step)
    return report


async def dump(connection: AbstractConnection, queues: Sequence[str], write: Callable[[str], Any],
               *, select: Selection = ALL, limit: int | None = None) -> int:
    """Write each selected dead letter as one JSON line (left in its queue); return the count."""
    written = 0
    for queue in queues:
        for letter in await peek(connection, queue, select=select,
                                 limit=None if limit is None else limit - written):
            write(json.dumps(letter.to_json(), ensure_ascii=False) + "\n")
            written += 1
        if limit is not None and written >= limit:
            break
    return written
