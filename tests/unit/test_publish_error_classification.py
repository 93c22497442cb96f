"""How the RabbitMQ transport classifies what fails in a publish: the client's connection errors
are a lost connection, a refusal is a refusal, anything else is a bug and stays what it is.

tests/rabbitmq/test_connector_lifecycle.py provokes the bug case on a real broker."""

from __future__ import annotations

import aiormq.exceptions as amqp_errors
import pytest

from eventyard import BrokerConnectionError
from eventyard.ports import OutgoingMessage
from eventyard.rabbitmq.publishing import publish_errors

MESSAGE = OutgoingMessage("acme.registration", "acme.registration.1.event.user_created", b"{}",
                          message_id="m-1")


@pytest.mark.parametrize("error", [
    amqp_errors.AMQPConnectionError("reset"), amqp_errors.ConnectionClosed(320, "forced"),
    amqp_errors.ChannelInvalidStateError("channel closed"), ConnectionResetError(104, "reset"),
    BrokenPipeError(32, "pipe"), TimeoutError("socket"), OSError(113, "no route")],
    ids=lambda error: type(error).__name__)
def test_the_clients_connection_errors_are_a_lost_connection(error: BaseException) -> None:
    with pytest.raises(BrokerConnectionError, match="lost before message m-1 was confirmed"), \
            publish_errors(MESSAGE):
        raise error


@pytest.mark.parametrize("error", [
    RuntimeError("a bug"), TypeError("Unknown type"), ValueError("a bug"), KeyError("a bug"),
    AttributeError("a bug")], ids=lambda error: type(error).__name__)
def test_anything_else_is_a_bug_and_propagates_as_itself(error: BaseException) -> None:
    with pytest.raises(type(error)) as raised, publish_errors(MESSAGE):
        raise error
    assert raised.value is error and not isinstance(raised.value, BrokerConnectionError)
