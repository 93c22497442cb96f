"""The memory broker writes and reads headers byte for byte as the AMQP client does.

pamqp is the client eventyard uses on RabbitMQ; the memory broker must not import it, so its
own encoder is checked against it here, value by value and error by error.
"""

from __future__ import annotations

import datetime
import decimal
import struct
import time
from typing import Any

import pytest
from pamqp import commands as spec
from pamqp import decode, encode, frame
from pamqp.header import ContentHeader

from eventyard.memory import wire

TABLES: list[dict[str, Any]] = [
    {},
    {"a": 1, "b": -1, "c": 200, "d": -200, "e": 40_000, "f": 70_000, "g": -70_000,
     "h": 3_000_000_000, "i": 2**40, "j": -(2**63), "k": 2**63 - 1},
    {"t": True, "f": False, "n": None, "s": "text", "u": "ünïcödé", "e": ""},
    {"float": 0.1, "inf": float("inf"), "tiny": 1e-30},
    {"d1": decimal.Decimal("1.50"), "d2": decimal.Decimal("1E+2"), "d3": decimal.Decimal("-0.001")},
    {"naive": datetime.datetime(2026, 1, 2, 3, 4, 5, 678_000),
     "aware": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
     "struct": time.gmtime(1_700_000_000)},
    {"bytes": bytearray(b"\x00\xff\xfe"), "list": [1, "a", [2.5, None], {"k": "v"}],
     "nested": {"a": {"b": {"c": [True]}}}},
    {"k" * 200: "a name longer than 128 bytes", "é" * 70: "cut inside a character"},
    {"x-death": [{"count": 2, "reason": "expired", "queue": "retry.q",
                  "time": datetime.datetime(2026, 11, 28, 7, 0, tzinfo=datetime.UTC),
                  "exchange": "retry.x", "routing-keys": ["retry.q"]}]},
]


@pytest.mark.parametrize("table", TABLES)
def test_tables_are_written_and_read_as_the_client_does(table: dict[str, Any]) -> None:
    written = wire.encode_table(table)
    assert written == encode.field_table(table)
    assert wire.decode_table(written) == decode.field_table(written)[1]
    assert wire.as_delivered(table) == (written, decode.field_table(written)[1] if table else {})


BAD_VALUES: list[Any] = [{1}, (1, 2), b"raw", 2**64, -(2**63) - 1, "a\udcffb", object(),
                         decimal.Decimal("NaN"), decimal.Decimal("1E-300"),
                         decimal.Decimal(2**40), 1e39, datetime.datetime(1960, 1, 1)]


def _failure(action: Any) -> tuple[type[BaseException], str] | None:
    try:
        action()
    except Exception as error:
        return type(error), str(error)
    return None


def _stable_id(value: Any) -> str:
    """The value's repr, without an address (parallel workers must collect the same ids)."""
    return "object()" if type(value) is object else repr(value)


@pytest.mark.parametrize("value", BAD_VALUES, ids=_stable_id)
def test_what_the_client_refuses_is_refused_alike(value: Any) -> None:
    table = {"h": value}
    expected = _failure(lambda: encode.field_table(table))
    assert expected is not None
    assert _failure(lambda: wire.encode_table(table)) == expected


@pytest.mark.parametrize("table", [{"\udcff": 1}, {1: "a"}, {"a": 1, 2: "b"}], ids=repr)
def test_field_names_the_client_refuses_are_refused_alike(table: dict[Any, Any]) -> None:
    expected = _failure(lambda: encode.field_table(table))
    assert expected is not None and _failure(lambda: wire.encode_table(table)) == expected


def _table(*fields: bytes, cut: int = 0) -> bytes:
    """A field table of raw (name + tagged value) fields; its length ``cut`` bytes too long."""
    payload = b"".join(fields)
    return struct.pack(">I", len(payload) + cut) + payload


def _name(raw: bytes) -> bytes:
    return bytes([len(raw)]) + raw


FOREIGN = [
    _table(_name(b"s") + b"S" + struct.pack(">I", 2) + b"\xff\xfe"),  # not UTF-8: read as bytes
    _table(_name(b"b") + b"B\x05", _name(b"l") + b"L" + struct.pack(">q", -5),
           _name(b"d") + b"d" + struct.pack(">d", 0.25), _name(b"v") + b"\x00"),
    _table(_name(b"t") + b"T" + struct.pack(">Q", 2**40)),  # past 2106: read as milliseconds
    _table(_name(b"\xffname") + b"V"),  # a field name that is not UTF-8
    _table(_name(b"a") + b"Z"),  # a type tag nobody knows
    _table(_name(b"t") + b"T\xff\xff"),  # a value cut short
    _table(_name(b"a") + b"V", cut=5),  # a length past the data
    _table(_name(b"t") + b"T" + struct.pack(">Q", 2**63)),  # no such date
]


@pytest.mark.parametrize("raw", FOREIGN, ids=repr)
def test_tables_from_other_clients_are_read_as_the_client_reads_them(raw: bytes) -> None:
    expected = _failure(lambda: decode.field_table(raw))
    if expected is None:
        assert wire.decode_table(raw) == decode.field_table(raw)[1]
        assert wire.readable(raw) == (decode.field_table(raw)[1], None)
    else:
        assert _failure(lambda: wire.decode_table(raw)) is not None
        headers, why = wire.readable(raw)
        assert headers == {} and why is not None and why.startswith("headers: ")


@pytest.mark.parametrize("properties", [
    {"content_type": "application/json", "message_id": "m" * 36, "type": "user.created",
     "timestamp": 1_700_000_000, "headers": {"correlation_id": "c" * 300}},
    {"content_type": "application/json", "message_id": "id", "type": None, "timestamp": None,
     "headers": {}},
])
def test_the_content_header_is_as_long_as_the_clients(properties: dict[str, Any]) -> None:
    headers = properties["headers"]
    marshalled = frame.marshal(ContentHeader(0, 10, spec.Basic.Properties(
        content_type=properties["content_type"], delivery_mode=2,
        message_id=properties["message_id"], message_type=properties["type"],
        timestamp=(datetime.datetime.fromtimestamp(properties["timestamp"], datetime.UTC)
                   if properties["timestamp"] is not None else None),
        headers=headers or None)), 1)
    table, _ = wire.as_delivered(headers)
    size = wire.content_header_size(table, content_type=properties["content_type"],
                                    message_id=properties["message_id"], type=properties["type"],
                                    timestamp=properties["timestamp"])
    assert size == len(marshalled) - wire.FRAME_OVERHEAD


def test_a_short_string_property_over_255_bytes_is_refused() -> None:
    with pytest.raises(TypeError, match="255 bytes"):
        wire.content_header_size(b"\x00\x00\x00\x00", content_type="a", message_id="x" * 256,
                                 type=None, timestamp=None)
