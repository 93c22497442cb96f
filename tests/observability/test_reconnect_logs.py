"""A lost connection is two WARNING lines (lost, reconnected), with no traceback from aiormq."""

from __future__ import annotations

import logging
import threading

import pytest

from eventyard import DomainEvent, MessageSubscriber, Uuid
from eventyard.rabbitmq import (
    RabbitMqConnector,
    RabbitMqDomainEventBus,
    RabbitMqMessageConfigurer,
    RabbitMqMessageConsumer,
)
from eventyard.topology import TopologyOptions
from support.broker import RabbitBroker
from support.tcpproxy import TcpProxy
from support.waiting import wait_until

pytestmark = pytest.mark.rabbitmq


class Pinged(DomainEvent):
    ping_id: Uuid


def test_a_cut_connection_is_logged_as_lost_then_reconnected(
        rabbit: RabbitBroker, org: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    handled: list[str] = []
    lock = threading.Lock()

    def on_ping(event: Pinged) -> None:
        with lock:
            handled.append(event.get_message_id())

    subscribers = [MessageSubscriber.from_message(Pinged, [on_ping])]
    options = TopologyOptions(store=False)
    direct = RabbitMqConnector(rabbit.url)
    proxy = TcpProxy(rabbit.url)
    through_proxy = RabbitMqConnector(proxy.url())
    try:
        RabbitMqMessageConfigurer(direct, org, "pinger", options=options).configure_subscribers(
            subscribers)
        consumer = RabbitMqMessageConsumer(through_proxy, org, "pinger", options=options)
        consumer.add_subscribers(subscribers)
        consumer.start()
        try:
            assert proxy.cut() >= 1
            wait_until(lambda: "reconnected to RabbitMQ" in caplog.text, what="the reconnect")
            RabbitMqDomainEventBus(direct, org, "pinger").publish(Pinged(ping_id=Uuid.v4()))
            wait_until(lambda: len(handled) == 1, what="a message after the reconnect")
        finally:
            consumer.stop()
    finally:
        through_proxy.close()
        direct.close()
        proxy.close()
        rabbit.inspector.delete_matching(org)

    ours = [r for r in caplog.records if r.name == "eventyard.rabbitmq.transport"]
    lost = [r for r in ours if "lost" in r.getMessage()]
    back = [r for r in ours if r.getMessage().startswith("reconnected to RabbitMQ")]
    assert lost and back
    assert {r.levelno for r in lost + back} == {logging.WARNING}
    assert "resumed 1 consumption(s)" in back[0].getMessage()
    assert [r for r in caplog.records if r.name.startswith("aiormq") and r.exc_info] == []
