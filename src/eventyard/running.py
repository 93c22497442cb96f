"""Running handlers: every way a handler can end is an outcome of its message.

A handler's failure is its message's failure, whatever it raises, ``BaseException`` included
(``KeyboardInterrupt``, ``SystemExit``, ``GeneratorExit``, a cancellation it raised itself):
the message is retried or dead-lettered and the consumer goes on. Two keep their meaning and
propagate, leaving the message unacked for redelivery: a cancellation of the consumer's own
task (a stop, the shutdown timeout), and a ``KeyboardInterrupt`` where a real Ctrl-C can raise
one (the main thread under Python's default SIGINT handler); anywhere else (a handler thread,
the sync API's loop thread, a loop run by ``asyncio.run``) it can only come from the handler.

A sync handler that returns an awaitable (a sync decorator around an async handler) has it
awaited on the event loop; what that gives follows the same rules.

Sync handlers run on ``DaemonThreadPool``: a hung handler must not keep the process alive past
the shutdown timeout (its message is not acked and comes back).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import itertools
import queue
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

from eventyard.subscribers import SUCCESS, Outcome, outcome_of, outcome_of_exception

T = TypeVar("T")


def failure_of(error: BaseException) -> Outcome:
    """The failure ``error`` (raised by a handler) stands for; re-raise it if it is a stop."""
    if isinstance(error, asyncio.CancelledError):
        try:
            task = asyncio.current_task()
        except RuntimeError:  # no running loop: not our task being stopped
            task = None
        if task is not None and task.cancelling():
            raise error  # our own stop or shutdown timeout, not the handler's doing
    elif isinstance(error, KeyboardInterrupt) and _ctrl_c_raises_here():
        raise error  # may be a real Ctrl-C: let the application stop
    return outcome_of_exception(error)


def _ctrl_c_raises_here() -> bool:
    """True when a real SIGINT would surface here as ``KeyboardInterrupt``: on the main thread,
    under Python's default SIGINT handler (``asyncio.run`` and ``run_until_signal`` install
    their own, which never raise it inside a coroutine)."""
    return (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler)


async def outcome_of_awaitable(awaitable: Awaitable[Any]) -> Outcome:
    """Await what a handler gave and map how it ends to an outcome."""
    try:
        returned = await awaitable
    except BaseException as error:
        return failure_of(error)
    return SUCCESS if returned is None or returned is True else outcome_of(returned)


def call_sync_handler(handler: Callable[[Any], Any], message: Any,
                      loop: asyncio.AbstractEventLoop) -> Outcome:
    """Run a sync handler on this (pool) thread; never raises."""
    try:
        returned = handler(message)
    except BaseException as error:  # not the main thread: never a real interrupt
        return outcome_of_exception(error)
    if returned is None or returned is True:
        return SUCCESS
    if inspect.isawaitable(returned):
        return _await_on_loop(returned, loop)
    return outcome_of(returned)


def _await_on_loop(awaitable: Awaitable[Any], loop: asyncio.AbstractEventLoop) -> Outcome:
    coroutine = outcome_of_awaitable(awaitable)
    try:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result()
    except BaseException as error:  # cancelled by a stop, or the loop is gone
        coroutine.close()
        if inspect.iscoroutine(awaitable):
            awaitable.close()
        return outcome_of_exception(error)


_Work = tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]


class DaemonThreadPool(Executor):
    """A thread pool whose threads are daemons: never waited for when the process exits.

    ``concurrent.futures.ThreadPoolExecutor`` joins its threads at interpreter exit, so one
    hung handler would keep a stopped consumer's process alive for ever.
    """

    def __init__(self, max_workers: int, name: str) -> None:
        self._max_workers = max(1, max_workers)
        self._name = name
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._shut_down = False
        self._abandoned: set[Future[Any]] = set()  # work whose thread was given up on
        self._numbers = itertools.count()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Run ``fn(*args)`` on a pool thread."""
        if kwargs:
            raise TypeError("DaemonThreadPool.submit takes positional arguments only")
        future: Future[T] = Future()
        with self._lock:
            if self._shut_down:
                raise RuntimeError("the handler pool is shut down")
            self._work.put((future, fn, args))
            if not self._idle.acquire(blocking=False) and len(self._threads) < self._max_workers:
                self._start_thread()
        return future

    def abandon(self, future: Future[Any]) -> None:
        """Give up on the thread running ``future`` (a handler that hangs): a replacement
        thread takes the pool's other work; the stuck one ends once ``future``'s work returns."""
        with self._lock:
            if future.done() or self._shut_down or future in self._abandoned:
                return
            self._abandoned.add(future)
            self._max_workers += 1
            self._start_thread()

    def _start_thread(self) -> None:  # under the lock
        thread = threading.Thread(target=self._run, daemon=True,
                                  name=f"{self._name}_{next(self._numbers)}")
        self._threads.append(thread)
        thread.start()

    def _run(self) -> None:
        work = self._work
        while True:
            item = work.get()
            if item is None:
                return
            future, fn, args = item
            del item
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args)
                except BaseException as error:  # kept on the future; the thread goes on
                    future.set_exception(error)
                else:
                    future.set_result(result)
            if self._abandoned and future in self._abandoned:
                with self._lock:  # replaced meanwhile: this thread leaves the pool
                    self._abandoned.discard(future)
                    self._max_workers -= 1
                    with contextlib.suppress(ValueError):
                        self._threads.remove(threading.current_thread())
                return
            del future, fn, args
            self._idle.release()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more work; threads end after what they run (a hung one is left behind)."""
        with self._lock:
            self._shut_down = True
            if cancel_futures:
                while True:
                    try:
                        item = self._work.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None:
                        item[0].cancel()
            for _ in self._threads:
                self._work.put(None)
            threads = list(self._threads)
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()


# Sync handlers run from the event loop.

def _resolve(done: asyncio.Future[Outcome], outcome: Outcome) -> None:
    if not done.done():  # a watchdog's timeout or a stop settled it first: ignored
        done.set_result(outcome)


def _run_then_resolve(loop: asyncio.AbstractEventLoop, done: asyncio.Future[Outcome],
                      run: Callable[..., Outcome], handler: Any, message: Any) -> None:
    outcome = run(call_sync_handler, handler, message, loop)
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        loop.call_soon_threadsafe(_resolve, done, outcome)


async def run_on_pool(pool: DaemonThreadPool, handler: Any, message: Any,
                      loop: asyncio.AbstractEventLoop,
                      runs: dict[asyncio.Future[Any], Any] | None) -> Outcome:
    """Run a sync handler on ``pool``, in this context (the message being handled, the current
    span); with ``runs``, register the run for the watchdog, which may settle it first."""
    done: asyncio.Future[Outcome] = loop.create_future()
    work = pool.submit(_run_then_resolve, loop, done, contextvars.copy_context().run, handler,
                       message)
    if runs is None:
        return await done
    runs[done] = (time.monotonic(), handler, work)
    try:
        return await done
    finally:
        runs.pop(done, None)
