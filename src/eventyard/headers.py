"""AMQP 0-9-1 header tables as a broker carries them: what a value costs and what can be sent.

Headers come from anyone allowed to publish, so they are checked where they are read, not
trusted. ``encodable`` turns a table into one the AMQP client can always send again (integers
beyond signed 64 bits, bytes, tuples, floats a 32-bit float cannot hold, datetimes before 1970,
nesting without end all become something that fits). ``table_size`` is the number of bytes a
table takes in a content-header frame, which must fit the connection's ``frame_max``: a copy of a
message whose headers grew past it would make RabbitMQ close the connection.
"""

from __future__ import annotations

import datetime
import decimal
import math
from collections.abc import Mapping
from typing import Any

LONG_LONG_MIN = -(2**63)
LONG_LONG_MAX = 2**63 - 1
DEFAULT_FRAME_MAX = 131072  # RabbitMQ's default, and the in-memory broker's limit
# A content-header frame holds, beside the headers table: 8 bytes of frame, 14 of class, weight,
# body size and flags, and the other properties (three short strings of at most 256 bytes each,
# a timestamp, the delivery mode). What is left of frame_max is the headers' budget.
_FRAME_RESERVE = 1024
_FLOAT32_MAX = 3.4028234663852886e38
_MAX_DEPTH = 32
_MAX_KEY_BYTES = 128  # the AMQP client cuts longer field names to this


def header_budget(frame_max: int) -> int:
    """The bytes a message's headers table may take on a connection with ``frame_max``."""
    if frame_max <= 0:  # AMQP's "no limit"
        frame_max = 2**31 - 1
    return max(frame_max - _FRAME_RESERVE, 1024)


def encodable(table: Mapping[Any, Any]) -> dict[str, Any]:
    """``table`` with every key and value made sendable as an AMQP field table."""
    return _table(table, 0)


def _table(table: Mapping[Any, Any], depth: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in table.items():
        name = text(key) if type(key) is not str else _clean_str(key)
        if not name.isascii() or len(name) > _MAX_KEY_BYTES:
            name = name.encode("utf-8")[:_MAX_KEY_BYTES].decode("utf-8", "ignore")
        result[name] = _value(value, depth + 1)
    return result


def _value(value: Any, depth: int) -> Any:
    kind = type(value)
    if kind is str:
        return _clean_str(value)
    if value is None or kind is bool:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value) if LONG_LONG_MIN <= value <= LONG_LONG_MAX else str(int(value))
    if isinstance(value, float):
        value = float(value)
        return value if not math.isfinite(value) or abs(value) <= _FLOAT32_MAX else repr(value)
    if isinstance(value, str):
        return _clean_str(str(value))
    if isinstance(value, bytes | bytearray | memoryview):
        return bytearray(value)
    if isinstance(value, decimal.Decimal):
        return value if _decimal_fits(value) else str(value)
    if isinstance(value, datetime.datetime):
        return value if _timestamp_fits(value) else value.isoformat()
    if isinstance(value, Mapping | list | tuple):
        if depth >= _MAX_DEPTH:
            return f"(a {type(value).__name__} nested deeper than {_MAX_DEPTH} levels)"
        if isinstance(value, Mapping):
            return _table(value, depth)
        return [_value(item, depth + 1) for item in value]
    return text(value)


def _clean_str(value: str) -> str:
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: not UTF-8, the client could not send it
        return value.encode("utf-8", "replace").decode("utf-8")
    return value


def text(value: Any) -> str:
    """``value`` as a string AMQP can carry (valid UTF-8), whatever ``value`` is."""
    try:
        text = str(value)
    except Exception:  # a value whose __str__ raises: its type is all we can say
        text = f"<{type(value).__name__}>"
    return _clean_str(text)


def _decimal_fits(value: decimal.Decimal) -> bool:
    exponent = value.as_tuple().exponent
    if not isinstance(exponent, int):  # NaN, infinity
        return False
    if exponent > 0:
        return -(2**31) <= int(value) < 2**31
    return -exponent <= 255 and -(2**31) <= int(value.scaleb(-exponent)) < 2**31


def _timestamp_fits(value: datetime.datetime) -> bool:
    try:
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.UTC)
        return 0 <= value.timestamp() < 2**63
    except (OverflowError, OSError, ValueError):
        return False


def table_size(table: Mapping[str, Any]) -> int:
    """Bytes ``table`` (made ``encodable``) takes in a frame, its 4-byte length included."""
    size = 4
    for key, value in table.items():
        size += 1 + min(_utf8_len(key), _MAX_KEY_BYTES) + _value_size(value)
    return size


def _value_size(value: Any) -> int:
    kind = type(value)
    if kind is str:
        return 5 + _utf8_len(value)
    if value is None:
        return 1
    if kind is bool:
        return 2
    if kind is int:
        if -128 <= value <= 127:
            return 2
        if -32768 <= value <= 65535:
            return 3
        if -(2**31) <= value < 2**32:
            return 5
        return 9
    if kind is float:
        return 5
    if isinstance(value, decimal.Decimal):
        return 6
    if isinstance(value, datetime.datetime):
        return 9
    if isinstance(value, Mapping):
        return 1 + table_size(value)
    if kind is list:
        return 5 + sum(_value_size(item) for item in value)
    if kind is bytearray:
        return 5 + len(value)
    return 5 + _utf8_len(text(value))  # not made encodable: counted as its text


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "replace"))
