"""One confirmed publish at a time, on a plain socket in the calling thread.

The sync facade's single ``publish()`` spends most of its time in the event loop's hops (a
write queue and a writer task out, a frame queue and a channel task back), not on the wire.
``BlockingPublisher`` holds one AMQP connection with a confirming channel and, like a blocking
client, writes the message's frames and reads until the broker acks, nacks or returns it. It
serves one caller at a time; a caller that finds it busy takes the event-loop path instead, so
publishing from many threads still overlaps.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
from datetime import UTC, datetime
from typing import Any

import pamqp.frame
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.exceptions import PAMQPException
from pamqp.header import ContentHeader, ProtocolHeader
from pamqp.heartbeat import Heartbeat

from eventyard.errors import BrokerConnectionError, ConfigurationError, PublishNackedError
from eventyard.ports import OutgoingMessage
from eventyard.rabbitmq.settings import ConnectionSettings

_HEADER = struct.Struct(">BHI")
_CHANNEL = 1
_FRAME_MAX = 131072
_READ_TIMEOUT_SECONDS = 60.0
_CAPABILITIES: Any = {"publisher_confirms": True, "basic.nack": True,
                 "authentication_failure_close": True, "consumer_cancel_notify": True}


class _ChannelClosed(Exception):
    def __init__(self, frame: spec.Channel.Close) -> None:
        super().__init__(frame.reply_text)
        self.frame = frame


class BlockingPublisher:
    """A confirming channel on a socket of its own; ``try_publish`` never waits for another caller."""

    def __init__(self, settings: ConnectionSettings, name: str = "eventyard-blocking") -> None:
        self.settings = settings
        self.name = name
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._buffer = bytearray()
        self._frame_max = _FRAME_MAX
        self._tag = 0
        self._channel_open = False
        self._publish_frames: dict[tuple[str, str], bytes] = {}  # marshalled Basic.Publish

    def try_publish(self, message: OutgoingMessage) -> bool | None:
        """Publish and wait for the confirm: True routed, False returned (unroutable).

        None when another thread is publishing here right now (use another path).
        """
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return self._publish(message)
        finally:
            self._lock.release()

    def close(self) -> None:
        """Close the connection (a later publish opens a new one)."""
        with self._lock:
            self._drop()

    # -- one publish --------------------------------------------------------------------------

    def _publish(self, message: OutgoingMessage) -> bool:
        if self._socket is None:
            self._connect()
        if not self._channel_open:
            self._open_channel()
        try:
            assert self._socket is not None
            self._socket.sendall(self._frames(message))
            self._tag += 1
            return self._await_confirm(self._tag, message)
        except _ChannelClosed as closed:
            self._channel_open = False
            if closed.frame.reply_code == 404:
                raise ConfigurationError(
                    f"cannot publish to {message.exchange!r}: {closed.frame.reply_text}; declare "
                    "the topology first (RabbitMqMessageConfigurer.configure_subscribers)") from None
            raise BrokerConnectionError(
                f"RabbitMQ closed the publishing channel: {closed.frame.reply_text}") from None
        except (OSError, PAMQPException, EOFError) as error:
            self._drop()
            raise BrokerConnectionError(
                f"connection to RabbitMQ lost before message {message.message_id} was confirmed "
                f"({type(error).__name__}); it may or may not be stored") from error

    def _frames(self, message: OutgoingMessage) -> bytes:
        """The message's frames, marshalled as one write."""
        key = (message.exchange, message.routing_key)
        publish = self._publish_frames.get(key)
        if publish is None:
            publish = self._publish_frames[key] = pamqp.frame.marshal(spec.Basic.Publish(
                exchange=message.exchange, routing_key=message.routing_key, mandatory=True),
                _CHANNEL)
        properties = spec.Basic.Properties(
            content_type=message.content_type, delivery_mode=2, message_id=message.message_id,
            message_type=message.type,
            timestamp=(datetime.fromtimestamp(message.timestamp, UTC)
                       if message.timestamp is not None else None),
            headers=message.headers or None)
        body, size = message.body, self._frame_max - 8
        parts = [publish, pamqp.frame.marshal(ContentHeader(body_size=len(body),
                                                            properties=properties), _CHANNEL)]
        parts += [pamqp.frame.marshal(ContentBody(body[i:i + size]), _CHANNEL)
                  for i in range(0, len(body), size)]
        return b"".join(parts)

    def _await_confirm(self, tag: int, message: OutgoingMessage) -> bool:
        routed = True
        while True:
            frame = self._read()
            if isinstance(frame, spec.Basic.Return):
                routed = False  # its header and body follow; the ack comes after them
            elif isinstance(frame, spec.Basic.Ack) and frame.delivery_tag >= tag:
                return routed
            elif isinstance(frame, spec.Basic.Nack) and frame.delivery_tag >= tag:
                raise PublishNackedError(
                    f"RabbitMQ refused message {message.message_id} to {message.exchange!r} "
                    f"({message.routing_key}); it was not stored")

    # -- connection ---------------------------------------------------------------------------

    def _connect(self) -> None:
        problems = []
        for host in self.settings.hosts:
            try:
                self._handshake(host)
                return
            except (OSError, PAMQPException, EOFError, _ChannelClosed) as error:
                self._drop()
                problems.append(f"{host}:{self.settings.port}: {error or type(error).__name__}")
        raise BrokerConnectionError(
            f"cannot connect to RabbitMQ at {self.settings.describe()} ({'; '.join(problems)}). "
            "Is the broker running and reachable? Set RABBITMQ_HOST/RABBITMQ_PORT/RABBITMQ_USER/"
            "RABBITMQ_PASSWORD or pass an amqp:// URL to RabbitMqConnector.")

    def _handshake(self, host: str) -> None:
        settings = self.settings
        sock = socket.create_connection((host, settings.port), timeout=settings.connect_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)  # heartbeats are off
        if settings.tls:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        self._socket, self._buffer, self._tag, self._channel_open = sock, bytearray(), 0, False
        sock.sendall(pamqp.frame.marshal(ProtocolHeader(), 0))
        self._expect(spec.Connection.Start)
        self._send_on(0, spec.Connection.StartOk(
            client_properties={"product": "eventyard", "connection_name": self.name,
                               "capabilities": _CAPABILITIES},
            mechanism="PLAIN", response=f"\0{settings.user}\0{settings.password}"))
        tune = self._read()
        if not isinstance(tune, spec.Connection.Tune):
            raise EOFError("login refused (check RABBITMQ_USER / RABBITMQ_PASSWORD)")
        self._frame_max = min(tune.frame_max or _FRAME_MAX, _FRAME_MAX)
        # Heartbeats off: this connection only talks while publishing; a dead one shows up as
        # an error on the next publish, which reconnects.
        self._send_on(0, spec.Connection.TuneOk(channel_max=tune.channel_max,
                                                frame_max=self._frame_max, heartbeat=0))
        self._send_on(0, spec.Connection.Open(virtual_host=settings.vhost))
        self._expect(spec.Connection.OpenOk)
        sock.settimeout(_READ_TIMEOUT_SECONDS)

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
        self._send_on(_CHANNEL, *frames)

    def _send_on(self, channel: int, *frames: Any) -> None:
        assert self._socket is not None
        self._socket.sendall(b"".join(pamqp.frame.marshal(f, channel) for f in frames))

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
            if isinstance(frame, spec.Connection.Close):
                with contextlib.suppress(OSError):
                    self._send_on(0, spec.Connection.CloseOk())
                raise EOFError(f"RabbitMQ closed the connection: {frame.reply_text}")
            if isinstance(frame, spec.Channel.Close) and channel == _CHANNEL:
                self._send(spec.Channel.CloseOk())
                raise _ChannelClosed(frame)
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
            data = sock.recv(65536)
            if not data:
                raise EOFError("RabbitMQ closed the connection")
            buffer += data
