"""The RabbitMQ transport on both of its paths: aiormq's public API and the fast paths.

Each test runs twice in this process, with ``EVENTYARD_AMQP_FAST_PATHS`` at 0 and unset; ``make
test`` also runs the contract, differential, fault and soak tests with it at 0 (a consumer the
broker cancels, for one, is in ``test_faults.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiormq
import pytest

from eventyard.ports import Delivery, OutgoingMessage
from eventyard.rabbitmq import fastpaths
from eventyard.rabbitmq.delivery import PublicSettler
from eventyard.rabbitmq.settings import parse_url
from eventyard.rabbitmq.transport import RabbitMqTransport
from eventyard.topology import BindingSpec, ExchangeSpec, QueueSpec, Topology
from support.broker import RabbitBroker

pytestmark = pytest.mark.rabbitmq

LIMIT = 20.0  # seconds any one wait may take


@pytest.fixture(params=["public", "fast"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "public":
        monkeypatch.setenv(fastpaths.SWITCH, "0")
    else:
        monkeypatch.delenv(fastpaths.SWITCH, raising=False)
    assert fastpaths.active() is (request.param == "fast"), "see test_fast_paths.py's canary"
    yield str(request.param)


@pytest.fixture(autouse=True)
def cleanup(rabbit: RabbitBroker, org: str) -> Iterator[None]:
    yield
    rabbit.inspector.delete_matching(org)


def _topology(org: str) -> Topology:
    exchange, queue = f"{org}.paths", f"{org}.paths.queue"
    return Topology(exchanges=(ExchangeSpec(exchange),), queues=(QueueSpec(queue),),
                    bindings=(BindingSpec(exchange, queue, "routed.#"),))


async def _until(condition: asyncio.Event, what: str) -> None:
    try:
        await asyncio.wait_for(condition.wait(), LIMIT)
    except TimeoutError:
        raise AssertionError(f"timed out after {LIMIT}s waiting for {what}") from None


async def test_a_batch_is_confirmed_consumed_in_order_and_every_delivery_settled(
        rabbit: RabbitBroker, org: str, path: str) -> None:
    """Every 7th delivery is rejected (dropped), the rest acked: afterwards the queue is empty
    and holds nothing unacked, and the unroutable message is reported by its index."""
    topology = _topology(org)
    exchange, queue = topology.exchanges[0].name, topology.queues[0].name
    transport = RabbitMqTransport(parse_url(rabbit.url), publish_window=64)
    await transport.connect()
    try:
        await transport.declare(topology)
        seen: list[bytes] = []
        done = asyncio.Event()
        total = 600

        async def handle(delivery: Delivery) -> None:
            seen.append(delivery.body)
            if len(seen) % 7 == 0:
                await delivery.reject(requeue=False)
            else:
                await delivery.ack()
            if len(seen) == total:
                done.set()

        consumption = await transport.consume(queue, handle, prefetch=32)
        assert consumption.settlements is not None
        assert isinstance(consumption.settlements._sender, PublicSettler) is (path == "public")
        messages = [OutgoingMessage(exchange, "routed.x", str(i).encode(), {"i": i})
                    for i in range(total)]
        messages.insert(100, OutgoingMessage(exchange, "nowhere", b"lost"))
        assert await transport.publish(messages) == [100]
        await _until(done, f"{total} deliveries")
        assert seen == [str(i).encode() for i in range(total)]
        await consumption.cancel()
    finally:
        await transport.close()
    async with aiormq.connect(rabbit.url) as connection:  # every delivery settled: none came back
        channel = await connection.channel()
        assert (await channel.queue_declare(queue, passive=True)).message_count == 0
