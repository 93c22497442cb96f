"""Every backend closes with ``with`` (sync) and ``async with`` (async): connections closed,
unacked messages back in their queues, loop threads stopped, an async application silent."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eventyard import (
    CallTimeoutError,
    ConfigurationError,
    DomainEvent,
    MessageSubscriber,
    NotImplementedBroker,
    QueueNotFoundError,
    Uuid,
)
from eventyard.memory import (
    MemoryBroker,
    MemoryDomainEventBus,
    MemoryMessageConfigurer,
    MemoryMessageConsumer,
    VirtualClock,
)
from eventyard.ports import Delivery, OutgoingMessage
from eventyard.rabbitmq import RabbitMqConnector
from eventyard.topology import BindingSpec, ExchangeSpec, QueueSpec, Topology

TOPOLOGY = Topology((ExchangeSpec("x"),), (QueueSpec("q"),), (BindingSpec("x", "q", "k"),))
ASYNC_APP = Path(__file__).parent.parent / "support" / "async_app.py"
NOWHERE = {"EVENTYARD_MESSAGE_BROKER": "notimplemented"}


class UserCreated(DomainEvent):
    user_id: Uuid


def run_async_app(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the async application with every warning an error and asyncio's debug mode on."""
    env = {**os.environ, "PYTHONASYNCIODEBUG": "1"}
    return subprocess.run([sys.executable, "-W", "error", str(ASYNC_APP), *args], env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("consumer", ["stopped", "unstopped"])
def test_an_async_application_on_memory_ends_without_a_warning(consumer: str) -> None:
    result = run_async_app("memory", *(["unstopped"] if consumer == "unstopped" else []))
    assert (result.returncode, result.stdout, result.stderr) == (0, "handled\n", "")


def test_with_closes_the_memory_broker_and_returns_what_was_in_hand() -> None:
    held = []

    def hold(event: UserCreated) -> None:
        held.append(event)

    subscribers = [MessageSubscriber.from_message(UserCreated, [hold])]
    with MemoryBroker(clock=VirtualClock()) as broker:
        MemoryMessageConfigurer(broker, "acme", "registration").configure_subscribers(subscribers)
        consumer = MemoryMessageConsumer(broker, "acme", "registration")
        consumer.add_subscribers(subscribers)
        consumer.start()
        MemoryDomainEventBus(broker, "acme", "registration").publish(UserCreated(user_id=Uuid.v4()))
        broker.wait_until_idle(5)
        assert broker.loop_thread.is_started
    assert not broker.loop_thread.is_started
    assert len(held) == 1


async def test_async_with_closes_the_memory_broker_and_returns_unacked_messages() -> None:
    arrived = asyncio.Event()
    deliveries: list[Delivery] = []

    async def keep(delivery: Delivery) -> None:  # never settles it
        deliveries.append(delivery)
        arrived.set()

    async with MemoryBroker(clock=VirtualClock()) as broker:
        transport = await broker.consumer_transport()
        await transport.declare(TOPOLOGY)
        await transport.publish([OutgoingMessage("x", "k", b"1")])
        await transport.consume("q", keep, prefetch=1)
        await asyncio.wait_for(arrived.wait(), 5)
        assert broker.message_count("q") == 0
    assert [(m.body, m.redelivered) for m in broker.messages("q")] == [(b"1", True)]
    assert not broker.loop_thread.is_started


async def test_async_with_stops_the_loop_thread_the_sync_api_started() -> None:
    def ignore(event: UserCreated) -> None:
        return None

    async with MemoryBroker(clock=VirtualClock()) as broker:
        configurer = MemoryMessageConfigurer(broker, "acme", "registration")
        await asyncio.to_thread(configurer.configure_subscribers,
                                [MessageSubscriber.from_message(UserCreated, [ignore])])
        assert broker.loop_thread.is_started
    assert not broker.loop_thread.is_started


def test_the_memory_broker_names_a_queue_it_does_not_have() -> None:
    with MemoryBroker(clock=VirtualClock()) as broker:
        for look in (broker.message_count, broker.messages, broker.purge):
            with pytest.raises(QueueNotFoundError, match="queue 'nope' does not exist"):
                look("nope")


async def test_waiting_until_idle_in_vain_is_a_call_timeout() -> None:
    async with MemoryBroker(clock=VirtualClock()) as broker:
        transport = await broker.consumer_transport()
        await transport.declare(TOPOLOGY)
        await transport.publish([OutgoingMessage("x", "k", b"1")])
        await transport.consume("q", lambda delivery: asyncio.sleep(0), prefetch=1)  # never acks
        with pytest.raises(CallTimeoutError, match="1 unacked"):
            await broker.wait_until_idle_async(0.05)


def test_the_notimplemented_broker_closes_both_ways() -> None:
    with NotImplementedBroker() as broker:
        MemoryDomainEventBus(broker, "acme", "registration").publish(UserCreated(user_id=Uuid.v4()))
        assert broker.loop_thread.is_started
    assert not broker.loop_thread.is_started

    async def main() -> NotImplementedBroker:
        async with NotImplementedBroker() as broker:
            await asyncio.to_thread(broker.loop_thread.run, asyncio.sleep(0))
            assert broker.loop_thread.is_started
        return broker

    assert not asyncio.run(main()).loop_thread.is_started


def test_a_connector_that_publishes_nowhere_closes_both_ways() -> None:
    with RabbitMqConnector(environ=NOWHERE) as connector:
        connector.loop_thread.run(asyncio.sleep(0))
    assert not connector.loop_thread.is_started

    async def main() -> RabbitMqConnector:
        async with RabbitMqConnector(environ=NOWHERE) as connector:
            await connector.publisher_transport()
            await asyncio.to_thread(connector.loop_thread.run, asyncio.sleep(0))
        return connector

    assert not asyncio.run(main()).loop_thread.is_started


def test_closing_a_connector_from_its_own_loop_is_refused() -> None:
    with RabbitMqConnector(environ=NOWHERE) as connector:
        async def close_from_inside() -> None:
            connector.close()

        with pytest.raises(ConfigurationError, match="cannot be called from an eventyard handler"):
            connector.loop_thread.run(close_from_inside(), timeout=5)
