"""Fixtures for tests against a real RabbitMQ: a connector, unique names, cleanup."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from eventyard.rabbitmq import RabbitMqConnector
from eventyard.topology import TopologyOptions
from support.broker import RabbitBroker

pytestmark = pytest.mark.rabbitmq


@dataclass
class RabbitApp:
    """One test's corner of the shared broker: its org, store queue and options."""

    broker: RabbitBroker
    connector: RabbitMqConnector
    org: str
    service: str
    options: TopologyOptions

    @property
    def store_queue(self) -> str:
        """This test's store queue (the default name ``store`` is shared by the whole broker)."""
        return self.options.store_queue


@pytest.fixture
def app(rabbit: RabbitBroker, org: str) -> Iterator[RabbitApp]:
    """A connector to the test broker and options for ``org``; deletes what ``org`` declared."""
    connector = RabbitMqConnector(rabbit.url)
    options = TopologyOptions(retry_ttl_ms=200, store_queue=f"store.{org}")
    try:
        yield RabbitApp(rabbit, connector, org, "registration", options)
    finally:
        connector.close()
        rabbit.inspector.delete_matching(org)
