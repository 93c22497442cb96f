"""Deliveries assembled straight from the frames of a consuming channel (a fast path).

With the fast paths on, the frame reader of an eventyard connection hands each frame of a
consuming channel's deliveries (``basic.deliver``, its content header and body frames) to that
channel's ``Assembly`` instead of to aiormq; the assembly reads them with ``struct`` and hands
the whole delivery to the consumption at once: no frame queue, no task and no pamqp object per
frame. It reads what ``RabbitMqDelivery`` reads of aiormq's ``DeliveredMessage``, in the same
shape (``delivery``, ``header.properties``, ``body``), and the values pamqp would give; a frame
it cannot read that way (a hostile message's) is read by pamqp, and repaired by ``lenient`` if
pamqp cannot read it either, as on every other path.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import pamqp.frame
from pamqp import decode

from eventyard.rabbitmq import lenient

_DELIVER = struct.pack(">HH", 60, 60)  # basic.deliver
_U64 = struct.Struct(">Q")
_HEADER_START = struct.Struct(">HHQH")  # class, weight, body size, property flags
_METHOD, _HEADER, _BODY = 1, 2, 3
_FRAME_END = 0xCE
# The basic properties in wire order: (flag, name or None when eventyard does not keep it, kind).
_SHORT, _OCTET, _TABLE, _STAMP = 0, 1, 2, 3
_PROPERTIES = (
    (0x8000, None, _SHORT), (0x4000, None, _SHORT), (0x2000, "headers", _TABLE),
    (0x1000, None, _OCTET), (0x0800, None, _OCTET), (0x0400, "correlation_id", _SHORT),
    (0x0200, None, _SHORT), (0x0100, None, _SHORT), (0x0080, "message_id", _SHORT),
    (0x0040, "timestamp", _STAMP), (0x0020, "message_type", _SHORT), (0x0010, None, _SHORT),
    (0x0008, None, _SHORT), (0x0004, None, _SHORT),
)


class Deliver:
    """What a ``basic.deliver`` frame says (the attributes of pamqp's ``Basic.Deliver``)."""

    __slots__ = ("consumer_tag", "delivery_tag", "exchange", "redelivered", "routing_key")

    def __init__(self, consumer_tag: str, delivery_tag: int, redelivered: bool, exchange: str,
                 routing_key: str) -> None:
        self.consumer_tag = consumer_tag
        self.delivery_tag = delivery_tag
        self.redelivered = redelivered
        self.exchange = exchange
        self.routing_key = routing_key


class Properties:
    """The properties eventyard reads of a delivery (named as pamqp's ``Basic.Properties``)."""

    __slots__ = ("_stamp", "correlation_id", "headers", "message_id", "message_type")

    def __init__(self) -> None:
        self.headers: Mapping[str, Any] | None = None
        self.correlation_id: str | None = None
        self.message_id: str | None = None
        self.message_type: str | None = None
        self._stamp: int | None = None

    @property
    def timestamp(self) -> datetime | None:
        """The ``timestamp`` property, as pamqp gives it (a value past 2106 is milliseconds)."""
        stamp = self._stamp
        if stamp is None:
            return None
        return datetime.fromtimestamp(stamp / 1000.0 if stamp > 0xFFFFFFFF else stamp, tz=UTC)


class Header:
    """A content header: the body's size and the properties."""

    __slots__ = ("body_size", "properties")

    def __init__(self, body_size: int, properties: Any) -> None:
        self.body_size = body_size
        self.properties = properties


class Delivered:
    """A whole delivery, as aiormq's ``DeliveredMessage`` shapes it."""

    __slots__ = ("body", "delivery", "header")

    def __init__(self, delivery: Any, header: Any, body: bytes) -> None:
        self.delivery = delivery
        self.header = header
        self.body = body


def _short(buffer: bytearray, at: int) -> tuple[str, int]:
    size = buffer[at]
    end = at + 1 + size
    return buffer[at + 1:end].decode(), end


def read_deliver(buffer: bytearray, start: int, end: int) -> Any:
    """The ``basic.deliver`` of the frame at ``buffer[start:end]``."""
    try:
        at = start + 11
        consumer_tag, at = _short(buffer, at)
        tag = _U64.unpack_from(buffer, at)[0]
        redelivered = bool(buffer[at + 8] & 1)
        exchange, at = _short(buffer, at + 9)
        routing_key, at = _short(buffer, at)
        if at != end - 1:
            raise ValueError("basic.deliver of an unexpected size")
        return Deliver(consumer_tag, tag, redelivered, exchange, routing_key)
    except Exception:  # not readable here: as pamqp reads it (or repairs it)
        return _by_pamqp(buffer, start, end)


def _plan(flags: int) -> tuple[tuple[str | None, int], ...]:
    """The properties that ``flags`` says are present, in wire order (cached by flags)."""
    plan = _PLANS.get(flags)
    if plan is None:
        if flags & 1:
            raise ValueError("a second word of property flags")
        plan = _PLANS[flags] = tuple((name, kind) for flag, name, kind in _PROPERTIES
                                     if flags & flag)
    return plan


_PLANS: dict[int, tuple[tuple[str | None, int], ...]] = {}


def read_header(buffer: bytearray, start: int, end: int) -> Any:
    """The content header of the frame at ``buffer[start:end]``."""
    try:
        _, _, size, flags = _HEADER_START.unpack_from(buffer, start + 7)
        properties = Properties()
        at = start + 21
        for name, kind in _plan(flags):
            if kind == _SHORT:
                length = buffer[at]
                if name is not None:
                    setattr(properties, name, buffer[at + 1:at + 1 + length].decode())
                at += 1 + length
            elif kind == _OCTET:
                at += 1
            elif kind == _STAMP:
                stamp = properties._stamp = _U64.unpack_from(buffer, at)[0]
                if stamp > 0xFFFFFFFF:  # milliseconds: past year 9999 pamqp cannot read it
                    datetime.fromtimestamp(stamp / 1000.0, tz=UTC)
                at += 8
            else:
                length = 4 + struct.unpack_from(">I", buffer, at)[0]
                properties.headers = decode.field_table(bytes(buffer[at:at + length]))[1]
                at += length
        if at != end - 1:
            raise ValueError("content header of an unexpected size")
        return Header(size, properties)
    except Exception:  # not readable here: as pamqp reads it (or repairs it)
        return _by_pamqp(buffer, start, end)


def _by_pamqp(buffer: bytearray, start: int, end: int) -> Any:
    raw = bytes(buffer[start:end])
    try:
        return pamqp.frame.unmarshal(raw)[2]
    except Exception as error:  # a hostile message's properties, say
        return pamqp.frame.unmarshal(lenient.repair(raw, error))[2]


class Assembly:
    """The deliveries of one consuming channel, assembled from their frames."""

    __slots__ = ("_deliver", "_got", "_header", "_parts", "push")

    def __init__(self, push: Callable[[Delivered], None]) -> None:
        self.push = push
        self._deliver: Any = None
        self._header: Any = None
        self._parts: list[bytes] = []
        self._got = 0

    def take(self, buffer: bytearray, start: int, kind: int, end: int) -> bool:
        """Take the frame at ``buffer[start:end]`` if it is part of a delivery (True); any
        other frame of the channel is aiormq's (False)."""
        if buffer[end - 1] != _FRAME_END:
            return False  # aiormq's reader reports the broken frame
        if kind == _METHOD:
            if buffer[start + 7:start + 11] != _DELIVER:
                return False
            self._deliver = read_deliver(buffer, start, end)
            self._header, self._parts, self._got = None, [], 0
            return True
        if self._deliver is None:
            return False  # the content of another method (basic.return, basic.get-ok)
        if kind == _HEADER and self._header is None:
            self._header = read_header(buffer, start, end)
            if self._header.body_size == 0:
                self._complete(b"")
            return True
        if kind == _BODY and self._header is not None:
            part = bytes(buffer[start + 7:end - 1])
            if not self._parts and len(part) >= self._header.body_size:
                self._complete(part)
                return True
            self._parts.append(part)
            self._got += len(part)
            if self._got >= self._header.body_size:
                self._complete(b"".join(self._parts))
            return True
        return False

    def _complete(self, body: bytes) -> None:
        deliver, header = self._deliver, self._header
        self._deliver = self._header = None
        self._parts, self._got = [], 0
        self.push(Delivered(deliver, header, body))
