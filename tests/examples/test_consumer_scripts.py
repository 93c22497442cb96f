"""A script that ends after ``consumer.start()`` keeps consuming until a signal or ``stop()``.

Each test runs a script of its own (in-memory broker) and watches it from outside: when it
exits, with which status, and what its handler printed.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from support.scripts import Script, catches
from support.vhost import clean_env
from support.waiting import wait_until

SCRIPT = """\
import sys
import threading

from eventyard import DomainEvent, MessageSubscriber
from eventyard.memory import MemoryBroker, MemoryDomainEventBus, MemoryMessageConsumer

class Pinged(DomainEvent):
    number: int

def on_ping(event: Pinged) -> None:
    print("begun", event.number, flush=True)
    if MODE in ("slow", "hung"):
        sys.stdin.readline()  # until the test writes a line (never, when hung)
    print("handled", event.number, flush=True)

MODE = sys.argv[1]
broker = MemoryBroker()
consumer = MemoryMessageConsumer(broker, "acme", "registration")
consumer.add_subscribers([MessageSubscriber.from_message(Pinged, [on_ping])])
bus = MemoryDomainEventBus(broker, "acme", "registration")
if MODE == "other-thread":
    starter = threading.Thread(target=consumer.start)
    starter.start()
    starter.join()
else:
    consumer.start()
bus.publish(Pinged(number=1))
if MODE == "stop-from-a-thread":
    def stop_once_handled() -> None:
        broker.wait_until_idle(10)
        consumer.stop()
    threading.Thread(target=stop_once_handled).start()
if MODE == "stop-before-the-end":
    broker.wait_until_idle(10)
    consumer.stop()
if MODE == "crash":
    raise RuntimeError("the script failed after start()")
"""


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "consume.py"
    path.write_text(SCRIPT)
    return path


def run(script: Path, mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(script), mode], env=clean_env(), capture_output=True,
                          text=True, timeout=30)


@pytest.mark.parametrize("mode", ["stop-from-a-thread", "stop-before-the-end"])
def test_stop_ends_the_script_with_status_0(script: Path, mode: str) -> None:
    result = run(script, mode)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["begun 1", "handled 1"]


@pytest.mark.parametrize("stop_with", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_lets_the_running_handler_finish_then_exits_0(script: Path,
                                                             stop_with: signal.Signals) -> None:
    consumer = Script(script, clean_env(), "slow")
    try:
        consumer.wait_held()
        wait_until(lambda: consumer.stdout == ["begun 1\n"], what="the handler to begin")
        consumer.process.send_signal(stop_with)
        # The handler is still running: the process waits for it.
        wait_until(lambda: not catches(consumer.process.pid, signal.SIGTERM), what="the signal taken")
        assert consumer.process.poll() is None
        consumer.write("go on")
        assert consumer.finish(15) == 0, consumer.output()
    finally:
        consumer.kill()
    assert consumer.stdout == ["begun 1\n", "handled 1\n"]
    assert "Traceback" not in consumer.output()


def test_a_second_signal_exits_at_once(script: Path) -> None:
    consumer = Script(script, clean_env(), "hung")
    try:
        consumer.wait_held()
        wait_until(lambda: consumer.stdout == ["begun 1\n"], what="the handler to begin")
        consumer.process.send_signal(signal.SIGTERM)
        wait_until(lambda: not catches(consumer.process.pid, signal.SIGTERM), what="the signal taken")
        consumer.process.send_signal(signal.SIGTERM)
        assert consumer.finish(10) == -signal.SIGTERM
    finally:
        consumer.kill()


def test_a_script_that_fails_after_start_exits_with_its_error(script: Path) -> None:
    result = run(script, "crash")
    assert result.returncode == 1
    assert "RuntimeError: the script failed after start()" in result.stderr


def test_a_consumer_started_on_another_thread_does_not_hold_the_process(script: Path) -> None:
    result = run(script, "other-thread")
    assert result.returncode == 0, result.stderr


def test_a_test_that_forgets_stop_does_not_hang_pytest(tmp_path: Path) -> None:
    test_file = tmp_path / "test_forgetful.py"
    test_file.write_text(
        "from eventyard import DomainEvent, MessageSubscriber\n"
        "from eventyard.memory import MemoryBroker, MemoryMessageConsumer\n\n"
        "class Pinged(DomainEvent):\n    number: int\n\n"
        "def on_ping(event: Pinged) -> None:\n    return None\n\n"
        "def test_starts_and_forgets() -> None:\n"
        "    consumer = MemoryMessageConsumer(MemoryBroker(), 'acme', 'registration')\n"
        "    consumer.add_subscribers([MessageSubscriber.from_message(Pinged, [on_ping])])\n"
        "    consumer.start()\n"
        "    assert consumer.is_running\n"
    )
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(test_file)], cwd=tmp_path, env=clean_env(), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout
    assert "1 passed" in result.stdout

