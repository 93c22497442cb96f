"""A small chaos soak on RabbitMQ: nacks, failures and dropped connections lose no message."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from eventyard.cli.main import app as cli
from eventyard.rabbitmq import RabbitMqConnector
from eventyard.soak import SoakReport, run_soak
from support.broker import RabbitBroker
from support.soaking import assert_fleet_accounted_for

pytestmark = pytest.mark.rabbitmq

EVENTS = 300


@pytest.fixture
def connector(rabbit: RabbitBroker, org: str) -> Iterator[RabbitMqConnector]:
    connector = RabbitMqConnector(rabbit.url)
    try:
        yield connector
    finally:
        connector.close()
        rabbit.inspector.delete_matching(org)


def assert_nothing_lost(report: SoakReport, events: int) -> None:
    assert report.quiet, "the soak never went quiet"
    assert report.lost == 0
    for sub in report.subscribers:
        assert sub.lost == sub.pending == sub.unexpected == 0, sub
        # handled | dead-lettered == published, counted by message id
        assert sub.handled + sub.dead_lettered - sub.handled_and_dead_lettered == sub.published, sub
        assert sub.observed_dead_lettered <= sub.dead_lettered, sub
        if not sub.protected:
            assert sub.published == events
    assert report.ok


def test_soak_with_nacks_failures_and_drops_loses_nothing(
        connector: RabbitMqConnector, rabbit: RabbitBroker, org: str) -> None:
    report = run_soak(connector, events=EVENTS, subscribers=3, nack=0.2, failure=0.25, drops=2,
                      seed=11, max_retries=2, retry_ttl_ms=100, organization=org, timeout=120)

    assert_nothing_lost(report, EVENTS)
    assert report.drops_done == 2
    plain = [s for s in report.subscribers if not s.protected]
    assert len(plain) == 3
    assert all(s.chaos_nacks > 0 and s.chaos_failures > 0 and s.retried > 0 for s in plain)
    assert sum(s.dead_lettered for s in plain) > 0, "max_retries=2 should dead-letter some"
    assert rabbit.inspector.queues(org) == {}, "the soak cleans up what it declared"
    assert rabbit.inspector.exchanges(org) == {}


def test_protected_routing_keys_see_no_chaos_even_on_retries(
        connector: RabbitMqConnector, org: str) -> None:
    report = run_soak(connector, events=100, subscribers=1, nack=0.5, failure=0.5, drops=0,
                      seed=5, max_retries=3, retry_ttl_ms=50, protected_events=50,
                      organization=org, timeout=120)

    assert_nothing_lost(report, 100)
    (protected,) = [s for s in report.subscribers if s.protected]
    assert protected.published == 50
    assert protected.chaos_nacks == protected.chaos_failures == 0
    assert protected.retried == 5  # its own failures (every 10th event, once) are retried...
    assert protected.handled == 50 and protected.dead_lettered == 0  # ...and chaos never adds any


def test_cli_soak_prints_json_and_keeps_topology_on_request(
        rabbit: RabbitBroker, org: str) -> None:
    try:
        result = CliRunner().invoke(cli, [
            "chaos", "soak", "--url", rabbit.url, "-n", "60", "-k", "2", "--drops", "1",
            "--retry-ttl", "50", "--seed", "3", "--keep", "--json", "-o", org])
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert data["ok"] is True and data["lost"] == 0 and data["kept"] is True
        assert [s["published"] for s in data["subscribers"]] == [60, 60, 6]
        assert data["organization"] == org
        assert rabbit.inspector.queues(org), "--keep leaves the queues"
    finally:
        rabbit.inspector.delete_matching(org)


def test_cli_soak_renders_a_table(rabbit: RabbitBroker, org: str) -> None:
    try:
        result = CliRunner().invoke(cli, [
            "chaos", "soak", "--url", rabbit.url, "-n", "30", "-k", "1", "--drops", "0",
            "--retry-ttl", "50", "-o", org], env={"COLUMNS": "160"})
        assert result.exit_code == 0, result.output
        assert "soak_handler_1" in result.stdout and "protected_handler *" in result.stdout
        assert "protected routing key" in result.stdout
        assert "OK" in result.stdout
        assert rabbit.inspector.queues(org) == {}
    finally:
        rabbit.inspector.delete_matching(org)


def test_fleet_soak_three_services_one_store_loses_nothing(
        connector: RabbitMqConnector, rabbit: RabbitBroker, org: str) -> None:
    report = run_soak(connector, services=3, events=EVENTS, subscribers=2, nack=0.2,
                      failure=0.25, drops=1, seed=13, max_retries=2, retry_ttl_ms=100,
                      organization=org, timeout=120)

    assert_fleet_accounted_for(report, EVENTS, 2)
    assert report.store_queue == f"store_{org}"  # never the vhost's `store` of another org
    assert [s.drops_done for s in report.services] == [1, 1, 1]
    assert sum(s.dead_lettered for s in report.services) > 0, "max_retries=2 should dead-letter"
    assert rabbit.inspector.queues(org) == {}, "the soak deletes every service's queues"
    assert rabbit.inspector.exchanges(org) == {}


def test_cli_fleet_soak_binds_one_store_to_every_service(rabbit: RabbitBroker, org: str) -> None:
    try:
        result = CliRunner().invoke(cli, [
            "chaos", "soak", "--url", rabbit.url, "--services", "3", "-n", "40", "-k", "1",
            "--drops", "1", "--retry-ttl", "50", "--seed", "4", "--keep", "--json", "-o", org])
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert data["ok"] is True and data["lost"] == 0
        assert [(s["service"], s["emitted"], s["published"], s["lost"])
                for s in data["services"]] == [
            ("soak1", 44, 40 + 4 + 3 * 44, 0), ("soak2", 44, 40 + 4 + 40, 0),
            ("soak3", 44, 40 + 4 + 40, 0)]
        store = f"store_{org}"
        bound = {(exchange, key) for exchange, queue, key in rabbit.inspector.bindings(store)
                 if queue == store}
        assert {(f"{org}.soak{i}", "*.*.*.event.*") for i in (1, 2, 3)} <= bound
        queues = rabbit.inspector.queues(org)
        assert queues[store]["x-dead-letter-exchange"] == f"dead_letter.{org}.store"
        assert queues[f"retry.{store}"]["x-dead-letter-exchange"] == f"retry.{org}.store"
    finally:
        rabbit.inspector.delete_matching(org)
