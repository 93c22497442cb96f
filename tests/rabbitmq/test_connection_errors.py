"""Connecting goes wrong in one of a few ways, and each is named with its own hint.

A missing vhost, a vhost the user may not use, a wrong password, a broker that is not there:
on the event-loop path (aiormq) and on the blocking single-publish path alike, with no part of
the password and no ERROR line of aiormq's own. The users and vhosts made here are deleted.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from eventyard import BrokerConnectionError, DomainEvent, MessageSubscriber, Uuid
from eventyard.rabbitmq import (
    RabbitMqConnector,
    RabbitMqDomainEventBus,
    RabbitMqMessageConfigurer,
    RabbitMqMessageConsumer,
)
from eventyard.rabbitmq.settings import settings_from
from eventyard.topology import TopologyOptions
from support import names
from support.admin import Admin
from support.broker import RabbitBroker
from support.rabbitnode import free_port
from support.waiting import wait_until

pytestmark = pytest.mark.rabbitmq

# Every character that once leaked out of a URL, and then some; RABBITMQ_PASSWORD needs no
# encoding for any of them.
HOSTILE_PASSWORD = "Zq/s3cr3t#part?x@y:z%2F&=+ ,[]"


class UserCreated(DomainEvent):
    user_id: Uuid


@dataclass
class Account:
    """A vhost and a user of this test's own on the test broker."""

    vhost: str
    user: str
    password: str
    env: dict[str, str]


@pytest.fixture
def account(rabbit: RabbitBroker) -> Iterator[Account]:
    """A new vhost and a user with a hostile password and no permissions (yet)."""
    suffix = names.unique(prefix="", digits=10)  # for the end-of-session check
    vhost, user = f"eventyard-conn-{suffix}", f"eventyard-conn-{suffix}"
    base = settings_from(rabbit.url, environ={})
    host, port = base.endpoints[0]
    admin = Admin(rabbit.inspector)
    admin.add_vhost(vhost)
    try:
        admin.add_user(user, HOSTILE_PASSWORD)
        try:
            yield Account(vhost, user, HOSTILE_PASSWORD, {
                "RABBITMQ_HOST": host, "RABBITMQ_PORT": str(port), "RABBITMQ_USER": user,
                "RABBITMQ_PASSWORD": HOSTILE_PASSWORD, "RABBITMQ_VHOST": vhost})
        finally:
            admin.delete_user(user)
    finally:
        admin.delete_vhost(vhost)


def _failures(connector: RabbitMqConnector) -> list[str]:
    """The error of a single publish (blocking path) and of a list (event-loop path)."""
    bus = RabbitMqDomainEventBus(connector, "acme", "registration")
    messages = []
    for events in (UserCreated(user_id=Uuid.v4()), [UserCreated(user_id=Uuid.v4())] * 2):
        with pytest.raises(BrokerConnectionError) as raised:
            bus.publish(events)
        messages.append(str(raised.value))
    return messages


def _aiormq_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name.startswith("aiormq") and r.levelno >= logging.ERROR]


def test_a_missing_vhost_is_named(rabbit: RabbitBroker, caplog: pytest.LogCaptureFixture) -> None:
    vhost = f"eventyard-missing-{uuid.uuid4().hex[:8]}"
    base = settings_from(rabbit.url, environ={})
    connector = RabbitMqConnector(settings=settings_from(rabbit.url, vhost=vhost, environ={}))
    try:
        for message in _failures(connector):
            assert f"vhost '{vhost}' does not exist" in message
            assert "RABBITMQ_VHOST" in message and "URL's path" in message
            assert "Is the broker running" not in message and "Expected one of" not in message
            assert base.password not in message.replace("guest@", "")
    finally:
        connector.close()
    assert _aiormq_errors(caplog) == []


def test_a_vhost_without_permission_is_named_then_works_once_granted(
        rabbit: RabbitBroker, account: Account, caplog: pytest.LogCaptureFixture) -> None:
    connector = RabbitMqConnector(environ=account.env)
    try:
        for message in _failures(connector):
            assert (f"access refused to vhost '{account.vhost}' for user '{account.user}'"
                    in message)
            assert "RABBITMQ_VHOST" in message and "set_permissions" in message
            assert "Is the broker running" not in message
            for piece in ("s3cr3t", "part", HOSTILE_PASSWORD):
                assert piece not in message
    finally:
        connector.close()
    assert _aiormq_errors(caplog) == []

    # Granted, the same hostile password from RABBITMQ_PASSWORD just works: a single publish,
    # a list, and a consumer, all on the user's own vhost.
    Admin(rabbit.inspector).set_permissions(account.vhost, account.user)
    connector = RabbitMqConnector(environ=account.env)
    handled: list[Uuid] = []

    def record_user(event: UserCreated) -> None:
        handled.append(event.user_id)

    subscribers = [MessageSubscriber.from_message(UserCreated, [record_user])]
    try:  # the vhost is this test's own: the default names (store queue) meet no one
        RabbitMqMessageConfigurer(connector, "acme", "registration").configure_subscribers(
            subscribers)
        bus = RabbitMqDomainEventBus(connector, "acme", "registration")
        bus.publish(UserCreated(user_id=Uuid.v4()))
        bus.publish([UserCreated(user_id=Uuid.v4()) for _ in range(3)])
        consumer = RabbitMqMessageConsumer(connector, "acme", "registration", 1)
        consumer.add_subscribers(subscribers)
        consumer.start()
        try:
            wait_until(lambda: len(handled) == 4, 15, "4 events handled over the hostile login")
        finally:
            consumer.stop()
    finally:
        connector.close()


def test_a_wrong_password_is_an_authentication_failure(rabbit: RabbitBroker,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    secret = "Zq/wr0ng#pXss?w0rd@x"
    connector = RabbitMqConnector(settings=settings_from(rabbit.url, password=secret, environ={}))
    try:
        for message in _failures(connector):
            assert "authentication failed for user 'guest'" in message
            assert "RABBITMQ_PASSWORD" in message
            assert "Is the broker running" not in message
            for piece in ("Zq/w", "wr0ng", "pXss", "w0rd", secret):
                assert piece not in message
    finally:
        connector.close()
    assert _aiormq_errors(caplog) == []


def test_a_broker_that_is_not_there_is_named_with_its_address(
        caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    connector = RabbitMqConnector(f"amqp://guest:guest@127.0.0.1:{port}/?connect_timeout=5")
    try:
        for message in _failures(connector):
            assert f"127.0.0.1:{port}: connection refused" in message
            assert "Is the broker running?" in message and "RABBITMQ_HOST" in message
    finally:
        connector.close()
    assert _aiormq_errors(caplog) == []


def test_every_fail_over_host_is_reported(rabbit: RabbitBroker) -> None:
    down = free_port()
    base = settings_from(rabbit.url, environ={})
    host, port = base.endpoints[0]
    missing = f"eventyard-missing-{uuid.uuid4().hex[:8]}"
    connector = RabbitMqConnector(
        f"amqp://guest:guest@127.0.0.1:{down},{host}:{port}/{missing}?connect_timeout=5")
    try:
        for message in _failures(connector):
            assert f"127.0.0.1:{down}: connection refused" in message
            assert f"{host}:{port}: vhost '{missing}' does not exist" in message
            assert "Is the broker running?" in message and "RABBITMQ_VHOST" in message
    finally:
        connector.close()


def test_a_connection_the_broker_closes_is_reported_once_with_its_reason(
        rabbit: RabbitBroker, org: str, caplog: pytest.LogCaptureFixture) -> None:
    name = f"eventyard-conn-{uuid.uuid4().hex[:10]}"
    connector = RabbitMqConnector(rabbit.url, name=name)
    options = TopologyOptions(store_queue=f"store.{org}")
    caplog.set_level(logging.WARNING)
    try:
        RabbitMqMessageConfigurer(connector, org, "registration", options=options).configure()
        bus = RabbitMqDomainEventBus(connector, org, "registration")
        transport = connector.loop_thread.run(connector.publisher_transport())

        Admin(rabbit.inspector).close_connection(f"{name}-publisher", "closed by an eventyard test")
        wait_until(lambda: transport.reconnections == 1, 15, "the publisher to reconnect")
        bus.publish([UserCreated(user_id=Uuid.v4()) for _ in range(2)])  # the event loop's path
    finally:
        connector.close()
        rabbit.inspector.delete_matching(org)
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("eventyard")]
    assert any("lost (CONNECTION_FORCED - closed by an eventyard test" in w for w in warnings)
    assert _aiormq_errors(caplog) == []  # aiormq's own line for the same close is not repeated
