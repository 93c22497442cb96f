"""A message delivered by RabbitMQ, as the ``Delivery`` port describes it, and its acks.

Acks are coalesced: ``Settlements`` remembers which delivery tags of a channel are still in
hand and, every ``batch`` acks or ``FLUSH_SECONDS`` after the first unsent one, sends one
``basic.ack(multiple=True)`` for the run of settled tags below the oldest one still in hand,
and single acks for settled tags above it. A tag is acked only after ``ack()`` was called for
it, so the guarantee "ack after handling" holds; only the frames are fewer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Mapping
from typing import Any

from aiormq.abc import ChannelFrame, DeliveredMessage
from pamqp import commands as spec

logger = logging.getLogger(__name__)
_EMPTY: Mapping[str, Any] = {}
FLUSH_SECONDS = 0.002


class Settlements:
    """The unsettled delivery tags of one consuming channel; sends their acks in batches."""

    __slots__ = ("_channel", "_flush_at", "_loop", "_overflow", "_overflow_task", "_scheduled",
                 "_settled", "in_hand")

    def __init__(self, channel: Any, batch: int) -> None:
        self._channel = channel
        self._loop = asyncio.get_running_loop()
        self._flush_at = max(1, batch)
        self.in_hand: set[int] = set()
        self._settled: list[int] = []
        self._scheduled = False
        # Payloads waiting for room in a full write queue, written in order by one task: a
        # later ack must never overtake an earlier reject of a tag it covers.
        self._overflow: deque[ChannelFrame] = deque()
        self._overflow_task: asyncio.Task[None] | None = None

    @property
    def is_closed(self) -> bool:
        """True when the channel is gone (its deliveries can no longer be settled)."""
        channel = self._channel
        return bool(channel is None or channel.is_closed)

    def ack(self, tag: int) -> None:
        """Settle ``tag`` as done; its ack goes out within ``FLUSH_SECONDS`` at the latest."""
        if tag not in self.in_hand:
            return
        self.in_hand.discard(tag)
        self._settled.append(tag)
        if len(self._settled) >= self._flush_at:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_later(FLUSH_SECONDS, self.flush)

    def reject(self, tag: int, requeue: bool) -> None:
        """Reject ``tag`` now (rejects are rare: they are not batched)."""
        if tag not in self.in_hand:
            return
        self.in_hand.discard(tag)
        self._write([spec.Basic.Reject(delivery_tag=tag, requeue=requeue)])

    def flush(self) -> None:
        """Send the acks of every settled tag."""
        self._scheduled = False
        if self._settled:
            self._write(self._take_acks())

    async def drain(self) -> None:
        """Send the settled acks and wait until they (and every frame before them) are written.

        Called before the connection closes: aiormq drops frames still queued at that moment.
        """
        self._scheduled = False
        channel = self._channel
        if channel is None or channel.is_closed:
            return
        if self._overflow_task is not None and not self._overflow_task.done():
            await asyncio.wait({self._overflow_task})  # earlier frames go out first
        written: asyncio.Future[None] = self._loop.create_future()
        await channel.write_queue.put(ChannelFrame.marshall(
            channel_number=channel.number, frames=self._take_acks(), drain_future=written))
        await written

    def _take_acks(self) -> list[spec.Basic.Ack]:
        settled, self._settled = self._settled, []
        if not settled:
            return []
        floor = min(self.in_hand) if self.in_hand else None
        below = [tag for tag in settled if floor is None or tag < floor]
        frames: list[spec.Basic.Ack] = []
        if below:
            # Every tag up to max(below) is settled: none is in hand (all in hand are >= floor).
            frames.append(spec.Basic.Ack(delivery_tag=max(below), multiple=len(below) > 1))
        if len(below) < len(settled):
            frames += [spec.Basic.Ack(delivery_tag=tag) for tag in settled
                       if floor is not None and tag > floor]
        return frames

    def _write(self, frames: list[Any]) -> None:
        channel = self._channel
        if channel is None or channel.is_closed:
            logger.debug("%d settlement(s) lost with their channel; RabbitMQ redelivers",
                         len(frames))
            return
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
            task = channel.create_task(self._write_overflow(channel))
            task.add_done_callback(_ignore_result)
            self._overflow_task = task

    async def _write_overflow(self, channel: Any) -> None:
        overflow = self._overflow
        try:
            while overflow:
                await channel.write_queue.put(overflow[0])
                overflow.popleft()
        finally:
            overflow.clear()  # the channel is gone: its deliveries come back anyway


def _ignore_result(task: asyncio.Task[Any]) -> None:
    with contextlib.suppress(BaseException):
        task.result()


class RabbitMqDelivery:
    """One delivery; ``ack``/``reject`` on a dead channel are no-ops (RabbitMQ redelivers)."""

    __slots__ = ("_frame", "_message", "_settlements", "_tag", "queue")

    def __init__(self, message: DeliveredMessage, queue: str, settlements: Settlements) -> None:
        frame: Any = message.delivery  # a Basic.Deliver for consumed messages
        self._message = message
        self._frame = frame
        self._tag = int(frame.delivery_tag)
        self._settlements = settlements
        self.queue = queue
        settlements.in_hand.add(self._tag)

    @property
    def body(self) -> bytes:
        """The raw body."""
        body = self._message.body
        return body if type(body) is bytes else bytes(body)

    @property
    def exchange(self) -> str:
        """The exchange it was published to."""
        return str(self._frame.exchange or "")

    @property
    def routing_key(self) -> str:
        """The routing key it was published (or dead-lettered) with."""
        return str(self._frame.routing_key or "")

    @property
    def headers(self) -> Mapping[str, Any]:
        """Its headers."""
        headers = self._message.header.properties.headers
        return headers if headers is not None else _EMPTY

    @property
    def redelivered(self) -> bool:
        """True when RabbitMQ delivered it before."""
        return bool(getattr(self._frame, "redelivered", False))

    @property
    def message_id(self) -> str | None:
        """The ``message_id`` property."""
        value = self._message.header.properties.message_id
        return str(value) if value is not None else None

    @property
    def type(self) -> str | None:
        """The ``type`` property."""
        value = self._message.header.properties.message_type
        return str(value) if value is not None else None

    @property
    def timestamp(self) -> int | None:
        """The ``timestamp`` property in seconds."""
        value = self._message.header.properties.timestamp
        return int(value.timestamp()) if value is not None else None

    @property
    def correlation_id(self) -> str | None:
        """The ``correlation_id`` property."""
        value = self._message.header.properties.correlation_id
        return str(value) if value is not None else None

    @property
    def is_stale(self) -> bool:
        """True when its channel is closed: it can no longer be acked."""
        return self._settlements.is_closed

    async def ack(self) -> None:
        """Ack it (the frame goes out with the acks settled around it, within milliseconds)."""
        self._settlements.ack(self._tag)

    async def reject(self, *, requeue: bool) -> None:
        """Give it back (``requeue``) or drop it to the queue's dead-letter exchange."""
        self._settlements.reject(self._tag, requeue)
