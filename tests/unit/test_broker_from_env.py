"""EVENTYARD_MESSAGE_BROKER picks the backend (the seed's PETISCO_EVENT_MESSAGE_BROKER trick)."""

from __future__ import annotations

import pytest

from contract.samples import UserCreated
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
