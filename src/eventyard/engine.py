"""The sync facade's event loop: one background thread that runs the async engine.

The seed's API is synchronous; eventyard's engine is asyncio. A ``LoopThread`` owns an event
loop in a daemon thread and runs coroutines on it for callers on any other thread. Because that
thread is a daemon, ``ScriptHold`` is what keeps a script alive after ``consumer.start()``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Coroutine
from types import FrameType
from typing import Any, Protocol, TypeVar

from eventyard.errors import CallTimeoutError, ConfigurationError

T = TypeVar("T")

logger = logging.getLogger(__name__)

# How long a timed-out call waits for its cancelled task to unwind before it raises anyway.
_CANCEL_GRACE_SECONDS = 1.0


class LoopThread:
    """An event loop in a daemon thread, started on first use."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop (started if needed)."""
        with self._lock:
            if self._loop is None or self._thread is None or not self._thread.is_alive():
                ready = threading.Event()
                loop = asyncio.new_event_loop()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                self._thread = threading.Thread(target=run, name=self._name, daemon=True)
                self._loop = loop
                self._thread.start()
                ready.wait()
            return self._loop

    @property
    def is_started(self) -> bool:
        """True while the loop's thread runs (``loop`` starts it; ``stop()`` ends it)."""
        with self._lock:
            return self._thread is not None and self._thread.is_alive()

    def in_loop_thread(self) -> bool:
        """True when called from the loop's own thread."""
        return self._thread is not None and threading.current_thread() is self._thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; return a thread-safe future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result from this (other) thread.

        After ``timeout`` seconds the task is cancelled, given a moment to unwind, and
        ``CallTimeoutError`` is raised: a call that gave up does not go on in the background.
        """
        if self.in_loop_thread():
            coro.close()
            raise ConfigurationError(
                "a blocking eventyard call was made from inside an async handler; "
                "use the async API there (await the Async* bus) instead"
            )
        loop = self.loop
        # Cheaper than run_coroutine_threadsafe (a concurrent Future, a Condition and chained
        # callbacks): one call into the loop, one lock released when the task is done.
        finished = threading.Lock()
        finished.acquire()
        tasks: list[asyncio.Task[T]] = []

        def on_done(task: asyncio.Task[T]) -> None:
            finished.release()

        def start() -> None:
            task = loop.create_task(coro)
            tasks.append(task)
            task.add_done_callback(on_done)

        # The callback runs in a copy of this thread's context, and the task in a copy of that:
        # a handler's context (the message it handles, its span) reaches what it publishes.
        loop.call_soon_threadsafe(start)
        if finished.acquire(timeout=-1 if timeout is None else timeout):
            return tasks[0].result()

        def abandon() -> None:  # runs after start(): the loop takes callbacks in order
            for task in tasks:
                task.cancel()
                # Whatever it ends with now, nobody will read it: don't let asyncio log it.
                task.add_done_callback(lambda done: done.cancelled() or done.exception())

        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing runs on it
            loop.call_soon_threadsafe(abandon)
            finished.acquire(timeout=_CANCEL_GRACE_SECONDS)
        raise CallTimeoutError(f"the eventyard call did not finish within {timeout:g}s and "
                               "was cancelled")

    def stop(self) -> None:
        """Stop the loop and wait for its thread."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            if threading.current_thread() is not thread:
                thread.join(5)
        if loop is not None and not loop.is_running():
            loop.close()


class Stoppable(Protocol):
    """A consumer as ``ScriptHold`` sees it."""

    @property
    def is_running(self) -> bool:
        """True between ``start()`` and ``stop()``."""

    def stop(self) -> None:
        """Stop gracefully."""


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class ScriptHold:
    """Keeps a script's process alive after its last line while consumers it started run.

    Like petisco's consumer thread: a consumer started on the main thread is *held*, so when the
    script ends the process waits until every held consumer was stopped (``stop()`` from any
    thread) or until SIGINT or SIGTERM, which stop them gracefully; the process then exits with
    the script's status (0). While the script runs, SIGINT and SIGTERM keep their usual meaning;
    once it has ended, a second signal exits at once. Nothing is held for consumers started on
    other threads, when an uncaught exception ended the script, or in a pytest process (a test
    that forgets ``stop()`` must not hang the run).

    The wait runs on the main thread through threading's exit hook, not a non-daemon thread:
    that hook runs before the interpreter shuts down thread pools, which sync handlers and
    reconnects still need, and the main thread is the one that can take signals.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[int, Stoppable] = {}
        self._registered = False
        self._signalled = False
        self._wake_read = self._wake_write = -1

    def hold(self, consumer: Stoppable) -> None:
        """Hold the process for ``consumer`` if it was started on the main thread of a script."""
        if threading.current_thread() is not threading.main_thread() or "pytest" in sys.modules:
            return
        with self._lock:
            if not self._registered and not self._register():
                return
            self._held[id(consumer)] = consumer

    def release(self, consumer: Stoppable) -> None:
        """``consumer`` was stopped: it no longer holds the process."""
        with self._lock:
            released = self._held.pop(id(consumer), None) is not None
        if released:
            self._wake()

    def _register(self) -> bool:
        # Exit hooks run last registered first: importing the thread-pool module now puts its
        # hook (which shuts the pools down) after ours.
        import concurrent.futures.thread  # noqa: F401

        register = getattr(threading, "_register_atexit", None)
        if register is None:
            logger.warning("this Python cannot keep the script alive after consumer.start(): "
                           "call consumer.run() to consume until a signal")
            return False
        try:
            register(self._wait_at_exit)
        except RuntimeError:  # the interpreter is already shutting down
            return False
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)
        self._registered = True
        return True

    def _running(self) -> list[Stoppable]:
        with self._lock:
            return [consumer for consumer in self._held.values() if consumer.is_running]

    def _wake(self) -> None:
        # A byte down a pipe: safe from a signal handler (no lock), and a full pipe already wakes.
        with contextlib.suppress(OSError):
            os.write(self._wake_write, b"\0")

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        for sig in _SIGNALS:  # a second signal exits at once
            signal.signal(sig, signal.SIG_DFL)
        self._signalled = True
        self._wake()

    def _wait_at_exit(self) -> None:
        """Runs on the main thread once the script has ended."""
        if not self._running() or getattr(sys, "last_value", None) is not None:
            return  # nothing consumes, or the script died of an uncaught exception
        previous = {sig: signal.getsignal(sig) for sig in _SIGNALS}
        for sig in _SIGNALS:
            signal.signal(sig, self._on_signal)
        logger.info("the script has ended: consuming until SIGINT, SIGTERM or consumer.stop()")
        try:
            while not self._signalled and self._running():
                os.read(self._wake_read, 512)
        finally:
            if not self._signalled:
                for sig, handler in previous.items():
                    if handler is not None:
                        signal.signal(sig, handler)
        if self._signalled:
            logger.info("stopping on a signal: draining running handlers")
            for consumer in self._running():
                try:
                    consumer.stop()
                except Exception:
                    logger.exception("a consumer failed to stop")


# One per process, as the main thread and its signals are.
script_hold = ScriptHold()
