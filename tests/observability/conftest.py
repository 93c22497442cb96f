"""The observability suite's world: the contract suite's ``Yard`` on each broker, plus reading
raw deliveries (their AMQP properties and headers) off a queue."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from cli.conftest import TIMEOUT, Service
from contract.conftest import BROKER_PARAMS, BROKERS, Yard
from eventyard.ports import Delivery
from eventyard.rabbitmq import RabbitMqConnector
from support.broker import RabbitBroker


@dataclass(frozen=True)
class Taken:
    """A delivery read off a queue (and acked)."""

    body: bytes
    headers: Mapping[str, Any]
    correlation_id: str | None
    message_id: str | None

    @property
    def meta(self) -> dict[str, Any]:
        """The meta of the body's envelope."""
        meta: dict[str, Any] = json.loads(self.body)["data"]["meta"]
        return meta


def take(yard: Yard, queue: str, count: int = 1, timeout: float = 10.0) -> list[Taken]:
    """Consume ``count`` messages of ``queue`` past every consumer of eventyard's, ack them."""

    async def run() -> list[Taken]:
        transport = await yard.backend.consumer_transport()
        taken: list[Taken] = []
        enough = asyncio.Event()

        async def on_delivery(delivery: Delivery) -> None:
            taken.append(Taken(delivery.body, dict(delivery.headers), delivery.correlation_id,
                               delivery.message_id))
            await delivery.ack()
            if len(taken) >= count:
                enough.set()

        consumption = await transport.consume(queue, on_delivery, prefetch=count)
        try:
            await asyncio.wait_for(enough.wait(), timeout)
        finally:
            await consumption.cancel()
            await transport.close()
        return taken

    return yard.backend.loop_thread.run(run())


@pytest.fixture(params=BROKER_PARAMS)
def yard(request: pytest.FixtureRequest) -> Iterator[Yard]:
    """A fresh world on each broker."""
    world = Yard(BROKERS[request.param](request))
    try:
        yield world
    finally:
        world.teardown()


@pytest.fixture
def memory_yard(request: pytest.FixtureRequest) -> Iterator[Yard]:
    """A fresh world on the in-memory broker only."""
    world = Yard(BROKERS["memory"](request))
    try:
        yield world
    finally:
        world.teardown()


@pytest.fixture
def service(rabbit: RabbitBroker, org: str) -> Iterator[Service]:
    """A service of ``org`` on the test broker; deletes what it declared."""
    connector = RabbitMqConnector(rabbit.url)
    try:
        yield Service(rabbit.url, org, connector, rabbit.inspector)
    finally:
        connector.close()
        rabbit.inspector.delete_matching(org)


class Lines:
    """The lines a process writes to a pipe, read as they come."""

    def __init__(self, pipe: Any) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe: Any) -> None:
        for line in pipe:
            self.lines.append(line.rstrip("\n"))

    def join(self) -> None:
        self._thread.join(TIMEOUT)
