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

An undecodable message (see ``eventyard.dead_letters``, the broker-free model this module reads
messages into; its names are re-exported here) can be requeued (with a warning) or discarded by
its id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiormq.exceptions as amqp_errors
from aiormq.abc import AbstractChannel, AbstractConnection, DeliveredMessage
from pamqp import commands as spec
from pamqp import encode as amqp_encode
from pamqp import frame as amqp_frame
from pamqp import header as amqp_header

from eventyard import naming
from eventyard.dead_letters import (
    ALL,
    FINGERPRINT_PREFIX,
    NOTE_LIMIT,
    PREVIOUS_FAILURE,
    REQUEUE_COUNT,
    REQUEUED_AT,
    REQUEUED_FROM,
    DeadLetter,
    Failure,
    Report,
    Selection,
    Step,
    StepCallback,
    StepOutcome,
    dead_letter_queues,
    fingerprint,
    letter_of,
    requeued_headers,
    route_for,
)
from eventyard.display import DEPTH_LIMIT, PREVIEW_CHARS, header_text, jsonable, preview, printable
from eventyard.errors import BrokerConnectionError, QueueNotFoundError
from eventyard.rabbitmq.inspection import queue_state, reply_text, throwaway_channel
from eventyard.topology import Route

__all__ = [  # the model's names stay importable from here (the CLI, the console, tests)
    "ALL", "FINGERPRINT_PREFIX", "PREVIEW_CHARS", "PREVIOUS_FAILURE", "REQUEUED_AT",
    "REQUEUED_FROM", "REQUEUE_COUNT", "CopyProblem", "DeadLetter", "Failure", "Group",
    "QueueSummary", "Report", "Selection", "Step", "StepCallback", "StepOutcome",
    "copy_properties", "dead_letter_queues", "discard", "dump", "fingerprint", "jsonable",
    "peek", "preview", "printable", "requeue", "requeued_headers", "route_for", "summarize",
]

logger = logging.getLogger(__name__)

_FRAME_MAX = 131_072  # RabbitMQ's default, when the connection does not say


def _letter(queue: str, message: DeliveredMessage) -> DeadLetter:
    properties = message.header.properties
    try:
        stamp = int(properties.timestamp.timestamp()) if properties.timestamp is not None else None
    except (ValueError, OverflowError, OSError, AttributeError):
        stamp = None
    return letter_of(
        queue, bytes(message.body), dict(properties.headers or {}),
        message_id=properties.message_id, message_type=properties.message_type,
        correlation_id=properties.correlation_id, routing_key=str(message.routing_key or ""),
        timestamp=stamp, redelivered=bool(getattr(message.delivery, "redelivered", False)),
    )


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


def _encodable(value: Any, depth: int = 0) -> Any:
    """``value`` in types pamqp can encode again: what it decoded may not be (bytes, a double
    too large for the single-precision float pamqp writes, an integer out of range)."""
    if isinstance(value, Mapping) and depth < DEPTH_LIMIT:
        return {str(k): _encodable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple) and depth < DEPTH_LIMIT:
        return [_encodable(v, depth + 1) for v in value]
    if isinstance(value, bytes):
        return bytearray(value)
    try:
        amqp_encode.encode_table_value(value)
    except Exception:  # anything pamqp cannot write goes as text, rather than sink the copy
        return header_text(value, NOTE_LIMIT)
    return value


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
