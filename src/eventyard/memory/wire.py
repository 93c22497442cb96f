"""Message headers as the AMQP client writes and reads them, for the in-memory broker.

A message published to RabbitMQ goes through the client's encoder, which refuses what it cannot
write (a lone surrogate, a type it does not know, an integer beyond 64 bits), and a delivered
one through its decoder, which gives values back changed (a float in 32 bits, a datetime in
whole seconds and in UTC, a string that is not UTF-8 as bytes). The in-memory broker puts every
header table through the same two steps, and checks that the message's content header fits a
frame, so that a message fails, or changes, in the same way on both brokers.

The rules follow the AMQP client eventyard uses on RabbitMQ (pamqp 3/4, under aiormq); this
module imports no AMQP client. ``tests/differential`` compares the two on the same messages.
"""

from __future__ import annotations

import calendar
import datetime
import decimal
import struct
import time
from collections.abc import Callable, Mapping
from typing import Any

_U8 = struct.Struct(">B")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_F32 = struct.Struct(">f")
_MAX_KEY_BYTES = 128  # longer field names are cut to this many bytes
_MAX_SHORT = 255
_MAX_LONG = 2**32 - 1
_EMPTY_TABLE = b"\x00\x00\x00\x00"
# (type tag, lowest, highest, layout): the client picks the first that holds an integer.
_INTEGERS = ((b"b", -(2**7), 2**7 - 1, struct.Struct(">b")),
             (b"s", -(2**15), 2**15 - 1, struct.Struct(">h")),
             (b"u", 0, 2**16 - 1, struct.Struct(">H")),
             (b"I", -(2**31), 2**31 - 1, struct.Struct(">i")),
             (b"i", 0, 2**32 - 1, struct.Struct(">I")),
             (b"l", -(2**63), 2**63 - 1, struct.Struct(">q")))
# A content header frame: 2 bytes class, 2 weight, 8 body size, 2 property flags; a frame adds
# 7 bytes before its payload and 1 after (RabbitMQ's limit on the payload: frame_max - 8).
_HEADER_FIXED = 14
FRAME_OVERHEAD = 8


# -- writing ---------------------------------------------------------------------------------
def encode_table(table: Any) -> bytes:
    """``table`` as the client writes a field table; ``TypeError`` (or the ``UnicodeEncodeError``
    of a lone surrogate) for what it cannot write, as the client raises it."""
    if not table:
        return _EMPTY_TABLE
    if not isinstance(table, dict):
        raise TypeError(f"dict required, received {type(table)}")
    parts: list[bytes] = []
    for key, value in sorted(table.items()):  # the client writes fields sorted by name
        raw = key.encode("utf-8")
        if len(raw) > _MAX_KEY_BYTES:
            key = raw[:_MAX_KEY_BYTES].decode("utf-8", "ignore")
            raw = key.encode("utf-8")
        parts.append(_U8.pack(len(raw)) + raw)
        try:
            parts.append(encode_value(value))
        except TypeError as error:
            raise TypeError(f"{key} error: {error}") from error
    payload = b"".join(parts)
    return _U32.pack(len(payload)) + payload


def encode_value(value: Any) -> bytes:
    """One field value with its type tag, as the client writes it."""
    if isinstance(value, bool):
        return b"t" + _U8.pack(int(value))
    if isinstance(value, int):
        for tag, low, high, layout in _INTEGERS:
            if low <= value <= high:
                return tag + layout.pack(value)
        raise TypeError(f"Unsupported numeric value: {value}")
    if isinstance(value, decimal.Decimal):
        return b"D" + _decimal(value)
    if isinstance(value, float):
        return b"f" + _F32.pack(value)
    if isinstance(value, str):
        return b"S" + _long_string(value)
    if isinstance(value, datetime.datetime | time.struct_time):
        return b"T" + _timestamp(value)
    if isinstance(value, dict):
        return b"F" + encode_table(value)
    if isinstance(value, list):
        items = b"".join(encode_value(item) for item in value)
        return b"A" + _U32.pack(len(items)) + items
    if isinstance(value, bytearray):
        return b"x" + _U32.pack(len(value)) + bytes(value)
    if value is None:
        return b"V"
    raise TypeError(f"Unknown type: {type(value)} ({value!r})")


def _long_string(value: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > _MAX_LONG:
        raise TypeError(f"string exceeds maximum length of {_MAX_LONG} bytes")
    return _U32.pack(len(raw)) + raw


def short_string_size(value: str) -> int:
    """Bytes a short-string property takes; ``TypeError`` past 255 bytes, as the client."""
    raw = value.encode("utf-8")
    if len(raw) > _MAX_SHORT:
        raise TypeError(f"string exceeds maximum length of {_MAX_SHORT} bytes")
    return 1 + len(raw)


def _decimal(value: decimal.Decimal) -> bytes:
    exponent = value.as_tuple().exponent
    if not isinstance(exponent, int):  # NaN, infinity
        raise TypeError(f"Cannot encode {value} as a decimal")
    if exponent > 0:
        scale, mantissa = 0, int(value)
    else:
        scale, mantissa = -exponent, int(value.scaleb(-exponent))
    if not 0 <= scale <= 255:
        raise TypeError("Decimal scale range: 0 to 255")
    if not -(2**31) <= mantissa <= 2**31 - 1:
        raise TypeError("Decimal mantissa range: -2147483648 to 2147483647")
    return struct.pack(">Bi", scale, mantissa)


def _timestamp(value: datetime.datetime | time.struct_time) -> bytes:
    if isinstance(value, time.struct_time):
        return _U64.pack(calendar.timegm(value))
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        value = value.replace(tzinfo=datetime.UTC)  # a naive datetime is taken as UTC
    return _U64.pack(int(value.timestamp()))


# -- reading ---------------------------------------------------------------------------------
def decode_table(data: bytes) -> dict[str, Any]:
    """A field table as the client reads it; ``ValueError`` (or ``RecursionError``) where the
    client fails to read it."""
    return _table(data, 0)[1]


def _table(data: bytes, offset: int) -> tuple[int, dict[str, Any]]:
    (length,) = _unpack(_U32, data, offset)
    offset += 4
    end = offset + length
    if end > len(data):
        raise ValueError("Field table length exceeds available data")
    table: dict[str, Any] = {}
    while offset < end:
        (size,) = _unpack(_U8, data, offset)
        offset += 1
        if offset + size > end:
            raise ValueError("Field table key length exceeds data")
        key = data[offset:offset + size].decode("utf-8")  # UnicodeDecodeError: unreadable
        offset, table[key] = _value(data, offset + size)
    return end, table


def _value(data: bytes, offset: int) -> tuple[int, Any]:
    if offset >= len(data):
        return offset, None
    tag = data[offset:offset + 1]
    reader = _READERS.get(tag)
    if reader is None:
        raise ValueError(f"Unknown type: {tag!r}")
    return reader(data, offset + 1)


def _unpack(layout: struct.Struct, data: bytes, offset: int) -> tuple[Any, ...]:
    try:
        return layout.unpack_from(data, offset)
    except struct.error as error:
        raise ValueError("Could not unpack data") from error


def _fixed(layout: struct.Struct) -> Callable[[bytes, int], tuple[int, Any]]:
    def read(data: bytes, offset: int) -> tuple[int, Any]:
        return offset + layout.size, _unpack(layout, data, offset)[0]
    return read


def _bool(data: bytes, offset: int) -> tuple[int, Any]:
    return offset + 1, bool(_unpack(_U8, data, offset)[0])


def _read_decimal(data: bytes, offset: int) -> tuple[int, Any]:
    scale, raw = _unpack(struct.Struct(">Bi"), data, offset)
    return offset + 5, decimal.Decimal(raw) * (decimal.Decimal(10) ** -scale)


def _read_string(data: bytes, offset: int) -> tuple[int, Any]:
    (length,) = _unpack(_U32, data, offset)
    raw = data[offset + 4:offset + 4 + length]
    try:
        return offset + 4 + length, raw.decode("utf-8")
    except UnicodeDecodeError:  # the client gives such a string back as bytes
        return offset + 4 + length, raw


def _read_bytes(data: bytes, offset: int) -> tuple[int, Any]:
    (length,) = _unpack(_U32, data, offset)
    return offset + 4 + length, bytearray(data[offset + 4:offset + 4 + length])


def _read_array(data: bytes, offset: int) -> tuple[int, Any]:
    (length,) = _unpack(_U32, data, offset)
    offset += 4
    end = offset + length
    if end > len(data):
        raise ValueError("Field array length exceeds available data")
    items = []
    while offset < end:
        offset, item = _value(data, offset)
        items.append(item)
    return offset, items


def _read_timestamp(data: bytes, offset: int) -> tuple[int, Any]:
    (seconds,) = _unpack(_U64, data, offset)
    if seconds > 0xFFFFFFFF:  # past 2106: the client takes it for milliseconds
        seconds /= 1000.0
    return offset + 8, datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)


def _void(data: bytes, offset: int) -> tuple[int, Any]:
    return offset, None


_READERS: dict[bytes, Callable[[bytes, int], tuple[int, Any]]] = {
    b"t": _bool, b"b": _fixed(struct.Struct(">b")), b"B": _fixed(_U8),
    b"s": _fixed(struct.Struct(">h")), b"u": _fixed(struct.Struct(">H")),
    b"I": _fixed(struct.Struct(">i")), b"i": _fixed(_U32), b"l": _fixed(struct.Struct(">q")),
    b"L": _fixed(struct.Struct(">q")), b"f": _fixed(_F32), b"d": _fixed(struct.Struct(">d")),
    b"D": _read_decimal, b"S": _read_string, b"A": _read_array, b"T": _read_timestamp,
    b"F": lambda data, offset: _table(data, offset), b"V": _void, b"\x00": _void,
    b"x": _read_bytes,
}


# -- the content header ----------------------------------------------------------------------
def content_header_size(table: bytes, *, content_type: str | None, message_id: str | None,
                        type: str | None, timestamp: int | None,
                        correlation_id: str | None = None) -> int:
    """Bytes of the content-header frame payload of a message published as eventyard does
    (persistent, with these properties; ``table`` is its encoded headers, empty for none)."""
    size = _HEADER_FIXED + 1  # the delivery mode
    for value in (content_type, message_id, type, correlation_id):
        if value is not None:
            size += short_string_size(value)
    if timestamp is not None:
        size += 8
    if table != _EMPTY_TABLE:
        size += len(table)
    return size


def readable(table: bytes) -> tuple[dict[str, Any], str | None]:
    """The headers the client reads from ``table``, or ``({}, why)`` when it cannot."""
    try:
        return decode_table(table), None
    except (ValueError, RecursionError, OverflowError, OSError) as error:
        return {}, f"headers: {type(error).__name__}: {error}"


def as_delivered(headers: Mapping[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """``headers`` written as the client writes them and read back as it reads them."""
    table = encode_table(dict(headers)) if headers else _EMPTY_TABLE
    return table, (decode_table(table) if table != _EMPTY_TABLE else {})
