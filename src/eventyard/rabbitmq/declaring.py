"""Declaring and deleting a topology on a RabbitMQ connection, with errors in eventyard's words."""

from __future__ import annotations

import aiormq.exceptions as amqp_errors
from aiormq.abc import AbstractConnection

from eventyard import naming
from eventyard.declarations import Topology
from eventyard.errors import ConfigurationError, TopologyMismatchError
from eventyard.rabbitmq.inspection import reply_text


def check_names(topology: Topology) -> None:
    """``ConfigurationError`` if a name in ``topology`` is one the AMQP client would refuse."""
    naming.check_names(exchanges=(e.name for e in topology.exchanges),
                       queues=(q.name for q in topology.queues),
                       routing_keys=(b.routing_key for b in topology.bindings))


async def declare_on(connection: AbstractConnection, topology: Topology) -> None:
    """Declare the exchanges, queues and bindings of ``topology`` on a channel of its own.

    ``TopologyMismatchError`` when one exists with other settings (eventyard never deletes it),
    ``ConfigurationError`` when the user may not declare it.
    """
    channel = await connection.channel(publisher_confirms=False)
    what = hint = ""
    try:
        for exchange in topology.exchanges:
            what = f"exchange {exchange.name!r}"
            await channel.exchange_declare(exchange.name, exchange_type=exchange.type,
                                           durable=exchange.durable)
        for queue in topology.queues:
            what, hint = f"queue {queue.name!r}", topology.mismatch_hint(queue.name)
            await channel.queue_declare(queue.name, durable=queue.durable,
                                        arguments=dict(queue.arguments))
        for binding in topology.bindings:
            what = f"binding of {binding.queue!r} to {binding.exchange!r}"
            await channel.queue_bind(binding.queue, binding.exchange,
                                     routing_key=binding.routing_key)
    except amqp_errors.ChannelPreconditionFailed as error:
        raise TopologyMismatchError(
            f"{what} already exists with other settings: {reply_text(error)}. eventyard never "
            "deletes it for you: declare it with the same options (retry TTL, queue type, "
            "TTL), or move its messages away and delete it, then configure again." + hint
        ) from None
    except amqp_errors.ChannelAccessRefused as error:
        raise ConfigurationError(f"not allowed to declare {what}: {reply_text(error)}") from None
    finally:
        if not channel.is_closed:
            await channel.close()


async def delete_on(connection: AbstractConnection, topology: Topology) -> None:
    """Delete the queues and exchanges of ``topology`` on a channel of its own."""
    channel = await connection.channel(publisher_confirms=False)
    try:
        for queue in topology.queues:
            await channel.queue_delete(queue.name)
        for exchange in topology.exchanges:
            await channel.exchange_delete(exchange.name)
    finally:
        if not channel.is_closed:
            await channel.close()
