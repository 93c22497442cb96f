"""The handler watchdog: a handler that runs too long fails, with no timer per message.

Every handler run is bounded (DESIGN §5): by its subscriber's ``timeout``, else by
``ConsumerSettings.handler_timeout``, ``DEFAULT_HANDLER_TIMEOUT`` (900 s, half of RabbitMQ's
default ``consumer_timeout``) unless that is set to None. A run in flight costs a timestamp,
stored as it starts. One task per consumer wakes every tenth of the shortest timeout (at most
every 30 s) and stops the runs that are overdue, so a run times out between ``timeout`` and
``timeout`` plus a tenth of it (plus 30 s at most):

- an async handler's task is cancelled at its current ``await``; once the handler has unwound,
  the cancellation is taken back (``Task.uncancel``) and the consumer's task goes on;
- a sync handler on the pool is abandoned: its message's outcome is a ``HandlerTimeout`` at
  once, the pool gets a replacement thread, and what the stuck thread returns later is ignored;
- in a batch of sync handlers (an ordered queue), the stuck message times out, and the messages
  after it, which its thread will never start, run on the replacement thread: each once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from eventyard.errors import HandlerTimeout
from eventyard.running import DaemonThreadPool
from eventyard.subscribers import Outcome, outcome_of_exception

logger = logging.getLogger("eventyard.consuming")

DEFAULT_HANDLER_TIMEOUT = 900.0
"""Seconds a handler may run when nobody set a timeout: half of ``CONSUMER_TIMEOUT``."""
CONSUMER_TIMEOUT = 1800.0
"""RabbitMQ's default ``consumer_timeout``: a delivery unacked longer closes its channel."""
_LONGEST_NAP = 30.0
_SHORTEST_NAP = 0.01

# A run in flight: when it started, its handler, and the pool's work item running it (None for
# an async handler, whose key is the task awaiting it).
Run = tuple[float, Any, "Future[Any] | None"]


def timed_out(handler: Any, timeout: float) -> Outcome:
    """The outcome of a run of ``handler`` stopped after ``timeout`` seconds."""
    name = getattr(handler, "__name__", handler)
    return outcome_of_exception(HandlerTimeout(
        f"handler {name!r} ran longer than its timeout of {timeout:g} s"))


class Batch:
    """Sync handlers run over several messages, in order, on one pool thread.

    The thread claims each message by storing ``current`` (its index, when it started) and only
    then reads ``abandoned``; the watchdog sets ``abandoned`` and only then reads ``current``
    again. So once the watchdog has abandoned a batch at message ``stuck``, its thread starts
    no message after that one.
    """

    __slots__ = ("abandoned", "current", "done", "handler", "items", "outcomes", "stuck", "work")

    def __init__(self, items: list[Any], handler: Any, done: asyncio.Future[None]) -> None:
        self.items = items
        self.handler = handler
        self.done = done
        self.outcomes: list[Outcome] = []  # appended by the thread as it goes
        self.current: tuple[int, float] | None = None
        self.abandoned = False
        self.stuck: int | None = None
        self.work: Future[Any] | None = None

    def finish(self) -> None:
        """The thread is done with it (on the loop, after the thread's last outcome)."""
        if not self.done.done():
            self.done.set_result(None)

    def results(self, timeout: float) -> list[Outcome]:
        """The outcomes to settle: those known, up to the stuck message's (a timeout)."""
        outcomes = list(self.outcomes)
        if self.stuck is not None:
            del outcomes[self.stuck + 1:]
            if len(outcomes) == self.stuck:  # still running: its late outcome is ignored
                outcomes.append(timed_out(self.handler, timeout))
        return outcomes


class Watched:
    """The handler runs of one queue in flight, for the watchdog (one per queue worker)."""

    __slots__ = ("batch", "expired", "pool", "runs", "timeout")

    def __init__(self, timeout: float, pool: DaemonThreadPool | None) -> None:
        self.timeout = timeout
        self.pool = pool
        self.runs: dict[asyncio.Future[Any], Run] = {}
        self.expired: set[asyncio.Future[Any]] = set()  # tasks cancelled by the watchdog
        self.batch: Batch | None = None

    def expire(self, now: float) -> None:
        """Stop every run that started more than ``timeout`` seconds before ``now``."""
        limit = now - self.timeout
        for key, (started, handler, work) in list(self.runs.items()):
            if started > limit:
                continue
            del self.runs[key]
            if work is None:  # an async handler: cancel the task awaiting it
                self.expired.add(key)
                key.cancel()
            else:
                if not key.done():
                    key.set_result(timed_out(handler, self.timeout))
                self._abandon(work)
        batch = self.batch
        if batch is not None and not batch.done.done():
            current = batch.current
            if current is not None and current[1] <= limit:
                batch.abandoned = True
                if batch.current is current:  # the thread starts nothing after this one
                    batch.stuck = current[0]
                    batch.done.set_result(None)
                    if batch.work is not None:
                        self._abandon(batch.work)
                else:  # it moved on meanwhile: a new message, not overdue
                    batch.abandoned = False

    def _abandon(self, work: Future[Any]) -> None:
        if self.pool is not None:
            self.pool.abandon(work)

    def took_back(self, task: asyncio.Future[Any]) -> bool:
        """True if the watchdog cancelled ``task`` (a run of an async handler it stopped); the
        cancellation is taken back. A stop of the consumer's at the same time re-raises."""
        if task not in self.expired:
            return False
        self.expired.discard(task)
        if isinstance(task, asyncio.Task) and task.uncancel() > 0:
            raise asyncio.CancelledError  # the consumer is stopping too
        return True


def nap_of(timeouts: Sequence[float]) -> float:
    """How long the watchdog sleeps between two looks: a tenth of the shortest timeout."""
    return max(_SHORTEST_NAP, min(min(t / 10 for t in timeouts), _LONGEST_NAP))


async def watch(watched: Sequence[Watched]) -> None:
    """Stop overdue handler runs of ``watched`` queues, for ever (cancel the task to end it)."""
    while True:
        await asyncio.sleep(nap_of([w.timeout for w in watched]))  # the list may grow
        now = time.monotonic()
        for queue in watched:
            if queue.runs or queue.batch is not None:
                try:
                    queue.expire(now)
                except Exception:  # the watchdog must outlive any one failure
                    logger.exception("the handler watchdog failed")
