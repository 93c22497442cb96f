"""The dead-letter port: what an operator does with dead letters, on any broker.

A ``DeadLetterBox`` counts and looks at the dead letters of queues without consuming them
(``count``, ``summarize``, ``peek``, ``dump``), sends selected ones back to their subscribers
through the retry queue (``requeue``) and deletes selected ones for good (``discard``). Both
brokers implement it: ``RabbitMqConnector.dead_letter_box()`` and
``MemoryBroker.dead_letter_box()`` open one for the length of an ``async with`` block, so the
contract suite runs the same operator scenarios on both, and the CLI's ``dlq`` commands are
written on it. The model (``DeadLetter``, ``Selection``) is ``eventyard.dead_letters``; what an
operation did, or what a queue holds, is in ``eventyard.dead_letter_reports``.

Guarantees, on both brokers: a requeued copy is confirmed routed to the subscriber's retry
queue before its dead letter is removed, so a copy that reaches no queue leaves its dead letter
where it was (the step is ``failed``); each run takes at most the messages a queue held when it
started; a dry run moves nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from eventyard import naming
from eventyard.dead_letter_reports import QueueSummary, Report, StepCallback
from eventyard.dead_letters import ALL, DeadLetter, Selection


class DeadLetterBox(Protocol):
    """Dead-letter operations on one broker (see the module's documentation)."""

    async def count(self, queue: str) -> int | None:
        """The messages ``queue`` holds, None when it does not exist."""
        ...

    async def summarize(self, queues: Sequence[str], *, limit: int = 10_000) -> list[QueueSummary]:
        """Each queue's count and its letters (up to ``limit`` inspected) grouped by message type
        and failure type; a queue that does not exist is in the list, marked so."""
        ...

    async def peek(self, queue: str, *, limit: int | None = None, select: Selection = ALL,
                   seen: set[str] | None = None) -> list[DeadLetter]:
        """The selected dead letters of ``queue`` (up to ``limit``), left in place; the
        asked-for ids met on the way are added to ``seen``."""
        ...

    async def dump(self, queues: Sequence[str], write: Callable[[str], Any], *,
                   select: Selection = ALL, limit: int | None = None,
                   seen: set[str] | None = None) -> int:
        """Write each selected dead letter as one JSON line (left in place); return the count."""
        ...

    async def requeue(self, org: str, svc: str, queues: Sequence[str], *,
                      select: Selection = ALL, dry_run: bool = False, wait_seconds: float = 0.0,
                      delay_ms: int | None = None, store_queue: str = naming.STORE_QUEUE,
                      on_step: StepCallback | None = None) -> Report:
        """Send the selected dead letters back to their subscribers via their retry queues."""
        ...

    async def discard(self, queues: Sequence[str], *, select: Selection = ALL,
                      on_step: StepCallback | None = None) -> Report:
        """Delete the selected dead letters of ``queues`` for good."""
        ...


class DeadLetterBackend(Protocol):
    """A broker whose dead letters an operator can work on."""

    def dead_letter_box(self) -> AbstractAsyncContextManager[DeadLetterBox]:
        """A ``DeadLetterBox`` for the length of an ``async with`` block."""
        ...


def json_line(letter: DeadLetter) -> str:
    """``letter`` as one line of a dump."""
    return json.dumps(letter.to_json(), ensure_ascii=False) + "\n"
