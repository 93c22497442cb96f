"""Running handlers: every way a handler ends is an outcome; stops and real interrupts propagate."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import CancelledError as FutureCancelled
from typing import Any

import pytest

from contract.samples import UserCreated
from eventyard import MessageSubscriber, Uuid
from eventyard.consuming import AsyncMessageConsumer, ConsumerSettings
from eventyard.memory import MemoryBroker
from eventyard.memory.clock import VirtualClock
from eventyard.publishing import AsyncDomainEventBus
from eventyard.running import DaemonThreadPool, call_sync_handler, failure_of, outcome_of_awaitable
from eventyard.testing import MessageRecorder


class Custom(BaseException):
    pass


@pytest.fixture
def pool() -> Iterator[DaemonThreadPool]:
    executor = DaemonThreadPool(2, "test-pool")
    try:
        yield executor
    finally:
        executor.shutdown(wait=False, cancel_futures=True)


def _on_thread(function: Any) -> Any:
    """``function()`` on another thread, its result or exception back here."""
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(function())
        except BaseException as error:
            result.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    return result[0]


@pytest.mark.parametrize("error", [KeyboardInterrupt("k"), SystemExit(2), GeneratorExit(), Custom("c"),
                                   asyncio.CancelledError("c"), RuntimeError("r")])
def test_anything_a_handler_raises_off_the_main_thread_is_a_failure(error: BaseException) -> None:
    outcome = _on_thread(lambda: failure_of(error))
    assert (outcome.success, outcome.error_type, outcome.exception) == (False, type(error).__name__, error)


def test_keyboard_interrupt_on_the_main_thread_is_an_interrupt_only_under_the_default_handler() -> None:
    assert threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            failure_of(KeyboardInterrupt())
        signal.signal(signal.SIGINT, lambda *_: None)  # as asyncio.run and run_until_signal do
        assert failure_of(KeyboardInterrupt()).error_type == "KeyboardInterrupt"
    finally:
        signal.signal(signal.SIGINT, previous)


async def test_a_cancellation_is_a_stop_only_when_the_task_itself_was_cancelled() -> None:
    async def raises_cancelled() -> None:
        raise asyncio.CancelledError("the handler's own")

    assert (await outcome_of_awaitable(raises_cancelled())).error_type == "CancelledError"
    started = asyncio.Event()

    async def waits() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(outcome_of_awaitable(waits()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_sync_handler_returning_a_coroutine_has_it_awaited_on_the_loop(
        pool: DaemonThreadPool) -> None:
    loop = asyncio.get_running_loop()
    ran_on: list[threading.Thread] = []

    async def body(value: Any) -> Any:
        ran_on.append(threading.current_thread())
        return value

    def decorated(value: Any) -> Any:
        return body(value)

    for value, success in [(True, True), (None, True), (False, False), ("text", False)]:
        outcome = await loop.run_in_executor(pool, call_sync_handler, decorated, value, loop)
        assert outcome.success is success, value
    assert set(ran_on) == {threading.current_thread()}  # on the loop, not the pool thread

    def raises_later(value: Any) -> Any:
        async def fails() -> None:
            raise KeyboardInterrupt("inside")
        return fails()

    outcome = await loop.run_in_executor(pool, call_sync_handler, raises_later, 1, loop)
    assert outcome.error_type == "KeyboardInterrupt"


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_a_coroutine_for_a_closed_loop_is_a_failure_and_is_closed() -> None:
    loop = asyncio.new_event_loop()
    loop.close()
    made: list[Any] = []

    async def body() -> bool:
        return True

    def decorated(value: Any) -> Any:
        made.append(body())
        return made[-1]

    outcome = call_sync_handler(decorated, 1, loop)
    assert not outcome.success and made[0].cr_frame is None


def test_the_pool_runs_on_daemon_threads_and_survives_base_exceptions(pool: DaemonThreadPool) -> None:
    def boom() -> None:
        raise SystemExit(1)

    with pytest.raises(SystemExit):
        pool.submit(boom).result(5)
    assert pool.submit(threading.current_thread).result(5).daemon
    assert pool.submit(lambda: 41 + 1).result(5) == 42


def test_a_shut_down_pool_cancels_queued_work_and_refuses_more() -> None:
    pool = DaemonThreadPool(1, "test-pool")
    gate = threading.Event()
    running = pool.submit(gate.wait, 5)
    queued = pool.submit(lambda: "never")
    pool.shutdown(wait=False, cancel_futures=True)
    with pytest.raises(FutureCancelled):
        queued.result(5)
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(lambda: None)
    gate.set()
    assert running.result(5) is True


def test_an_async_consumer_on_the_main_threads_loop_survives_handler_base_exceptions() -> None:
    """asyncio.run on the main thread: a KeyboardInterrupt a handler raises is not a Ctrl-C."""
    raised: list[BaseException] = [KeyboardInterrupt("from the handler"), SystemExit(1), Custom("x")]
    recorder = MessageRecorder()

    async def flaky_handler(event: UserCreated) -> None:
        if raised:
            raise raised.pop(0)

    async def main() -> None:
        broker = MemoryBroker(clock=VirtualClock(autojump=True))
        subscribers = [MessageSubscriber.from_message(UserCreated, [flaky_handler])]
        handled = asyncio.Event()
        consumer = AsyncMessageConsumer(
            broker.consumer_transport, "acme", "registration", 5, settings=ConsumerSettings(),
            observers=[recorder, lambda event: event.kind != "handled" or handled.set()])
        consumer.add_subscribers(subscribers)
        await consumer.start()
        await AsyncDomainEventBus(broker.publisher_transport, "acme", "registration").publish(
            UserCreated(user_id=Uuid.v4()))
        await handled.wait()
        await consumer.stop()

    asyncio.run(asyncio.wait_for(main(), 10))
    assert [e.outcome.error_type for e in recorder.events("failed")] == [
        "KeyboardInterrupt", "SystemExit", "Custom"]
    assert len(recorder.handled(UserCreated)) == 1
