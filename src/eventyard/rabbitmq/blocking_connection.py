"""An AMQP 0-9-1 connection on a plain socket in the calling thread, with one channel.

The handshake, the frames and a deadline for every read and write; ``BlockingPublisher``
(``blocking``) publishes on it. Every read skips heartbeats, notes ``connection.blocked`` and
turns a close from the broker into an exception.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import time
from typing import Any

import pamqp.frame
from pamqp import commands as spec
from pamqp.exceptions import PAMQPException
from pamqp.header import ProtocolHeader
from pamqp.heartbeat import Heartbeat

from eventyard.errors import ConfigurationError
from eventyard.rabbitmq.connection_problems import HandshakeRefused, connection_error, explain
from eventyard.rabbitmq.settings import ConnectionSettings

_HEADER = struct.Struct(">BHI")
CHANNEL = 1
"""The one channel a blocking connection opens."""
FRAME_MAX = 131072
_CAPABILITIES: Any = {"publisher_confirms": True, "basic.nack": True, "connection.blocked": True,
                      "authentication_failure_close": True, "consumer_cancel_notify": True}


class ChannelClosed(Exception):
    """The broker closed the channel (the frame says why)."""

    def __init__(self, frame: spec.Channel.Close) -> None:
        super().__init__(frame.reply_text)
        self.frame = frame


class ConnectionClosed(EOFError):
    """The broker closed the connection (the frame says why)."""

    def __init__(self, frame: spec.Connection.Close) -> None:
        super().__init__(f"RabbitMQ closed the connection: {frame.reply_text}")
        self.frame = frame


class BlockingConnection:
    """One AMQP connection on a socket, opened on demand; not thread-safe (callers lock)."""

    def __init__(self, settings: ConnectionSettings, name: str) -> None:
        self.settings = settings
        self.name = name
        self._socket: socket.socket | None = None
        self._buffer = bytearray()
        self._frame_max = FRAME_MAX
        self._tag = 0  # the last delivery tag of the confirming channel
        self._channel_open = False
        self._deadline = 0.0  # of the read or write under way (time.monotonic)
        self.blocked: str | None = None  # the reason of the broker's last connection.blocked

    # -- connection ---------------------------------------------------------------------------

    def _connect(self) -> None:
        problems = []
        context = self.settings.ssl_context()  # a bad CA or key file: ConfigurationError
        for host, port in self.settings.endpoints:
            try:
                self._handshake(host, port, context)
                return
            except (OSError, PAMQPException, EOFError, ChannelClosed, HandshakeRefused) as error:
                self._drop()
                problems.append(explain(error, self.settings, host, port))
        raise connection_error(self.settings, problems)

    def _handshake(self, host: str, port: int, context: ssl.SSLContext | None) -> None:
        settings = self.settings
        self._deadline = time.monotonic() + settings.connect_timeout
        sock = socket.create_connection((host, port), timeout=settings.connect_timeout)
        self._socket, self._buffer, self._tag, self._channel_open = sock, bytearray(), 0, False
        self.blocked = None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)  # heartbeats are off
        if context is not None:
            sock = self._socket = context.wrap_socket(sock, server_hostname=settings.server_name(host))
        self._write(pamqp.frame.marshal(ProtocolHeader(), 0))
        self._expect(spec.Connection.Start)
        self._send_on(0, spec.Connection.StartOk(
            client_properties={"product": "eventyard", "connection_name": self.name,
                               "capabilities": _CAPABILITIES},
            mechanism="PLAIN", response=f"\0{settings.user}\0{settings.password}"))
        try:
            tune = self._expect(spec.Connection.Tune)
        except ConnectionClosed as closed:
            raise HandshakeRefused("login", closed.frame.reply_code or 0,
                                   closed.frame.reply_text or "") from None
        except EOFError:  # a broker without authentication_failure_close just hangs up
            raise HandshakeRefused("login", 403, "connection closed after the login") from None
        self._frame_max = min(tune.frame_max or FRAME_MAX, FRAME_MAX)
        # Heartbeats off: this connection only talks while publishing; a dead one shows up as
        # an error on the next publish, which reconnects.
        self._send_on(0, spec.Connection.TuneOk(channel_max=tune.channel_max,
                                                frame_max=self._frame_max, heartbeat=0))
        self._send_on(0, spec.Connection.Open(virtual_host=settings.vhost))
        try:
            self._expect(spec.Connection.OpenOk)
        except ConnectionClosed as closed:
            raise HandshakeRefused("vhost", closed.frame.reply_code or 0,
                                   closed.frame.reply_text or "") from None

    def _open_channel(self) -> None:
        self._send(spec.Channel.Open())
        self._expect(spec.Channel.OpenOk)
        self._send(spec.Confirm.Select())
        self._expect(spec.Confirm.SelectOk)
        self._tag, self._channel_open = 0, True

    def _drop(self) -> None:
        sock, self._socket = self._socket, None
        self._channel_open = False
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    # -- frames -------------------------------------------------------------------------------

    def _send(self, *frames: Any) -> None:
        self._send_on(CHANNEL, *frames)

    def _send_on(self, channel: int, *frames: Any) -> None:
        self._write(b"".join(pamqp.frame.marshal(f, channel) for f in frames))

    def _write(self, data: bytes) -> None:
        """Write ``data`` by the deadline (``TimeoutError`` after it)."""
        sock = self._socket
        assert sock is not None
        sock.settimeout(self._remaining())
        sock.sendall(data)

    def _remaining(self) -> float:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed")
        return remaining

    def _expect(self, kind: type) -> Any:
        frame = self._read()
        if not isinstance(frame, kind):
            raise EOFError(f"expected {kind.__name__}, got {type(frame).__name__}")
        return frame

    def _read(self) -> Any:
        """The next frame that matters (heartbeats skipped); raise on a close from the broker."""
        while True:
            channel, frame = self._read_frame()
            if isinstance(frame, Heartbeat):
                continue
            if isinstance(frame, spec.Connection.Blocked):
                self.blocked = frame.reason or "no reason given"
                continue
            if isinstance(frame, spec.Connection.Unblocked):
                self.blocked = None
                continue
            if isinstance(frame, spec.Connection.Close):
                with contextlib.suppress(OSError):
                    self._send_on(0, spec.Connection.CloseOk())
                raise ConnectionClosed(frame)
            if isinstance(frame, spec.Channel.Close) and channel == CHANNEL:
                self._send(spec.Channel.CloseOk())
                raise ChannelClosed(frame)
            return frame

    def _read_frame(self) -> tuple[int, Any]:
        sock, buffer = self._socket, self._buffer
        assert sock is not None
        while True:
            if len(buffer) >= 7:
                end = 7 + _HEADER.unpack_from(buffer)[2] + 1
                if len(buffer) >= end:
                    raw = bytes(buffer[:end])
                    del buffer[:end]
                    _, channel, frame = pamqp.frame.unmarshal(raw)
                    return channel, frame
            sock.settimeout(self._remaining())
            data = sock.recv(65536)
            if not data:
                raise EOFError("RabbitMQ closed the connection")
            buffer += data


def handshake_refusal(settings: ConnectionSettings, host: str, port: int) -> HandshakeRefused | None:
    """The broker's own reason for refusing a login or vhost to ``settings`` (None if it did not).

    aiormq keeps the broker's words to itself when opening a vhost fails; this asks again.
    """
    client = BlockingConnection(settings, "eventyard-diagnosis")
    try:
        client._handshake(host, port, settings.ssl_context())
    except HandshakeRefused as refusal:
        return refusal
    except (OSError, PAMQPException, EOFError, ChannelClosed, ConfigurationError):
        return None
    finally:
        client._drop()
    return None
