"""Buses on a real broker: confirms, lists, unroutable commands, threads, async, errors."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from eventyard import (
    BrokerConnectionError,
    Command,
    ConfigurationError,
    DomainEvent,
    MessageSubscriber,
    TopologyOptions,
    Uuid,
)
from eventyard.consuming import ConsumerSettings
from eventyard.rabbitmq import (
    AsyncRabbitMqDomainEventBus,
    AsyncRabbitMqMessageConsumer,
    RabbitMqCommandBus,
    RabbitMqConnector,
    RabbitMqDomainEventBus,
    RabbitMqMessageConfigurer,
    RabbitMqMessageConsumer,
)
from rabbitmq.conftest import RabbitApp

pytestmark = pytest.mark.rabbitmq


class UserCreated(DomainEvent):
    user_id: Uuid


class SendWelcome(Command):
    user_id: Uuid


def test_a_list_is_published_and_confirmed_whole(app: RabbitApp) -> None:
    RabbitMqMessageConfigurer(app.connector, app.org, app.service, options=app.options).configure()
    events = [UserCreated(user_id=Uuid.v4()) for _ in range(500)]

    RabbitMqDomainEventBus(app.connector, app.org, app.service).publish(events)

    assert app.broker.inspector.count(app.store_queue) == 500


def test_publishing_from_many_threads_at_once(app: RabbitApp) -> None:
    RabbitMqMessageConfigurer(app.connector, app.org, app.service, options=app.options).configure()
    bus = RabbitMqDomainEventBus(app.connector, app.org, app.service)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: bus.publish(UserCreated(user_id=Uuid.v4())), range(200)))

    assert app.broker.inspector.count(app.store_queue) == 200


def test_an_unroutable_event_is_only_logged(app: RabbitApp, caplog: pytest.LogCaptureFixture) -> None:
    RabbitMqMessageConfigurer(app.connector, app.org, app.service,
                              options=TopologyOptions(store=False)).configure()

    RabbitMqDomainEventBus(app.connector, app.org, app.service).publish(UserCreated(user_id=Uuid.v4()))

    assert "reached no queue" in caplog.text


def test_publishing_before_configuring_says_what_to_do(app: RabbitApp) -> None:
    with pytest.raises(ConfigurationError, match="declare the topology first"):
        RabbitMqDomainEventBus(app.connector, app.org, app.service).publish(UserCreated(user_id=Uuid.v4()))


def test_consuming_before_configuring_says_what_to_do_when_told_not_to_declare(app: RabbitApp) -> None:
    consumer = RabbitMqMessageConsumer(app.connector, app.org, app.service,
                                       settings=ConsumerSettings(declare_missing=False))
    consumer.add_subscribers([MessageSubscriber.from_message(UserCreated, [lambda_free_handler])])
    with pytest.raises(ConfigurationError, match="does not exist"):
        consumer.start()


def test_a_consumer_declares_the_missing_queues_of_its_subscribers(app: RabbitApp) -> None:
    consumer = RabbitMqMessageConsumer(app.connector, app.org, app.service,
                                       settings=ConsumerSettings(store_queue=app.store_queue))
    consumer.add_subscribers([MessageSubscriber.from_message(UserCreated, [lambda_free_handler])])
    consumer.start()
    consumer.stop()

    queue = f"{app.org}.{app.service}.1.event.user_created.lambda_free_handler"
    queues = app.broker.inspector.queues(app.org)
    assert set(queues) == {queue, f"retry.{queue}", f"dead_letter.{queue}"}
    assert queues[f"retry.{queue}"]["x-message-ttl"] == 5000


def lambda_free_handler(event: UserCreated) -> None:
    return None


def test_the_first_connect_fails_fast_naming_the_broker_not_the_password() -> None:
    connector = RabbitMqConnector("amqp://guest:topsecret@127.0.0.1:1/")
    with pytest.raises(BrokerConnectionError) as raised:
        RabbitMqDomainEventBus(connector, "acme", "registration").publish(UserCreated(user_id=Uuid.v4()))
    connector.close()
    assert "127.0.0.1:1" in str(raised.value)
    assert "topsecret" not in str(raised.value)


def test_a_sync_handler_can_publish_and_dispatch(app: RabbitApp) -> None:
    welcomed = threading.Event()
    bus = RabbitMqCommandBus(app.connector, app.org, app.service)

    def dispatch_welcome(event: UserCreated) -> None:
        bus.dispatch(SendWelcome(user_id=event.user_id))

    def send_welcome(command: SendWelcome) -> None:
        welcomed.set()

    subscribers = [MessageSubscriber.from_message(UserCreated, [dispatch_welcome]),
                   MessageSubscriber.from_message(SendWelcome, [send_welcome])]
    RabbitMqMessageConfigurer(app.connector, app.org, app.service,
                              options=app.options).configure_subscribers(subscribers)
    consumer = RabbitMqMessageConsumer(app.connector, app.org, app.service,
                                       settings=ConsumerSettings(store_queue=app.store_queue))
    consumer.add_subscribers(subscribers)
    consumer.start()
    try:
        RabbitMqDomainEventBus(app.connector, app.org, app.service).publish(UserCreated(user_id=Uuid.v4()))
        assert welcomed.wait(10)
    finally:
        consumer.stop()


def test_the_async_api_publishes_and_consumes_on_the_callers_loop(app: RabbitApp) -> None:
    subscribers_seen: list[UserCreated] = []

    async def main() -> None:
        done = asyncio.Event()

        async def send_mail_handler(event: UserCreated) -> None:
            subscribers_seen.append(event)
            done.set()

        subscribers = [MessageSubscriber.from_message(UserCreated, [send_mail_handler])]
        await asyncio.to_thread(RabbitMqMessageConfigurer(
            app.connector, app.org, app.service, options=app.options).configure_subscribers, subscribers)
        consumer = AsyncRabbitMqMessageConsumer(app.connector, app.org, app.service,
                                                settings=ConsumerSettings(store_queue=app.store_queue))
        consumer.add_subscribers(subscribers)
        await consumer.start()
        try:
            await AsyncRabbitMqDomainEventBus(app.connector, app.org, app.service).publish(
                UserCreated(user_id=Uuid.v4()))
            await asyncio.wait_for(done.wait(), 10)
        finally:
            await consumer.stop()
            await app.connector.aclose()

    asyncio.run(main())
    assert len(subscribers_seen) == 1


def test_a_message_the_broker_refuses_raises_on_both_publish_paths(app: RabbitApp, rabbit_url: str) -> None:
    from eventyard import PublishNackedError
    from eventyard.topology import BindingSpec, QueueSpec, Topology

    RabbitMqMessageConfigurer(app.connector, app.org, app.service,
                              options=TopologyOptions(store=False)).configure()
    full = Topology((), (QueueSpec(f"{app.org}.full", {"x-max-length": 0,
                                                        "x-overflow": "reject-publish"}),),
                    (BindingSpec(f"{app.org}.{app.service}", f"{app.org}.full", "#"),))

    async def declare() -> None:
        await (await app.connector.publisher_transport()).declare(full)

    app.connector.loop_thread.run(declare())
    bus = RabbitMqDomainEventBus(app.connector, app.org, app.service)
    with pytest.raises(PublishNackedError, match="refused"):
        bus.publish(UserCreated(user_id=Uuid.v4()))  # one event: the blocking path
    with pytest.raises(PublishNackedError, match="refused"):
        bus.publish([UserCreated(user_id=Uuid.v4()) for _ in range(3)])  # a list: pipelined


def test_a_wrong_password_is_refused_without_showing_it(rabbit_url: str) -> None:
    url = rabbit_url.replace("guest:guest@", "guest:not-the-password@")
    connector = RabbitMqConnector(url)
    try:
        with pytest.raises(BrokerConnectionError) as raised:
            RabbitMqDomainEventBus(connector, "acme", "registration").publish(UserCreated(user_id=Uuid.v4()))
    finally:
        connector.close()
    assert "not-the-password" not in str(raised.value)


def test_the_single_publish_connection_comes_back_after_a_cut(app: RabbitApp, rabbit_url: str) -> None:
    from support.tcpproxy import TcpProxy

    RabbitMqMessageConfigurer(app.connector, app.org, app.service, options=app.options).configure()
    proxy = TcpProxy(rabbit_url)
    connector = RabbitMqConnector(proxy.url())
    bus = RabbitMqDomainEventBus(connector, app.org, app.service)
    try:
        bus.publish(UserCreated(user_id=Uuid.v4()))
        proxy.cut()
        with pytest.raises(BrokerConnectionError, match="may or may not be stored"):
            bus.publish(UserCreated(user_id=Uuid.v4()))
        bus.publish(UserCreated(user_id=Uuid.v4()))  # a new connection
    finally:
        connector.close()
        proxy.close()
    assert app.broker.inspector.count(app.store_queue) in (2, 3)  # the cut one may have landed


def test_a_publish_to_a_missing_exchange_leaves_the_bus_usable(app: RabbitApp) -> None:
    bus = RabbitMqDomainEventBus(app.connector, app.org, app.service)
    with pytest.raises(ConfigurationError, match="declare the topology first"):
        bus.publish(UserCreated(user_id=Uuid.v4()))

    RabbitMqMessageConfigurer(app.connector, app.org, app.service, options=app.options).configure()
    bus.publish(UserCreated(user_id=Uuid.v4()))

    assert app.broker.inspector.count(app.store_queue) == 1


@pytest.fixture
def rabbit_url(app: RabbitApp) -> str:
    return app.broker.url
