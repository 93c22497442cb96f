"""The frame reader of eventyard's connections with the fast paths on (``fastpaths``).

aiormq reads a frame with three ``readexactly`` calls under a lock; this reader reads the
socket in 64 KiB chunks and cuts whole frames out of one buffer. A frame pamqp cannot read is
repaired (``lenient``), and the broker's alarms are noted, as by ``framing.FrameStream``. The
frames of a consuming channel's deliveries are assembled into deliveries here
(``assembling``) and never reach aiormq.
"""

from __future__ import annotations

import struct
import weakref
from typing import Any

import pamqp.frame
from aiormq.connection import FrameReceiver
from aiormq.exceptions import AMQPConnectionError, ProtocolSyntaxError
from pamqp.heartbeat import Heartbeat

from eventyard.rabbitmq import lenient
from eventyard.rabbitmq.assembling import Assembly
from eventyard.rabbitmq.framing import FrameStream

_HEADER = struct.Struct(">BHI")  # frame type, channel, payload size
_READ_SIZE = 65536


_ALIVE = (8, 0, Heartbeat())  # what aiormq's reader is given after frames it did not see
RECEIVERS: weakref.WeakKeyDictionary[FrameStream, BufferedFrameReceiver] = (
    weakref.WeakKeyDictionary())


class BufferedFrameReceiver(FrameReceiver):
    """aiormq's ``FrameReceiver`` for a ``FrameStream``: frames cut out of one buffer.

    The frames of a consuming channel's deliveries go to its ``Assembly`` (``direct``) rather
    than to aiormq, whose reader is given a heartbeat before each wait for more bytes instead
    (it closes a connection that sends it nothing for a while).
    """

    def __init__(self, stream: FrameStream) -> None:
        super().__init__(stream.reader)
        self._buffer = bytearray()
        self._at = 0  # where the next frame starts in the buffer
        self._alarm = stream.alarm
        self._quiet = False  # frames went to assemblies since aiormq's reader saw one
        self.direct: dict[int, Assembly] = {}
        RECEIVERS[stream] = self

    async def get_frame(self) -> Any:
        buffer = self._buffer
        if self._at >= len(buffer) and self.reader.at_eof():
            raise StopAsyncIteration  # as aiormq's own reader: the stream ended between frames
        direct = self.direct
        while True:
            at = self._at
            if len(buffer) - at >= 7:
                if not self.started:
                    if buffer.startswith(b"AMQP"):
                        raise ProtocolSyntaxError("Unexpected AMQP protocol header")
                    self.started = True
                kind, number, size = _HEADER.unpack_from(buffer, at)
                end = at + 8 + size
                if len(buffer) >= end:
                    self._at = end
                    if direct:
                        assembly = direct.get(number)
                        if assembly is not None and assembly.take(buffer, at, kind, end):
                            self._quiet = True
                            continue
                    raw = bytes(buffer[at:end])
                    try:
                        frame = pamqp.frame.unmarshal(raw)
                    except Exception as error:  # a hostile message's properties, say
                        frame = pamqp.frame.unmarshal(lenient.repair(raw, error))
                    if frame[1] == 0:  # the connection's own: heartbeats, alarms
                        self._alarm.note(frame[2])
                    return frame
            if self._quiet:
                self._quiet = False
                return _ALIVE
            if at:
                del buffer[:at]
                self._at = 0
            try:
                data = await self.reader.read(_READ_SIZE)
            except OSError as error:
                raise AMQPConnectionError(f"Server communication error: {error!r}") from error
            if not data:
                if len(buffer) > self._at:
                    raise AMQPConnectionError(
                        "Server connection unexpectedly closed. "
                        f"Read {len(buffer) - self._at} bytes of an unfinished frame")
                raise AMQPConnectionError("Server connection unexpectedly closed")
            buffer += data
