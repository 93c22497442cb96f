"""Rewriting a hostile message's frame that the AMQP client cannot read into one it can.

RabbitMQ passes on message properties and routing keys it does not check: a header name that
is not UTF-8, a table nested thousands deep, a timestamp past the year 9999, a delivery mode of
7, a routing key that is not UTF-8. pamqp raises on each, and a frame the client cannot read
ends the whole connection; the message comes back first on the next one, so the consumer would
reconnect for ever. Here such a frame is read field by field with pamqp's public decoders and
written again with what could be read: a property that cannot be read (or written back) is
left out and named in the ``UNREADABLE_PROPERTIES`` header, which makes the consumer dead-letter
the message, body intact; a name that is not UTF-8 is read with U+FFFD for its bad bytes. Both
of eventyard's frame readers (``framing``'s and the fast path's) use it, so a hostile message
reads the same on both. Other frames are as unreadable as before.
"""

from __future__ import annotations

import struct

import pamqp.frame
from aiormq.exceptions import InvalidFrameError
from pamqp import commands as spec
from pamqp import decode
from pamqp.header import ContentHeader

from eventyard.ports import UNREADABLE_PROPERTIES

_FRAME = struct.Struct(">BHI")
_METHOD, _HEADER = 1, 2
_DELIVER = struct.pack(">HH", 60, 60)
_FRAME_END = b"\xce"
_REASON_LIMIT = 300


def worth_checking(frame: bytes) -> bool:
    """True for the frames this module can rewrite: content headers and deliveries."""
    kind = frame[0]
    return kind == _HEADER or (kind == _METHOD and frame[7:11] == _DELIVER)


def repair(frame: bytes, error: BaseException) -> bytes:
    """``frame``, which pamqp failed to read with ``error``, rewritten so that pamqp reads it.

    Raise ``InvalidFrameError`` for a frame that is not a message's content header or delivery,
    or one cut short.
    """
    try:
        kind, channel, size = _FRAME.unpack_from(frame)
        payload = frame[7:7 + size]
        if len(payload) == size:
            if kind == _HEADER:
                return pamqp.frame.marshal(_content_header(payload), channel)
            if kind == _METHOD and payload[:4] == _DELIVER:
                return _frame(_METHOD, channel, _DELIVER + _deliver(payload[4:]))
    except (struct.error, IndexError, ValueError):
        pass  # truncated beyond repair: as unreadable as pamqp found it
    raise InvalidFrameError(f"cannot read a frame from RabbitMQ: {error}") from error


def _content_header(payload: bytes) -> ContentHeader:
    _, weight, body_size = struct.unpack_from(">HHQ", payload)
    offset, flags, shift = 12, 0, 0
    while True:  # flag words, each with a continuation bit
        (word,) = struct.unpack_from(">H", payload, offset)
        offset += 2
        flags |= (word & 0xFFFE) << shift
        shift += 16
        if not word & 1:
            break
    properties = spec.Basic.Properties()
    problems: list[str] = []
    data = payload[offset:]
    for name in spec.Basic.Properties.attributes():
        if not flags & spec.Basic.Properties.flags[name]:
            continue
        kind = spec.Basic.Properties.amqp_type(name)
        size = _field_size(kind, data)
        if size > len(data):
            raise ValueError("content header properties are truncated")
        try:
            _, value = decode.by_type(data[:size], kind)
            if name == "delivery_mode" and value not in (1, 2):
                raise ValueError(f"delivery mode {value!r} is neither 1 nor 2")
            if name == "cluster_id" and value:
                raise ValueError("cluster_id must be empty")
            properties.encode_property(name, value)  # what cannot be written back is unreadable too
            setattr(properties, name, value)
        except Exception as failure:  # RecursionError included: a table nested too deep
            problems.append(f"{name}: {type(failure).__name__}: {failure}")
        data = data[size:]
    if problems:
        headers = dict(properties.headers or {})
        headers[UNREADABLE_PROPERTIES] = "; ".join(problems)[:_REASON_LIMIT]
        properties.headers = headers
    return ContentHeader(weight, body_size, properties)


def _field_size(kind: str, data: bytes) -> int:
    if kind == "shortstr":
        return 1 + data[0]
    if kind in ("table", "longstr"):
        return 4 + int(struct.unpack_from(">I", data)[0])
    if kind == "octet":
        return 1
    if kind in ("timestamp", "longlong"):
        return 8
    raise ValueError(f"unexpected property type {kind}")


def _deliver(arguments: bytes) -> bytes:
    """The arguments of a ``basic.deliver``, every name in valid UTF-8."""
    consumer_tag, offset = _short_text(arguments, 0)
    delivery_tag, flags = struct.unpack_from(">QB", arguments, offset)
    exchange, offset = _short_text(arguments, offset + 9)
    routing_key, _ = _short_text(arguments, offset)
    return (_short(consumer_tag) + struct.pack(">QB", delivery_tag, flags & 1) + _short(exchange)
            + _short(routing_key))


def _short_text(data: bytes, offset: int) -> tuple[str, int]:
    length = data[offset]
    raw = data[offset + 1:offset + 1 + length]
    if len(raw) < length:
        raise ValueError("short string is truncated")
    return raw.decode("utf-8", "replace"), offset + 1 + length


def _short(text: str) -> bytes:
    # Each bad byte became three (U+FFFD): cut to a short string's 255 bytes, on a character.
    data = text.encode()[:255].decode("utf-8", "ignore").encode()
    return bytes([len(data)]) + data


def _frame(kind: int, channel: int, payload: bytes) -> bytes:
    return _FRAME.pack(kind, channel, len(payload)) + payload + _FRAME_END
