"""The handler watchdog's parts: the default timeout, the pool giving up on a stuck thread, a
batch abandoned at the message that hangs (issue 13 item 3)."""

from __future__ import annotations

import asyncio
import threading
import time

from eventyard import HandlerTimeout
from eventyard.consuming import DEFAULT_HANDLER_TIMEOUT, ConsumerSettings
from eventyard.running import DaemonThreadPool
from eventyard.subscribers import SUCCESS
from eventyard.watchdog import CONSUMER_TIMEOUT, Batch, Watched, nap_of


def test_every_handler_is_bounded_by_default_well_below_rabbitmqs_consumer_timeout() -> None:
    assert ConsumerSettings().handler_timeout == DEFAULT_HANDLER_TIMEOUT
    assert DEFAULT_HANDLER_TIMEOUT <= CONSUMER_TIMEOUT / 2
    assert ConsumerSettings(handler_timeout=None).handler_timeout is None  # turned off


def test_the_watchdog_looks_every_tenth_of_the_shortest_timeout_and_at_least_every_30_s() -> None:
    assert nap_of([DEFAULT_HANDLER_TIMEOUT]) == 30.0
    assert nap_of([900.0, 5.0]) == 0.5
    assert nap_of([0.001]) == 0.01


def test_an_abandoned_thread_is_replaced_and_leaves_the_pool_when_it_returns() -> None:
    pool = DaemonThreadPool(1, "test-pool")
    gate = threading.Event()
    try:
        stuck = pool.submit(gate.wait, 10)
        queued = pool.submit(lambda: "ran")  # waits behind the stuck one
        time.sleep(0.05)  # not a synchronisation: lets the queued one prove it is not running
        assert not queued.done()
        pool.abandon(stuck)
        assert queued.result(5) == "ran"  # on the replacement thread
        assert pool.submit(lambda: 42).result(5) == 42
        gate.set()
        assert stuck.result(5) is True
        deadline = time.monotonic() + 5
        while len(pool._threads) > 1 and time.monotonic() < deadline:
            time.sleep(0.01)  # polling interval of a condition with a deadline
        assert len(pool._threads) == 1
        assert pool.submit(lambda: "still works").result(5) == "still works"
    finally:
        gate.set()
        pool.shutdown(wait=False)


def test_a_batch_abandoned_at_a_stuck_message_times_it_out_and_starts_nothing_after_it() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        pool = DaemonThreadPool(1, "test-pool")
        watched = Watched(0.2, pool)
        gate = threading.Event()
        ran: list[int] = []

        def run(batch: Batch) -> None:
            now = time.monotonic()
            for index, item in enumerate(batch.items):
                batch.current = (index, now)
                if batch.abandoned:
                    break
                ran.append(item)
                if item == 2:
                    gate.wait(10)
                batch.outcomes.append(SUCCESS)
                now = time.monotonic()
            loop.call_soon_threadsafe(batch.finish)

        batch = Batch([0, 1, 2, 3, 4], "send_mail_handler", loop.create_future())
        batch.work = pool.submit(run, batch)
        watched.batch = batch
        while not batch.done.done():
            await asyncio.sleep(0.05)
            watched.expire(time.monotonic())
        results = batch.results(watched.timeout)
        assert [r.success for r in results] == [True, True, False]
        assert results[2].error_type == HandlerTimeout.__name__
        gate.set()
        assert pool.submit(lambda: "replacement").result(5) == "replacement"
        await asyncio.sleep(0.05)
        assert ran == [0, 1, 2]  # 3 and 4 never started on the stuck thread
        pool.shutdown(wait=False)

    asyncio.run(asyncio.wait_for(main(), 10))

