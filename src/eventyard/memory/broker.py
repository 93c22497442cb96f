"""``MemoryBroker``: a broker in this process with RabbitMQ's routing, TTL and dead letters.

It is a backend (connector) like ``RabbitMqConnector``: the sync API runs on its own loop
thread, and it hands out ``MemoryTransport`` connections. Time: by default a ``RealClock``
(retry delays take as long as on RabbitMQ: right for a long-running in-memory application);
pass ``clock=VirtualClock()`` (or use ``MemoryBroker.virtual()``) in tests and demos, where a
5 s retry delay passes instantly as soon as nothing else is going on. ``with`` (sync) or
``async with`` (async) closes it at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from types import TracebackType

from eventyard import naming
from eventyard.dead_letter_box import DeadLetterBox
from eventyard.engine import LoopThread
from eventyard.errors import CallTimeoutError, QueueNotFoundError
from eventyard.headers import DEFAULT_FRAME_MAX
from eventyard.memory.clock import Clock, RealClock, VirtualClock
from eventyard.memory.dead_letters import open_dead_letter_box
from eventyard.memory.inspection import QueuedMessage
from eventyard.memory.routing import Queue
from eventyard.memory.state import BrokerState
from eventyard.memory.transport import MemoryTransport, wake_on
from eventyard.ports import Transport

logger = logging.getLogger(__name__)


class MemoryBroker:
    """An in-memory broker; thread-safe. Inspect it with the query methods below.

    Use it as ``with MemoryBroker() as broker:`` in sync code and ``async with`` in async code,
    or call ``close()`` / ``await aclose()`` at the end.
    """

    def __init__(self, *, clock: Clock | None = None, name: str = "eventyard-memory",
                 frame_max: int = DEFAULT_FRAME_MAX) -> None:
        self._loop_thread = LoopThread(name)
        self.frame_max = frame_max  # what every connection negotiates (RabbitMQ's default)
        self.clock: Clock = clock if clock is not None else RealClock(self._loop_thread)
        self._state = BrokerState(self.clock)
        self._name = name
        self._publisher: MemoryTransport | None = None
        self._transports: list[MemoryTransport] = []

    @classmethod
    def virtual(cls, *, name: str = "eventyard-memory") -> MemoryBroker:
        """A broker on a ``VirtualClock`` with autojump: retry delays pass instantly."""
        return cls(clock=VirtualClock(autojump=True), name=name)

    # -- backend ---------------------------------------------------------------------------
    @property
    def loop_thread(self) -> LoopThread:
        """The event loop the sync API runs on."""
        return self._loop_thread

    def transport(self, name: str = "memory") -> MemoryTransport:
        """A new connection (transport) to this broker."""
        transport = MemoryTransport(self._state, f"{self._name}:{name}", frame_max=self.frame_max)
        with self._state.lock:
            self._transports = [t for t in self._transports if not t.closed]
            self._transports.append(transport)
        return transport

    async def publisher_transport(self) -> Transport:
        """The connection every publisher shares."""
        with self._state.lock:
            if self._publisher is None or self._publisher.closed:
                self._publisher = self.transport("publisher")
            return self._publisher

    async def consumer_transport(self) -> Transport:
        """A connection of its own for one consumer."""
        return self.transport("consumer")

    # -- inspection ------------------------------------------------------------------------
    def queue_names(self) -> list[str]:
        """Every declared queue, sorted."""
        with self._state.lock:
            return sorted(self._state.queues)

    def exchange_names(self) -> list[str]:
        """Every declared exchange, sorted."""
        with self._state.lock:
            return sorted(self._state.exchanges)

    def bindings(self) -> list[tuple[str, str, str]]:
        """Every binding as (exchange, routing key, queue), sorted."""
        with self._state.lock:
            return sorted((name, key, queue) for name, exchange in self._state.exchanges.items()
                          for key, queue in exchange.bindings)

    def _queue(self, queue: str) -> Queue:
        # Called under the state's lock.
        found = self._state.queues.get(queue)
        if found is None:
            raise QueueNotFoundError(f"queue {queue!r} does not exist on {self._name}: configure "
                                     "the subscribers that declare it first")
        return found

    def message_count(self, queue: str) -> int:
        """Messages ready in ``queue`` (not counting those delivered and unacked)."""
        with self._state.lock:
            return len(self._queue(queue).ready)

    def message_counts(self) -> dict[str, int]:
        """Ready messages of every queue."""
        with self._state.lock:
            return {name: len(queue.ready) for name, queue in sorted(self._state.queues.items())}

    def unacked_count(self) -> int:
        """Deliveries handed to consumers and not settled yet."""
        with self._state.lock:
            return sum(len(c.unacked) for c in self._state.consumptions)

    def messages(self, queue: str) -> list[QueuedMessage]:
        """The messages ready in ``queue``, head first (left in place).

        Their headers are those a consumer would get (``x-delivery-count`` on a quorum queue).
        """
        with self._state.lock:
            found = self._queue(queue)
            if found.quorum:
                return [QueuedMessage.of(queue, replace(stored, headers={
                    **stored.headers, "x-delivery-count": stored.delivery_count}))
                    for stored in found.ready]
            return [QueuedMessage.of(queue, stored) for stored in found.ready]

    def dead_letters(self) -> list[QueuedMessage]:
        """Every message in a dead-letter queue (``dead_letter.*``), with its failure headers."""
        with self._state.lock:
            return [QueuedMessage.of(name, stored)
                    for name, queue in sorted(self._state.queues.items())
                    if naming.is_dead_letter_queue(name) for stored in queue.ready]

    def dead_letter_box(self) -> AbstractAsyncContextManager[DeadLetterBox]:
        """The dead-letter operations (``eventyard.dead_letter_box``) on this broker, for the
        length of an ``async with`` block."""
        return open_dead_letter_box(self._state, self._name, self.frame_max)

    def purge(self, queue: str) -> int:
        """Drop the ready messages of ``queue``; return how many."""
        with self._state.lock:
            found = self._queue(queue)
            count = len(found.ready)
            found.ready.clear()
            self._state.changed()
            return count

    # -- waiting ---------------------------------------------------------------------------
    def is_idle(self) -> bool:
        """Nothing will happen by itself: nothing to deliver, nothing unacked, no TTL pending."""
        return self._state.is_idle()

    async def wait_until_idle_async(self, timeout: float = 10.0) -> None:
        """Wait until ``is_idle()``; ``CallTimeoutError`` (a ``TimeoutError``) saying what is still
        busy after ``timeout``."""
        loop = asyncio.get_running_loop()
        event = asyncio.Event()

        def listener() -> None:
            wake_on(loop, event)

        with self._state.lock:
            self._state.listeners.append(listener)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    event.clear()
                    if self._state.is_idle():
                        return
                    await event.wait()
        except TimeoutError:
            raise CallTimeoutError(f"{self._name} still busy after {timeout} s: {self._busy()}"
                                   ) from None
        finally:
            with self._state.lock:
                self._state.listeners.remove(listener)

    def wait_until_idle(self, timeout: float = 10.0) -> None:
        """``wait_until_idle_async`` for synchronous callers (not from the broker's loop)."""
        self._loop_thread.run(self.wait_until_idle_async(timeout))

    def _busy(self) -> str:
        with self._state.lock:
            parts = [f"{name}: {len(q.ready)} ready" for name, q in sorted(self._state.queues.items())
                     if q.ready and (q.consumers or (q.delays and q.ttl_seconds is not None))]
            unacked = sum(len(c.unacked) for c in self._state.consumptions)
            if unacked:
                parts.append(f"{unacked} unacked")
            return ", ".join(parts) or "nothing (just became idle)"

    # -- chaos and lifecycle ---------------------------------------------------------------
    def close(self, timeout: float = 5.0) -> None:
        """Close every connection (unacked messages go back) and stop the loop thread."""
        with contextlib.suppress(Exception):
            self._loop_thread.run(self._close_transports(timeout))
        self._loop_thread.stop()

    async def aclose(self, timeout: float = 5.0) -> None:
        """Close every connection, for async applications (``async with`` calls it).

        Consumers running on this loop end before it returns (bounded by ``timeout``); the loop
        thread of the sync API and of real-time timers, if started, stops on a worker thread.
        """
        await self._close_transports(timeout)
        if self._loop_thread.is_started and not self._loop_thread.in_loop_thread():
            await asyncio.to_thread(self.close, timeout)

    async def _close_transports(self, timeout: float) -> None:
        with self._state.lock:
            transports, self._transports = self._transports, []
            self._publisher = None
        tasks = [c.task for t in transports for c in t.consumptions if c.task is not None]
        for transport in transports:
            await transport.close()
        mine = [task for task in tasks if not task.done() and task.get_loop() is asyncio.get_running_loop()]
        if mine:
            await asyncio.wait(mine, timeout=timeout)

    def __enter__(self) -> MemoryBroker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    async def __aenter__(self) -> MemoryBroker:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"MemoryBroker({self._name!r}, queues={len(self._state.queues)})"
