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
import queue
import signal
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

from eventyard.errors import HandlerTimeout
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
                thread = threading.Thread(target=self._run, daemon=True,
                                          name=f"{self._name}_{len(self._threads)}")
                self._threads.append(thread)
                thread.start()
        return future

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


# Handlers with a timeout (a subscriber's ``timeout`` or the consumer's ``handler_timeout``).

async def call_handlers_timed(handlers: Sequence[tuple[Any, bool]], message: Any,
                              timeout: float) -> Outcome:
    """Run ``handlers`` (handler, is async) in order up to the first failure, each run bounded
    by ``timeout`` seconds: an async handler is cancelled; a sync one runs on a thread of its
    own, abandoned when it runs too long (it keeps no slot of the pool, so the consumer's other
    work goes on)."""
    loop = asyncio.get_running_loop()
    for handler, is_async in handlers:
        if is_async:
            outcome = await run_async_timed(handler, message, timeout)
        else:
            outcome = await run_sync_timed(handler, message, timeout, loop)
        if not outcome.success:
            return outcome
    return SUCCESS


def _timed_out(handler: Any, timeout: float) -> Outcome:
    error = HandlerTimeout(f"handler {getattr(handler, '__name__', handler)!r} ran longer than "
                           f"its timeout of {timeout:g} s")
    return outcome_of_exception(error)


async def run_async_timed(handler: Any, message: Any, timeout: float) -> Outcome:
    """Run an async handler for at most ``timeout`` seconds (then it is cancelled)."""
    scope = asyncio.timeout(timeout)
    try:
        async with scope:
            returned: Any = await handler(message)
    except BaseException as error:
        if scope.expired():
            return _timed_out(handler, timeout)
        return failure_of(error)  # a stop of ours re-raises
    return SUCCESS if returned is None or returned is True else outcome_of(returned)


async def run_sync_timed(handler: Any, message: Any, timeout: float,
                         loop: asyncio.AbstractEventLoop) -> Outcome:
    """Run a sync handler on a daemon thread of its own for at most ``timeout`` seconds; past
    that its outcome is a timeout and the thread is left to finish (it cannot be stopped)."""
    done: Future[Outcome] = Future()
    context = contextvars.copy_context()  # the message being handled, the current span

    def run() -> None:
        outcome = context.run(call_sync_handler, handler, message, loop)
        with contextlib.suppress(Exception):  # abandoned: nobody waits for it any more
            done.set_result(outcome)

    threading.Thread(target=run, daemon=True, name="eventyard-timed-handler").start()
    try:
        return await asyncio.wait_for(asyncio.wrap_future(done), timeout)
    except TimeoutError:
        return _timed_out(handler, timeout)
