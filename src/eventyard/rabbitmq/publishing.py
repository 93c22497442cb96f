"""Publishing with confirms on a RabbitMQ channel, with the client's errors in eventyard's words."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence

import aiormq.exceptions as amqp_errors
from aiormq.abc import AbstractChannel, DeliveredMessage

from eventyard.errors import BrokerConnectionError, ConfigurationError, PublishNackedError
from eventyard.ports import OutgoingMessage
from eventyard.rabbitmq.inspection import reply_text
from eventyard.rabbitmq.pipelining import publish_confirmed

# How the client reports a lost connection: its own types and the socket's. Anything else (a
# RuntimeError, a TypeError from a value it cannot encode) is a bug and propagates as one.
CONNECTION_ERRORS = (amqp_errors.AMQPConnectionError, amqp_errors.ChannelInvalidStateError,
                     ConnectionError, OSError, asyncio.TimeoutError)


async def publish_on(channel: AbstractChannel, messages: Sequence[OutgoingMessage],
                     window: int) -> list[int]:
    """Publish ``messages`` on a confirming ``channel``, ``window`` in flight; return the
    indexes of those that reached no queue."""
    results = await publish_confirmed(channel, messages, window)
    unroutable = []
    for index, (message, result) in enumerate(zip(messages, results, strict=True)):
        if isinstance(result, BaseException):
            with publish_errors(message):
                if isinstance(result, asyncio.CancelledError):  # its channel went away
                    raise ConnectionError("publish channel closed") from result
                raise result
        if isinstance(result, DeliveredMessage):
            unroutable.append(index)
    return unroutable


@contextlib.contextmanager
def publish_errors(message: OutgoingMessage) -> Iterator[None]:
    """Turn the client's publish errors into eventyard's."""
    try:
        yield
    except amqp_errors.DeliveryError as error:
        raise PublishNackedError(
            f"RabbitMQ refused message {message.message_id} to {message.exchange!r} "
            f"({message.routing_key}); it was not stored") from error
    except amqp_errors.ChannelNotFoundEntity as error:
        raise ConfigurationError(
            f"cannot publish to {message.exchange!r}: {reply_text(error)}; declare the "
            "topology first (RabbitMqMessageConfigurer.configure_subscribers)") from None
    except CONNECTION_ERRORS as error:
        raise BrokerConnectionError(
            f"connection to RabbitMQ lost before message {message.message_id} was "
            f"confirmed ({type(error).__name__}); it may or may not be stored") from error
