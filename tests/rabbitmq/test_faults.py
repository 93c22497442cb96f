"""Nothing is lost on a crashed consumer, a broker restart or a cut connection (DESIGN §5)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from eventyard import DomainEvent, MessageSubscriber, Uuid
from eventyard.consuming import ConsumerSettings
from eventyard.rabbitmq import (
    RabbitMqConnector,
    RabbitMqDomainEventBus,
    RabbitMqMessageConfigurer,
    RabbitMqMessageConsumer,
)
from eventyard.topology import TopologyOptions
from rabbitmq.conftest import RabbitApp
from support.rabbitnode import ThrowawayNode
from support.tcpproxy import TcpProxy
from support.waiting import wait_until

pytestmark = pytest.mark.rabbitmq


class OrderPlaced(DomainEvent):
    order_id: Uuid


class Seen:
    """Ids handled, thread-safe."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.lock = threading.Lock()

    def handler(self) -> object:
        def count_order(event: OrderPlaced) -> None:
            with self.lock:
                self.ids.append(event.order_id)
        return count_order


CRASHING_CONSUMER = textwrap.dedent("""
    import pathlib, sys, threading
    from eventyard import DomainEvent, MessageSubscriber, Uuid
    from eventyard.consuming import ConsumerSettings
    from eventyard.rabbitmq import RabbitMqConnector, RabbitMqMessageConsumer

    url, org, marker = sys.argv[1:4]

    class OrderPlaced(DomainEvent):
        order_id: Uuid

    def count_order(event):
        pathlib.Path(marker).write_text(event.order_id)
        threading.Event().wait()  # busy in the handler when the process is killed

    consumer = RabbitMqMessageConsumer(RabbitMqConnector(url), org, "shop", 3,
                                       settings=ConsumerSettings(store_queue=f"store.{org}"))
    consumer.add_subscribers([MessageSubscriber.from_message(OrderPlaced, [count_order])])
    consumer.run()
""")


def test_a_consumer_killed_mid_handler_loses_nothing(app: RabbitApp, tmp_path: Path) -> None:
    seen = Seen()
    subscribers = [MessageSubscriber.from_message(OrderPlaced, [seen.handler()])]
    RabbitMqMessageConfigurer(app.connector, app.org, "shop",
                              options=app.options).configure_subscribers(subscribers)
    marker = tmp_path / "handling"
    process = subprocess.Popen([sys.executable, "-c", CRASHING_CONSUMER, app.broker.url, app.org,
                                str(marker)])
    try:
        event = OrderPlaced(order_id=Uuid.v4())
        RabbitMqDomainEventBus(app.connector, app.org, "shop").publish(event)
        wait_until(marker.exists, timeout=30, what="the handler to start in the other process")
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()

    consumer = RabbitMqMessageConsumer(app.connector, app.org, "shop", 3,
                                       settings=ConsumerSettings(store_queue=app.store_queue))
    consumer.add_subscribers(subscribers)
    consumer.start()
    try:
        wait_until(lambda: seen.ids == [event.order_id], what="the message to be delivered again")
    finally:
        consumer.stop()
    assert marker.read_text() == event.order_id


def _publish_and_count(connector: RabbitMqConnector, org: str, n: int,
                       disrupt: object) -> tuple[Seen, list[str]]:
    """Configure, start a consumer, publish n events in batches while ``disrupt()`` runs."""
    seen = Seen()
    subscribers = [MessageSubscriber.from_message(OrderPlaced, [seen.handler()])]
    options = TopologyOptions(retry_ttl_ms=100, store=False)
    RabbitMqMessageConfigurer(connector, org, "shop", options=options).configure_subscribers(subscribers)
    consumer = RabbitMqMessageConsumer(connector, org, "shop", 3, prefetch=20)
    consumer.add_subscribers(subscribers)
    consumer.start()
    bus = RabbitMqDomainEventBus(connector, org, "shop")
    published: list[str] = []
    try:
        for batch in range(10):
            events = [OrderPlaced(order_id=Uuid.v4()) for _ in range(n // 10)]
            _publish_until_confirmed(bus, events)
            published += [e.order_id for e in events]
            if batch in (3, 6):
                disrupt()  # type: ignore[operator]
        wait_until(lambda: set(seen.ids) >= set(published), timeout=60,
                   what="every confirmed message to be handled")
    finally:
        consumer.stop()
    return seen, published


def _publish_until_confirmed(bus: RabbitMqDomainEventBus, events: list[OrderPlaced]) -> None:
    """Publish; if the connection was down, publish the batch again (duplicates are allowed)."""
    from eventyard import BrokerConnectionError

    for _ in range(10):
        try:
            bus.publish(events)
            return
        except BrokerConnectionError:
            continue
    raise AssertionError("could not publish after 10 tries")


@pytest.mark.fault
def test_a_broker_restart_loses_no_confirmed_message_and_consumers_resume(
    throwaway_node: ThrowawayNode, org: str, caplog: pytest.LogCaptureFixture,
) -> None:
    connector = RabbitMqConnector(throwaway_node.url)
    try:
        seen, published = _publish_and_count(connector, org, 400, throwaway_node.restart)
    finally:
        connector.close()
    assert len(published) == 400
    assert set(published) <= set(seen.ids)  # lost: 0 (duplicates are allowed: at-least-once)
    resumed = [r.getMessage() for r in caplog.records if "resumed 1 consumption" in r.getMessage()]
    assert len(resumed) >= 2, resumed  # the consumer's connection came back after each restart


def test_a_cut_connection_loses_no_confirmed_message_and_consumers_resume(app: RabbitApp) -> None:
    proxy = TcpProxy(app.broker.url)
    connector = RabbitMqConnector(proxy.url())
    try:
        seen, published = _publish_and_count(connector, app.org, 600, proxy.cut)
        cuts = proxy.cuts
    finally:
        connector.close()
        proxy.close()
    assert cuts == 2
    assert len(published) == 600
    assert set(published) <= set(seen.ids)


def test_a_channel_closed_by_the_broker_is_consumed_again(app: RabbitApp) -> None:
    seen = Seen()
    subscribers = [MessageSubscriber.from_message(OrderPlaced, [seen.handler()])]
    RabbitMqMessageConfigurer(app.connector, app.org, "shop",
                              options=app.options).configure_subscribers(subscribers)
    consumer = RabbitMqMessageConsumer(app.connector, app.org, "shop", 3,
                                       settings=ConsumerSettings(store_queue=app.store_queue))
    consumer.add_subscribers(subscribers)
    consumer.start()
    bus = RabbitMqDomainEventBus(app.connector, app.org, "shop")
    try:
        first = OrderPlaced(order_id=Uuid.v4())
        bus.publish(first)
        wait_until(lambda: seen.ids == [first.order_id], what="the first message")
        [consumption] = consumer.engine._transport._consumptions  # type: ignore[union-attr]
        channel = consumption.channel
        # An ack of a tag the broker never gave makes RabbitMQ close that channel alone.
        app.connector.loop_thread.run(channel.basic_ack(987654))
        wait_until(lambda: consumption.channel is not channel, what="a new channel")
        second = OrderPlaced(order_id=Uuid.v4())
        bus.publish(second)
        wait_until(lambda: second.order_id in seen.ids, what=f"the second message (seen {seen.ids})")
    finally:
        consumer.stop()
    assert channel.is_closed


def test_a_consumer_whose_queue_is_deleted_consumes_again_once_it_is_back(app: RabbitApp) -> None:
    seen = Seen()
    subscribers = [MessageSubscriber.from_message(OrderPlaced, [seen.handler()])]
    configurer = RabbitMqMessageConfigurer(app.connector, app.org, "shop", options=app.options)
    configurer.configure_subscribers(subscribers)
    consumer = RabbitMqMessageConsumer(app.connector, app.org, "shop", 3,
                                       settings=ConsumerSettings(store_queue=app.store_queue,
                                                                 declare_missing=False))
    consumer.add_subscribers(subscribers)
    consumer.start()
    queue = f"{app.org}.shop.1.event.order_placed.count_order"
    try:
        app.broker.inspector.delete_matching(queue)  # RabbitMQ cancels the consumer
        wait_until(lambda: queue not in app.broker.inspector.queues(app.org), what="the deletion")
        configurer.configure_subscribers(subscribers)  # an operator declares it again
        event = OrderPlaced(order_id=Uuid.v4())
        RabbitMqDomainEventBus(app.connector, app.org, "shop").publish(event)
        wait_until(lambda: event.order_id in seen.ids, timeout=20, what="consuming again")
    finally:
        consumer.stop()
