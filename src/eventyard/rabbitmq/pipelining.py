"""Pipelined publishing with confirms: the frames of many messages in one write, one future each.

aiormq's ``basic_publish`` takes a lock, queues one write and waits for it to drain, per
message; a batch of thousands spends more time there than on the wire. Here a chunk of the
batch is numbered and marshalled at once and written as one payload, and each message gets the
confirmation future aiormq's channel resolves when the broker acks, nacks or returns it. The
channel's own bookkeeping (``delivery_tag``, ``confirmations``, ``message_id_delivery_tag``)
is used, under its publish lock, so confirmations, returns and a closing channel behave
exactly as for ``basic_publish``. ``can_pipeline`` says whether the aiormq in use has them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pamqp.frame
from aiormq.abc import ChannelFrame
from pamqp import commands as spec
from pamqp.header import ContentHeader

from eventyard.errors import BrokerConnectionError
from eventyard.ports import OutgoingMessage

_closing: set[asyncio.Future[Any]] = set()
_CHANNEL_INTERNALS = ("delivery_tag", "confirmations", "message_id_delivery_tag", "lock",
                      "write_queue", "create_future", "_split_body", "number")


def can_pipeline(channel: Any) -> bool:
    """True when ``channel`` (an aiormq channel with confirms) exposes what this module uses."""
    return bool(channel.publisher_confirms) and all(
        hasattr(channel, name) for name in _CHANNEL_INTERNALS)


def _properties(message: OutgoingMessage) -> spec.Basic.Properties:
    return spec.Basic.Properties(
        content_type=message.content_type,
        delivery_mode=2,
        message_id=message.message_id or uuid.uuid4().hex,  # returns are matched by it
        message_type=message.type,
        timestamp=(datetime.fromtimestamp(message.timestamp, UTC)
                   if message.timestamp is not None else None),
        headers=message.headers or None,
    )


def _forget(ids: dict[str, int], message_id: str, tag: int) -> Any:
    def forget(_: asyncio.Future[Any]) -> None:
        if ids.get(message_id) == tag:
            del ids[message_id]
    return forget


async def _write_chunk(channel: Any, messages: Sequence[OutgoingMessage],
                       publish_frames: dict[tuple[str, str], bytes]) -> list[asyncio.Future[Any]]:
    """Number, marshal and queue ``messages`` as one write; return their confirmation futures."""
    number = channel.number
    parts: list[bytes] = []
    futures: list[asyncio.Future[Any]] = []
    async with channel.lock:  # the order of tags must be the order of the frames on the wire
        confirmations, ids = channel.confirmations, channel.message_id_delivery_tag
        # Every message is marshalled before any takes a tag: one the client cannot write (a
        # header it refuses) raises with the channel's numbering untouched.
        marshalled: list[spec.Basic.Properties] = []
        for message in messages:
            key = (message.exchange, message.routing_key)
            publish = publish_frames.get(key)
            if publish is None:
                publish = publish_frames[key] = pamqp.frame.marshal(spec.Basic.Publish(
                    exchange=message.exchange, routing_key=message.routing_key, mandatory=True),
                    number)
            properties = _properties(message)
            body = message.body
            parts.append(publish)
            parts.append(pamqp.frame.marshal(
                ContentHeader(properties=properties, body_size=len(body)), number))
            parts.extend(pamqp.frame.marshal(part, number) for part in channel._split_body(body))
            marshalled.append(properties)
        for properties in marshalled:
            channel.delivery_tag += 1
            tag = channel.delivery_tag
            confirmation: asyncio.Future[Any] = channel.create_future()
            confirmations[tag] = confirmation
            message_id = str(properties.message_id)
            ids[message_id] = tag
            confirmation.add_done_callback(_forget(ids, message_id, tag))
            futures.append(confirmation)
        payload = ChannelFrame(payload=b"".join(parts), should_close=False)
        try:
            channel.write_queue.put_nowait(payload)
        except asyncio.QueueFull:
            try:
                await _put_unless_closed(channel, payload)
            except BaseException:
                # Tags were taken for frames that will never be written: later confirmations
                # would be matched to the wrong messages. The channel must not be used again.
                closing = asyncio.ensure_future(channel.close())
                _closing.add(closing)
                closing.add_done_callback(_closing.discard)
                raise
    return futures


async def _put_unless_closed(channel: Any, payload: ChannelFrame) -> None:
    """Wait for room in the write queue, unless the channel closes first.

    A dropped connection leaves its write queue full and nobody draining it: a bare ``put``
    would wait forever (and hold the channel's lock), stalling every publisher and consumer.
    """
    put = asyncio.ensure_future(channel.write_queue.put(payload))
    closing = channel.closing
    try:
        await asyncio.wait((put, closing), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future in (put, closing):
            if not future.done():
                future.cancel()
    if put.cancelled():
        raise BrokerConnectionError("connection to RabbitMQ lost while publishing; the messages "
                                    "were not sent")
    put.result()


async def publish_pipelined(channel: Any, messages: Sequence[OutgoingMessage],
                            window: int) -> list[Any]:
    """Publish ``messages`` (at most ``window`` unconfirmed at once); one result per message.

    A result is the broker's ``Basic.Ack``, the returned message for an unroutable one, or the
    exception its confirmation failed with (a nack, a closed channel).
    """
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
        futures += await _write_chunk(channel, part, publish_frames)
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
