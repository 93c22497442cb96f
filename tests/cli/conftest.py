"""Fixtures for the CLI tests: an organisation with dead letters on the test broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cli import cliapp
from eventyard import ConsumerEvent, Uuid
from eventyard.rabbitmq import (
    RabbitMqConnector,
    RabbitMqDomainEventBus,
    RabbitMqMessageConfigurer,
    RabbitMqMessageConsumer,
)
from eventyard.topology import TopologyOptions
from support.broker import Inspector, RabbitBroker

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
LEGACY = Path(sys.executable).with_name("eventyard-rabbitmq")
EVENTYARD = Path(sys.executable).with_name("eventyard")
TIMEOUT = 30.0


def wait_until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Service:
    """One test's service on the shared broker: names, connector, helpers."""

    url: str
    org: str
    connector: RabbitMqConnector
    inspector: Inspector
    retry_ttl_ms: int = 100
    ids: list[str] = field(default_factory=list)

    @property
    def queue(self) -> str:
        """The subscriber queue ``Q``."""
        return cliapp.queue(self.org)

    @property
    def dead_letter_queue(self) -> str:
        """``dead_letter.Q``."""
        return f"dead_letter.{self.queue}"

    @property
    def retry_queue(self) -> str:
        """``retry.Q``."""
        return f"retry.{self.queue}"

    def options(self) -> TopologyOptions:
        """No store: the store queue name is shared by the whole broker."""
        return TopologyOptions(retry_ttl_ms=self.retry_ttl_ms, store=False)

    def configure(self) -> None:
        """Declare the application's topology (the seed's configurer)."""
        RabbitMqMessageConfigurer(self.connector, self.org, cliapp.SERVICE,
                                  options=self.options()).configure_subscribers(cliapp.subscribers())

    def publish(self, count: int) -> list[str]:
        """Publish ``count`` UserCreated events; return their ids."""
        events = [cliapp.UserCreated(user_id=Uuid.v4()) for _ in range(count)]
        RabbitMqDomainEventBus(self.connector, self.org, cliapp.SERVICE).publish(events)
        ids = [e.get_message_id() for e in events]
        self.ids += ids
        return ids

    def consume(self, *, fail: bool, until: int, max_retries: int = 1) -> list[str]:
        """Run a consumer until ``until`` messages were handled (or dead-lettered if ``fail``)."""
        done: list[str] = []
        enough = threading.Event()
        lock = threading.Lock()
        kind = "dead_lettered" if fail else "handled"

        def observe(event: ConsumerEvent) -> None:
            if event.kind == kind:
                with lock:
                    done.append(event.message_id or "")
                    if len(done) >= until:
                        enough.set()

        consumer = RabbitMqMessageConsumer(self.connector, self.org, cliapp.SERVICE, max_retries,
                                           observers=[observe])
        consumer.add_subscribers([cliapp.MessageSubscriber.from_message(
            cliapp.UserCreated, [cliapp.mail_handler(fail=fail)])])
        consumer.start()
        try:
            assert enough.wait(TIMEOUT), f"only {len(done)} of {until} messages were {kind}"
        finally:
            consumer.stop()
        return done

    def dead_letter(self, count: int, max_retries: int = 1) -> list[str]:
        """Configure, publish ``count`` events and let a failing consumer dead-letter them all."""
        self.configure()
        ids = self.publish(count)
        self.consume(fail=True, until=count, max_retries=max_retries)
        wait_until(lambda: self.count(self.dead_letter_queue) == count, f"{count} dead letters")
        return ids

    def count(self, queue: str) -> int:
        """Ready messages in ``queue``."""
        return self.inspector.count(queue)

    def take_ids(self, queue: str) -> list[str]:
        """Remove every message of ``queue``; return their message ids (repeats kept)."""
        return [json.loads(body)["data"]["id"] for body, _, _ in self.inspector.take(queue)]

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a CLI process: the broker in RABBITMQ_URL, the tests importable."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}
        env.update(RABBITMQ_URL=self.url, PYTHONPATH=str(TESTS), COLUMNS="200")
        env.update(extra)
        return env

    def run(self, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
        """Run a console script (``LEGACY`` or ``EVENTYARD`` first) and capture its output."""
        return subprocess.run([str(a) for a in args], env=self.env(**extra_env), capture_output=True,
                              text=True, timeout=120, cwd=ROOT)


@pytest.fixture
def service(rabbit: RabbitBroker, org: str) -> Iterator[Service]:
    """A service of ``org`` on the test broker; deletes what it declared."""
    connector = RabbitMqConnector(rabbit.url)
    try:
        yield Service(rabbit.url, org, connector, rabbit.inspector)
    finally:
        connector.close()
        rabbit.inspector.delete_matching(org)
