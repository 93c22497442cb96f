"""The contract suite's RabbitMQ: the test broker, inspected over AMQP and rabbitmqctl."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiormq

from eventyard.buses import Backend
from eventyard.rabbitmq import RabbitMqConnector
from support.broker import RabbitBroker


@dataclass(frozen=True)
class PeekedMessage:
    """A message read off a queue and left there."""

    body: bytes
    headers: Mapping[str, Any]


class RabbitUnderTest:
    """RabbitMQ for the contract suite."""

    name = "rabbitmq"

    def __init__(self, rabbit: RabbitBroker) -> None:
        self.rabbit = rabbit
        self.connector = RabbitMqConnector(rabbit.url)
        self.backend: Backend = self.connector

    def queue_counts(self, queues: Sequence[str]) -> dict[str, int]:
        held = self._totals("")
        return {queue: held.get(queue, (0, 0))[0] for queue in queues}

    def messages_in(self, queue: str) -> list[PeekedMessage]:
        return asyncio.run(self._peek(queue))

    async def _peek(self, queue: str) -> list[PeekedMessage]:
        # Get without acking, then close: RabbitMQ puts them back where they were.
        connection = await aiormq.connect(self.rabbit.url)
        peeked: list[PeekedMessage] = []
        try:
            channel = await connection.channel()
            while True:
                message = await channel.basic_get(queue, no_ack=False)
                if message.delivery_tag is None or not hasattr(message.delivery, "routing_key"):
                    break
                peeked.append(PeekedMessage(bytes(message.body),
                                            dict(message.header.properties.headers or {})))
        finally:
            await connection.close()
        return peeked

    def _totals(self, organization: str) -> dict[str, tuple[int, int]]:
        """Queue -> (ready, unacked) for the queues whose names contain ``organization``."""
        rows = self.rabbit.inspector._ctl("list_queues", "name", "messages_ready",
                                          "messages_unacknowledged")
        return {r["name"]: (int(r["messages_ready"]), int(r["messages_unacknowledged"]))
                for r in rows if organization in r["name"]}

    def settle(self, timeout: float, organization: str) -> None:
        """Wait until the org's queues hold nothing in flight and look the same twice running."""
        deadline = time.monotonic() + timeout
        previous: dict[str, tuple[int, int]] | None = None
        while True:
            totals = self._totals(organization)
            busy = any(unacked for _, unacked in totals.values()) or any(
                ready for name, (ready, _) in totals.items() if name.startswith("retry."))
            if not busy and totals == previous:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"RabbitMQ did not settle in {timeout}s: {totals}")
            previous = totals
            time.sleep(0.2)  # polling the broker's counts with a deadline

    def close(self) -> None:
        self.connector.close()
