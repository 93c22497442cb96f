"""The CLI finds and requeues the dead letters of a subscriber to another service's message."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cli.billingapp import subscribers
from cli.cliapp import UserCreated
from cli.conftest import wait_until
from eventyard import TopologyOptions, Uuid
from eventyard.cli.main import app
from eventyard.rabbitmq import (
    RabbitMqConnector,
    RabbitMqDomainEventBus,
    RabbitMqMessageConfigurer,
    RabbitMqMessageConsumer,
)
from support.broker import RabbitBroker

pytestmark = pytest.mark.rabbitmq


def test_dead_letters_of_a_cross_service_subscriber_are_listed_and_requeued(
        rabbit: RabbitBroker, org: str) -> None:
    queue = f"{org}.registration.1.event.user_created.charge"
    dead = f"dead_letter.{queue}"
    connector = RabbitMqConnector(rabbit.url)
    try:
        RabbitMqMessageConfigurer(connector, org, "billing", options=TopologyOptions(
            retry_ttl_ms=100, store=False)).configure_subscribers(subscribers)
        consumer = RabbitMqMessageConsumer(connector, org, "billing", 0)  # no retries: dead at once
        consumer.add_subscribers(subscribers)
        consumer.start()
        RabbitMqDomainEventBus(connector, org, "registration").publish(UserCreated(user_id=Uuid.v4()))
        wait_until(lambda: rabbit.inspector.count(dead) == 1, "the dead letter")
        consumer.stop()

        cli = CliRunner(env={"RABBITMQ_URL": rabbit.url, "COLUMNS": "250"})
        listed = cli.invoke(app, ["dlq", "list", "-o", org, "-s", "billing",
                                  "--app", "cli.billingapp:subscribers", "--no-store"])
        assert listed.exit_code == 0, listed.output
        assert dead in listed.stdout

        moved = cli.invoke(app, ["dlq", "requeue", "-o", org, "-s", "billing", "-q", dead])
        assert moved.exit_code == 0, moved.output
        wait_until(lambda: rabbit.inspector.count(queue) == 1, "the requeued message")  # via registration
        assert rabbit.inspector.count(dead) == 0
    finally:
        connector.close()
        rabbit.inspector.delete_matching(org)
