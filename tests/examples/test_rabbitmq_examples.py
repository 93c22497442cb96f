"""The seed's example scripts run as the seed shows, against the test broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from support.broker import RabbitBroker
from support.waiting import wait_until

pytestmark = pytest.mark.rabbitmq

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "rabbitmq"


def example_env(rabbit: RabbitBroker, org: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(RABBITMQ_URL=rabbit.url, EXAMPLE_ORGANIZATION=org,
               EXAMPLE_STORE_QUEUE=f"store.{org}", EXAMPLE_RETRY_TTL_MS="200")
    return env


def run(script: str, env: dict[str, str]) -> str:
    result = subprocess.run([sys.executable, str(EXAMPLES / script)], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


HANDLERS = ("send_mail_on_user_created", "send_sms_on_user_confirmed", "persist_user")


def handler_runs(lines: list[str]) -> dict[str, int]:
    """How many times each handler printed (the store's handler sees 6 events and 3 commands).

    Counted in the whole output, not line by line: handlers on two threads can print at once, and
    ``print`` writes its text and its newline separately, so two reports can share a line.
    """
    output = "".join(lines)
    return {name: output.count(f"{name}:") for name in (*HANDLERS, "event_store")}


def test_configure_publish_dispatch_then_consume(rabbit: RabbitBroker, org: str) -> None:
    env = example_env(rabbit, org)
    try:
        assert "configured" in run("configure.py", env)
        assert run("publish_domain_events.py", env).count("published") == 3
        assert run("dispatch_commands.py", env).count("dispatched") == 3

        consumer = subprocess.Popen([sys.executable, str(EXAMPLES / "consume.py")], env=env,
                                    stdout=subprocess.PIPE, text=True)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(consumer.stdout.readline, "")),  # type: ignore[union-attr]
                                  daemon=True)
        reader.start()
        try:
            # At least once each; the exact counts are checked after, with the lines in the message.
            expected = dict.fromkeys(HANDLERS, 3) | {"event_store": 9}
            wait_until(lambda: all(handler_runs(lines)[name] >= runs for name, runs in expected.items()),
                       timeout=30, what=lambda: f"each handler to run 3 times, the store 9: {lines}")
            assert handler_runs(lines) == expected, lines
        finally:
            consumer.send_signal(signal.SIGTERM)
            assert consumer.wait(30) == 0
        reader.join(5)
        assert lines[-1].strip() == "stopped"
    finally:
        rabbit.inspector.delete_matching(org)
