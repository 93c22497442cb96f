"""Retries, dead letters, poison and the wire, checked on what the real broker holds."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections import Counter

import aiormq
import pytest

from eventyard import DomainEvent, InfoId, MessageSubscriber, Uuid
from eventyard.consuming import ConsumerEvent, ConsumerSettings
from eventyard.rabbitmq import (
    RabbitMqDomainEventBus,
    RabbitMqMessageConfigurer,
    RabbitMqMessageConsumer,
)
from rabbitmq.conftest import RabbitApp
from support.waiting import wait_until

pytestmark = pytest.mark.rabbitmq


class UserCreated(DomainEvent):
    user_id: Uuid


class Runs:
    """Thread-safe count of handler runs by handler name."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1


def start(app: RabbitApp, subscribers: list[MessageSubscriber], max_retries: int,
          **options: object) -> RabbitMqMessageConsumer:
    topology = dataclasses.replace(app.options, **options)
    RabbitMqMessageConfigurer(app.connector, app.org, app.service,
                              options=topology).configure_subscribers(subscribers)
    consumer = RabbitMqMessageConsumer(
        app.connector, app.org, app.service, max_retries,
        settings=ConsumerSettings(store_queue=app.store_queue))
    consumer.add_subscribers(subscribers)
    consumer.start()
    return consumer


def queue_of(app: RabbitApp, handler: str) -> str:
    return f"{app.org}.{app.service}.1.event.user_created.{handler}"


def test_a_failed_message_waits_in_its_retry_queue_for_the_ttl(app: RabbitApp) -> None:
    failed = threading.Event()

    def send_mail_handler(event: UserCreated) -> bool:
        failed.set()
        raise RuntimeError("smtp down")

    consumer = start(app, [MessageSubscriber.from_message(UserCreated, [send_mail_handler])], 3,
                     retry_ttl_ms=60_000)
    retry_queue = f"retry.{queue_of(app, 'send_mail_handler')}"
    try:
        RabbitMqDomainEventBus(app.connector, app.org, app.service).publish(UserCreated(user_id=Uuid.v4()))
        wait_until(lambda: app.broker.inspector.count(retry_queue) == 1, what="the retry copy")
    finally:
        consumer.stop()

    assert app.broker.inspector.count(queue_of(app, "send_mail_handler")) == 0
    [(_, headers, routing_key)] = app.broker.inspector.take(retry_queue)
    assert routing_key == retry_queue
    assert headers["redelivery_count"] == 1
    assert headers["failure_type"] == "RuntimeError"
    assert headers["failure_message"] == "smtp down"
    assert "RuntimeError: smtp down" in headers["failure_stack"]


POISON = [b"not json", b'{"data": {"type": "user.created", "attributes": {"user_id": 7}}}',
          b'{"nodata": 1}']


@pytest.mark.parametrize("body", POISON)
def test_a_poison_body_is_dead_lettered_with_its_reason_and_consuming_goes_on(
    app: RabbitApp, body: bytes
) -> None:
    handled: list[UserCreated] = []
    events: list[ConsumerEvent] = []

    def send_mail_handler(event: UserCreated) -> None:
        handled.append(event)

    consumer = start(app, [MessageSubscriber.from_message(UserCreated, [send_mail_handler])], 5)
    consumer.add_observer(events.append)
    queue = queue_of(app, "send_mail_handler")
    try:
        _publish_raw(app, queue, body)
        RabbitMqDomainEventBus(app.connector, app.org, app.service).publish(UserCreated(user_id=Uuid.v4()))
        wait_until(lambda: len(handled) == 1, what="the good message after the poison one")
        wait_until(lambda: app.broker.inspector.count(f"dead_letter.{queue}") == 1, what="poison")
    finally:
        consumer.stop()

    [(dead_body, headers, _)] = app.broker.inspector.take(f"dead_letter.{queue}")
    assert dead_body == body
    assert headers["failure_type"] == "MessageDecodeError"
    assert headers["failure_message"]
    assert [e.kind for e in events].count("poison") == 1
    assert "retried" not in [e.kind for e in events]


def _publish_raw(app: RabbitApp, queue: str, body: bytes) -> None:
    import asyncio

    async def publish() -> None:
        connection = await aiormq.connect(app.broker.url)
        channel = await connection.channel()
        await channel.basic_publish(body, exchange=f"{app.org}.{app.service}",
                                    routing_key=f"retry.{queue}")
        await connection.close()

    asyncio.run(publish())


def test_published_messages_carry_the_wire_properties(app: RabbitApp) -> None:
    RabbitMqMessageConfigurer(app.connector, app.org, app.service,
                              options=app.options).configure_subscribers([])
    event = UserCreated(user_id=Uuid.v4()).add_info_id(InfoId(correlation_id="c-1", user_id="u-9"))

    RabbitMqDomainEventBus(app.connector, app.org, app.service).publish(event)

    import asyncio

    async def get() -> aiormq.abc.DeliveredMessage:
        connection = await aiormq.connect(app.broker.url)
        channel = await connection.channel()
        message = await channel.basic_get(app.store_queue, no_ack=True)
        await connection.close()
        return message

    message = asyncio.run(get())
    properties = message.header.properties
    assert properties.delivery_mode == 2
    assert properties.content_type == "application/json"
    assert properties.message_id == event.get_message_id()
    assert properties.message_type == "user.created"
    assert properties.timestamp is not None
    assert properties.headers == {"correlation_id": "c-1", "user_id": "u-9"}
    assert message.delivery.routing_key == f"{app.org}.{app.service}.1.event.user_created"
    data = json.loads(message.body)["data"]
    assert data["type_message"] == "domain_event" and data["meta"]["info_id"]["correlation_id"] == "c-1"
