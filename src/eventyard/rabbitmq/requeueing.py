"""Requeueing dead letters on RabbitMQ: each goes back to its subscriber through its retry queue.

See ``eventyard.rabbitmq.dead_letters`` for the guarantees (confirmed copy first, then the ack).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import aiormq.exceptions as amqp_errors
from aiormq.abc import AbstractChannel, AbstractConnection, DeliveredMessage
from pamqp import commands as spec
from pamqp import frame as amqp_frame
from pamqp import header as amqp_header

from eventyard import naming
from eventyard.dead_letter_reports import Report, Step, StepCallback
from eventyard.dead_letters import (
    ALL,
    DeadLetter,
    Selection,
    requeued_headers,
    route_for,
)
from eventyard.errors import BrokerConnectionError
from eventyard.headers import encodable
from eventyard.rabbitmq.inspection import reply_text
from eventyard.rabbitmq.reading import BROKER_FAILURES, held_letters, lost, lost_after
from eventyard.topology import Route

# The operations' logs keep the one logger name they always had.
logger = logging.getLogger("eventyard.rabbitmq.dead_letters")

_FRAME_MAX = 131_072  # RabbitMQ's default, when the connection does not say


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
            properties, size = build(encodable(headers))
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
        raise lost_after(error, report, "requeued") from error
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
    except BROKER_FAILURES as error:
        raise lost(error, "a requeue", queue) from error
    where = f"{route.retry_exchange} {route.retry_key}"
    try:
        async with contextlib.aclosing(held_letters(connection, queue, "a requeue")) as held:
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
                except BROKER_FAILURES as error:
                    raise lost(error, "a requeue", queue) from error
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
