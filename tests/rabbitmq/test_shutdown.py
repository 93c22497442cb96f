"""Shutdown is bounded: a process whose sync handler hangs still exits after SIGTERM (issue 10).

The consumer runs in a process of its own, as a service would. Its handler never returns; on
SIGTERM the consumer stops taking messages, waits ``shutdown_timeout`` (1 s here) for the
handler, gives up on it and the process exits; the message, never acked, is back in its queue.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from contract.samples import UserCreated
from eventyard import MessageSubscriber, Uuid
from eventyard.rabbitmq import RabbitMqConnector, RabbitMqDomainEventBus, RabbitMqMessageConfigurer
from eventyard.topology import TopologyOptions
from support.broker import RabbitBroker
from support.waiting import wait_until

pytestmark = pytest.mark.rabbitmq

SHUTDOWN_TIMEOUT = 1.0
MARGIN = 10.0  # starting the interpreter, closing connections: generous on a busy machine
SERVICE = "shutdown"

SCRIPT = textwrap.dedent('''
    import sys
    import threading

    from eventyard import ConsumerSettings, DomainEvent, MessageSubscriber, Uuid
    from eventyard.rabbitmq import RabbitMqConnector, RabbitMqMessageConsumer


    class UserCreated(DomainEvent):
        user_id: Uuid


    _printing = threading.Lock()


    def say(line: str) -> None:
        # Handler threads and the main thread print: one whole line at a time.
        with _printing:
            sys.stdout.write(line + "\\n")
            sys.stdout.flush()


    def hang_handler(event: UserCreated) -> None:
        if event.get_meta().get("do") != "hang":
            say(f"handled {event.get_message_id()}")
            return
        say("handling")
        threading.Event().wait()  # hangs for ever


    printing = threading.Lock()


    def slow_handler(event: UserCreated) -> None:
        threading.Event().wait(0.02)  # the handler's own work
        with printing:  # four threads: one whole line each
            say(f"handled {event.get_message_id()}")


    url, organization, mode = sys.argv[1:4]
    connector = RabbitMqConnector(url)
    concurrent = mode == "concurrent"
    consumer = RabbitMqMessageConsumer(connector, organization, "shutdown", 0, settings=ConsumerSettings(
        shutdown_timeout=1.0 if not concurrent else 30.0, store_queue=f"store.{organization}",
        concurrency=4 if concurrent else 1, prefetch=10))
    handler = slow_handler if concurrent else hang_handler
    consumer.add_subscribers([MessageSubscriber.from_message(UserCreated, [handler])])
    if mode in ("run", "concurrent"):
        say("consuming")
        consumer.run()  # until SIGTERM
        connector.close()
        say("stopped")
    else:
        consumer.start()
        say("consuming")
        # the script ends here; the consumer keeps the process alive until SIGTERM
''')


class Lines:
    """The lines a process prints, read on a thread of their own."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert process.stdout is not None
        self._thread = threading.Thread(target=self._read, args=(process.stdout,), daemon=True)
        self._thread.start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.lines.append(line.strip())


@pytest.fixture
def organization(rabbit: RabbitBroker) -> Iterator[str]:
    name = f"t{uuid.uuid4().hex[:10]}"
    connector = RabbitMqConnector(rabbit.url)
    subscribers = [MessageSubscriber.from_message(UserCreated, list(handler_stubs()))]
    configurer = RabbitMqMessageConfigurer(connector, name, SERVICE,
                                           options=TopologyOptions(store_queue=f"store.{name}"))
    configurer.configure_subscribers(subscribers)
    try:
        yield name
    finally:
        configurer.clear_subscribers(subscribers)
        connector.close()
        rabbit.inspector.delete_matching(name)


def handler_stubs() -> tuple[object, object]:
    """Handlers named as the script's, so the test declares the queues the script consumes."""
    def hang_handler(event: UserCreated) -> None:
        return None

    def slow_handler(event: UserCreated) -> None:
        return None
    return hang_handler, slow_handler


@pytest.mark.parametrize("mode", ["run", "start"], ids=["consumer.run()", "consumer.start() then the end"])
def test_a_hung_sync_handler_does_not_keep_the_process_alive_after_sigterm(
        rabbit: RabbitBroker, organization: str, tmp_path: Path, mode: str) -> None:
    script = tmp_path / "service.py"
    script.write_text(SCRIPT)
    # Three handled, then one that hangs, then two more: waiting in the queue, they reach the
    # sync handler in one batch.
    events = [UserCreated(user_id=Uuid.v4()).with_meta({"do": "hang" if i == 3 else "ok"})
              for i in range(6)]
    with RabbitMqConnector(rabbit.url) as connector:
        RabbitMqDomainEventBus(connector, organization, SERVICE).publish(events)
    process = subprocess.Popen([sys.executable, str(script), rabbit.url, organization, mode],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = Lines(process)
        wait_until(lambda: "handling" in lines.lines, timeout=30, what="the handler to start")
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=SHUTDOWN_TIMEOUT + MARGIN)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the process did not exit within {SHUTDOWN_TIMEOUT + MARGIN}s of SIGTERM "
                        f"(printed {lines.lines})")
        took = time.monotonic() - sent
        assert process.returncode == 0, process.stderr.read() if process.stderr else ""
        assert took >= SHUTDOWN_TIMEOUT  # it did wait for the handler first
        if mode == "run":
            assert lines.lines[-1:] == ["stopped"] or "stopped" in lines.lines
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    queue = f"{organization}.{SERVICE}.1.event.user_created.hang_handler"
    # The hung one was never acked, nor those after it: back in the queue for the next consumer;
    # the three handled before it were acked, though their batch never finished.
    assert [line for line in lines.lines if line.startswith("handled")] == [
        f"handled {event.get_message_id()}" for event in events[:3]]
    wait_until(lambda: rabbit.inspector.count(queue) == 3, timeout=10,
               what="three messages back in the queue")
    left = [json.loads(body)["data"]["id"] for body, _, _ in rabbit.inspector.take(queue)]
    assert left == [event.get_message_id() for event in events[3:]]


def test_a_graceful_stop_at_concurrency_4_acks_every_handled_message(
        rabbit: RabbitBroker, organization: str, tmp_path: Path) -> None:
    """SIGTERM after some messages were handled, four at a time: each handled one was acked
    before the process exited (none comes back), every other one is back in the queue."""
    script = tmp_path / "service.py"
    script.write_text(SCRIPT)
    queue = f"{organization}.{SERVICE}.1.event.user_created.slow_handler"
    events = [UserCreated(user_id=Uuid.v4()) for _ in range(200)]
    with RabbitMqConnector(rabbit.url) as connector:
        RabbitMqDomainEventBus(connector, organization, SERVICE).publish(events)
    process = subprocess.Popen([sys.executable, str(script), rabbit.url, organization, "concurrent"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = Lines(process)
        wait_until(lambda: sum(line.startswith("handled") for line in lines.lines) >= 20, timeout=30,
                   what="20 messages handled")
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        assert process.returncode == 0, process.stderr.read() if process.stderr else ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    handled = {line.split()[1] for line in lines.lines if line.startswith("handled")}
    assert 20 <= len(handled) < len(events)
    expected = len(events) - len(handled)
    with contextlib.suppress(AssertionError):  # the sets below say what went wrong
        wait_until(lambda: rabbit.inspector.count(queue) == expected, timeout=10,
                   what=f"{expected} messages back in the queue")
    left = {json.loads(body)["data"]["id"] for body, _, _ in rabbit.inspector.take(queue)}
    assert not left & handled, f"{len(left & handled)} handled messages came back"
    assert left | handled == {event.get_message_id() for event in events}
