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
its id. Reading is in ``rabbitmq/reading.py``, requeueing in ``rabbitmq/requeueing.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from aiormq.abc import AbstractConnection

from eventyard.dead_letter_box import json_line
from eventyard.dead_letter_reports import (
    Group,
    QueueSummary,
    Report,
    Step,
    StepCallback,
    StepOutcome,
    Summarizing,
)
from eventyard.dead_letters import (
    ALL,
    FINGERPRINT_PREFIX,
    PREVIOUS_FAILURE,
    REQUEUE_COUNT,
    REQUEUED_AT,
    REQUEUED_FROM,
    DeadLetter,
    Failure,
    Selection,
    dead_letter_queues,
    fingerprint,
    requeued_headers,
    route_for,
)
from eventyard.display import PREVIEW_CHARS, jsonable, preview, printable
from eventyard.errors import BrokerConnectionError
from eventyard.rabbitmq.inspection import queue_state
from eventyard.rabbitmq.reading import BROKER_FAILURES, held_letters, lost, lost_after
from eventyard.rabbitmq.requeueing import CopyProblem, copy_properties, requeue

__all__ = [  # the model's names stay importable from here (the CLI, the console, tests)
    "ALL", "FINGERPRINT_PREFIX", "PREVIEW_CHARS", "PREVIOUS_FAILURE", "REQUEUED_AT",
    "REQUEUED_FROM", "REQUEUE_COUNT", "CopyProblem", "DeadLetter", "Failure", "Group",
    "QueueSummary", "Report", "Selection", "Step", "StepCallback", "StepOutcome",
    "copy_properties", "dead_letter_queues", "discard", "dump", "fingerprint", "jsonable",
    "peek", "preview", "printable", "requeue", "requeued_headers", "route_for", "summarize",
]



async def peek(connection: AbstractConnection, queue: str, *, limit: int | None = None,
               select: Selection = ALL, seen: set[str] | None = None) -> list[DeadLetter]:
    """The dead letters of ``queue`` (up to ``limit``), left in the queue.

    The asked-for ids met on the way are added to ``seen`` (to tell which were not found).
    """
    letters: list[DeadLetter] = []
    async with contextlib.aclosing(held_letters(connection, queue, "a look")) as held:
        async for _, _, letter in held:
            if select.keep(letter, letters, limit=limit, seen=seen):
                break
    return letters


async def summarize(connection: AbstractConnection, queues: Sequence[str], *,
                    limit: int = 10_000) -> list[QueueSummary]:
    """Count each queue's dead letters, grouped by message type and failure type."""
    summaries = []
    for queue in queues:
        state = await queue_state(connection, queue)
        if not state.exists:
            summaries.append(QueueSummary(queue, False, 0))
            continue
        summarizing = Summarizing(queue)
        async with contextlib.aclosing(held_letters(connection, queue, "a look", limit)) as held:
            async for _, _, letter in held:
                summarizing.add(letter)
        summaries.append(summarizing.summary(state.messages))
    return summaries



async def discard(connection: AbstractConnection, queues: Sequence[str], *,
                  select: Selection = ALL, on_step: StepCallback | None = None) -> Report:
    """Delete the selected dead letters of ``queues`` for good."""
    report = Report()
    seen: set[str] = set()
    try:
        for queue in queues:
            async with contextlib.aclosing(held_letters(connection, queue, "a discard")) as held:
                async for getter, message, letter in held:
                    seen |= select.ids_of(letter)
                    outcome: StepOutcome = "discarded" if select.matches(letter) else "skipped"
                    if outcome == "discarded":
                        try:
                            await getter.basic_ack(int(getattr(message.delivery, "delivery_tag", 0)))
                        except BROKER_FAILURES as error:
                            raise lost(error, "a discard", queue) from error
                    step = Step.of(letter, outcome)
                    report.steps.append(step)
                    if on_step is not None:
                        on_step(step)
    except BrokerConnectionError as error:
        raise lost_after(error, report, "discarded") from error
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
        async with contextlib.aclosing(held_letters(connection, queue, "a dump")) as held:
            async for _, _, letter in held:
                if seen is not None:
                    seen |= select.ids_of(letter)
                if not select.matches(letter):
                    continue
                write(json_line(letter))
                written += 1
                if limit is not None and written >= limit:
                    return written
    return written
