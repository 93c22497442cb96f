"""Reading dead letters on RabbitMQ without consuming them.

Messages are fetched with ``basic.get`` on a channel of their own and that channel is closed
without acks, so RabbitMQ puts them back (their order may change and they are marked
redelivered). A run reads at most the messages a queue held when it started.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator

import aiormq.exceptions as amqp_errors
from aiormq.abc import AbstractChannel, AbstractConnection, DeliveredMessage
from pamqp import commands as spec

from eventyard.dead_letter_reports import Report, StepOutcome
from eventyard.dead_letters import DeadLetter, letter_of
from eventyard.errors import BrokerConnectionError, QueueNotFoundError
from eventyard.rabbitmq.inspection import queue_state, reply_text, throwaway_channel


def _letter(queue: str, message: DeliveredMessage) -> DeadLetter:
    properties = message.header.properties
    try:
        stamp = int(properties.timestamp.timestamp()) if properties.timestamp is not None else None
    except (ValueError, OverflowError, OSError, AttributeError):
        stamp = None
    return letter_of(
        queue, bytes(message.body), dict(properties.headers or {}),
        message_id=properties.message_id, message_type=properties.message_type,
        correlation_id=properties.correlation_id, routing_key=str(message.routing_key or ""),
        timestamp=stamp, redelivered=bool(getattr(message.delivery, "redelivered", False)),
    )


# A lost connection surfaces as any of these, depending on what was in flight.
BROKER_FAILURES = (amqp_errors.AMQPError, amqp_errors.ChannelInvalidStateError, ConnectionError,
                    OSError)


def lost(error: BaseException, what: str, queue: str) -> BrokerConnectionError:
    """The failure of the broker during ``what`` of ``queue``, said in our words."""
    # aiormq names a channel by its repr once the connection under it is gone: say that instead.
    reason = ("the connection was lost" if isinstance(error, amqp_errors.ChannelInvalidStateError)
              else reply_text(error) or type(error).__name__)
    return BrokerConnectionError(
        f"the connection to RabbitMQ failed during {what} of {queue} ({reason})")


def lost_after(error: BrokerConnectionError, report: Report, outcome: StepOutcome) -> BrokerConnectionError:
    """``error`` saying how far the run went: what was done stays done, the rest stayed put."""
    done = report.count(outcome)
    in_flight = (" (the one in flight may have reached its retry queue as well)"
                 if outcome == "requeued" else " (unless the last ack was lost with the connection)")
    return BrokerConnectionError(
        f"{error}: {done} message{'' if done == 1 else 's'} {outcome} before that; every other "
        f"one is still in its dead-letter queue{in_flight}")


async def _fetch(channel: AbstractChannel, queue: str) -> DeliveredMessage | None:
    message = await channel.basic_get(queue, no_ack=False)
    return None if isinstance(message.delivery, spec.Basic.GetEmpty) else message


async def _held(connection: AbstractConnection, queue: str,
                limit: int | None) -> AsyncGenerator[tuple[AbstractChannel, DeliveredMessage], None]:
    """Fetch up to the queue's current count (and ``limit``), holding each message unacked."""
    state = await queue_state(connection, queue)
    if not state.exists:
        raise QueueNotFoundError(f"queue {queue!r} does not exist")
    budget = state.messages if limit is None else min(limit, state.messages)
    # Closing this channel at the end hands every unacked message back to its queue.
    async with throwaway_channel(connection) as channel:
        for _ in range(budget):
            message = await _fetch(channel, queue)
            if message is None:
                return
            yield channel, message


async def held_letters(connection: AbstractConnection, queue: str, what: str,
                   limit: int | None = None) -> AsyncGenerator[tuple[AbstractChannel,
                                                                        DeliveredMessage,
                                                                        DeadLetter], None]:
    """``_held`` with each message read as a ``DeadLetter``; a broker failure named."""
    try:
        async with contextlib.aclosing(_held(connection, queue, limit)) as held:
            async for channel, message in held:
                yield channel, message, _letter(queue, message)
    except BROKER_FAILURES as error:
        raise lost(error, what, queue) from error
