"""Reading the frames of a hostile message that the AMQP client's own parser rejects.

RabbitMQ passes on message properties and routing keys it does not check: a header name that
is not UTF-8, a table nested thousands deep, a timestamp past the year 9999, a delivery mode of
7, a routing key that is not UTF-8. pamqp raises on each, and a frame it cannot read ends the
whole connection; the message comes back first on the next one, so the consumer would
reconnect for ever. Here such a frame is read field by field with pamqp's public decoders: what
cannot be read is left out and named in the ``UNREADABLE_PROPERTIES`` header, which makes the
consumer dead-letter the message, body intact. Other frames are as unreadable as before.
"""

from __future__ import annotations

import struct
from typing import Any

from aiormq.exceptions import InvalidFrameError
from pamqp import commands as spec
from pamqp import decode
from pamqp.header import ContentHeader

from eventyard.ports import UNREADABLE_PROPERTIES

_FRAME = struct.Struct(">BHI")
_METHOD, _HEADER = 1, 2
_DELIVER = (60, 60)
_REASON_LIMIT = 300


def unmarshal_leniently(raw: bytes, error: BaseException) -> tuple[int, int, Any]:
    """``pamqp.frame.unmarshal(raw)`` for a frame it failed on with ``error``, read leniently.

    Raise ``InvalidFrameError`` for a frame that is not a message's content header or delivery.
    """
    try:
        frame_type, channel, size = _FRAME.unpack_from(raw)
        payload = raw[7:7 + size]
        if frame_type == _HEADER:
            return 8 + size, channel, _content_header(payload)
        if frame_type == _METHOD and struct.unpack_from(">HH", payload) == _DELIVER:
            return 8 + size, channel, _deliver(payload[4:])
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
    for name in spec.Basic.Properties.__slots__:
        if not flags & spec.Basic.Properties.flags[name]:
            continue
        kind = getattr(spec.Basic.Properties, "_" + name)
        size = _field_size(kind, data)
        if size > len(data):
            raise ValueError("content header properties are truncated")
        try:
            _, value = decode.by_type(data[:size], kind)
            if name == "delivery_mode" and value not in (1, 2):
                raise ValueError(f"delivery mode {value!r} is neither 1 nor 2")
            if name == "cluster_id" and value:
                raise ValueError("cluster_id must be empty")
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


def _deliver(arguments: bytes) -> Any:
    consumer_tag, offset = _short_text(arguments, 0)
    (delivery_tag,) = struct.unpack_from(">Q", arguments, offset)
    redelivered = bool(arguments[offset + 8] & 1)
    exchange, offset = _short_text(arguments, offset + 9)
    routing_key, _ = _short_text(arguments, offset)
    # Built without pamqp's check of the exchange name: RabbitMQ allows names it refuses.
    frame: Any = spec.Basic.Deliver.__new__(spec.Basic.Deliver)
    frame.consumer_tag, frame.delivery_tag, frame.redelivered = consumer_tag, delivery_tag, redelivered
    frame.exchange, frame.routing_key = exchange, routing_key
    return frame


def _short_text(data: bytes, offset: int) -> tuple[str, int]:
    length = data[offset]
    raw = data[offset + 1:offset + 1 + length]
    if len(raw) < length:
        raise ValueError("short string is truncated")
    return raw.decode("utf-8", "replace"), offset + 1 + length
