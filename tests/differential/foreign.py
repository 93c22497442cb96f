"""A client in another language, as far as the tests need one: it publishes a message whose
headers are a field table written byte by byte, which no Python AMQP client would write (a
string that is not UTF-8, a field name that is not UTF-8).

It speaks just enough AMQP 0-9-1 over a socket (pamqp's public ``frame.marshal`` and
``frame.unmarshal`` for the method frames) to open a channel, publish one message with
confirms and close.
"""

from __future__ import annotations

import asyncio
import struct
from urllib.parse import unquote, urlsplit

from pamqp import commands as spec
from pamqp import frame
from pamqp.header import ProtocolHeader

_HEADER_FRAME = 2
_BODY_FRAME = 3
_FRAME_END = b"\xce"
_BASIC_CLASS = 60
_HEADERS_FLAG = 1 << 13
_MESSAGE_ID_FLAG = 1 << 7


def content_header(body_size: int, headers_table: bytes, message_id: str | None) -> bytes:
    """A content-header frame for channel 1 carrying ``headers_table`` as it is."""
    flags = _HEADERS_FLAG | (_MESSAGE_ID_FLAG if message_id is not None else 0)
    payload = struct.pack(">HHQH", _BASIC_CLASS, 0, body_size, flags) + headers_table
    if message_id is not None:
        raw = message_id.encode()
        payload += struct.pack(">B", len(raw)) + raw
    return struct.pack(">BHI", _HEADER_FRAME, 1, len(payload)) + payload + _FRAME_END


async def _read(reader: asyncio.StreamReader) -> object:
    head = await reader.readexactly(7)
    (size,) = struct.unpack(">I", head[3:])
    rest = await reader.readexactly(size + 1)
    return frame.unmarshal(head + rest)[2]


async def _expect(reader: asyncio.StreamReader, kind: type) -> object:
    while True:
        received = await _read(reader)
        if isinstance(received, kind):
            return received
        if isinstance(received, spec.Connection.Close | spec.Channel.Close):
            raise ConnectionError(f"the broker closed: {received.reply_text}")


async def publish_foreign(url: str, exchange: str, routing_key: str, body: bytes,
                          headers_table: bytes, message_id: str | None = None) -> None:
    """Publish one message whose headers are ``headers_table`` (an encoded field table)."""
    parts = urlsplit(url)
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 5672)
    try:
        writer.write(ProtocolHeader().marshal())
        await _expect(reader, spec.Connection.Start)
        credentials = f"\0{unquote(parts.username or 'guest')}\0{unquote(parts.password or 'guest')}"
        writer.write(frame.marshal(spec.Connection.StartOk(
            client_properties={"product": "eventyard-tests-foreign"}, mechanism="PLAIN",
            response=credentials, locale="en_US"), 0))
        tune = await _expect(reader, spec.Connection.Tune)
        assert isinstance(tune, spec.Connection.Tune)
        writer.write(frame.marshal(spec.Connection.TuneOk(
            channel_max=tune.channel_max, frame_max=tune.frame_max, heartbeat=0), 0))
        writer.write(frame.marshal(spec.Connection.Open(virtual_host=vhost), 0))
        await _expect(reader, spec.Connection.OpenOk)
        writer.write(frame.marshal(spec.Channel.Open(), 1))
        await _expect(reader, spec.Channel.OpenOk)
        writer.write(frame.marshal(spec.Confirm.Select(), 1))
        await _expect(reader, spec.Confirm.SelectOk)
        writer.write(frame.marshal(spec.Basic.Publish(exchange=exchange, routing_key=routing_key), 1))
        writer.write(content_header(len(body), headers_table, message_id))
        writer.write(struct.pack(">BHI", _BODY_FRAME, 1, len(body)) + body + _FRAME_END)
        await _expect(reader, spec.Basic.Ack)
        writer.write(frame.marshal(spec.Connection.Close(reply_code=200, reply_text="done",
                                                         class_id=0, method_id=0), 0))
        await _expect(reader, spec.Connection.CloseOk)
    finally:
        writer.close()
        await writer.wait_closed()


def table(*fields: tuple[bytes, bytes]) -> bytes:
    """A field table from (name, tagged value) pairs, both as raw bytes."""
    payload = b"".join(struct.pack(">B", len(name)) + name + value for name, value in fields)
    return struct.pack(">I", len(payload)) + payload


def long_string(raw: bytes) -> bytes:
    """A tagged long-string field value holding ``raw`` as it is (UTF-8 or not)."""
    return b"S" + struct.pack(">I", len(raw)) + raw
