"""The socket under eventyard's aiormq connections: whole frames, each one the client can read.

eventyard opens its connections with a transport factory of its own (``FrameStreams``, passed
to ``aiormq.connect`` as ``transport_factory``: aiormq's public API). Its reader,
``FrameStream``, hands aiormq's frame reader the socket's bytes a frame at a time and looks at
each frame on the way: a message's frame pamqp cannot read is rewritten so that it can
(``lenient``; one hostile message must not end the connection), and the broker's
``connection.blocked`` / ``connection.unblocked`` are noted in the connection's
``BrokerAlarm``, so that a publish that times out can name the alarm. With the fast paths on,
``fastpaths`` reads a ``FrameStream``'s socket in large chunks instead, doing the same.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import aiormq
import pamqp.frame
from aiormq.exceptions import AMQPConnectionError
from pamqp import commands as spec

from eventyard.rabbitmq import lenient

_HEADER = struct.Struct(">BHI")  # frame type, channel, payload size
_METHOD = 1
_BLOCKING = (struct.pack(">HH", 10, 60), struct.pack(">HH", 10, 61))  # connection.(un)blocked


class BrokerAlarm:
    """What the broker said last about blocking one connection: the alarm's reason, or None."""

    __slots__ = ("reason",)

    def __init__(self) -> None:
        self.reason: str | None = None

    def note(self, frame: Any) -> None:
        """Take ``frame`` into account if it is a ``connection.blocked`` or ``unblocked``."""
        if isinstance(frame, spec.Connection.Blocked):
            self.reason = str(frame.reason or "no reason given")
        elif isinstance(frame, spec.Connection.Unblocked):
            self.reason = None


def readable(frame: bytes, alarm: BrokerAlarm) -> bytes:
    """``frame`` as pamqp can read it (rewritten if it is a hostile message's); alarms noted."""
    if lenient.worth_checking(frame):
        try:
            pamqp.frame.unmarshal(frame)
        except Exception as error:  # RecursionError included: a table nested too deep
            return lenient.repair(frame, error)
    elif frame[0] == _METHOD and frame[1:3] == b"\0\0" and frame[7:11] in _BLOCKING:
        alarm.note(pamqp.frame.unmarshal(frame)[2])
    return frame


class FrameStream:
    """The reader aiormq's frame reader gets: the socket's bytes, a whole frame at a time.

    It answers the calls aiormq's reader makes of an ``asyncio.StreamReader`` (``at_eof``,
    ``readexactly``, ``read``); ``reader`` is the socket's own, ``fast`` says whether the fast
    paths read it instead.
    """

    def __init__(self, reader: asyncio.StreamReader, alarm: BrokerAlarm, *, fast: bool) -> None:
        self.reader = reader
        self.alarm = alarm
        self.fast = fast
        self._ready = bytearray()
        self._started = False

    def at_eof(self) -> bool:
        """True when every byte was read and the socket is at its end."""
        return not self._ready and self.reader.at_eof()

    async def readexactly(self, n: int) -> bytes:
        """The next ``n`` bytes (``asyncio.IncompleteReadError`` if the socket ends first)."""
        ready = self._ready
        while len(ready) < n:
            ready += await self._next_frame()
        data = bytes(ready[:n])
        del ready[:n]
        return data

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all that is ready), as ``StreamReader.read``."""
        if not self._ready:
            return await self.reader.read(n)
        end = len(self._ready) if n < 0 else n
        data = bytes(self._ready[:end])
        del self._ready[:end]
        return data

    async def _next_frame(self) -> bytes:
        head = await self.reader.readexactly(7)
        if not self._started:
            self._started = True
            if head.startswith(b"AMQP"):
                return head  # the broker's protocol header: aiormq's reader refuses it
        size = _HEADER.unpack(head)[2]
        return readable(head + await self.reader.readexactly(size + 1), self.alarm)


class FrameStreams(aiormq.TransportFactory):
    """Opens the socket of one eventyard connection (plain or TLS) with a ``FrameStream``."""

    def __init__(self, alarm: BrokerAlarm, *, fast: bool) -> None:
        self.alarm = alarm
        self.fast = fast

    async def create(self, url: Any, **kwargs: Any) -> tuple[asyncio.StreamReader,
                                                            asyncio.StreamWriter]:
        """Connect to ``url``'s host, as aiormq's own factories do."""
        provider = kwargs.pop("ssl_context_provider", None)
        context = (await provider.get_context()
                   if provider is not None and url.scheme == "amqps" else None)
        try:
            reader, writer = await asyncio.open_connection(host=url.host, port=url.port,
                                                           ssl=context, **kwargs)
        except OSError as error:
            raise AMQPConnectionError(*error.args) from error
        stream: Any = FrameStream(reader, self.alarm, fast=self.fast)
        return stream, writer
