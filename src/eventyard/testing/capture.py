"""Capture what buses publish, over any backend, or over none (``capturing_backend``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from eventyard import codec
from eventyard.buses import Backend, NotImplementedBroker
from eventyard.engine import LoopThread
from eventyard.errors import MessageDecodeError
from eventyard.messages import Message
from eventyard.ports import Consumption, DeliveryCallback, OutgoingMessage, Transport
from eventyard.testing.recorder import MessageRecorder
from eventyard.topology import Topology

logger = logging.getLogger(__name__)


class _RecordingTransport:
    """Passes everything to ``inner``; records each confirmed publish."""

    def __init__(self, inner: Transport, recorder: MessageRecorder) -> None:
        self._inner = inner
        self._recorder = recorder

    async def declare(self, topology: Topology) -> None:
        await self._inner.declare(topology)

    async def delete(self, topology: Topology) -> None:
        await self._inner.delete(topology)

    async def publish(self, messages: Sequence[OutgoingMessage]) -> list[int]:
        unroutable = await self._inner.publish(messages)
        decoded: list[Message] = []
        for message in messages:
            try:
                decoded.append(codec.decode(message.body, allow_unknown=True))
            except MessageDecodeError:  # raw bytes a test published on purpose
                logger.debug("not recording an undecodable publish to %s", message.exchange)
        self._recorder.record_published(decoded)
        return unroutable

    async def consume(self, queue: str, callback: DeliveryCallback, *,
                      prefetch: int) -> Consumption:
        return await self._inner.consume(queue, callback, prefetch=prefetch)

    async def close(self) -> None:
        await self._inner.close()


class RecordingBackend:
    """A backend that forwards to ``inner`` and records what its publishers publish."""

    def __init__(self, inner: Backend, recorder: MessageRecorder | None = None) -> None:
        self.inner = inner
        self.recorder = recorder if recorder is not None else MessageRecorder()
        self._wrapped: dict[int, _RecordingTransport] = {}

    @property
    def loop_thread(self) -> LoopThread:
        """The inner backend's loop."""
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


def capturing_backend(recorder: MessageRecorder | None = None) -> RecordingBackend:
    """A backend that delivers nothing and records every publish: unit-test code that publishes."""
    return RecordingBackend(NotImplementedBroker(), recorder)
