"""Batching: an ordered queue whose handlers are all sync runs its deliveries in batches.

One hand-off to the thread pool per batch, not per message: the pool thread runs the handlers
for each message in order and returns after ``_BATCH_SECONDS`` at the latest, so acks are never
held back for long; each outcome goes to the queue's ``Settler`` in order. The watchdog may
abandon a batch at a message that hangs (watchdog.Batch); the messages after it run in the
next batch, on a replacement thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from eventyard.forwarding import Forwarder
from eventyard.messages import Message
from eventyard.observability import HANDLING, INSTRUMENTS
from eventyard.ports import Delivery
from eventyard.retry import redelivery_count
from eventyard.running import DaemonThreadPool, call_sync_handler
from eventyard.settling import ConsumerHost, Settler
from eventyard.subscribers import SUCCESS, Outcome
from eventyard.watchdog import Batch, Watched

_BATCH_SECONDS = 0.02
_BATCH_LIMIT = 512

Decoder = Callable[[Delivery], "Message | Exception"]  # an exception: why it is poison
Fate = Callable[[Outcome, int], "bool | None"]


class BatchHost(ConsumerHost, Protocol):
    """What batching needs of its consumer (``AsyncMessageConsumer`` implements it)."""

    @property
    def executor(self) -> DaemonThreadPool | None:
        """The pool that runs sync handlers."""
        ...

    @property
    def stopping(self) -> bool:
        """True once the consumer has begun to stop: take no new work."""
        ...


class SyncBatches:
    """The backlog of one ordered queue of sync handlers, drained in batches by one task."""

    def __init__(self, host: BatchHost, handlers: Sequence[Any], handler_name: str, *,
                 settler: Settler, forwarder: Forwarder, decode: Decoder, fate: Fate,
                 watched: Watched | None) -> None:
        self.host = host
        self.handlers = list(handlers)
        self.handler_name = handler_name
        self.settler = settler
        self.forwarder = forwarder
        self.decode = decode
        self.fate = fate
        self.watched = watched
        self.backlog: deque[Delivery] = deque()
        self.drainer: asyncio.Task[None] | None = None

    def add(self, delivery: Delivery) -> None:
        """Queue ``delivery`` for the next batch."""
        self.backlog.append(delivery)
        if self.drainer is None or self.drainer.done():
            self.drainer = asyncio.get_running_loop().create_task(self._drain())
            self.host.track(self.drainer)

    async def _drain(self) -> None:
        backlog = self.backlog
        while backlog:
            if self.host.stopping:  # not started: back to the queue
                while backlog:
                    with contextlib.suppress(Exception):
                        await backlog.popleft().reject(requeue=True)
                return
            batch = [backlog.popleft() for _ in range(min(len(backlog), _BATCH_LIMIT))]
            await self._process(batch)

    async def _process(self, deliveries: list[Delivery]) -> None:
        decoded: list[tuple[Delivery, Message, int]] = []
        settler = self.settler
        for delivery in deliveries:
            count = redelivery_count(delivery.headers)
            try:
                if self.forwarder.suspects and delivery.redelivered and (
                        await settler.settle_suspect(delivery, count)):
                    continue
                message = self.decode(delivery)
                if isinstance(message, Exception):
                    await settler.poison(delivery, message, count)
                    continue
            except Exception as failure:
                await settler.recover(delivery, failure)
                continue
            decoded.append((delivery, message, count))
        loop = asyncio.get_running_loop()
        executor, watched = self.host.executor, self.watched
        assert executor is not None
        done = 0
        while done < len(decoded):
            batch = Batch(decoded[done:], self.handler_name, loop.create_future())
            batch.work = executor.submit(self._in_thread, batch, loop)
            if watched is not None:
                watched.batch = batch
            try:
                await batch.done
            except asyncio.CancelledError:
                # Stopped while a handler of this batch hangs: ack the messages handled before
                # it, so that they do not run again (the others come back).
                for (delivery, _, _), outcome in zip(batch.items, list(batch.outcomes),
                                                     strict=False):
                    if outcome.success:
                        with contextlib.suppress(Exception):
                            await delivery.ack()
                raise
            finally:
                if watched is not None:
                    watched.batch = None
            outcomes = batch.results(watched.timeout if watched is not None else 0.0)
            for (delivery, message, count), outcome in zip(batch.items, outcomes, strict=False):
                try:
                    await settler.settle(delivery, message, outcome, count)
                except Exception as error:
                    await settler.recover(delivery, error)
            done += len(outcomes)

    def _in_thread(self, batch: Batch, loop: asyncio.AbstractEventLoop) -> None:
        """Run the handlers for each message of ``batch`` in order, for at most about
        ``_BATCH_SECONDS``; append the outcome of each as soon as it is known."""
        try:
            self._run(batch, loop)
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(batch.finish)

    def _run(self, batch: Batch, loop: asyncio.AbstractEventLoop) -> None:
        now = time.monotonic()
        deadline = now + _BATCH_SECONDS
        instruments = INSTRUMENTS.active
        outcomes, handlers = batch.outcomes, self.handlers
        for index, (delivery, message, count) in enumerate(batch.items):
            batch.current = (index, now)  # claimed; only then is abandoned read (see Batch)
            if batch.abandoned:
                return
            token = HANDLING.set(message)  # what it publishes is caused by it
            processing = (instruments.processing(delivery, message, count + 1)
                          if instruments is not None else None)
            entered = processing.enter() if processing is not None else None
            outcome = SUCCESS
            try:
                for handler in handlers:
                    outcome = call_sync_handler(handler, message, loop)
                    if not outcome.success:
                        break
            finally:
                if processing is not None:
                    processing.leave(entered)
                HANDLING.reset(token)
            if processing is not None:
                processing.end(outcome, self.fate(outcome, count))
            outcomes.append(outcome)
            now = time.monotonic()
            if now >= deadline:
                break
