"""A store left by the older layout (its retry queue dead-lettered to a service's exchange)."""

from __future__ import annotations

import asyncio

import aiormq
import pytest
from typer.testing import CliRunner

from eventyard import TopologyMismatchError
from eventyard.cli.main import app
from eventyard.rabbitmq import RabbitMqConnector, RabbitMqMessageConfigurer
from support.broker import RabbitBroker
from support.vhost import own_vhost

pytestmark = pytest.mark.rabbitmq

APP = "cli.cliapp:subscribers"


async def declare_old_store(url: str) -> None:
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        await channel.queue_declare("retry.store", durable=True, arguments={
            "x-message-ttl": 5000, "x-dead-letter-exchange": "acme.registration",
            "x-dead-letter-routing-key": "retry.store"})
    finally:
        await connection.close()


def test_verify_and_configure_explain_how_to_move_an_old_store(rabbit: RabbitBroker) -> None:
    with own_vhost(rabbit) as broker:
        asyncio.run(declare_old_store(broker.url))

        result = CliRunner(env={"RABBITMQ_URL": broker.url, "COLUMNS": "200"}).invoke(
            app, ["topology", "verify", APP, "-o", "acme", "-s", "registration", "--json"])

        assert result.exit_code == 1, result.output
        assert '"name": "retry.store"' in result.stdout
        assert "older eventyard" in result.stdout and "delete_queue retry.store" in result.stdout
        connector = RabbitMqConnector(broker.url)
        try:
            with pytest.raises(TopologyMismatchError, match="topology verify"):
                RabbitMqMessageConfigurer(connector, "acme", "registration").configure()
        finally:
            connector.close()
        assert broker.inspector.queues("retry.store")["retry.store"]["x-dead-letter-exchange"] == \
            "acme.registration"  # reported, never changed
