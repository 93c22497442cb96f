"""Frames the AMQP client cannot read, read leniently: a hostile message never ends a connection.

Each case runs through both of eventyard's frame readers: aiormq's own reader on a
``FrameStream`` (the public path) and the fast path's buffered reader.
"""

from __future__ import annotations

import asyncio
import struct

import pamqp.frame
import pytest
from aiormq.exceptions import InvalidFrameError
from pamqp import commands as spec
from pamqp.header import ContentHeader

from eventyard.ports import UNREADABLE_PROPERTIES
from eventyard.rabbitmq import fastpaths
from eventyard.rabbitmq.framing import BrokerAlarm, FrameStream
from eventyard.rabbitmq.lenient import repair


def _short(value: bytes) -> bytes:
    return bytes([len(value)]) + value


def _table(entries: bytes) -> bytes:
    return struct.pack(">I", len(entries)) + entries


def _frame(kind: int, payload: bytes, channel: int = 1) -> bytes:
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + b"\xce"


def _header_frame(*, headers: bytes | None = None, timestamp: int | None = None,
                  message_id: bytes = b"m-1", body_size: int = 42) -> bytes:
    flags, parts = 0, []
    if headers is not None:
        flags |= 1 << 13
        parts.append(headers)
    flags |= 1 << 7
    parts.append(_short(message_id))
    if timestamp is not None:
        flags |= 1 << 6
        parts.append(struct.pack(">Q", timestamp))
    return _frame(2, struct.pack(">HHQH", 60, 0, body_size, flags) + b"".join(parts))


def _nested(depth: int) -> bytes:
    table = _table(b"")
    for _ in range(depth):
        table = _table(_short(b"a") + b"F" + table)
    return table


@pytest.fixture(params=["public", "fast"])
def path(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _frames(raw: bytes, path: str, alarm: BrokerAlarm | None = None) -> list[object]:
    """The frames aiormq gets from ``raw`` (as off a socket) on ``path``."""
    async def read() -> list[object]:
        reader = asyncio.StreamReader()
        reader.feed_data(raw)
        reader.feed_eof()
        stream = FrameStream(reader, alarm or BrokerAlarm(), fast=path == "fast")
        receiver = fastpaths.frame_receiver(stream)
        receiver.started = True
        return [frame async for _, _, frame in receiver]
    return asyncio.run(read())


def _read(raw: bytes, path: str) -> object:
    [frame] = _frames(raw, path)
    return frame


@pytest.mark.parametrize(("raw", "problem"), [
    (_header_frame(headers=_table(_short(b"k\xff") + b"S" + struct.pack(">I", 1) + b"v")),
     "headers: UnicodeDecodeError"),
    (_header_frame(headers=_nested(3000)), "headers: RecursionError"),
    (_header_frame(timestamp=2**63 - 1), "timestamp: "),
], ids=["header name not utf-8", "headers nested 3000 deep", "timestamp past year 9999"])
def test_unreadable_properties_are_left_out_and_named(raw: bytes, problem: str, path: str) -> None:
    with pytest.raises(Exception):  # noqa: B017 - whatever pamqp raises on it
        pamqp.frame.unmarshal(raw)
    header = _read(raw, path)
    assert isinstance(header, ContentHeader)
    assert header.body_size == 42 and header.properties.message_id == "m-1"
    assert problem in header.properties.headers[UNREADABLE_PROPERTIES]


def test_readable_headers_are_kept_beside_an_unreadable_timestamp(path: str) -> None:
    raw = _header_frame(headers=_table(_short(b"trace") + b"S" + struct.pack(">I", 2) + b"t1"),
                        timestamp=2**63 - 1)
    header = _read(raw, path)
    assert isinstance(header, ContentHeader)
    assert header.properties.headers["trace"] == "t1" and header.properties.timestamp is None


def test_a_delivery_with_a_routing_key_and_exchange_pamqp_refuses_is_read(path: str) -> None:
    arguments = (_short(b"ctag") + struct.pack(">Q", 7) + b"\x01" + _short(b"an exchange")
                 + _short(b"a.\xff.b"))
    raw = _frame(1, struct.pack(">HH", 60, 60) + arguments)
    with pytest.raises(Exception):  # noqa: B017
        pamqp.frame.unmarshal(raw)
    deliver = _read(raw, path)
    assert isinstance(deliver, spec.Basic.Deliver)
    assert (deliver.consumer_tag, deliver.delivery_tag, deliver.redelivered) == ("ctag", 7, True)
    assert (deliver.exchange, deliver.routing_key) == ("an exchange", "a.\ufffd.b")


def test_a_good_frame_is_read_as_pamqp_reads_it(path: str) -> None:
    properties = spec.Basic.Properties(message_id="m", headers={"a": 1})
    raw = pamqp.frame.marshal(ContentHeader(0, 3, properties), 1)
    header = _read(raw, path)
    assert isinstance(header, ContentHeader) and header.properties.headers == {"a": 1}


@pytest.mark.parametrize("raw", [
    _frame(1, struct.pack(">HH", 10, 10) + b"\xff"),  # another method, unreadable
    _frame(2, b"\x00\x3c"),  # a content header cut short
    _frame(1, struct.pack(">HH", 60, 60) + b"\x05ct"),  # a delivery cut short
])
def test_other_unreadable_frames_end_the_connection_as_before(raw: bytes, path: str) -> None:
    with pytest.raises(InvalidFrameError):
        _read(raw, path)
    with pytest.raises(InvalidFrameError):
        repair(raw, ValueError("unreadable"))


def test_a_long_routing_key_that_is_not_utf8_is_cut_to_a_short_string_on_a_character(
        path: str) -> None:
    arguments = _short(b"ctag") + struct.pack(">Q", 1) + b"\x00" + _short(b"x") + _short(b"\xff" * 255)
    deliver = _read(_frame(1, struct.pack(">HH", 60, 60) + arguments), path)
    assert isinstance(deliver, spec.Basic.Deliver)
    assert deliver.routing_key == "\ufffd" * 85  # 255 bytes of three-byte characters


def test_the_broker_blocking_and_unblocking_the_connection_is_noted(path: str) -> None:
    """So that a publish that times out during an alarm can say so."""
    alarm = BrokerAlarm()
    blocked = pamqp.frame.marshal(spec.Connection.Blocked(reason="low on memory"), 0)
    unblocked = pamqp.frame.marshal(spec.Connection.Unblocked(), 0)
    heartbeat = bytes([8, 0, 0, 0, 0, 0, 0, 0xCE])
    frames = _frames(blocked + heartbeat, path, alarm)
    assert isinstance(frames[0], spec.Connection.Blocked) and alarm.reason == "low on memory"
    _frames(unblocked, path, alarm)
    assert alarm.reason is None
