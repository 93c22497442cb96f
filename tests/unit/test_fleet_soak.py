"""The fleet soak on the in-memory broker: several services, cross-service subscribers, one store."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from eventyard.cli.main import app as cli
from eventyard.errors import ConfigurationError
from eventyard.memory import MemoryBroker
from eventyard.soak import run_soak
from support.soaking import assert_fleet_accounted_for

SERVICES = 3
EVENTS = 300


def test_fleet_soak_on_the_memory_broker_loses_nothing() -> None:
    with MemoryBroker() as broker:
        report = run_soak(broker, services=SERVICES, events=EVENTS, subscribers=2, nack=0.2,
                          failure=0.25, drops=2, seed=2, max_retries=2, retry_ttl_ms=20,
                          timeout=60)
        assert broker.queue_names() == [], "the soak deletes every service's queues"

    assert_fleet_accounted_for(report, EVENTS, 2)
    assert report.drops_requested == report.drops_done == 2 * SERVICES
    assert all(s.drops_requested == s.drops_done == 2 for s in report.services)
    assert sum(s.dead_lettered for s in report.services) > 0, "max_retries=2 dead-letters some"
    assert report.settings["services"] == SERVICES


def test_one_service_keeps_the_single_service_report() -> None:
    with MemoryBroker() as broker:
        report = run_soak(broker, events=40, subscribers=2, nack=0.1, failure=0.1, drops=1,
                          seed=3, retry_ttl_ms=20, timeout=60)

    assert report.ok and report.service == "soak" and report.store_queue is None
    assert [s.handler for s in report.subscribers] == [
        "soak_handler_1", "soak_handler_2", "protected_handler"]
    assert not any(s.store or s.publisher for s in report.subscribers)
    (service,) = report.services
    assert (service.service, service.emitted, service.published) == ("soak", 44, 84)
    data = report.to_dict()
    assert [s["published"] for s in data["subscribers"]] == [40, 40, 4]
    assert data["drops_requested"] == data["drops_done"] == 1


@pytest.mark.parametrize("services", [0, -1, True, 1.5])
def test_a_soak_needs_at_least_one_service(services: object) -> None:
    with MemoryBroker() as broker:
        with pytest.raises(ConfigurationError, match="at least 1 service"):
            run_soak(broker, services=services, events=10)
        assert broker.queue_names() == []


def test_cli_fleet_soak_prints_per_service_json() -> None:
    result = CliRunner().invoke(cli, [
        "chaos", "soak", "--memory", "--services", "3", "-n", "60", "-k", "1", "--drops", "1",
        "--retry-ttl", "20", "--seed", "5", "--json"])

    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["ok"] is True and data["lost"] == 0
    assert data["store_queue"] == f"store_{data['organization']}"
    assert [(s["service"], s["emitted"], s["published"], s["lost"], s["ok"])
            for s in data["services"]] == [
        ("soak1", 66, 60 + 6 + 3 * 66, 0, True), ("soak2", 66, 60 + 6 + 60, 0, True),
        ("soak3", 66, 60 + 6 + 60, 0, True)]
    for service in data["services"]:
        assert service["drops_done"] == 1
        assert (service["handled"] + service["dead_lettered"]
                - service["handled_and_dead_lettered"] == service["published"])
    assert [s["handler"] for s in data["subscribers"] if s["service"] == "soak2"] == [
        "soak_handler_1", "protected_handler", "cross_soak2"]


def test_cli_fleet_soak_table_fits_80_columns() -> None:
    result = CliRunner().invoke(cli, [
        "chaos", "soak", "--memory", "--services", "3", "-n", "1000", "-k", "1",
        "--nack", "0.05", "--failure", "0.05", "--drops", "1", "--retry-ttl", "20",
        "--seed", "6"], env={"COLUMNS": "80"})

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80
    header = next(line for line in lines if line.startswith("service"))
    assert header.split() == ["service", "emitted", "sent", "handled", "retried", "dead", "dup",
                              "lost", "drops"]
    assert any(line.split()[:3] == ["soak1", "1100", str(1000 + 100 + 3300)] for line in lines)
    assert any(line.strip().startswith("cross_soak3 (soak2)") for line in lines)
    assert any(line.strip().startswith("store_handler") for line in lines)
    assert "OK" in result.stdout
