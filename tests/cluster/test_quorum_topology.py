"""Quorum topology on the three-node cluster: what RabbitMQ holds, the retry path through a
quorum retry queue, and ``topology verify`` finding a classic queue where quorum is configured.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from typer.testing import CliRunner

from eventyard import DomainEvent, MessageSubscriber, Uuid
from eventyard.cli.main import app
from eventyard.rabbitmq import (
    RabbitMqConnector,
    RabbitMqDomainEventBus,
    RabbitMqMessageConfigurer,
    RabbitMqMessageConsumer,
)
from eventyard.topology import TopologyOptions
from support.cluster import Cluster
from support.waiting import wait_until

pytestmark = pytest.mark.cluster

QUORUM = TopologyOptions(queue_type="quorum", retry_ttl_ms=100, store=False)
MAIN = "logistics.depot.1.event.crate_loaded.load_crate"


class CrateLoaded(DomainEvent):
    crate_id: Uuid


def load_crate(event: CrateLoaded) -> None:
    """The CLI's view of the application (``topology verify`` imports it)."""


def subscribers() -> list[MessageSubscriber]:
    """The application ``eventyard topology verify`` checks: one subscriber."""
    return [MessageSubscriber.from_message(CrateLoaded, [load_crate])]


def held_queues(cluster: Cluster, vhost: str) -> dict[str, dict[str, Any]]:
    """Each queue of ``vhost`` with its type, members and arguments, as RabbitMQ reports them."""
    rows = json.loads(cluster.alive()[0].ctl("list_queues", "-p", vhost, "-q", "--formatter",
                                             "json", "name", "type", "members", "arguments"))
    for row in rows:  # the JSON formatter lists arguments as [name, type, value]
        arguments = row["arguments"]
        if isinstance(arguments, list):
            row["arguments"] = {item[0]: item[-1] for item in arguments}
    return {row["name"]: row for row in rows}


def test_quorum_queues_are_replicated_and_dead_letter_at_least_once(cluster: Cluster,
                                                                    vhost: str) -> None:
    url = cluster.url.rstrip("/") + "/" + vhost
    connector = RabbitMqConnector(url)
    attempts: list[str] = []
    lock = threading.Lock()

    def fail_once(event: CrateLoaded) -> None:
        with lock:
            attempts.append(event.crate_id)
        if attempts.count(event.crate_id) == 1:
            raise RuntimeError("first attempt fails")

    fail_once.__name__ = "load_crate"
    subs = [MessageSubscriber.from_message(CrateLoaded, [fail_once])]
    try:
        configurer = RabbitMqMessageConfigurer(connector, "logistics", "depot", options=QUORUM)
        configurer.configure_subscribers(subs)
        queues = held_queues(cluster, vhost)
        main, retry = queues[MAIN], queues[f"retry.{MAIN}"]
        dead = queues[f"dead_letter.{MAIN}"]
        for row in (main, retry, dead):
            assert row["type"] == "quorum" and len(row["members"]) == 3, row
            assert row["arguments"]["x-quorum-initial-group-size"] == 3
        for row in (main, retry):  # the two that the broker dead-letters from
            assert row["arguments"]["x-dead-letter-strategy"] == "at-least-once"
            assert row["arguments"]["x-overflow"] == "reject-publish"
        assert main["arguments"]["x-delivery-limit"] > 5
        assert "x-dead-letter-strategy" not in dead["arguments"]

        consumer = RabbitMqMessageConsumer(connector, "logistics", "depot", 3, options=QUORUM)
        consumer.add_subscribers(subs)
        consumer.start()
        try:
            events = [CrateLoaded(crate_id=Uuid.v4()) for _ in range(20)]
            RabbitMqDomainEventBus(connector, "logistics", "depot").publish(events)
            # Every event fails once, waits in the quorum retry queue, comes back by TTL expiry
            # (dead-lettered at least once) and is handled the second time.
            wait_until(lambda: all(attempts.count(e.crate_id) == 2 for e in events),
                       timeout=30, what="every event back from the quorum retry queue")
        finally:
            consumer.stop()
        configurer.clear_subscribers(subs)
    finally:
        connector.close()


def test_verify_reports_a_classic_queue_where_quorum_is_configured(cluster: Cluster,
                                                                    vhost: str) -> None:
    url = cluster.url.rstrip("/") + "/" + vhost
    connector = RabbitMqConnector(url)
    configurer = RabbitMqMessageConfigurer(connector, "logistics", "depot",
                                           options=TopologyOptions(store=False))
    try:
        configurer.configure_subscribers(subscribers())  # classic, as configured before
        runner = CliRunner(env={"RABBITMQ_URL": url, "COLUMNS": "200"})
        args = ["topology", "verify", "cluster.test_quorum_topology:subscribers",
                "-o", "logistics", "-s", "depot", "--no-store", "--json"]
        classic = runner.invoke(app, args)
        quorum = runner.invoke(app, [*args, "--queue-type", "quorum"])
        configurer.clear_subscribers(subscribers())
    finally:
        connector.close()

    assert classic.exit_code == 0, classic.stdout
    assert quorum.exit_code == 1, quorum.stdout
    differences = json.loads(quorum.stdout)["differences"]
    assert {d["name"] for d in differences} == {MAIN, f"retry.{MAIN}", f"dead_letter.{MAIN}"}
    for difference in differences:
        assert difference["problem"] == "mismatch"
        assert difference["detail"].startswith("not a quorum queue, as configured")
        assert "inequivalent arg 'x-queue-type'" in difference["detail"]
