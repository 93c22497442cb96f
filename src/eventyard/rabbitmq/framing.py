"""A buffered AMQP frame reader for aiormq connections.

aiormq reads every frame with three ``readexactly`` calls under a lock; at thousands of
messages a second (three frames each) that costs more than decoding them. This reader takes
whatever the socket has (up to 64 KiB) and cuts as many whole frames out of it as it holds,
returning the same frames, in the same order, with the same errors at end of stream. A frame
pamqp cannot read is read leniently (``lenient``): one hostile message must not end the
connection.
"""

from __future__ import annotations

import contextlib
import contextvars
import struct
from collections.abc import Iterator
from typing import Any

import aiormq.connection as amqp_connection
import pamqp.frame
from aiormq.exceptions import AMQPConnectionError, ProtocolSyntaxError

from eventyard.rabbitmq.lenient import unmarshal_leniently

_HEADER = struct.Struct(">BHI")  # frame type, channel, payload size
_READ_SIZE = 65536


class BufferedFrameReceiver(amqp_connection.FrameReceiver):
    """``FrameReceiver`` that parses frames out of one buffer filled by large reads."""

    def __init__(self, reader: Any) -> None:
        super().__init__(reader)
        self._buffer = bytearray()

    async def get_frame(self) -> Any:
        buffer = self._buffer
        if not buffer and self.reader.at_eof():
            raise StopAsyncIteration  # as aiormq's own reader: the stream ended between frames
        while True:
            if len(buffer) >= 7:
                if not self.started:
                    if buffer.startswith(b"AMQP"):
                        raise ProtocolSyntaxError("Unexpected AMQP protocol header")
                    self.started = True
                _, _, size = _HEADER.unpack_from(buffer)
                end = 7 + size + 1
                if len(buffer) >= end:
                    raw = bytes(buffer[:end])
                    del buffer[:end]
                    try:
                        return pamqp.frame.unmarshal(raw)
                    except Exception as error:  # a hostile message's properties, say
                        return unmarshal_leniently(raw, error)
            try:
                data = await self.reader.read(_READ_SIZE)
            except OSError as error:
                raise AMQPConnectionError(f"Server communication error: {error!r}") from error
            if not data:
                if buffer:
                    raise AMQPConnectionError(
                        "Server connection unexpectedly closed. "
                        f"Read {len(buffer)} bytes of an unfinished frame")
                raise AMQPConnectionError("Server connection unexpectedly closed")
            buffer += data


_ORIGINAL = amqp_connection.FrameReceiver
_BUFFERED: contextvars.ContextVar[bool] = contextvars.ContextVar("eventyard_buffered_frames",
                                                                 default=False)


def _frame_receiver(reader: Any) -> Any:
    # aiormq builds its receiver by this module-level name while connecting; only connections
    # eventyard opens (inside ``buffered_frames()``) get the buffered one.
    return BufferedFrameReceiver(reader) if _BUFFERED.get() else _ORIGINAL(reader)


@contextlib.contextmanager
def buffered_frames() -> Iterator[None]:
    """Connections that aiormq opens in this context read frames with ``BufferedFrameReceiver``."""
    if amqp_connection.FrameReceiver is _ORIGINAL:
        amqp_connection.FrameReceiver = _frame_receiver  # type: ignore[assignment,misc]
    token = _BUFFERED.set(True)
    try:
        yield
    finally:
        _BUFFERED.reset(token)
