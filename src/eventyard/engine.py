"""The sync facade's event loop: one background thread that runs the async engine.

The seed's API is synchronous; eventyard's engine is asyncio. A ``LoopThread`` owns an event
loop in a daemon thread and runs coroutines on it for callers on any other thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from eventyard.errors import ConfigurationError

T = TypeVar("T")


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

    def in_loop_thread(self) -> bool:
        """True when called from the loop's own thread."""
        return self._thread is not None and threading.current_thread() is self._thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; return a thread-safe future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result from this (other) thread."""
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

        loop.call_soon_threadsafe(start)
        if not finished.acquire(timeout=-1 if timeout is None else timeout):
            raise TimeoutError(f"the eventyard call did not finish within {timeout}s")
        return tasks[0].result()

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
