"""``LoopThread.run``: the sync API's way into the engine's loop; a call that times out is
cancelled, not left running in the background."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from eventyard import CallTimeoutError, ConfigurationError
from eventyard.engine import LoopThread


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread("test-loop")
    try:
        yield thread
    finally:
        thread.stop()


def test_a_call_that_times_out_is_cancelled(loop_thread: LoopThread) -> None:
    started, cancelled, finished = threading.Event(), threading.Event(), threading.Event()

    async def slow() -> None:
        started.set()
        try:
            await asyncio.Event().wait()  # never set: only a cancellation ends it
            finished.set()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(CallTimeoutError, match=r"did not finish within 0\.2s and was cancelled"):
        loop_thread.run(slow(), timeout=0.2)

    assert started.is_set()
    assert cancelled.wait(5) and not finished.is_set()
    assert loop_thread.run(asyncio.sleep(0, "next"), timeout=5) == "next"  # the loop goes on


def test_the_timeout_is_also_a_builtin_timeout_error(loop_thread: LoopThread) -> None:
    with pytest.raises(TimeoutError):
        loop_thread.run(asyncio.Event().wait(), timeout=0.05)


def test_a_cancelled_call_that_fails_while_unwinding_logs_nothing(
        loop_thread: LoopThread, caplog: pytest.LogCaptureFixture) -> None:
    unwound = threading.Event()

    async def fails_when_cancelled() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            unwound.set()
            raise RuntimeError("cleanup failed")

    with pytest.raises(CallTimeoutError):
        loop_thread.run(fails_when_cancelled(), timeout=0.05)

    assert unwound.wait(5)
    loop_thread.run(asyncio.sleep(0))
    assert "exception was never retrieved" not in caplog.text


def test_a_call_in_time_returns_its_result_or_raises_its_error(loop_thread: LoopThread) -> None:
    async def fails() -> None:
        raise KeyError("the coroutine's own")

    assert loop_thread.run(asyncio.sleep(0.01, 42), timeout=5) == 42
    with pytest.raises(KeyError, match="the coroutine's own"):
        loop_thread.run(fails(), timeout=5)


def test_a_blocking_call_from_the_loop_itself_is_refused(loop_thread: LoopThread) -> None:
    async def calls_back_in() -> None:
        loop_thread.run(asyncio.sleep(0))

    with pytest.raises(ConfigurationError, match="use the async API"):
        loop_thread.run(calls_back_in(), timeout=5)


def test_is_started_follows_the_thread(loop_thread: LoopThread) -> None:
    assert not loop_thread.is_started
    loop_thread.run(asyncio.sleep(0))
    assert loop_thread.is_started
    loop_thread.stop()
    assert not loop_thread.is_started
