"""EVENTYARD_MESSAGE_BROKER picks the backend (the seed's PETISCO_EVENT_MESSAGE_BROKER trick)."""

from __future__ import annotations

import pytest

from contract.samples import PersistUser, UserCreated
from eventyard import ConfigurationError, DomainEventBus, NotImplementedBroker, Uuid, broker_from_env
from eventyard.buses import broker_kind
from eventyard.memory import MemoryBroker


def test_memory() -> None:
    broker = broker_from_env({"EVENTYARD_MESSAGE_BROKER": "memory"})
    assert isinstance(broker, MemoryBroker)


def test_notimplemented_publishes_nowhere_and_never_connects() -> None:
    broker = broker_from_env({"EVENTYARD_MESSAGE_BROKER": " NotImplemented "})
    assert isinstance(broker, NotImplementedBroker)
    DomainEventBus(broker, "acme", "registration").publish(UserCreated(user_id=Uuid.v4()))
    broker.loop_thread.stop()


def test_invalid_names_the_variable_and_the_choices() -> None:
    with pytest.raises(ConfigurationError, match=r"EVENTYARD_MESSAGE_BROKER='kafka' is not a broker: "
                                                 r"use one of rabbitmq, memory, notimplemented"):
        broker_from_env({"EVENTYARD_MESSAGE_BROKER": "kafka"})


def test_rabbitmq_is_the_default_and_is_built_without_connecting() -> None:
    assert broker_kind({}) == "rabbitmq"
    assert broker_kind({"EVENTYARD_MESSAGE_BROKER": ""}) == "rabbitmq"
    from eventyard.rabbitmq import RabbitMqConnector

    # A port nothing listens on: building the connector must not try to connect.
    connector = broker_from_env({"EVENTYARD_MESSAGE_BROKER": "rabbitmq", "RABBITMQ_PORT": "1"})
    assert isinstance(connector, RabbitMqConnector)


def test_the_seeds_spelling_is_honoured_when_eventyards_is_unset() -> None:
    assert broker_kind({"PETISCO_EVENT_MESSAGE_BROKER": "notimplemented"}) == "notimplemented"
    assert broker_kind({"EVENTYARD_MESSAGE_BROKER": "", "PETISCO_EVENT_MESSAGE_BROKER": "memory"}) == "memory"
    assert isinstance(broker_from_env({"PETISCO_EVENT_MESSAGE_BROKER": "notimplemented"}),
                      NotImplementedBroker)


def test_eventyards_spelling_wins_over_the_seeds() -> None:
    assert broker_kind({"EVENTYARD_MESSAGE_BROKER": "rabbitmq",
                        "PETISCO_EVENT_MESSAGE_BROKER": "notimplemented"}) == "rabbitmq"


def test_an_invalid_seed_spelling_names_its_variable() -> None:
    with pytest.raises(ConfigurationError, match=r"PETISCO_EVENT_MESSAGE_BROKER='kafka' is not a broker"):
        broker_kind({"PETISCO_EVENT_MESSAGE_BROKER": "kafka"})


def send_mail_handler(event: UserCreated) -> None:
    return None


@pytest.mark.parametrize("variable", ["EVENTYARD_MESSAGE_BROKER", "PETISCO_EVENT_MESSAGE_BROKER"])
def test_a_notimplemented_rabbitmq_connector_publishes_nowhere_and_says_so_once(
        variable: str, caplog: pytest.LogCaptureFixture) -> None:
    from eventyard import MessageSubscriber
    from eventyard.rabbitmq import (
        RabbitMqCommandBus,
        RabbitMqConnector,
        RabbitMqDomainEventBus,
        RabbitMqMessageConfigurer,
        RabbitMqMessageConsumer,
    )

    # A port nothing listens on: any connection attempt would raise BrokerConnectionError.
    connector = RabbitMqConnector(environ={variable: "notimplemented", "RABBITMQ_PORT": "1"})
    subscribers = [MessageSubscriber.from_message(UserCreated, [send_mail_handler])]
    try:
        RabbitMqMessageConfigurer(connector, "acme", "registration").configure_subscribers(subscribers)
        consumer = RabbitMqMessageConsumer(connector, "acme", "registration", 5)
        consumer.add_subscribers(subscribers)
        consumer.start()
        bus = RabbitMqDomainEventBus(connector, "acme", "registration")
        for _ in range(3):
            bus.publish(UserCreated(user_id=Uuid.v4()))
        bus.publish([UserCreated(user_id=Uuid.v4()), UserCreated(user_id=Uuid.v4())])
        RabbitMqCommandBus(connector, "acme", "registration").dispatch(PersistUser(user_id=Uuid.v4()))
        consumer.stop()
    finally:
        connector.close()
    assert connector.publishes_nowhere
    notices = [r.getMessage() for r in caplog.records if "notimplemented" in r.getMessage()]
    assert notices == ["the message broker is notimplemented: RabbitMqConnector('amqp://guest@localhost:1/') "
                       "publishes nowhere and never connects"]


def test_a_rabbitmq_connector_uses_rabbitmq_by_default() -> None:
    from eventyard.rabbitmq import RabbitMqConnector

    assert not RabbitMqConnector(environ={}).publishes_nowhere
    assert not RabbitMqConnector(environ={"EVENTYARD_MESSAGE_BROKER": "rabbitmq",
                                          "PETISCO_EVENT_MESSAGE_BROKER": "notimplemented"}).publishes_nowhere
