"""A requeue stopped half-way loses nothing and duplicates nothing."""

from __future__ import annotations

import asyncio
import signal
import subprocess

import pytest

from cli.conftest import EVENTYARD, LEGACY, TIMEOUT, Service, wait_until
from eventyard.rabbitmq import dead_letters
from eventyard.rabbitmq.dead_letters import Step
from eventyard.rabbitmq.inspection import connect
from eventyard.rabbitmq.settings import settings_from

pytestmark = pytest.mark.rabbitmq

COUNT = 10
LONG_TTL_MS = 600_000  # requeued copies wait in the retry queue, where they can be counted


def assert_each_once(service: Service, ids: list[str]) -> tuple[list[str], list[str]]:
    """Every id is in the dead-letter queue or on its way back (retry queue), exactly once."""
    on_the_way = service.take_ids(service.retry_queue)
    left = service.take_ids(service.dead_letter_queue)
    assert sorted(on_the_way + left) == sorted(ids), "a message was lost or duplicated"
    return on_the_way, left


@pytest.mark.parametrize("cancel_soon", [False, True], ids=["between-messages", "mid-message"])
def test_cancelled_requeue_keeps_every_message_once(service: Service, cancel_soon: bool) -> None:
    service.retry_ttl_ms = LONG_TTL_MS
    ids = service.dead_letter(COUNT, max_retries=0)
    steps: list[Step] = []

    async def requeue_and_cancel() -> None:
        task: asyncio.Task[dead_letters.Report] | None = None

        def on_step(step: Step) -> None:
            steps.append(step)
            if len(steps) == 4 and task is not None:
                if cancel_soon:  # lands on whatever the run awaits next, possibly a move in flight
                    asyncio.get_running_loop().call_soon(task.cancel)
                else:
                    task.cancel()

        async with connect(settings_from(service.url)) as connection:
            task = asyncio.ensure_future(dead_letters.requeue(
                connection, service.org, "registration", [service.dead_letter_queue], on_step=on_step))
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, TIMEOUT)

    asyncio.run(requeue_and_cancel())

    on_the_way, left = assert_each_once(service, ids)
    requeued = [s.message_id for s in steps if s.outcome == "requeued"]
    assert on_the_way[:len(requeued)] == requeued
    assert len(on_the_way) in (len(requeued), len(requeued) + 1)  # + the move in hand when cancelled
    assert left


def test_killed_requeue_process_keeps_every_message_once(service: Service) -> None:
    service.retry_ttl_ms = LONG_TTL_MS
    ids = service.dead_letter(COUNT, max_retries=0)
    process = subprocess.Popen(
        [str(LEGACY), "--requeue", "-o", service.org, "-s", "registration",
         "-cq", service.dead_letter_queue, "-wtr", "0.5"],
        env=service.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        printed = []
        while len(printed) < 3:
            line = process.stdout.readline()
            assert line, f"the requeue ended early: {process.stderr.read() if process.stderr else ''}"
            printed.append(line)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(TIMEOUT)
        if process.stdout:
            process.stdout.close()
        if process.stderr:
            process.stderr.close()

    on_the_way, left = assert_each_once(service, ids)
    assert len(on_the_way) >= 3 and left


def test_connection_cut_mid_requeue_is_one_error_line_and_loses_nothing(service: Service) -> None:
    from support.tcpproxy import TcpProxy

    service.retry_ttl_ms = LONG_TTL_MS
    ids = service.dead_letter(COUNT, max_retries=0)
    proxy = TcpProxy(service.url)
    env = {**service.env(), "RABBITMQ_URL": proxy.url()}
    process = subprocess.Popen(
        [str(EVENTYARD), "dlq", "requeue", "-o", service.org, "-s", "registration",
         "-q", service.dead_letter_queue, "--wait", "0.3"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: service.count(service.retry_queue) >= 2, "two messages requeued")
        assert proxy.cut() >= 1
        _, stderr = process.communicate(timeout=TIMEOUT)
    finally:
        process.kill()
        process.wait(TIMEOUT)
        proxy.close()

    assert process.returncode == 1, stderr
    assert "Traceback" not in stderr, stderr
    flat = " ".join(stderr.split())
    assert "Error: the connection to RabbitMQ failed during a requeue of" in flat
    assert "requeued before that; every other one is still in its dead-letter queue" in flat
    on_the_way = service.take_ids(service.retry_queue)
    left = service.take_ids(service.dead_letter_queue)
    assert set(on_the_way + left) == set(ids), "a message was lost"
    assert len(on_the_way) + len(left) - len(ids) <= 1  # only a cut between confirm and ack repeats one
    assert len(on_the_way) >= 2 and left
