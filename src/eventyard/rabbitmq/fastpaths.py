"""Every use eventyard makes of aiormq's internals, run only on aiormq versions tested with them.

aiormq's public API pays per message for what eventyard does per batch. Four fast paths use
its internals instead:

- frames: a ``FrameStream``'s socket is read in 64 KiB chunks and whole frames cut out of one
  buffer, instead of aiormq's three ``readexactly`` calls under a lock per frame (aiormq builds
  its reader by a module-level name, which is replaced once; other connections keep aiormq's);
- publish: a chunk of a batch is numbered, marshalled and written as one payload under the
  channel's publish lock, each message with the confirmation future aiormq resolves;
- consume: a delivery is assembled from its frames by the connection's frame reader and goes
  to eventyard's pump, with no frame queue, task or pamqp object per frame (``assembling``);
- settle: acks and rejects go straight into the connection's write queue, with no task, lock
  or drain per frame.

They run only when ``active()``: the installed aiormq is one of ``TESTED_AIORMQ`` (each listed
version passed the whole suite with them) and ``EVENTYARD_AMQP_FAST_PATHS`` is not ``0``.
Everywhere else the callers take aiormq's public API, which the suite also runs (``make
test`` runs the RabbitMQ tests a second time with the switch at 0). A unit test fails when the
installed aiormq is not listed and the switch is not 0: a new aiormq is listed once it passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from collections.abc import Callable, Sequence
from importlib.metadata import version
from typing import Any

import aiormq.connection as amqp_connection
import pamqp.frame
from aiormq.abc import ChannelFrame
from pamqp import commands as spec
from pamqp.header import ContentHeader

from eventyard.errors import BrokerConnectionError, ConfigurationError
from eventyard.ports import OutgoingMessage
from eventyard.rabbitmq.assembling import Assembly
from eventyard.rabbitmq.framing import BrokerAlarm, FrameStream, FrameStreams
from eventyard.rabbitmq.properties import basic_properties
from eventyard.rabbitmq.receiving import RECEIVERS, BufferedFrameReceiver

logger = logging.getLogger(__name__)

TESTED_AIORMQ = ("7.2.4",)
SWITCH = "EVENTYARD_AMQP_FAST_PATHS"
AIORMQ = version("aiormq")
_OFF, _ON = ("0", "false", "no", "off"), ("", "1", "true", "yes", "on")
_warned: list[str] = []


def active() -> bool:
    """True when the fast paths run: the switch is not 0 and the installed aiormq is listed."""
    value = os.environ.get(SWITCH, "").strip().lower()
    if value in _OFF:
        return False
    if value not in _ON:
        raise ConfigurationError(f"{SWITCH}={value!r}: use 0 to turn the fast paths off, 1 (or "
                                 "leave it unset) to run them where the aiormq version allows")
    if AIORMQ in TESTED_AIORMQ:
        return True
    if not _warned:
        _warned.append(AIORMQ)
        logger.warning("aiormq %s is not among the versions eventyard's fast paths were tested "
                       "with (%s): using aiormq's public API only, which is slower. Set %s=0 "
                       "to say this is meant.", AIORMQ, ", ".join(TESTED_AIORMQ), SWITCH)
    return False


# -- frames -------------------------------------------------------------------------------------

_AIORMQ_RECEIVER = amqp_connection.FrameReceiver


def frame_receiver(reader: Any) -> Any:
    """The frame reader aiormq gets for ``reader``: the buffered one for a fast ``FrameStream``."""
    if isinstance(reader, FrameStream) and reader.fast:
        return BufferedFrameReceiver(reader)
    return _AIORMQ_RECEIVER(reader)


class _Streams(FrameStreams):
    """``FrameStreams`` that remember the last stream they opened: the connection's own (one
    ``FrameStreams`` per connection; an attempt that failed is followed by the next one)."""

    stream: FrameStream | None = None

    async def create(self, url: Any, **kwargs: Any) -> tuple[asyncio.StreamReader,
                                                            asyncio.StreamWriter]:
        reader, writer = await super().create(url, **kwargs)
        self.stream = reader if isinstance(reader, FrameStream) else None
        return reader, writer


def frame_streams(alarm: BrokerAlarm) -> FrameStreams:
    """The transport factory of one eventyard connection (its frames read fast when active)."""
    fast = active()
    if fast and amqp_connection.FrameReceiver is _AIORMQ_RECEIVER:
        amqp_connection.FrameReceiver = frame_receiver  # type: ignore[assignment,misc]
    return _Streams(alarm, fast=fast)


# -- publish ------------------------------------------------------------------------------------

_closing: set[asyncio.Future[Any]] = set()


def _forget(ids: dict[str, int], message_id: str, tag: int) -> Callable[[Any], None]:
    def forget(_: asyncio.Future[Any]) -> None:
        if ids.get(message_id) == tag:
            del ids[message_id]
    return forget


async def write_chunk(channel: Any, messages: Sequence[OutgoingMessage],
                      publish_frames: dict[tuple[str, str], bytes]) -> list[asyncio.Future[Any]]:
    """Number, marshal and queue ``messages`` as one write; return their confirmation futures.

    aiormq's own bookkeeping (``delivery_tag``, ``confirmations``, ``message_id_delivery_tag``)
    is used under its publish lock, so confirms, returns and a closing channel act as for
    ``basic_publish``.
    """
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
            properties = basic_properties(message)
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
    """Wait for room in the write queue, unless the channel closes first (a dropped connection
    leaves its queue full and nobody draining it: a bare ``put`` would wait for ever)."""
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


# -- consume ------------------------------------------------------------------------------------

def deliver_directly(channel: Any, push: Callable[[Any], None]) -> bool:
    """Have each delivery on ``channel`` assembled from its frames by the connection's frame
    reader and handed to ``push`` (``assembling``): no frame queue or task per message. False
    where that reader is not eventyard's (then aiormq's consumer callback gets them)."""
    streams = getattr(channel.connection, "_transport_factory", None)
    stream = streams.stream if isinstance(streams, _Streams) else None
    receiver = RECEIVERS.get(stream) if stream is not None else None
    if receiver is None:
        return False
    number, assembly = channel.number, Assembly(push)
    receiver.direct[number] = assembly

    def forget(_: Any) -> None:
        if receiver.direct.get(number) is assembly:
            del receiver.direct[number]

    channel.closing.add_done_callback(forget)
    return True


# -- settle -------------------------------------------------------------------------------------

class QueuedFrames:
    """Acks and rejects of one channel, put straight into its connection's write queue."""

    __slots__ = ("_channel", "_overflow", "_task")

    def __init__(self, channel: Any) -> None:
        self._channel = channel
        # Payloads waiting for room in a full write queue, written in order by one task: a
        # later ack must never overtake an earlier reject of a tag it covers.
        self._overflow: deque[ChannelFrame] = deque()
        self._task: asyncio.Task[None] | None = None

    def send(self, frames: list[Any]) -> None:
        """Queue ``frames`` for writing, after every frame sent before."""
        channel = self._channel
        payload = ChannelFrame.marshall(channel_number=channel.number, frames=frames)
        if not self._overflow:
            try:
                channel.write_queue.put_nowait(payload)
                return
            except asyncio.QueueFull:
                pass
        self._overflow.append(payload)
        if len(self._overflow) == 1:
            # A task of the channel's own: aiormq ends it when the channel or its connection
            # closes, so a write queue that a dropped connection left full strands no task.
            self._task = channel.create_task(self._write_overflow())
            self._task.add_done_callback(_ignore_result)

    async def drain(self, frames: list[Any]) -> None:
        """Send ``frames`` and wait until they and every frame before them are written."""
        if self._task is not None and not self._task.done():
            await asyncio.wait({self._task})  # earlier frames go out first
        channel = self._channel
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await channel.write_queue.put(ChannelFrame.marshall(
            channel_number=channel.number, frames=frames, drain_future=written))
        await written

    async def _write_overflow(self) -> None:
        overflow, queue = self._overflow, self._channel.write_queue
        try:
            while overflow:
                await queue.put(overflow[0])
                overflow.popleft()
        finally:
            overflow.clear()  # the channel is gone: its deliveries come back anyway


def _ignore_result(task: asyncio.Task[Any]) -> None:
    with contextlib.suppress(BaseException):
        task.result()
