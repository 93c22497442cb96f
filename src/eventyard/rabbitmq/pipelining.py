"""Publishing a batch with publisher confirms, many messages in flight: one outcome per message.

On aiormq's public API every message is one ``basic_publish`` that does not wait for its write
to drain, at most ``window`` of them unconfirmed at once. With the fast paths on, a chunk of
the batch (a quarter of the window) goes out as one write instead (``fastpaths.write_chunk``),
each message still with the confirmation future aiormq resolves when the broker acks, nacks or
returns it. Either way the messages go out in order, and a batch with a message the client
cannot write (a header it refuses) raises before any of it is sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pamqp.frame
from pamqp import commands as spec
from pamqp.header import ContentHeader

from eventyard.ports import OutgoingMessage
from eventyard.rabbitmq import fastpaths
from eventyard.rabbitmq.properties import basic_properties


async def publish_confirmed(channel: Any, messages: Sequence[OutgoingMessage],
                            window: int) -> list[Any]:
    """Publish ``messages`` on ``channel`` (with confirms); one outcome per message.

    An outcome is the broker's ``Basic.Ack``, the returned message for an unroutable one, or
    the exception its publish or confirmation failed with (a nack, a closed channel).
    """
    if fastpaths.active():
        return await _pipelined(channel, messages, window)
    properties = [_writable(message) for message in messages]
    slots = asyncio.Semaphore(window)

    async def windowed(message: OutgoingMessage, properties: spec.Basic.Properties) -> Any:
        async with slots:
            return await _publish(channel, message, properties)

    batch = asyncio.gather(*map(windowed, messages, properties), return_exceptions=True)
    batch.add_done_callback(_retrieve)
    # A connection that drops leaves its write queue full and nobody draining it: a publish
    # waiting for room there would wait for ever. The channel's closing ends the wait.
    closing = channel.closing
    try:
        await asyncio.wait((batch, closing), return_when=asyncio.FIRST_COMPLETED)
    finally:
        closing.cancel()  # only this observer of the closing
        if not batch.done():
            batch.cancel()  # those not written yet are taken back by aiormq
    await asyncio.wait((batch,))
    try:
        return list(batch.result())
    except asyncio.CancelledError:
        return [ConnectionError("connection to RabbitMQ lost while publishing")] * len(messages)


def _retrieve(batch: asyncio.Future[Any]) -> None:
    if not batch.cancelled():
        batch.exception()


def _writable(message: OutgoingMessage) -> spec.Basic.Properties:
    """``message``'s properties, once the client has written its frames (raising if it cannot)."""
    properties = basic_properties(message)
    pamqp.frame.marshal(spec.Basic.Publish(exchange=message.exchange,
                                           routing_key=message.routing_key), 1)
    pamqp.frame.marshal(ContentHeader(properties=properties, body_size=len(message.body)), 1)
    return properties


async def _publish(channel: Any, message: OutgoingMessage,
                   properties: spec.Basic.Properties) -> Any:
    return await channel.basic_publish(message.body, exchange=message.exchange,
                                       routing_key=message.routing_key, properties=properties,
                                       mandatory=True, wait=False)


async def _pipelined(channel: Any, messages: Sequence[OutgoingMessage], window: int) -> list[Any]:
    chunk = max(1, window // 4)
    publish_frames: dict[tuple[str, str], bytes] = {}
    futures: list[asyncio.Future[Any]] = []
    oldest = 0
    for start in range(0, len(messages), chunk):
        part = messages[start:start + chunk]
        while len(futures) - oldest + len(part) > window:  # keep the window: wait for the oldest
            if not futures[oldest].done():
                await asyncio.wait((futures[oldest],))
            oldest += 1
        futures += await fastpaths.write_chunk(channel, part, publish_frames)
    # asyncio.wait, unlike gather or a bare await, never cancels the confirmations: a caller
    # that gives up (its publish timeout) leaves the channel's bookkeeping as it was.
    pending = [f for f in futures[oldest:] if not f.done()]
    if pending:
        await asyncio.wait(pending)
    return [_outcome(f) for f in futures]


def _outcome(confirmation: asyncio.Future[Any]) -> Any:
    if confirmation.cancelled():
        return asyncio.CancelledError()
    return confirmation.exception() or confirmation.result()
