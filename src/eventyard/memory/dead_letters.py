"""The dead-letter port (``eventyard.dead_letter_box``) on the in-memory broker.

It behaves as the RabbitMQ one does: looking leaves every message in place; a run takes at most
the messages a queue held when it started; a requeued copy goes to the subscriber's retry
exchange with the headers of ``dead_letters.requeued_headers`` and its dead letter is removed
only once the copy reached a queue (else the step is ``failed``, the letter stays and the run
moves on to the next queue); a copy whose headers outgrow a frame is ``failed`` and the run
goes on. ``delay_ms`` (a per-message TTL on RabbitMQ) is refused: the retry queue's own delay
applies here.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from eventyard import naming
from eventyard.dead_letter_box import json_line
from eventyard.dead_letter_reports import (
    QueueSummary,
    Report,
    Step,
    StepCallback,
    StepOutcome,
    Summarizing,
)
from eventyard.dead_letters import ALL, DeadLetter, Selection, letter_of, requeued_headers, route_for
from eventyard.errors import ConfigurationError, QueueNotFoundError
from eventyard.headers import DEFAULT_FRAME_MAX, encodable
from eventyard.memory import wire
from eventyard.memory.routing import Stored
from eventyard.memory.state import BrokerState
from eventyard.memory.transport import as_sent
from eventyard.ports import OutgoingMessage
from eventyard.topology import Route


class MemoryDeadLetterBox:
    """Dead-letter operations on one in-memory broker's state (a ``DeadLetterBox``)."""

    def __init__(self, state: BrokerState, name: str, frame_max: int = DEFAULT_FRAME_MAX) -> None:
        self.state = state
        self.name = name
        self.frame_max = frame_max

    def _held(self, queue: str, limit: int | None = None) -> list[tuple[Stored, DeadLetter]]:
        """The messages ``queue`` holds now (up to ``limit``), each read as a dead letter."""
        with self.state.lock:
            found = self.state.queues.get(queue)
            if found is None:
                raise QueueNotFoundError(f"queue {queue!r} does not exist on {self.name}")
            held = list(found.ready)[:limit]
        return [(stored, _letter(queue, stored)) for stored in held]

    def _remove(self, queue: str, stored: Stored) -> bool:
        """Take ``stored`` out of ``queue``; False when it is no longer there."""
        with self.state.lock:
            found = self.state.queues.get(queue)
            if found is None or not any(item is stored for item in found.ready):
                return False
            found.ready = deque(item for item in found.ready if item is not stored)
            self.state.changed()
            return True

    async def count(self, queue: str) -> int | None:
        """The messages ``queue`` holds, None when it does not exist."""
        with self.state.lock:
            found = self.state.queues.get(queue)
            return None if found is None else len(found.ready)

    async def summarize(self, queues: Sequence[str], *, limit: int = 10_000) -> list[QueueSummary]:
        """Each queue's count and its letters grouped by message type and failure type."""
        summaries = []
        for queue in queues:
            count = await self.count(queue)
            if count is None:
                summaries.append(QueueSummary(queue, False, 0))
                continue
            summarizing = Summarizing(queue)
            for _, letter in self._held(queue, limit):
                summarizing.add(letter)
            summaries.append(summarizing.summary(count))
        return summaries

    async def peek(self, queue: str, *, limit: int | None = None, select: Selection = ALL,
                   seen: set[str] | None = None) -> list[DeadLetter]:
        """The selected dead letters of ``queue`` (up to ``limit``), left in place."""
        letters: list[DeadLetter] = []
        for _, letter in self._held(queue):
            if select.keep(letter, letters, limit=limit, seen=seen):
                break
        return letters

    async def dump(self, queues: Sequence[str], write: Callable[[str], Any], *,
                   select: Selection = ALL, limit: int | None = None,
                   seen: set[str] | None = None) -> int:
        """Write each selected dead letter as one JSON line (left in place); return the count."""
        written = 0
        for queue in queues:
            for letter in await self.peek(queue, select=select, seen=seen):
                write(json_line(letter))
                written += 1
                if limit is not None and written >= limit:
                    return written
        return written

    async def requeue(self, org: str, svc: str, queues: Sequence[str], *,
                      select: Selection = ALL, dry_run: bool = False, wait_seconds: float = 0.0,
                      delay_ms: int | None = None, store_queue: str = naming.STORE_QUEUE,
                      on_step: StepCallback | None = None) -> Report:
        """Send the selected dead letters of ``queues`` back to their subscribers."""
        if delay_ms is not None:
            raise ConfigurationError("the memory broker takes no per-message delay for a requeue: "
                                     "the retry queue's own delay applies")
        routes = {queue: route_for(org, svc, queue, store_queue) for queue in queues}
        report = Report(dry_run=dry_run)
        seen: set[str] = set()

        def record(letter: DeadLetter, outcome: StepOutcome, detail: str = "") -> None:
            step = Step.of(letter, outcome, detail)
            report.steps.append(step)
            if on_step is not None:
                on_step(step)

        for queue, route in routes.items():
            where = f"{route.retry_exchange} {route.retry_key}"
            for stored, letter in self._held(queue):
                seen |= select.ids_of(letter)
                if not select.matches(letter):
                    record(letter, "skipped")
                    continue
                copy, problem = self._copy(stored, letter, route)
                if problem is not None:
                    record(letter, "failed", problem)
                    continue
                if dry_run:
                    record(letter, "would_requeue", where)
                    continue
                failure = self._move(queue, stored, copy, route)
                if failure is not None:
                    record(letter, "failed", failure)
                    break
                record(letter, "requeued", where)
                if wait_seconds > 0:
                    await asyncio.sleep(wait_seconds)  # pacing asked for by the operator
        report.not_found = sorted(select.message_ids - seen)
        return report

    def _copy(self, stored: Stored, letter: DeadLetter, route: Route) -> tuple[Stored, str | None]:
        """The requeued copy of ``stored`` as the broker would receive it, or why it cannot be
        sent."""
        outgoing = OutgoingMessage(route.retry_exchange, route.retry_key, stored.body,
                                   headers=requeued_headers(letter),
                                   message_id=stored.message_id or letter.fingerprint,
                                   type=stored.type, timestamp=stored.timestamp,
                                   content_type=stored.content_type,
                                   correlation_id=stored.correlation_id)
        try:
            copy, size = as_sent(outgoing)
        except Exception:  # a header the client cannot write back goes as text, as on RabbitMQ
            try:
                copy, size = as_sent(replace(outgoing, headers=encodable(outgoing.headers)))
            except Exception as error:
                return stored, f"its properties cannot be encoded again ({error})"
        if 0 < self.frame_max < size + wire.FRAME_OVERHEAD:
            return stored, (f"its headers make a {size:,}-byte header frame, over the frame_max "
                            f"of {self.frame_max:,} bytes: left in place")
        return copy, None

    def _move(self, queue: str, stored: Stored, copy: Stored, route: Route) -> str | None:
        """Publish ``copy`` and remove ``stored`` from ``queue``; None, or why it failed."""
        with self.state.lock:
            if route.retry_exchange not in self.state.exchanges:
                return f"cannot publish to {route.retry_exchange!r}: the exchange does not exist"
            if self.state.publish([copy]):
                return (f"{route.retry_exchange!r} routed {route.retry_key!r} to no queue: the "
                        "retry queue or its binding is missing (run `eventyard configure`)")
            self._remove(queue, stored)
        return None

    async def discard(self, queues: Sequence[str], *, select: Selection = ALL,
                      on_step: StepCallback | None = None) -> Report:
        """Delete the selected dead letters of ``queues`` for good."""
        report = Report()
        seen: set[str] = set()
        for queue in queues:
            for stored, letter in self._held(queue):
                seen |= select.ids_of(letter)
                outcome: StepOutcome = "skipped"
                if select.matches(letter) and self._remove(queue, stored):
                    outcome = "discarded"
                step = Step.of(letter, outcome)
                report.steps.append(step)
                if on_step is not None:
                    on_step(step)
        report.not_found = sorted(select.message_ids - seen)
        return report


def _letter(queue: str, stored: Stored) -> DeadLetter:
    return letter_of(queue, stored.body, dict(stored.headers), message_id=stored.message_id,
                     message_type=stored.type, correlation_id=stored.correlation_id,
                     routing_key=stored.routing_key, timestamp=stored.timestamp,
                     redelivered=stored.redelivered)


@asynccontextmanager
async def open_dead_letter_box(state: BrokerState, name: str,
                               frame_max: int) -> AsyncIterator[MemoryDeadLetterBox]:
    """A ``MemoryDeadLetterBox`` for the length of the block."""
    yield MemoryDeadLetterBox(state, name, frame_max)
