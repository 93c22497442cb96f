"""``--log-level`` and ``--log-json`` on ``eventyard consume`` and ``eventyard-rabbitmq``."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest

from cli.cliapp import UserCreated
from cli.conftest import EVENTYARD, LEGACY, ROOT, TIMEOUT, Service, wait_until
from eventyard import Uuid
from eventyard.rabbitmq import RabbitMqDomainEventBus
from observability.conftest import Lines

pytestmark = pytest.mark.rabbitmq


def test_consume_logs_every_outcome_as_json_lines(service: Service) -> None:
    process = subprocess.Popen(
        [str(EVENTYARD), "consume", "cli.cliapp:subscribers", "-o", service.org, "-s",
         "registration", "--max-retries", "1", "--retry-ttl", "100", "--store-queue",
         f"store.{service.org}", "--log-level", "info", "--log-json"],
        env=service.env(CLIAPP_FAIL="1"), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
        text=True, cwd=ROOT)
    try:
        assert process.stderr is not None
        lines = Lines(process.stderr)
        wait_until(lambda: any('"consuming 1 queue(s)' in line for line in lines.lines),
                   "the consumer to start")
        event = UserCreated(user_id=Uuid.v4())
        RabbitMqDomainEventBus(service.connector, service.org, "registration").publish(event)
        wait_until(lambda: any('"dead_lettered"' in line for line in lines.lines),
                   "the dead letter's line")
        process.send_signal(signal.SIGTERM)
        process.wait(TIMEOUT)
        lines.join()
    finally:
        process.kill()
        process.wait(TIMEOUT)

    documents = [json.loads(line) for line in lines.lines if line.startswith("{")]
    outcomes = {d.get("outcome"): d for d in documents}
    assert outcomes["retried"]["level"] == "WARNING" and outcomes["retried"]["attempt"] == 1
    dead = outcomes["dead_lettered"]
    assert (dead["level"], dead["queue"], dead["message_id"], dead["correlation_id"],
            dead["attempt"], dead["error_type"]) == (
        "ERROR", service.queue, event.get_message_id(), event.get_message_id(), 2,
        "MailServerDown")
    assert "retrying in 100 ms" in outcomes["retried"]["message"]
    assert any(d["message"].startswith("stopped consuming") and d["level"] == "INFO"
               for d in documents)
    # Everything on stderr besides the CLI's own two lines is JSON: no traceback, no text log.
    others = [line for line in lines.lines if not line.startswith("{")]
    assert len(others) <= 2 and not any("Traceback" in line for line in others), others


def test_the_seed_command_takes_the_log_flags(service: Service) -> None:
    queue = service.dead_letter_queue
    service.dead_letter(1, max_retries=0)

    done = service.run(LEGACY, "--requeue", "-o", service.org, "-s", "registration", "-cq",
                       queue, "--dry-run", "--log-level", "debug", "--log-json")
    assert done.returncode == 0, done.stderr
    assert "would requeue 1 message" in done.stdout
    assert all(json.loads(line) for line in done.stderr.splitlines())

    wrong = service.run(LEGACY, "--requeue", "-o", service.org, "-s", "registration", "-cq",
                        queue, "--log-level", "loud")
    assert wrong.returncode == 2 and "invalid choice: 'loud'" in wrong.stderr


def test_consume_refuses_an_unknown_log_level(service: Service) -> None:
    done = service.run(EVENTYARD, "consume", "cli.cliapp:subscribers", "-o", service.org, "-s",
                       "registration", "--log-level", "loud")
    assert done.returncode == 2
    assert "--log-level 'loud' is not one of debug, info, warning, error, critical" in " ".join(
        done.stderr.split())


def test_dlq_show_prints_the_correlation_and_causation_ids(service: Service) -> None:
    service.configure()
    event = UserCreated(user_id=Uuid.v4()).with_meta({"correlation_id": "order-7",
                                                      "causation_id": "cart-3"})
    RabbitMqDomainEventBus(service.connector, service.org, "registration").publish(event)
    service.consume(fail=True, until=1, max_retries=0)
    wait_until(lambda: service.count(service.dead_letter_queue) == 1, "the dead letter")

    done = service.run(EVENTYARD, "dlq", "show", "-o", service.org, "-s", "registration", "-q",
                       service.dead_letter_queue)

    assert done.returncode == 0, done.stderr
    shown = [" ".join(line.split()) for line in done.stdout.splitlines()]
    assert "correlation id order-7" in shown and "causation id cart-3" in shown
