"""``eventyard configure``, ``topology show/verify`` and ``consume``."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.conftest import EVENTYARD, TIMEOUT, Service, wait_until
from eventyard.cli.main import app

pytestmark = pytest.mark.rabbitmq

APP = "cli.cliapp:subscribers"


def invoke(service: Service, *args: str) -> tuple[int, str, str]:
    """Run ``eventyard`` in this process against the test broker."""
    result = CliRunner(env={"RABBITMQ_URL": service.url, "COLUMNS": "200"}).invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def names(service: Service, org: str | None = None) -> list[str]:
    return ["-o", org or service.org, "-s", "registration", "--no-store"]


def test_configure_declares_what_show_lists(service: Service) -> None:
    code, out, _ = invoke(service, "configure", APP, *names(service), "--retry-ttl", "100")
    show_code, shown, _ = invoke(service, "topology", "show", APP, *names(service), "--retry-ttl", "100",
                                 "--json")

    assert code == 0 and "declared 3 exchanges, 3 queues and 4 bindings" in out
    assert show_code == 0
    topology = json.loads(shown)
    queues = service.inspector.queues(service.org)
    assert sorted(queues) == sorted(q["name"] for q in topology["queues"])
    assert queues[service.retry_queue]["x-message-ttl"] == 100
    expected_bindings = {(b["exchange"], b["queue"], b["routing_key"]) for b in topology["bindings"]}
    assert expected_bindings == service.inspector.bindings(service.org)


def test_verify_reports_ok_missing_and_mismatched(service: Service) -> None:
    service.configure()  # retry TTL 100 ms
    other = f"{service.org}x"
    try:
        ok_code, ok, _ = invoke(service, "topology", "verify", APP, *names(service), "--retry-ttl", "100")
        bad_code, bad, _ = invoke(service, "topology", "verify", APP, *names(service), "--retry-ttl", "999",
                                  "--json")
        missing_code, missing, _ = invoke(service, "topology", "verify", APP, *names(service, other),
                                          "--json")
    finally:
        service.inspector.delete_matching(other)

    assert ok_code == 0 and "OK" in ok and "bindings are not checked" in ok
    assert bad_code == 1
    report = json.loads(bad)
    assert report["bindings_checked"] is False and "AMQP cannot list them" in report["notes"][0]
    (difference,) = report["differences"]
    assert difference["name"] == service.retry_queue and difference["problem"] == "mismatch"
    assert "PRECONDITION_FAILED" in difference["detail"] and "x-message-ttl" in difference["detail"]
    assert missing_code == 1
    absent = json.loads(missing)["differences"]
    assert {d["kind"] for d in absent} == {"exchange", "queue"} and len(absent) == 6
    assert all(d["problem"] == "missing" for d in absent)
    assert service.inspector.queues(other) == {}  # verifying created nothing


def test_consume_runs_until_sigterm(service: Service, tmp_path: Path) -> None:
    log = tmp_path / "handled.txt"
    log.touch()
    process = subprocess.Popen(
        [str(EVENTYARD), "consume", APP, "-o", service.org, "-s", "registration", "--no-store",
         "--retry-ttl", "100", "--max-retries", "1"],
        env=service.env(CLIAPP_LOG=str(log)), stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        # Bound, not only declared: a queue exists a moment before its binding does.
        exchange = f"{service.org}.registration"
        wait_until(lambda: any(source == exchange for source, _, _ in
                               service.inspector.bindings(service.queue)),
                   "the consumer to declare and bind its queues")
        ids = service.publish(3)
        wait_until(lambda: len(log.read_text().split()) == 3, "3 messages handled")
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=TIMEOUT)
    finally:
        process.kill()
        process.wait(TIMEOUT)
    assert process.returncode == 0, err
    assert sorted(log.read_text().split()) == sorted(ids)
    assert "consuming" in err and "stopped" in err
