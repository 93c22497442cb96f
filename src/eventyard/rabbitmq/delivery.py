"""A message delivered by RabbitMQ, as the ``Delivery`` port describes it, and its acks.

Acks are coalesced: ``Settlements`` remembers which delivery tags of a channel are still in
hand and, every ``batch`` acks or ``FLUSH_SECONDS`` after the first unsent one, sends one
``basic.ack(multiple=True)`` for the run of settled tags below the oldest one still in hand,
and single acks for settled tags above it. A tag is acked only after ``ack()`` was called for
it, so the guarantee "ack after handling" holds; only the frames are fewer. The frames go out
in order through aiormq's ``basic_ack``/``basic_reject`` (``PublicSettler``), or straight into
the connection's write queue with the fast paths on (``fastpaths.QueuedFrames``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Mapping
from typing import Any, Protocol

from aiormq.abc import DeliveredMessage
from pamqp import commands as spec

from eventyard.rabbitmq import fastpaths
from eventyard.rabbitmq.assembling import Delivered

logger = logging.getLogger(__name__)
_EMPTY: Mapping[str, Any] = {}
FLUSH_SECONDS = 0.002


class _Sender(Protocol):
    def send(self, frames: list[Any]) -> None: ...

    async def drain(self, frames: list[Any]) -> None: ...


class PublicSettler:
    """Sends acks and rejects with aiormq's public ``basic_ack``/``basic_reject``, in order.

    One task of the channel's own sends them one after the other, without waiting for the
    socket except after the last one it has: once it is idle, every frame it sent is written.
    """

    __slots__ = ("_channel", "_pending", "_task")

    def __init__(self, channel: Any) -> None:
        self._channel = channel
        self._pending: deque[Any] = deque()
        self._task: asyncio.Task[None] | None = None

    def send(self, frames: list[Any]) -> None:
        """Send ``frames`` after every frame sent before."""
        self._pending.extend(frames)
        if self._task is None or self._task.done():
            # aiormq ends the channel's tasks when it closes: none waits on a dead connection.
            self._task = self._channel.create_task(self._run())
            self._task.add_done_callback(_ignore_result)

    async def drain(self, frames: list[Any]) -> None:
        """Send ``frames`` and wait until they and every frame before them are written."""
        if frames:
            self.send(frames)
        if self._task is not None and not self._task.done():
            await asyncio.wait({self._task})

    async def _run(self) -> None:
        pending, channel = self._pending, self._channel
        try:
            while pending:
                frame = pending.popleft()
                if isinstance(frame, spec.Basic.Ack):
                    await channel.basic_ack(frame.delivery_tag, multiple=frame.multiple,
                                            wait=not pending)
                else:
                    await channel.basic_reject(frame.delivery_tag, requeue=frame.requeue,
                                               wait=not pending)
        except BaseException:
            pending.clear()  # the channel is gone: its deliveries come back anyway
            raise


class Settlements:
    """The unsettled delivery tags of one consuming channel; sends their acks in batches."""

    __slots__ = ("_channel", "_flush_at", "_loop", "_scheduled", "_sender", "_settled", "in_hand")

    def __init__(self, channel: Any, batch: int) -> None:
        self._channel = channel
        self._loop = asyncio.get_running_loop()
        self._flush_at = max(1, batch)
        self.in_hand: set[int] = set()
        self._settled: list[int] = []
        self._scheduled = False
        self._sender: _Sender = (fastpaths.QueuedFrames(channel) if fastpaths.active()
                                 else PublicSettler(channel))

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
        if self.is_closed:
            return
        await self._sender.drain(self._take_acks())

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
        if self.is_closed:
            logger.debug("%d settlement(s) lost with their channel; RabbitMQ redelivers",
                         len(frames))
            return
        self._sender.send(frames)


def _ignore_result(task: asyncio.Task[Any]) -> None:
    with contextlib.suppress(BaseException):
        task.result()


class RabbitMqDelivery:
    """One delivery; ``ack``/``reject`` on a dead channel are no-ops (RabbitMQ redelivers)."""

    __slots__ = ("_body", "_frame", "_properties", "_settlements", "_tag", "queue")

    def __init__(self, message: DeliveredMessage | Delivered, queue: str,
                 settlements: Settlements) -> None:
        frame: Any = message.delivery  # a Basic.Deliver for consumed messages
        self._body = message.body
        self._properties = message.header.properties
        self._frame = frame
        self._tag = int(frame.delivery_tag)
        self._settlements = settlements
        self.queue = queue
        settlements.in_hand.add(self._tag)

    @property
    def body(self) -> bytes:
        """The raw body."""
        body = self._body
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
        headers = self._properties.headers
        return headers if headers is not None else _EMPTY

    @property
    def redelivered(self) -> bool:
        """True when RabbitMQ delivered it before."""
        return bool(getattr(self._frame, "redelivered", False))

    @property
    def message_id(self) -> str | None:
        """The ``message_id`` property."""
        value = self._properties.message_id
        return str(value) if value is not None else None

    @property
    def type(self) -> str | None:
        """The ``type`` property."""
        value = self._properties.message_type
        return str(value) if value is not None else None

    @property
    def timestamp(self) -> int | None:
        """The ``timestamp`` property in seconds."""
        value = self._properties.timestamp
        return int(value.timestamp()) if value is not None else None

    @property
    def correlation_id(self) -> str | None:
        """The ``correlation_id`` property."""
        value = self._properties.correlation_id
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
