"""The dead-letter port (``eventyard.dead_letter_box``) on RabbitMQ: one AMQP connection of its
own, the operations of ``eventyard.rabbitmq.dead_letters`` on it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from aiormq.abc import AbstractConnection

from eventyard import naming
from eventyard.dead_letter_reports import QueueSummary, Report, StepCallback
from eventyard.dead_letters import ALL, DeadLetter, Selection
from eventyard.rabbitmq import dead_letters
from eventyard.rabbitmq.inspection import connect, queue_state
from eventyard.rabbitmq.settings import ConnectionSettings


class RabbitMqDeadLetterBox:
    """Dead-letter operations over one AMQP connection (a ``DeadLetterBox``)."""

    def __init__(self, connection: AbstractConnection) -> None:
        self.connection = connection

    async def count(self, queue: str) -> int | None:
        """The messages ``queue`` holds, None when it does not exist."""
        state = await queue_state(self.connection, queue)
        return state.messages if state.exists else None

    async def summarize(self, queues: Sequence[str], *, limit: int = 10_000) -> list[QueueSummary]:
        """Each queue's count and its letters grouped by message type and failure type."""
        return await dead_letters.summarize(self.connection, queues, limit=limit)

    async def peek(self, queue: str, *, limit: int | None = None, select: Selection = ALL,
                   seen: set[str] | None = None) -> list[DeadLetter]:
        """The selected dead letters of ``queue``, left in place."""
        return await dead_letters.peek(self.connection, queue, limit=limit, select=select,
                                       seen=seen)

    async def dump(self, queues: Sequence[str], write: Callable[[str], Any], *,
                   select: Selection = ALL, limit: int | None = None,
                   seen: set[str] | None = None) -> int:
        """Write each selected dead letter as one JSON line; return the count."""
        return await dead_letters.dump(self.connection, queues, write, select=select,
                                       limit=limit, seen=seen)

    async def requeue(self, org: str, svc: str, queues: Sequence[str], *,
                      select: Selection = ALL, dry_run: bool = False, wait_seconds: float = 0.0,
                      delay_ms: int | None = None, store_queue: str = naming.STORE_QUEUE,
                      on_step: StepCallback | None = None) -> Report:
        """Send the selected dead letters back to their subscribers via their retry queues."""
        return await dead_letters.requeue(self.connection, org, svc, queues, select=select,
                                          dry_run=dry_run, wait_seconds=wait_seconds,
                                          delay_ms=delay_ms, store_queue=store_queue,
                                          on_step=on_step)

    async def discard(self, queues: Sequence[str], *, select: Selection = ALL,
                      on_step: StepCallback | None = None) -> Report:
        """Delete the selected dead letters of ``queues`` for good."""
        return await dead_letters.discard(self.connection, queues, select=select, on_step=on_step)


@asynccontextmanager
async def open_dead_letter_box(settings: ConnectionSettings, *, name: str = "eventyard-dead-letters",
                               ) -> AsyncIterator[RabbitMqDeadLetterBox]:
    """A ``RabbitMqDeadLetterBox`` on a connection of its own, closed at the end of the block."""
    async with connect(settings, name=name) as connection:
        yield RabbitMqDeadLetterBox(connection)
