"""Capture what buses publish, over any broker, or over none (``capturing_broker``).

A ``RecordingBroker`` stands in for the broker it wraps wherever that one is taken: the
generic buses and consumers, the RabbitMQ and memory classes (it passes on what they read of
their connector: settings, the blocking publisher of a single RabbitMQ publish, recorded too).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from eventyard import codec
from eventyard.buses import Broker, NotImplementedBroker
from eventyard.engine import LoopThread
from eventyard.errors import MessageDecodeError
from eventyard.messages import Message
from eventyard.ports import Consumption, DeliveryCallback, OutgoingMessage, Transport
from eventyard.testing.recorder import MessageRecorder
from eventyard.topology import Topology

logger = logging.getLogger(__name__)


def _record(recorder: MessageRecorder, messages: Iterable[OutgoingMessage]) -> None:
    decoded: list[Message] = []
    for message in messages:
        try:
            decoded.append(codec.decode(message.body, allow_unknown=True))
        except MessageDecodeError:  # raw bytes a test published on purpose
            logger.debug("not recording an undecodable publish to %s", message.exchange)
    recorder.record_published(decoded)


class _RecordingTransport:
    """Passes everything to ``inner``; records each confirmed publish."""

    def __init__(self, inner: Transport, recorder: MessageRecorder) -> None:
        self._inner = inner
        self._recorder = recorder

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)  # frame_max and the like, as the inner one has them

    async def declare(self, topology: Topology) -> None:
        await self._inner.declare(topology)

    async def delete(self, topology: Topology) -> None:
        await self._inner.delete(topology)

    async def publish(self, messages: Sequence[OutgoingMessage]) -> list[int]:
        unroutable = await self._inner.publish(messages)
        _record(self._recorder, messages)
        return unroutable

    async def consume(self, queue: str, callback: DeliveryCallback, *,
                      prefetch: int) -> Consumption:
        return await self._inner.consume(queue, callback, prefetch=prefetch)

    async def close(self) -> None:
        await self._inner.close()


class _RecordingBlockingPublisher:
    """A RabbitMQ connector's blocking publisher (one message on the caller's thread), recording."""

    def __init__(self, inner: Any, recorder: MessageRecorder) -> None:
        self._inner = inner
        self._recorder = recorder

    def try_publish(self, message: OutgoingMessage) -> bool | None:
        routed: bool | None = self._inner.try_publish(message)
        if routed is not None:  # None: not sent here, the event-loop path sends (and records) it
            _record(self._recorder, [message])
        return routed

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class RecordingBroker:
    """A broker that forwards to ``inner`` and records what its publishers publish.

    Anything else asked of it (``settings``, ``close()``, ...) is the inner broker's.
    """

    def __init__(self, inner: Broker, recorder: MessageRecorder | None = None) -> None:
        self.inner = inner
        self.recorder = recorder if recorder is not None else MessageRecorder()
        self._wrapped: dict[int, _RecordingTransport] = {}
        self._blocking: _RecordingBlockingPublisher | None = None

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (copying, unpickling): no recursion through it
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def blocking_publisher(self) -> _RecordingBlockingPublisher:
        """The inner broker's blocking publisher (RabbitMQ's single publish), recording."""
        inner = getattr(self.inner, "blocking_publisher")  # noqa: B009 - AttributeError if none
        if self._blocking is None or self._blocking._inner is not inner:
            self._blocking = _RecordingBlockingPublisher(inner, self.recorder)
        return self._blocking

    @property
    def loop_thread(self) -> LoopThread:
        """The inner broker's loop."""
        return self.inner.loop_thread

    async def publisher_transport(self) -> Transport:
        """The inner publisher transport, recording."""
        inner = await self.inner.publisher_transport()
        wrapped = self._wrapped.get(id(inner))
        if wrapped is None:
            wrapped = self._wrapped[id(inner)] = _RecordingTransport(inner, self.recorder)
        return wrapped

    async def consumer_transport(self) -> Transport:
        """The inner consumer transport (consumers are observed, not wrapped)."""
        return await self.inner.consumer_transport()

    @property
    def published(self) -> list[Message]:
        """Every message published so far."""
        return self.recorder.published()


def capturing_broker(recorder: MessageRecorder | None = None) -> RecordingBroker:
    """A broker that delivers nothing and records every publish: unit-test code that publishes."""
    return RecordingBroker(NotImplementedBroker(), recorder)


# The names of earlier releases, kept so that existing tests keep importing them.
RecordingBackend = RecordingBroker
capturing_backend = capturing_broker
